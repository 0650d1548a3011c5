"""A small numpy software rasterizer: shaded pictures of a mesh, with no display and no GPU.

Cameras follow ``neus2cli.data.cameras``: ``c2w`` is a (4, 4) OpenCV camera-to-world
(x right, y down, z forward) in the mesh's frame (world, for exported meshes), ``K`` a
(3, 3) pinhole intrinsic matrix in pixels with pixel centres at +0.5. A pixel is covered
by a triangle when its centre is inside the projected triangle (edges shared by two
triangles are counted for both; the nearer wins, so nothing is left uncovered).

The depth test keeps, per pixel, the triangle with the smallest camera depth ``z``;
barycentric weights are perspective-correct. Triangles with a vertex at or behind the
near plane are dropped (orbit cameras from ``orbit_cameras`` stay outside the mesh's
bounding sphere, so that never happens for them).

Shading is Lambert plus ambient from interpolated vertex normals, lit by a directional
light fixed to the camera ("headlight", from the upper left by default); normals are
flipped towards the viewer, so open surfaces and their inside read as solid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import trimesh

from neus2cli.data.cameras import look_at

NEUTRAL_GREY = (0.72, 0.72, 0.72)
"""Surface albedo of a mesh without vertex colours."""
BACKGROUND = (1.0, 1.0, 1.0)
AMBIENT = 0.25
"""Fraction of the albedo seen where the light does not reach (grazing or facing away)."""
HEADLIGHT = (-0.45, -0.55, -1.0)
"""Direction towards the light in the camera frame (OpenCV): from the upper left, behind the viewer."""
FOV_DEG = 30.0
"""Full field of view of ``orbit_cameras`` (square images)."""
_CANDIDATES_PER_CHUNK = 1 << 21  # (triangle, pixel) pairs tested at once: ~100 MB of float64 temporaries


@dataclass(frozen=True)
class Raster:
    """Per-pixel result of ``rasterize``; H, W are the image height and width.

    Attributes:
        face: (H, W) int64 index of the visible face, -1 where no face covers the pixel.
        bary: (H, W, 3) float64 perspective-correct barycentric weights of the face's three
            vertices (zeros where ``face == -1``).
        depth: (H, W) float64 camera-frame z of the visible surface (inf where empty), mesh units.
    """

    face: np.ndarray
    bary: np.ndarray
    depth: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool: True where the mesh covers the pixel."""
        return self.face >= 0


def rasterize(
    vertices: np.ndarray, faces: np.ndarray, c2w: np.ndarray, K: np.ndarray, width: int, height: int
) -> Raster:
    """Z-buffered coverage of triangles ``faces`` (F, 3) int over ``vertices`` (V, 3) seen by one camera.

    ``vertices`` are in the frame of ``c2w`` (4, 4, OpenCV camera-to-world); ``K`` (3, 3) in
    pixels for a ``width`` x ``height`` image. Vectorised over (triangle, covered pixel) pairs in
    chunks, so memory stays bounded whatever the triangles' screen size.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices: expected (V, 3), got shape {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces: expected (F, 3), got shape {faces.shape}")
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    n_pix = width * height
    best_depth = np.full(n_pix, np.inf)
    best_face = np.full(n_pix, -1, dtype=np.int64)
    best_bary = np.zeros((n_pix, 3))
    # Views of the buffers filled below: returned as is when nothing (more) is drawn.
    result = Raster(
        best_face.reshape(height, width), best_bary.reshape(height, width, 3), best_depth.reshape(height, width)
    )
    if len(faces) == 0:
        return result

    w2c = np.linalg.inv(np.asarray(c2w, dtype=np.float64))
    cam = vertices @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    near = 1e-6 * max(float(np.abs(z).max()), 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam @ np.asarray(K, dtype=np.float64).T)[:, :2] / z[:, None]  # (V, 2) pixel coordinates

    tri_z = z[faces]  # (F, 3)
    keep = np.all(tri_z > near, axis=1)
    tri = uv[faces]  # (F, 3, 2)
    # Pixel centres (i + 0.5) inside each triangle's bounding box, clipped to the image.
    lo = np.ceil(tri.min(axis=1) - 0.5)
    hi = np.floor(tri.max(axis=1) - 0.5)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [width - 1, height - 1])
    # Signed doubled area; degenerate (edge-on) triangles cover nothing.
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    keep &= np.all(hi >= lo, axis=1) & (np.abs(area) > 1e-12)
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        return result
    lo, hi = lo[idx].astype(np.int64), hi[idx].astype(np.int64)
    bw, bh = hi[:, 0] - lo[:, 0] + 1, hi[:, 1] - lo[:, 1] + 1
    counts = bw * bh
    inv_z = 1.0 / tri_z[idx]  # (T, 3)

    # Chunks of whole triangles with at most _CANDIDATES_PER_CHUNK pairs (a huge triangle is its own chunk).
    ends = np.cumsum(counts)
    start = 0
    while start < len(idx):
        base = ends[start - 1] if start > 0 else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + _CANDIDATES_PER_CHUNK, side="right")))
        sl = slice(start, stop)
        start = stop
        c = counts[sl]
        t = np.repeat(np.arange(len(c)), c)  # local triangle of each candidate
        offset = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
        px = lo[sl][t, 0] + offset % bw[sl][t]
        py = lo[sl][t, 1] + offset // bw[sl][t]
        pc = np.stack([px + 0.5, py + 0.5], axis=-1)  # (n, 2) pixel centres
        v = tri[idx[sl]][t]  # (n, 3, 2)
        # Screen-space barycentrics from the edge functions, normalised by the signed area.
        a = area[idx[sl]][t]
        w0 = _edge(v[:, 1], v[:, 2], pc) / a
        w1 = _edge(v[:, 2], v[:, 0], pc) / a
        w2 = 1.0 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        if not inside.any():
            continue
        t, pix = t[inside], (py * width + px)[inside]
        w = np.stack([w0[inside], w1[inside], w2[inside]], axis=-1) * inv_z[sl][t]  # perspective: weight / z
        s = w.sum(axis=1)
        depth = 1.0 / s  # 1/z interpolates linearly in screen space
        # Nearest candidate per pixel: sort by (pixel, depth), keep each pixel's first.
        order = np.lexsort((depth, pix))
        pix, depth, t, w, s = pix[order], depth[order], t[order], w[order], s[order]
        first = np.ones(len(pix), dtype=bool)
        first[1:] = pix[1:] != pix[:-1]
        pix, depth, t, w, s = pix[first], depth[first], t[first], w[first], s[first]
        closer = depth < best_depth[pix]
        pix = pix[closer]
        best_depth[pix] = depth[closer]
        best_face[pix] = idx[sl][t[closer]]
        best_bary[pix] = w[closer] / s[closer, None]
    return result


def _edge(a: np.ndarray, b: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Doubled signed area of (a, b, p), all (n, 2): positive when p is left of a -> b (image axes)."""
    return (b[:, 0] - a[:, 0]) * (p[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (p[:, 0] - a[:, 0])


def shade(
    mesh: trimesh.Trimesh,
    raster: Raster,
    c2w: np.ndarray,
    light_cam: Sequence[float] = HEADLIGHT,
    ambient: float = AMBIENT,
    background: Sequence[float] = BACKGROUND,
) -> np.ndarray:
    """(H, W, 3) float RGB in [0, 1] of ``raster`` (from ``rasterize`` with ``mesh``'s arrays and ``c2w``).

    ``light_cam`` (3,) points towards the light in the camera frame (OpenCV); colour per pixel is
    ``albedo * (ambient + (1 - ambient) * max(0, n . l))`` with ``n`` the interpolated vertex
    normal flipped to face the camera; the albedo is the mesh's vertex colour if it has them,
    otherwise ``NEUTRAL_GREY``. Empty pixels get ``background``.
    """
    h, w = raster.face.shape
    image = np.empty((h, w, 3))
    image[:] = np.asarray(background, dtype=np.float64)
    mask = raster.mask
    if not mask.any():
        return image
    c2w = np.asarray(c2w, dtype=np.float64)
    face = raster.face[mask]
    bary = raster.bary[mask]  # (n, 3)
    corners = np.asarray(mesh.faces)[face]  # (n, 3) vertex ids
    normals = np.einsum("nk,nkc->nc", bary, np.asarray(mesh.vertex_normals)[corners])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    # Two-sided: flip normals that face away from the camera (view ray from the camera to the point).
    points = np.einsum("nk,nkc->nc", bary, np.asarray(mesh.vertices)[corners])
    view = points - c2w[:3, 3]
    normals[np.einsum("nc,nc->n", normals, view) > 0] *= -1.0
    light = c2w[:3, :3] @ np.asarray(light_cam, dtype=np.float64)
    light /= np.linalg.norm(light)
    lambert = np.clip(normals @ light, 0.0, None)
    intensity = ambient + (1.0 - ambient) * lambert
    image[mask] = _albedo(mesh, corners, bary) * intensity[:, None]
    return image


def _albedo(mesh: trimesh.Trimesh, corners: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """(n, 3) surface colour in [0, 1] at the shaded pixels: vertex colours or ``NEUTRAL_GREY``."""
    visual = mesh.visual
    if getattr(visual, "kind", None) == "vertex":
        colors = np.asarray(visual.vertex_colors)[:, :3].astype(np.float64) / 255.0
        return np.einsum("nk,nkc->nc", bary, colors[corners])
    return np.broadcast_to(np.asarray(NEUTRAL_GREY), (len(corners), 3))


def up_from_cameras(c2w: np.ndarray) -> np.ndarray:
    """(3,) unit world "up" of a capture: the mean image-up (-y) axis of (N, 4, 4) OpenCV ``c2w``.

    Photographers hold cameras roughly upright, so their mean image-up is the scene's up
    whatever the dataset's world convention (z-up Blender, y-down DTU).
    """
    c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)
    up = -c2w[:, :3, 1].sum(axis=0)
    norm = np.linalg.norm(up)
    if norm < 1e-9:
        return np.array([0.0, 0.0, 1.0])
    return up / norm


def bounding_sphere(vertices: np.ndarray) -> tuple[np.ndarray, float]:
    """A sphere around (V, 3) ``vertices``: centre (3,) at their bounding-box centre, radius to the farthest.

    Not the smallest enclosing sphere, but within a factor sqrt(3) of it and centred where a
    viewer expects the object's middle. Empty input gives the unit sphere at the origin.
    """
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    if len(vertices) == 0:
        return np.zeros(3), 1.0
    centre = 0.5 * (vertices.min(axis=0) + vertices.max(axis=0))
    return centre, max(float(np.linalg.norm(vertices - centre, axis=1).max()), 1e-6)


def orbit_cameras(
    centre: Sequence[float],
    radius: float,
    size: int,
    azimuths_deg: Sequence[float] = (0.0, 90.0, 180.0, 270.0),
    elevation_deg: float = 20.0,
    up: Sequence[float] = (0.0, 0.0, 1.0),
    fov_deg: float = FOV_DEG,
) -> tuple[np.ndarray, np.ndarray]:
    """Perspective cameras around a sphere that keep all of it in a ``size`` x ``size`` picture.

    ``centre`` (3,) and ``radius`` (world units) give the sphere to frame. Each camera looks at
    ``centre`` from ``azimuths_deg`` about ``up`` (azimuth 0 looks along the world axis least
    aligned with ``up``, made horizontal), raised by ``elevation_deg``, at the distance where the
    sphere's silhouette fills the field of view ``fov_deg`` less a 5% margin.
    Returns ``c2w`` (A, 4, 4) OpenCV camera-to-world and ``K`` (3, 3) in pixels.
    """
    centre = np.asarray(centre, dtype=np.float64).reshape(3)
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    up_v = np.asarray(up, dtype=np.float64)
    up_v = up_v / np.linalg.norm(up_v)
    half = math.radians(fov_deg) / 2
    # The sphere's silhouette has angular radius asin(r / d); fit it in the half field of view.
    distance = radius / math.sin(half / 1.05)
    f = 0.5 * size / math.tan(half)
    K = np.array([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])
    ref = np.eye(3)[int(np.argmin(np.abs(up_v)))]
    ahead = ref - (ref @ up_v) * up_v
    ahead /= np.linalg.norm(ahead)
    side = np.cross(up_v, ahead)
    el = math.radians(elevation_deg)
    c2ws = []
    for az in np.radians(np.asarray(azimuths_deg, dtype=np.float64)):
        horizontal = math.cos(az) * ahead + math.sin(az) * side
        eye = centre - distance * (math.cos(el) * horizontal - math.sin(el) * up_v)
        c2ws.append(look_at(eye, centre, up_v))
    return np.stack(c2ws), K


def render_mesh_views(
    mesh: trimesh.Trimesh,
    size: int = 256,
    azimuths_deg: Sequence[float] = (0.0, 90.0, 180.0, 270.0),
    elevation_deg: float = 20.0,
    up: Sequence[float] = (0.0, 0.0, 1.0),
    sphere: tuple[Sequence[float], float] | None = None,
) -> list[np.ndarray]:
    """Shaded (size, size, 3) float RGB pictures of ``mesh`` from ``orbit_cameras``, one per azimuth.

    ``sphere`` (centre (3,), radius) frames the cameras (default: ``bounding_sphere`` of the
    mesh; pass a shared one to frame several meshes alike, e.g. the frames of a sequence, so
    that motion shows). An empty mesh gives background-only pictures.
    """
    centre, radius = bounding_sphere(mesh.vertices) if sphere is None else sphere
    c2ws, K = orbit_cameras(centre, radius, size, azimuths_deg, elevation_deg, up)
    images = []
    for c2w in c2ws:
        raster = rasterize(mesh.vertices, mesh.faces, c2w, K, size, size)
        images.append(shade(mesh, raster, c2w))
    return images
