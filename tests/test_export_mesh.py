"""Marching cubes on analytic SDFs: watertight, outward, world frame, right size."""

from __future__ import annotations

import math

import numpy as np
import torch
import trimesh

from neus2cli.data.scene import Normalization
from neus2cli.export.mesh import extract_mesh, remove_small_components, save_mesh


def _sphere_sdf(center, radius):
    c = torch.tensor(center, dtype=torch.float32)

    def sdf(x: torch.Tensor) -> torch.Tensor:
        return (x - c).norm(dim=-1) - radius

    return sdf


def test_sphere_mesh_is_watertight_outward_and_in_world_units():
    norm = Normalization(scale=0.25, offset=np.array([0.5, 0.4, 0.5]))
    # Normalized sphere at (0.5, 0.5, 0.5) radius 0.3 -> world centre ((0.5,0.5,0.5) - offset)/scale, radius 1.2.
    mesh = extract_mesh(_sphere_sdf([0.5, 0.5, 0.5], 0.3), norm, resolution=64)
    assert mesh.is_watertight
    assert mesh.volume > 0  # outward-facing triangles give positive signed volume
    centre = (np.array([0.5, 0.5, 0.5]) - norm.offset) / norm.scale
    r = np.linalg.norm(mesh.vertices - centre, axis=1)
    h = 1.0 / 63 / norm.scale  # lattice spacing in world units
    # Marching cubes vertices lie on lattice edges, interpolated linearly: error well under one cell.
    assert np.all(np.abs(r - 1.2) < 0.5 * h)
    assert math.isclose(mesh.volume, 4 / 3 * math.pi * 1.2**3, rel_tol=0.02)


def test_object_touching_the_box_is_closed():
    mesh = extract_mesh(_sphere_sdf([0.5, 0.5, 0.5], 0.6), Normalization(scale=1.0, offset=np.zeros(3)), resolution=32)
    assert mesh.is_watertight


def test_colour_function_paints_vertices(tmp_path):
    def color(x):
        return x.clamp(0, 1)

    mesh = extract_mesh(
        _sphere_sdf([0.5, 0.5, 0.5], 0.25),
        Normalization(scale=1.0, offset=np.zeros(3)),
        resolution=32,
        color_fn=color,
    )
    colors = mesh.visual.vertex_colors[:, :3].astype(float) / 255
    # The colour function was evaluated at the normalized vertex positions (== world here).
    assert np.allclose(colors, np.clip(mesh.vertices, 0, 1), atol=1 / 255 + 1e-6)
    path = save_mesh(mesh, tmp_path / "m.ply")
    again = trimesh.load(path)
    assert len(again.vertices) == len(mesh.vertices)


def test_remove_small_components():
    big = trimesh.creation.icosphere(subdivisions=3)
    small = trimesh.creation.icosphere(subdivisions=1, radius=0.1)
    small.apply_translation([3, 0, 0])
    both = trimesh.util.concatenate([big, small])
    kept = remove_small_components(both, 0.5)
    assert len(kept.faces) == len(big.faces)


def test_empty_field_gives_empty_mesh():
    mesh = extract_mesh(_sphere_sdf([5.0, 5.0, 5.0], 0.1), Normalization(), resolution=16)
    assert len(mesh.faces) == 0
