"""Textured meshes: a UV atlas (xatlas) and a texture baked from a colour function.

Pipeline (``bake_texture``), for a mesh whose vertices are in the **normalized** frame (where the
field lives):

1. ``uv_atlas``: xatlas cuts the mesh into charts and packs them into a square of ``size`` texels,
   with ``padding`` empty texels between charts. Vertices on chart seams are duplicated
   (``vmapping`` says which input vertex each atlas vertex copies); faces keep their order.
2. ``rasterize_uv``: every texel centre is located in the atlas triangle that covers it (face
   index + barycentric weights), by rasterizing the triangles in texel coordinates;
   ``rasterize_uv_edges`` gives the texels under a triangle's corners and centroid that no
   triangle covers the nearest point of that triangle (slivers smaller than a texel get colour).
3. The texel's surface point is the barycentric mix of its triangle's corners; the colour function
   (the same one that paints vertex colours, ``mesh.ColorFn``) colours it.
4. ``dilate``: texels outside every chart take the colour of the nearest covered texel, up to
   ``padding`` texels away, so bilinear filtering and mipmaps at chart borders never mix in the
   empty background (the visible seams of an undilated bake).

Texture convention (OBJ, and trimesh's in-memory glTF): ``uv`` in [0, 1], u to the right, v **up**;
texel (row i, column j) of an (H, W) image covers u in [j, j + 1] / W and v in [1 - (i + 1) / H,
1 - i / H], its centre at +0.5. glTF stores v down; trimesh flips it on write and read.

Why xatlas rather than our own charts: segmenting a closed marching-cubes surface into low-distortion
charts and packing them tightly is the hard part of UV mapping (xatlas is the standard, MIT-licensed
tool used by Blender's and Godot's light-map bakers); everything after that is a few array operations here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image
from scipy import ndimage

from neus2cli.errors import DependencyError
from neus2cli.export.mesh import ColorFn, evaluate_colors
from neus2cli.export.raster import rasterize
from neus2cli.io import atomic_write, atomic_write_bytes

TEXTURE_EXTRA = "neus2cli[texture]"
#: Empty texels between charts in the packed atlas, and how far the bake dilates into them. Bilinear
#: filtering reads one texel beyond a chart's edge; 4 leaves room for the first mip levels too.
DEFAULT_PADDING = 4


def import_xatlas():
    """The ``xatlas`` module, or a ``DependencyError`` naming the extra that installs it."""
    try:
        import xatlas
    except ImportError as err:
        raise DependencyError(
            f"a textured export needs the xatlas package, which is not importable here ({err}).",
            hint=f"Install the extra: pip install '{TEXTURE_EXTRA}' (or pip install xatlas), or export without "
            "--textured (vertex colours only).",
        ) from None
    return xatlas


@dataclass(frozen=True)
class UVAtlas:
    """A UV parameterization of a triangle mesh.

    Attributes:
        vmapping: (V', ) int64, the input vertex each atlas vertex copies (seam vertices appear
            several times).
        faces: (F, 3) int64 triangles over the atlas vertices, in the input's face order.
        uv: (V', 2) float64 in [0, 1] (u right, v up; see the module docstring).
        size: the texture's width = height in texels that the packing was made for.
    """

    vmapping: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    size: int


def uv_atlas(vertices: np.ndarray, faces: np.ndarray, size: int, padding: int = DEFAULT_PADDING) -> UVAtlas:
    """Charts and packing of ``vertices`` (V, 3) / ``faces`` (F, 3) for a ``size`` x ``size`` texture.

    xatlas sizes its atlas from ``size`` only approximately (measured: 17-41 % larger than asked,
    not always square), so its UVs are rescaled uniformly into the square: the charts keep their
    shapes, and the ``padding`` texels between them shrink by the same factor (to ~0.7 ``padding``
    at worst). Fixing xatlas's texel density instead would mean charting twice, its slow part.
    """
    vertices = np.ascontiguousarray(vertices, dtype=np.float32)
    faces = np.ascontiguousarray(faces, dtype=np.uint32)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices: expected (V, 3), got shape {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ValueError(f"faces: expected (F, 3) with F > 0, got shape {faces.shape}")
    if size < 16:
        raise ValueError(f"size must be at least 16 texels, got {size}")
    xatlas = import_xatlas()
    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices, faces)
    pack = xatlas.PackOptions()
    pack.resolution = int(size)
    pack.padding = int(padding)
    pack.bilinear = True  # xatlas leaves room for bilinear filtering at chart edges
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:  # only when a texel budget is fixed, which we never set
        raise RuntimeError(f"xatlas produced {atlas.atlas_count} atlases, expected 1")
    vmapping, atlas_faces, uv = atlas[0]
    if atlas_faces.shape != faces.shape:
        raise RuntimeError(f"xatlas returned {atlas_faces.shape} faces for {faces.shape}")
    # xatlas's uv are fractions of its own (width, height) atlas; back to its texels, scaled into the
    # square, its y axis taken as image rows (any consistent choice works: uv_to_texel inverts it).
    texels = np.asarray(uv, dtype=np.float64) * np.array([atlas.width, atlas.height])
    texels *= size / max(atlas.width, atlas.height)
    uv01 = np.column_stack([texels[:, 0] / size, 1.0 - texels[:, 1] / size])
    return UVAtlas(
        vmapping=np.asarray(vmapping, dtype=np.int64),
        faces=np.asarray(atlas_faces, dtype=np.int64),
        uv=np.clip(uv01, 0.0, 1.0),
        size=int(size),
    )


def uv_to_texel(uv: np.ndarray, size: int) -> np.ndarray:
    """(N, 2) uv in [0, 1] (v up) -> (N, 2) continuous texel coordinates (x = column, y = row, centres at +0.5)."""
    uv = np.asarray(uv, dtype=np.float64)
    return np.column_stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size])


def rasterize_uv(atlas: UVAtlas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which atlas triangle covers each texel centre.

    Returns ``texel`` (n,) int64 flat indices (row * size + column) of the covered texels,
    ``face`` (n,) int64 their triangle, ``bary`` (n, 3) float64 barycentric weights of its corners.

    Reuses the pinhole rasterizer with the identity camera: the atlas triangles are placed at
    depth z = 1 in texel units, where the projection ``K = I`` is the identity map, so
    perspective-correct weights are the affine ones and every texel sees at most one triangle
    (charts do not overlap; a texel centre on a shared edge goes to one of its two triangles).
    """
    xy = uv_to_texel(atlas.uv, atlas.size)
    flat = np.column_stack([xy, np.ones(len(xy))])
    raster = rasterize(flat, atlas.faces, np.eye(4), np.eye(3), atlas.size, atlas.size)
    texel = np.flatnonzero(raster.face.ravel() >= 0)
    return texel, raster.face.ravel()[texel], raster.bary.reshape(-1, 3)[texel]


def rasterize_uv_edges(atlas: UVAtlas, covered: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texels that hold a triangle's corner or centroid but whose centre no triangle covers.

    ``covered`` (size * size,) bool marks the texels ``rasterize_uv`` found. Each such texel is
    given the point of one of those triangles (the lowest-numbered) nearest to its centre.
    Without this, a triangle smaller than a texel (marching cubes makes slivers, and xatlas packs
    some of them as charts of their own) would own no texel, and its vertices would read the
    colour of whatever chart lies nearest. Returns ``texel`` (n,), ``face`` (n,), ``bary`` (n, 3)
    like ``rasterize_uv``.
    """
    size = atlas.size
    xy = uv_to_texel(atlas.uv, size)
    tri = xy[atlas.faces]  # (F, 3, 2)
    probes = np.concatenate([tri, tri.mean(axis=1, keepdims=True)], axis=1)  # (F, 4, 2): corners, centroid
    cell = np.clip(np.floor(probes).astype(np.int64), 0, size - 1)
    texel = (cell[..., 1] * size + cell[..., 0]).ravel()
    face = np.repeat(np.arange(len(tri)), 4)
    keep = ~covered[texel]
    texel, face = texel[keep], face[keep]
    texel, first = np.unique(texel, return_index=True)  # one triangle per texel: the first in face order
    face = face[first]
    centre = np.column_stack([texel % size + 0.5, texel // size + 0.5])
    # Nearest point of the triangle: the centre is outside it (else rasterize_uv would have it), so
    # the nearest point lies on an edge; project on all three, keep the closest. No division by the
    # triangle's area, so degenerate (zero-area) triangles work too.
    t = tri[face]
    best_d = np.full(len(face), np.inf)
    bary = np.zeros((len(face), 3))
    for i, j in ((0, 1), (1, 2), (2, 0)):
        a, b = t[:, i], t[:, j]
        ab = b - a
        s = np.clip(np.einsum("nc,nc->n", centre - a, ab) / np.maximum(np.einsum("nc,nc->n", ab, ab), 1e-300), 0, 1)
        d = np.linalg.norm(a + s[:, None] * ab - centre, axis=1)
        better = d < best_d
        best_d[better] = d[better]
        w = np.zeros((int(better.sum()), 3))
        w[:, i], w[:, j] = 1.0 - s[better], s[better]
        bary[better] = w
    return texel, face, bary


def dilate(image: np.ndarray, covered: np.ndarray, distance: int) -> np.ndarray:
    """Copy into uncovered texels within ``distance`` texels the colour of their nearest covered texel.

    ``image`` (H, W, C), ``covered`` (H, W) bool. Texels farther away keep their value. Returns a new array.
    """
    if covered.all() or not covered.any() or distance <= 0:
        return image.copy()
    dist, (rows, cols) = ndimage.distance_transform_edt(~covered, return_indices=True)
    out = image.copy()
    fill = (~covered) & (dist <= distance)
    out[fill] = image[rows[fill], cols[fill]]
    return out


@dataclass(frozen=True)
class BakedTexture:
    """A UV atlas and its texture.

    Attributes:
        atlas: the parameterization (``vmapping`` into the input vertices).
        image: (size, size, 3) uint8 RGB, row 0 at v = 1 (top of the image).
        covered: (size, size) bool, texels inside a chart (the rest is dilation or background).
    """

    atlas: UVAtlas
    image: np.ndarray
    covered: np.ndarray


def bake_texture(
    vertices: np.ndarray,
    faces: np.ndarray,
    color_fn: ColorFn,
    *,
    size: int = 1024,
    padding: int = DEFAULT_PADDING,
    device: torch.device | str = "cpu",
    chunk: int = 2**18,
) -> BakedTexture:
    """UV atlas of a mesh and its texture coloured by ``color_fn``.

    Args:
        vertices: (V, 3) mesh vertices in the frame ``color_fn`` expects (the **normalized** frame
            for a field).
        faces: (F, 3) int triangles.
        color_fn: (N, 3) points -> (N, 3) RGB in [0, 1]; for a field, the function that paints
            vertex colours (view direction = -normal at the point).
        size: texture width and height in texels.
        padding: texels between charts, and how far colours are dilated past chart borders.
        device: where ``color_fn`` runs; ``chunk``: points per call.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    atlas = uv_atlas(vertices, faces, size, padding)
    texel, face, bary = rasterize_uv(atlas)
    covered = np.zeros(size * size, dtype=bool)
    covered[texel] = True
    extra = rasterize_uv_edges(atlas, covered)
    texel, face, bary = (np.concatenate([a, b]) for a, b in zip((texel, face, bary), extra, strict=True))
    corners = vertices[atlas.vmapping][atlas.faces[face]]  # (n, 3 corners, 3)
    points = np.einsum("nk,nkc->nc", bary, corners)
    rgb = evaluate_colors(color_fn, points, torch.device(device), chunk)
    image = np.zeros((size * size, 3), dtype=np.float64)
    # Texels outside every chart and out of dilation reach get the mean colour: a neutral value
    # for the coarsest mip levels, which average over the whole image.
    image[:] = rgb.mean(axis=0) if len(rgb) else 0.5
    image[texel] = rgb
    covered[texel] = True
    image = dilate(image.reshape(size, size, 3), covered.reshape(size, size), padding)
    pixels = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return BakedTexture(atlas=atlas, image=pixels, covered=covered.reshape(size, size))


def sample_texture(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image`` (H, W, C) at ``uv`` (N, 2) (v up, texel centres at +0.5,
    clamped at the border) -> (N, C) float64 in the image's units."""
    h, w = image.shape[:2]
    x = np.asarray(uv)[:, 0] * w - 0.5
    y = (1.0 - np.asarray(uv)[:, 1]) * h - 0.5
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    img = np.asarray(image, dtype=np.float64)

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return img[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]

    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


def textured_mesh(vertices: np.ndarray, baked: BakedTexture, name: str = "texture") -> trimesh.Trimesh:
    """A trimesh of the atlas' vertices (``vertices`` (V, 3) of the *input* mesh, any frame, e.g.
    world) with ``baked``'s UVs and texture as a glTF PBR material (matte: metallic 0, roughness 1)."""
    atlas = baked.atlas
    image = Image.fromarray(baked.image, mode="RGB")
    # glTF's defaults (metallic 1) would render the baked colours as a dark mirror.
    material = trimesh.visual.material.PBRMaterial(
        name=name, baseColorTexture=image, metallicFactor=0.0, roughnessFactor=1.0
    )
    visual = trimesh.visual.TextureVisuals(uv=atlas.uv, material=material)
    return trimesh.Trimesh(np.asarray(vertices)[atlas.vmapping], atlas.faces, visual=visual, process=False)


def textured_paths(stem: Path) -> dict[str, Path]:
    """The files ``save_textured_mesh`` writes for ``stem`` (a path without suffix): obj, mtl, png, glb."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", stem.name)  # MTL names and map_Kd paths cannot hold spaces
    return {
        "obj": stem.with_name(stem.name + ".obj"),
        "mtl": stem.with_name(stem.name + ".mtl"),
        "png": stem.with_name(f"{safe}_texture.png"),
        "glb": stem.with_name(stem.name + ".glb"),
    }


def save_textured_mesh(mesh: trimesh.Trimesh, stem: str | Path) -> dict[str, Path]:
    """Write ``mesh`` (from ``textured_mesh``) as STEM.obj + STEM.mtl + STEM_texture.png and STEM.glb.

    Each file is written atomically; the texture and material first, the OBJ that names them last,
    so an OBJ on disk always finds its material. Returns the paths by kind ("obj", "mtl", "png", "glb").
    """
    paths = textured_paths(Path(stem))
    texture_name = paths["png"].stem
    image = mesh.visual.material.baseColorTexture
    # The OBJ's material: white diffuse times the texture (trimesh's default Kd 0.4 would darken it).
    simple = trimesh.visual.material.SimpleMaterial(
        image=image, name=texture_name, diffuse=[255, 255, 255, 255], ambient=[255, 255, 255, 255]
    )
    simple.specular = np.array([0, 0, 0, 255], dtype=np.uint8)
    obj_mesh = trimesh.Trimesh(
        mesh.vertices,
        mesh.faces,
        visual=trimesh.visual.TextureVisuals(uv=mesh.visual.uv, material=simple),
        process=False,
    )
    text, files = trimesh.exchange.obj.export_obj(
        obj_mesh, include_normals=False, include_color=False, return_texture=True, mtl_name=paths["mtl"].name
    )
    expected = {paths["png"].name, paths["mtl"].name}
    if set(files) != expected:  # trimesh names the image after the material; a change there must not go unseen
        raise RuntimeError(f"trimesh wrote {sorted(files)} for the OBJ, expected {sorted(expected)}")
    atomic_write_bytes(paths["png"], files[paths["png"].name])
    atomic_write_bytes(paths["mtl"], files[paths["mtl"].name])
    atomic_write(paths["obj"], lambda tmp: tmp.write_text(text))
    atomic_write_bytes(paths["glb"], trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh)))
    return paths
