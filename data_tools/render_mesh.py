"""CPU ray-casting renderer for triangle meshes: RGBA images with known geometry.

One primary ray per (sub)pixel against the mesh (Embree through ``embreex`` when it
imports, else a pure-numpy per-triangle test, ``first_hits_pinhole``), Lambert shading with one
fixed directional light in the world frame plus ambient, no shadows.

Conventions (the package's, see ``neus2cli.data.scene``):

* ``K`` is (3, 3) in pixels with pixel centres at +0.5: pixel (row v, column u)
  covers [u, u+1) x [v, v+1), its centre ray passes through (u + 0.5, v + 0.5).
* ``c2w`` is (4, 4) OpenCV camera-to-world (x right, y down, z forward), world units.

Albedo comes from, in order: a texture through UVs (``TextureVisuals`` with an
image; OBJ UVs have v pointing up, so texel row = (1 - v) * height), vertex
colours, face colours, the material's flat colour. A mesh with none of these
gets ``procedural_vertex_colors`` (smooth colour bands of the vertex positions),
so that every generated image has texture for photometric losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from data_tools.checks import finite_number, vector3
from neus2cli.errors import UserError

#: World direction *towards* the light (mostly from +y, the usual up axis of OBJ meshes).
DEFAULT_LIGHT_DIR = (0.35, 0.8, 0.5)
DEFAULT_AMBIENT = 0.35
DEFAULT_DIFFUSE = 0.65


def embree_available() -> bool:
    """True when trimesh can use Embree (``embreex``) for ray casting."""
    # trimesh's own module imports even without embreex (it defers the failure), so ask for embreex itself.
    try:
        import embreex  # noqa: F401
        from trimesh.ray import ray_pyembree  # noqa: F401
    except ImportError:
        return False
    return True


def first_hits_pinhole(
    vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, c2w: np.ndarray, width: int, height: int, s: int
) -> np.ndarray:
    """Pure-numpy first hit of the rays of ``pixel_rays(K, c2w, width, height, s)``.

    The fallback when Embree is missing (trimesh's own fallback needs ``rtree``). All rays
    share the camera centre, so each triangle only tests the subsamples inside its projected
    bounding box: a ray (x, y, 1) in camera coordinates hits the triangle (p0, p1, p2) when
    the triple products d . (p_i x p_i+1) share a sign; its z-depth is (p0 . n) / (d . n).

    Returns:
        (H * W * s * s,) int64 triangle index per ray in ``pixel_rays`` order, -1 for a miss.
    """
    w2c = np.linalg.inv(c2w)
    p = vertices @ w2c[:3, :3].T + w2c[:3, 3]  # camera frame
    sx = (np.arange(width * s) + 0.5) / s  # subsample pixel coordinates
    sy = (np.arange(height * s) + 0.5) / s
    ys = (sy - K[1, 2]) / K[1, 1]
    gx, gy = np.meshgrid(sx, ys)
    gx = (gx - K[0, 2] - K[0, 1] * gy) / K[0, 0]  # camera-frame x of each subsample ray (z = 1)
    best_t = np.full(gx.shape, np.inf)
    best_f = np.full(gx.shape, -1, dtype=np.int64)
    z_min = 1e-9
    for f, (a, b, c) in enumerate(p[faces]):
        zs = np.array([a[2], b[2], c[2]])
        if zs.max() <= z_min:
            continue  # entirely behind the camera
        if zs.min() > z_min:
            uv = np.stack([a, b, c]) @ K.T
            uv = uv[:, :2] / uv[:, 2:]
            lo = np.maximum(np.floor(uv.min(axis=0) * s - 0.5).astype(np.int64), 0)
            hi = np.minimum(np.ceil(uv.max(axis=0) * s - 0.5).astype(np.int64), [width * s - 1, height * s - 1])
            if (hi < lo).any():
                continue
            rows, cols = slice(lo[1], hi[1] + 1), slice(lo[0], hi[0] + 1)
        else:  # straddles the camera plane: test every subsample
            rows, cols = slice(None), slice(None)
        x, y = gx[rows, cols], gy[rows, cols]
        e = [np.cross(a, b), np.cross(b, c), np.cross(c, a)]
        sides = np.stack([x * q[0] + y * q[1] + q[2] for q in e])
        inside = (sides >= 0).all(axis=0) | (sides <= 0).all(axis=0)
        n = np.cross(b - a, c - a)
        denom = x * n[0] + y * n[1] + n[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (a @ n) / denom
        better = inside & (t > 0) & (t < best_t[rows, cols])
        best_t[rows, cols] = np.where(better, t, best_t[rows, cols])
        best_f[rows, cols] = np.where(better, f, best_f[rows, cols])
    # (H*s, W*s) -> pixel_rays order (H, W, s*s).
    return best_f.reshape(height, s, width, s).transpose(0, 2, 1, 3).reshape(-1)


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """Load a triangle mesh (OBJ with MTL and texture, PLY, GLB, ...) without altering it.

    Multi-part files are concatenated. Vertices are kept as stored (no merging), so
    UV seams survive. Raises ``UserError`` for a missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("mesh file not found.", path=path, hint="Pass an existing .obj, .ply or .glb file.")
    try:
        mesh = trimesh.load(path, process=False, force="mesh")
    except Exception as err:  # trimesh raises many types for bad files
        raise UserError(f"cannot read the mesh ({err}).", path=path) from err
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise UserError("the file holds no triangles.", path=path, hint="Pass a triangle mesh.")
    return mesh


def procedural_vertex_colors(vertices: np.ndarray) -> np.ndarray:
    """(n, 3) positions -> (n, 3) float albedo in [0.15, 0.95]: smooth colour bands.

    Sinusoids of fixed oblique directions, about 1.5 periods per unit length, so a
    mesh scaled to unit radius shows a few bands per side. It depends on position
    (not normals), so colours stay attached to the surface when the mesh is later
    moved or deformed: compute it once, in the canonical frame.
    """
    v = np.asarray(vertices, dtype=np.float64)
    dirs = np.array([[0.8, 0.5, 0.3], [-0.3, 0.9, 0.4], [0.5, -0.2, 0.85]])
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    phases = np.array([0.0, 2.1, 4.2])
    bands = np.sin(2 * np.pi * 1.5 * v @ dirs.T + phases)
    fine = np.sin(2 * np.pi * 4.0 * v @ dirs[[1, 2, 0]].T)
    return np.clip(0.55 + 0.25 * bands + 0.15 * fine, 0.15, 0.95)


def has_color(mesh: trimesh.Trimesh) -> bool:
    """True when the mesh carries a texture image, vertex colours or face colours."""
    vis = mesh.visual
    if isinstance(vis, trimesh.visual.TextureVisuals):
        return vis.uv is not None and _material_image(vis.material) is not None
    return vis.kind in ("vertex", "face")


def _material_image(material) -> np.ndarray | None:
    image = getattr(material, "image", None)
    if image is None:
        image = getattr(material, "baseColorTexture", None)
    if image is None:
        return None
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return arr


def _material_color(material) -> np.ndarray:
    for name in ("main_color", "baseColorFactor"):
        color = getattr(material, name, None)
        if color is not None:
            return np.asarray(color, dtype=np.float64)[:3] / 255.0
    return np.full(3, 0.8)


def smooth_vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(n, 3) area-weighted vertex normals, shared across duplicated positions (UV seams).

    Vertices at the same position (to 1e-9 relative) get the same normal, so texture
    seams do not show as shading creases.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    extent = float(np.ptp(v, axis=0).max()) or 1.0
    key = np.round(v / (extent * 1e-9)).astype(np.int64)
    _, inverse = np.unique(key, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    # Cross product length = 2 * area: area-weighted sum.
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    acc = np.zeros((inverse.max() + 1, 3))
    for corner in range(3):
        np.add.at(acc, inverse[f[:, corner]], fn)
    normals = acc[inverse]
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals / np.where(norm > 0, norm, 1.0)


def _bilinear_wrap(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """(H, W, 3) texture, (n, 2) OBJ UVs (v up, repeat wrap) -> (n, 3) bilinear samples."""
    h, w = image.shape[:2]
    # Texel centres at +0.5; v = 1 is the top row of the image.
    x = uv[:, 0] * w - 0.5
    y = (1.0 - uv[:, 1]) * h - 0.5
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    x1 = np.mod(x0 + 1, w)
    y1 = np.mod(y0 + 1, h)
    x0 = np.mod(x0, w)
    y0 = np.mod(y0, h)
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


@dataclass
class RenderOutput:
    """One rendered view.

    Attributes:
        rgba: (H, W, 4) uint8, straight (not premultiplied) colour, alpha = coverage.
        alpha: (H, W) float32 coverage in [0, 1] (fraction of subsamples that hit).
        depth: (H, W) float32 camera z-depth (along the optical axis, world units) of
            the hits, averaged over the hit subsamples; ``inf`` for background.
        normal: (H, W, 3) float32 world-frame unit normal facing the camera; 0 for background.
    """

    rgba: np.ndarray
    alpha: np.ndarray
    depth: np.ndarray
    normal: np.ndarray


def pixel_rays(
    K: np.ndarray, c2w: np.ndarray, width: int, height: int, supersample: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """World-frame rays through a regular ``supersample`` x ``supersample`` grid in each pixel.

    Returns:
        origins: (H, W, s*s, 3) camera centre, world units.
        directions: (H, W, s*s, 3) unit directions, world frame. Subsample (i, j) of
            pixel (v, u) passes through pixel coordinate (u + (j+0.5)/s, v + (i+0.5)/s),
            so s = 1 gives the pixel centre (u + 0.5, v + 0.5).
    """
    s = int(supersample)
    offs = (np.arange(s) + 0.5) / s
    u = (np.arange(width)[:, None] + offs[None, :]).reshape(-1)  # (W*s,)
    v = (np.arange(height)[:, None] + offs[None, :]).reshape(-1)  # (H*s,)
    uu, vv = np.meshgrid(u, v)  # (H*s, W*s)
    x = (uu - K[0, 2] - K[0, 1] * (vv - K[1, 2]) / K[1, 1]) / K[0, 0]
    y = (vv - K[1, 2]) / K[1, 1]
    d_cam = np.stack([x, y, np.ones_like(x)], axis=-1)
    d = d_cam @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    # (H*s, W*s, 3) -> (H, s, W, s, 3) -> (H, W, s, s, 3)
    d = d.reshape(height, s, width, s, 3).transpose(0, 2, 1, 3, 4).reshape(height, width, s * s, 3)
    o = np.broadcast_to(c2w[:3, 3], d.shape).copy()
    return o, d


class MeshRenderer:
    """Ray-cast renderer bound to one mesh (the acceleration structure is built once).

    Args:
        mesh: triangle mesh in the world frame (textured, vertex- or face-coloured, or plain).
        light_dir: (3,) world direction towards the light (normalized here).
        ambient, diffuse: shading = albedo * (ambient + diffuse * max(0, n . l)).
        albedo: optional (n_vertices, 3) float albedo in [0, 1] overriding the mesh's own
            colours (for example ``procedural_vertex_colors`` of a plain mesh).
        backend: "embree" (fast, needs ``embreex``), "numpy" (``first_hits_pinhole``) or
            "auto" (Embree when it imports). Both give the same images up to float32
            rounding at triangle edges.
    """

    def __init__(
        self,
        mesh: trimesh.Trimesh,
        light_dir: tuple[float, float, float] | np.ndarray = DEFAULT_LIGHT_DIR,
        ambient: float = DEFAULT_AMBIENT,
        diffuse: float = DEFAULT_DIFFUSE,
        albedo: np.ndarray | None = None,
        backend: str = "auto",
    ):
        if backend not in ("auto", "embree", "numpy"):
            raise ValueError(f"backend must be 'auto', 'embree' or 'numpy', got {backend!r}")
        if backend == "embree" and not embree_available():
            raise ValueError("backend='embree' needs the embreex package (pip install embreex)")
        if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
            raise ValueError(f"mesh must be a non-empty trimesh.Trimesh, got {type(mesh).__name__}")
        light = np.asarray(light_dir, dtype=np.float64).reshape(3)
        if np.linalg.norm(light) == 0:
            raise ValueError("light_dir must be a non-zero 3-vector")
        self.mesh = mesh
        self.light = light / np.linalg.norm(light)
        self.ambient = float(ambient)
        self.diffuse = float(diffuse)
        self.vertices = np.asarray(mesh.vertices, dtype=np.float64)
        self.faces = np.asarray(mesh.faces, dtype=np.int64)
        self.vertex_normals = smooth_vertex_normals(self.vertices, self.faces)
        self.backend = backend if backend != "auto" else ("embree" if embree_available() else "numpy")
        self._intersector = None
        if self.backend == "embree":
            from trimesh.ray.ray_pyembree import RayMeshIntersector

            self._intersector = RayMeshIntersector(mesh)

        self._texture = None
        self._uv = None
        self._vertex_albedo = None
        self._face_albedo = None
        vis = mesh.visual
        if albedo is not None:
            albedo = np.asarray(albedo, dtype=np.float64)
            if albedo.shape != (len(self.vertices), 3):
                raise ValueError(f"albedo must have shape ({len(self.vertices)}, 3), got {albedo.shape}")
            self._vertex_albedo = albedo
        elif isinstance(vis, trimesh.visual.TextureVisuals):
            image = _material_image(vis.material)
            if vis.uv is not None and image is not None:
                self._texture = image
                self._uv = np.asarray(vis.uv, dtype=np.float64)
            else:
                self._face_albedo = np.broadcast_to(_material_color(vis.material), (len(self.faces), 3))
        elif vis.kind == "vertex":
            self._vertex_albedo = np.asarray(vis.vertex_colors[:, :3], dtype=np.float64) / 255.0
        elif vis.kind == "face":
            self._face_albedo = np.asarray(vis.face_colors[:, :3], dtype=np.float64) / 255.0
        else:
            self._vertex_albedo = procedural_vertex_colors(self.vertices)

    def _albedo(self, tri: np.ndarray, bary: np.ndarray) -> np.ndarray:
        corners = self.faces[tri]  # (n, 3)
        if self._texture is not None:
            uv = np.einsum("nk,nkc->nc", bary, self._uv[corners])
            return _bilinear_wrap(self._texture, uv)
        if self._vertex_albedo is not None:
            return np.einsum("nk,nkc->nc", bary, self._vertex_albedo[corners])
        return self._face_albedo[tri]

    def render(self, K: np.ndarray, c2w: np.ndarray, width: int, height: int, supersample: int = 1) -> RenderOutput:
        """Render one view.

        Args:
            K: (3, 3) pixels, pixel centres at +0.5.
            c2w: (4, 4) OpenCV camera-to-world, world units.
            width, height: image size in pixels.
            supersample: s >= 1; s x s rays per pixel, averaged (soft alpha at edges).
        """
        K = np.asarray(K, dtype=np.float64)
        c2w = np.asarray(c2w, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"K must have shape (3, 3), got {K.shape}")
        if c2w.shape != (4, 4):
            raise ValueError(f"c2w must have shape (4, 4), got {c2w.shape}")
        if int(width) < 1 or int(height) < 1:
            raise ValueError(f"width and height must be >= 1, got {width}x{height}")
        if int(supersample) < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        width, height, s = int(width), int(height), int(supersample)

        origins, dirs = pixel_rays(K, c2w, width, height, s)
        o = origins.reshape(-1, 3)
        d = dirs.reshape(-1, 3)
        if self._intersector is not None:
            tri = np.asarray(self._intersector.intersects_first(o, d), dtype=np.int64)
        else:
            tri = first_hits_pinhole(self.vertices, self.faces, K, c2w, width, height, s)
        hit = np.nonzero(tri >= 0)[0]
        tri = tri[hit]

        # Exact hit in float64 (Embree works in float32): ray-plane intersection with the hit triangle.
        v0, v1, v2 = (self.vertices[self.faces[tri, k]] for k in range(3))
        fn = np.cross(v1 - v0, v2 - v0)
        denom = np.einsum("nc,nc->n", d[hit], fn)
        denom = np.where(np.abs(denom) > 1e-300, denom, 1e-300)
        t = np.einsum("nc,nc->n", v0 - o[hit], fn) / denom
        points = o[hit] + t[:, None] * d[hit]
        bary = trimesh.triangles.points_to_barycentric(np.stack([v0, v1, v2], axis=1), points)
        bary = np.clip(bary, 0.0, 1.0)
        bary /= np.maximum(bary.sum(axis=1, keepdims=True), 1e-12)

        normal = np.einsum("nk,nkc->nc", bary, self.vertex_normals[self.faces[tri]])
        bad = np.linalg.norm(normal, axis=1) < 1e-8
        normal[bad] = fn[bad]
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
        # Two-sided: face the camera (open meshes show their inside).
        normal *= -np.sign(np.einsum("nc,nc->n", normal, d[hit]) + 1e-300)[:, None]

        shade = self.ambient + self.diffuse * np.clip(normal @ self.light, 0.0, None)
        color = np.clip(self._albedo(tri, bary) * shade[:, None], 0.0, 1.0)
        depth = t * np.einsum("nc,c->n", d[hit], c2w[:3, 2])

        n_px = width * height
        pix = hit // (s * s)
        count = np.bincount(pix, minlength=n_px).astype(np.float64)
        safe = np.maximum(count, 1.0)[:, None]
        rgb = np.stack([np.bincount(pix, color[:, c], minlength=n_px) for c in range(3)], axis=1) / safe
        nrm = np.stack([np.bincount(pix, normal[:, c], minlength=n_px) for c in range(3)], axis=1)
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
        dep = np.bincount(pix, depth, minlength=n_px) / safe[:, 0]
        alpha = count / (s * s)
        dep[count == 0] = np.inf

        rgba = np.zeros((n_px, 4), dtype=np.uint8)
        rgba[:, :3] = np.round(rgb * 255.0).astype(np.uint8)
        rgba[:, 3] = np.round(alpha * 255.0).astype(np.uint8)
        return RenderOutput(
            rgba=rgba.reshape(height, width, 4),
            alpha=alpha.reshape(height, width).astype(np.float32),
            depth=dep.reshape(height, width).astype(np.float32),
            normal=nrm.reshape(height, width, 3).astype(np.float32),
        )


@dataclass(frozen=True)
class Shading:
    """How a generator lights and samples its views; shared by the static and dynamic generators,
    validated on construction.

    Each ray's colour is ``albedo * (ambient + diffuse * max(n . l, 0))`` (clipped to [0, 1]),
    ``n`` the surface normal facing the camera, ``l`` the unit ``light_dir``; no shadows.

    Attributes:
        light_dir: world direction *towards* the light (finite, non-zero; normalized when used).
        ambient, diffuse: Lambert weights, finite and >= 0.
        supersample: s (int >= 1): s x s rays per pixel, averaged (soft alpha edges).
    """

    light_dir: tuple[float, float, float] = DEFAULT_LIGHT_DIR
    ambient: float = DEFAULT_AMBIENT
    diffuse: float = DEFAULT_DIFFUSE
    supersample: int = 2

    def __post_init__(self) -> None:
        values = {
            "light_dir": vector3(self.light_dir, "light_dir"),
            "ambient": finite_number(self.ambient, "ambient"),
            "diffuse": finite_number(self.diffuse, "diffuse"),
        }
        for name in ("ambient", "diffuse"):
            if values[name] < 0:
                raise ValueError(f"{name} must be >= 0, got {values[name]}")
        s = self.supersample
        if isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 1:
            raise ValueError(f"supersample must be an integer >= 1, got {s!r}")
        values["supersample"] = int(s)
        for name, value in values.items():  # store plain Python values (frozen: set through object)
            object.__setattr__(self, name, value)

    def renderer(self, mesh: trimesh.Trimesh, albedo: np.ndarray | None = None) -> MeshRenderer:
        """A ``MeshRenderer`` of ``mesh`` (world frame) lit this way; ``albedo`` as in MeshRenderer."""
        return MeshRenderer(mesh, light_dir=self.light_dir, ambient=self.ambient, diffuse=self.diffuse, albedo=albedo)

    def to_dict(self) -> dict:
        """The shading entries of ``scene_info.json`` "settings", in file order."""
        return {
            "supersample": self.supersample,
            "light_dir": list(self.light_dir),
            "ambient": self.ambient,
            "diffuse": self.diffuse,
        }


def render_mesh(
    mesh: trimesh.Trimesh,
    K: np.ndarray,
    c2w: np.ndarray,
    width: int,
    height: int,
    supersample: int = 1,
    **shading,
) -> RenderOutput:
    """One-off ``MeshRenderer(mesh, **shading).render(K, c2w, width, height, supersample)``."""
    return MeshRenderer(mesh, **shading).render(K, c2w, width, height, supersample)
