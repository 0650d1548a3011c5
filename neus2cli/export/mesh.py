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
from skimage import measure

from neus2cli.data.scene import Normalization
from neus2cli.io import atomic_write

SdfFn = Callable[[torch.Tensor], torch.Tensor]
ColorFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def evaluate_sdf_grid(
    sdf_fn: SdfFn, bbox: np.ndarray, resolution: int, device: torch.device, chunk: int = 2**18
) -> np.ndarray:
    """SDF on a ``resolution``^3 lattice spanning ``bbox`` (2, 3) (normalized frame), corners included.

    Returns (R, R, R) float32 indexed [i, j, k] <-> (x, y, z).
    """
    axes = [torch.linspace(float(bbox[0, d]), float(bbox[1, d]), resolution, device=device) for d in range(3)]
    out = np.empty((resolution, resolution, resolution), dtype=np.float32)
    # One x-slab at a time keeps memory bounded at 512^3.
    yz = torch.stack(torch.meshgrid(axes[1], axes[2], indexing="ij"), dim=-1).reshape(-1, 2)
    for i, x in enumerate(axes[0]):
        pts = torch.cat([x.expand(yz.shape[0], 1), yz], dim=-1)
        vals = torch.cat([sdf_fn(pts[s : s + chunk]).float() for s in range(0, pts.shape[0], chunk)])
        out[i] = vals.reshape(resolution, resolution).cpu().numpy()
    return out


def marching_cubes_sdf(sdf: np.ndarray, bbox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero level set of an SDF grid (negative inside) -> vertices (V, 3) in the bbox frame, faces (F, 3).

    The grid border is treated as outside, so the surface is closed (watertight) even
    where the object touches the box. Faces are wound so normals point outward
    (towards increasing SDF).
    """
    res = np.array(sdf.shape)
    padded = np.pad(sdf, 1, mode="constant", constant_values=max(float(np.abs(sdf).max()), 1e-3))
    if not (padded.min() < 0 < padded.max()):
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    verts, faces, _, _ = measure.marching_cubes(padded, level=0.0, gradient_direction="descent")
    spacing = (bbox[1] - bbox[0]) / (res - 1)
    verts = (verts - 1.0) * spacing + bbox[0]
    return verts, faces.astype(np.int64)


def remove_small_components(mesh: trimesh.Trimesh, min_fraction: float) -> trimesh.Trimesh:
    """Drop connected components with fewer than ``min_fraction`` of the largest one's faces."""
    if min_fraction <= 0 or len(mesh.faces) == 0:
        return mesh
    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh
    largest = max(len(p.faces) for p in parts)
    kept = [p for p in parts if len(p.faces) >= min_fraction * largest]
    return trimesh.util.concatenate(kept)


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
) -> trimesh.Trimesh:
    """Extract the SDF's zero level set as a mesh in **world** coordinates.

    Args:
        sdf_fn: (N, 3) normalized points -> (N,) SDF.
        normalization: the scene's world <-> normalized mapping.
        resolution: lattice points per axis.
        bbox: (2, 3) region in the normalized frame (default: the normalization's aabb).
        color_fn: optional (N, 3) normalized surface points -> (N, 3) RGB in [0, 1].
        min_component_fraction: see ``remove_small_components``.
    """
    device = torch.device(device)
    bbox = np.asarray(normalization.aabb if bbox is None else bbox, dtype=np.float64).reshape(2, 3)
    grid = evaluate_sdf_grid(sdf_fn, bbox, resolution, device, chunk)
    verts, faces = marching_cubes_sdf(grid, bbox)
    mesh = trimesh.Trimesh(verts, faces, process=True)
    mesh = remove_small_components(mesh, min_component_fraction)
    if color_fn is not None and len(mesh.vertices):
        pts = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32, device=device)
        rgb = torch.cat([color_fn(pts[s : s + chunk]).detach() for s in range(0, pts.shape[0], chunk)])
        rgba = np.concatenate([np.clip(rgb.cpu().numpy() * 255 + 0.5, 0, 255), np.full((len(pts), 1), 255)], 1)
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
