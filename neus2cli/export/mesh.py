"""Mesh extraction: SDF on a grid -> marching cubes at 0 -> world-frame, outward-facing mesh.

The SDF is evaluated in the **normalized** frame; vertices are mapped back to the
scene's **world** frame with ``Normalization.normalized_to_world``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage import measure

from neus2cli.data.scene import Normalization
from neus2cli.io import atomic_write

SdfFn = Callable[[torch.Tensor], torch.Tensor]
ColorFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def evaluate_sdf_grid(
    sdf_fn: SdfFn,
    bbox: np.ndarray,
    resolution: int,
    device: torch.device,
    chunk: int = 2**21,
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """SDF on a ``resolution``^3 lattice spanning ``bbox`` (2, 3) (normalized frame), corners included.

    ``sdf_fn`` gets at most ``chunk`` points per call; ``on_progress(done, total)`` is called after each
    chunk with the x-slabs done.
    Returns (R, R, R) float32 indexed [i, j, k] <-> (x, y, z).
    """
    r = resolution
    axes = [torch.linspace(float(bbox[0, d]), float(bbox[1, d]), r, device=device) for d in range(3)]
    out = np.empty((r, r, r), dtype=np.float32)
    yz = torch.stack(torch.meshgrid(axes[1], axes[2], indexing="ij"), dim=-1).reshape(-1, 2)
    # As many whole x-slabs per step as fit in one chunk: few large sdf_fn calls and few
    # device -> host copies (each one syncs the GPU), with memory bounded by the chunk, not R^3.
    slabs = max(1, chunk // len(yz))
    for i in range(0, r, slabs):
        x = axes[0][i : i + slabs]
        pts = torch.cat([x.repeat_interleave(len(yz))[:, None], yz.repeat(len(x), 1)], dim=-1)
        vals = torch.cat([sdf_fn(pts[s : s + chunk]).float() for s in range(0, len(pts), chunk)])
        torch.from_numpy(out[i : i + len(x)]).copy_(vals.reshape(len(x), r, r))  # straight into `out`
        if on_progress is not None:
            on_progress(i + len(x), r)
    return out


def _straddle_mask(vol: np.ndarray) -> np.ndarray:
    """skimage marching-cubes ``mask`` for ``vol`` (X, Y, Z): the cells with corners on both sides of 0.

    skimage visits the cell with lower corner (i, j, k) only if ``mask[i + 1, j + 1, k + 1]``,
    and classifies a corner as outside iff ``value > 0``. All other cells yield no triangle, so
    skipping them leaves the output (vertices, faces, their order) unchanged.
    """
    # Outside corners per cell (0..8), summed one axis at a time (uint8: cheap and enough).
    n = (vol > 0).view(np.uint8)
    n = n[1:] + n[:-1]
    n = n[:, 1:] + n[:, :-1]
    n = n[:, :, 1:] + n[:, :, :-1]
    mask = np.zeros(vol.shape, dtype=bool)
    np.not_equal(n & 7, 0, out=mask[1:, 1:, 1:])  # 1..7 outside corners (0 and 8 give 0)
    return mask


def marching_cubes_sdf(sdf: np.ndarray, bbox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero level set of an SDF grid (negative inside) -> vertices (V, 3) in the bbox frame, faces (F, 3).

    The grid border is treated as outside, so the surface is closed (watertight) even
    where the object touches the box. Faces are wound so normals point outward
    (towards increasing SDF).
    """
    sdf = np.asarray(sdf, dtype=np.float32)  # what skimage works on: the tests below must see the same values
    res = np.array(sdf.shape)
    # Per-axis minima over the other two axes (two passes over the grid); inside is sdf <= 0.
    min_x = sdf.reshape(res[0], -1).min(axis=1)
    min_yz = sdf.min(axis=0)
    profiles = [min_x, min_yz.min(axis=1), min_yz.min(axis=0)]
    lowest = float(min_x.min())
    if not lowest < 0:  # nothing inside (a NaN also lands here)
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    # Only cells with an inside corner carry triangles, so marching cubes runs on the box around
    # the inside points grown by one point per side, not on the whole grid. The grid border is
    # outside: where the box leaves the grid, its extra point is a padding of value max |sdf|
    # (any positive value closes the surface; this one fixes where the closing cap lies).
    crop, widths, origin = [], [], []
    for d in range(3):
        inside = np.flatnonzero(profiles[d] <= 0)
        first, last = int(inside[0]), int(inside[-1])
        crop.append(slice(max(first - 1, 0), min(last + 2, res[d])))
        widths.append((int(first == 0), int(last == res[d] - 1)))
        origin.append(first - 1)  # grid index of the box's first point (-1: the padding)
    vol = sdf[tuple(crop)]
    if np.any(widths):
        vol = np.pad(vol, widths, mode="constant", constant_values=max(-lowest, float(sdf.max()), 1e-3))
    verts, faces, _, _ = measure.marching_cubes(vol, level=0.0, gradient_direction="descent", mask=_straddle_mask(vol))
    spacing = (bbox[1] - bbox[0]) / (res - 1)
    verts = (verts + np.array(origin)) * spacing + bbox[0]
    return verts, faces.astype(np.int64)


def _merged_mesh(verts: np.ndarray, faces: np.ndarray) -> trimesh.Trimesh:
    """``trimesh.Trimesh(verts, faces, process=True)`` for a mesh whose vertices are all used, faster.

    Same result (vertices, faces, order): vertices whose coordinates round alike to
    ``tol.merge`` are fused into the first of them. trimesh sorts those (V, 3) integer rows as
    24-byte blobs; here each row is hashed to one uint64 first, which sorts several times faster.
    """
    if not np.isfinite(verts).all():  # process=True also drops non-finite vertices
        return trimesh.Trimesh(verts, faces, process=True)
    key = np.round(verts * 10 ** trimesh.util.decimal_to_digits(trimesh.tol.merge)).astype(np.int64)
    mix = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)
    row_hash = np.bitwise_xor.reduce(key.view(np.uint64) * mix, axis=1)  # wrapping multiply
    _, first, group = np.unique(row_hash, return_index=True, return_inverse=True)
    target = first[group.reshape(-1)]  # each vertex -> first vertex with the same hash
    if not np.array_equal(key[target], key):  # two different rows share a hash (rare)
        return trimesh.Trimesh(verts, faces, process=True)
    kept = target == np.arange(len(verts))
    new_index = np.cumsum(kept) - 1
    return trimesh.Trimesh(verts[kept], new_index[target[faces]], process=False)


def remove_small_components(mesh: trimesh.Trimesh, min_fraction: float) -> trimesh.Trimesh:
    """Drop connected components with fewer than ``min_fraction`` of the largest one's faces.

    Faces are connected when they share an edge used by exactly two faces (trimesh's
    ``face_adjacency``, so the components are those of ``mesh.split``). Vertices no kept face
    uses are dropped.
    """
    faces = np.asarray(mesh.faces)
    if min_fraction <= 0 or len(faces) == 0:
        return mesh
    # Undirected edges as int64 keys (3F,): edge e belongs to face e // 3.
    nxt = faces[:, [1, 2, 0]]
    key = (np.minimum(faces, nxt) * len(mesh.vertices) + np.maximum(faces, nxt)).ravel()
    order = np.argsort(key)
    key = key[order]
    # Runs of exactly two equal keys: the edge's two faces are adjacent.
    same = key[1:] == key[:-1]
    pair = same & np.r_[True, ~same[:-1]] & np.r_[~same[1:], True]
    i = np.flatnonzero(pair)
    a, b = order[i] // 3, order[i + 1] // 3
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(len(faces), len(faces)))
    n_comp, label = connected_components(graph, directed=False)
    if n_comp <= 1:
        return mesh
    size = np.bincount(label)
    keep = (size >= min_fraction * size.max())[label]
    used = np.zeros(len(mesh.vertices), dtype=bool)
    used[faces[keep]] = True
    new_index = np.cumsum(used) - 1
    visual = mesh.visual.face_subset(keep)  # vertex/face colours follow the kept faces
    return trimesh.Trimesh(np.asarray(mesh.vertices)[used], new_index[faces[keep]], visual=visual, process=False)


@torch.no_grad()
def evaluate_colors(color_fn: ColorFn, points: np.ndarray, device: torch.device, chunk: int = 2**18) -> np.ndarray:
    """``color_fn`` on (N, 3) ``points`` (the frame it expects), ``chunk`` points per call -> (N, 3) float32 numpy.

    What paints vertex colours (``extract_mesh``) and texels (``texture.bake_texture``) alike.
    """
    pts = torch.as_tensor(np.asarray(points), dtype=torch.float32, device=device)
    if len(pts) == 0:
        return np.zeros((0, 3), dtype=np.float32)
    rgb = torch.cat([color_fn(pts[s : s + chunk]).detach() for s in range(0, pts.shape[0], chunk)])
    return rgb.float().cpu().numpy()


def extract_mesh(
    sdf_fn: SdfFn,
    normalization: Normalization,
    *,
    resolution: int = 512,
    bbox: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    color_fn: ColorFn | None = None,
    min_component_fraction: float = 0.0,
    chunk: int = 2**18,
    on_progress: Callable[[int, int], None] | None = None,
) -> trimesh.Trimesh:
    """Extract the SDF's zero level set as a mesh in **world** coordinates.

    Args:
        sdf_fn: (N, 3) normalized points -> (N,) SDF.
        normalization: the scene's world <-> normalized mapping.
        resolution: lattice points per axis.
        bbox: (2, 3) region in the normalized frame (default: the normalization's aabb).
        color_fn: optional (N, 3) normalized surface points -> (N, 3) RGB in [0, 1].
        min_component_fraction: see ``remove_small_components``.
        chunk: points per ``color_fn`` call; the SDF grid is evaluated ``8 * chunk`` points at a time.
        on_progress: ``(done, total)`` x-slabs of the SDF grid, after each of its chunks.
    """
    device = torch.device(device)
    bbox = np.asarray(normalization.aabb if bbox is None else bbox, dtype=np.float64).reshape(2, 3)
    # The SDF pass needs no gradients, so it affords larger batches than the colour pass.
    grid = evaluate_sdf_grid(sdf_fn, bbox, resolution, device, 8 * chunk, on_progress)
    verts, faces = marching_cubes_sdf(grid, bbox)
    mesh = _merged_mesh(verts, faces)
    mesh = remove_small_components(mesh, min_component_fraction)
    if color_fn is not None and len(mesh.vertices):
        rgb = evaluate_colors(color_fn, np.asarray(mesh.vertices), device, chunk)
        rgba = np.concatenate([np.clip(rgb * 255 + 0.5, 0, 255), np.full((len(rgb), 1), 255)], 1)
        mesh.visual.vertex_colors = rgba.astype(np.uint8)
    mesh.vertices = normalization.normalized_to_world(np.asarray(mesh.vertices))
    return mesh


def save_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write ``mesh`` atomically; the format follows the suffix (.ply or .obj)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("ply", "obj"):
        raise ValueError(f"mesh path must end in .ply or .obj, got {path}")
    atomic_write(path, lambda tmp: mesh.export(tmp, file_type=fmt))
    return path
