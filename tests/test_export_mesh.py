"""Marching cubes on analytic SDFs: watertight, outward, world frame, right size."""

from __future__ import annotations

import math

import numpy as np
import torch
import trimesh
from skimage import measure

from neus2cli.data.scene import Normalization
from neus2cli.export.mesh import (
    _merged_mesh,
    _straddle_mask,
    evaluate_sdf_grid,
    extract_mesh,
    marching_cubes_sdf,
    remove_small_components,
    save_mesh,
)


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


# --- Fast paths agree with the straightforward versions --------------------------------------------------------


def _bumpy_sphere_grid(res: int) -> np.ndarray:
    """(res,)*3 float32 SDF-like grid on the unit cube: a bumpy sphere of radius 0.3."""
    x, y, z = np.meshgrid(*[np.linspace(-0.5, 0.5, res)] * 3, indexing="ij")
    return (np.sqrt(x * x + y * y + z * z) - 0.3 + 0.02 * np.sin(20 * x) * np.sin(20 * y) * np.sin(20 * z)).astype(
        np.float32
    )


def _noise_grid(shape, seed: int, offset: float, quantize: bool = False) -> np.ndarray:
    """Random field: many small components, ambiguous cells, the border touched; ``quantize`` adds exact zeros."""
    g = np.random.default_rng(seed).normal(size=shape) + offset
    return (np.round(g) if quantize else g).astype(np.float32)


def _full_grid_marching_cubes(sdf: np.ndarray, bbox: np.ndarray):
    """Reference: pad the whole grid with max |sdf| and march every cell."""
    padded = np.pad(sdf, 1, mode="constant", constant_values=max(float(np.abs(sdf).max()), 1e-3))
    verts, faces, _, _ = measure.marching_cubes(padded, level=0.0, gradient_direction="descent")
    return (verts - 1.0) * (bbox[1] - bbox[0]) / (np.array(sdf.shape) - 1) + bbox[0], faces


def _triangles(mesh: trimesh.Trimesh) -> np.ndarray:
    """(F, 9) triangle corner coordinates (winding kept), rows sorted: compares meshes up to vertex/face order."""
    t = np.asarray(mesh.vertices)[np.asarray(mesh.faces)].reshape(len(mesh.faces), 9)
    return t[np.lexsort(t.T[::-1])]


def test_masked_marching_cubes_equals_unmasked():
    for vol in (
        np.pad(_bumpy_sphere_grid(64), 1, constant_values=1.0),
        _noise_grid((24, 20, 28), seed=0, offset=0.3),
        _noise_grid((20, 20, 20), seed=1, offset=0.5, quantize=True),
    ):
        full = measure.marching_cubes(vol, level=0.0, gradient_direction="descent")
        masked = measure.marching_cubes(vol, level=0.0, gradient_direction="descent", mask=_straddle_mask(vol))
        assert np.array_equal(full[1], masked[1])  # same triangles, same order
        assert np.array_equal(full[0], masked[0])


def test_marching_cubes_on_the_cropped_grid_matches_the_full_grid():
    sphere = _bumpy_sphere_grid(64)
    cases = [
        (sphere, np.array([[0.0] * 3, [1.0] * 3])),
        (sphere - 0.25, np.array([[-1.0, -0.5, 0.2], [1.0, 1.5, 0.9]])),  # touches the box: the crop meets the padding
        (sphere[5:40, :50], np.array([[0.0] * 3, [1.0] * 3])),  # cut open by the box, non-cubic
        (_noise_grid((24, 20, 28), seed=0, offset=0.3), np.array([[0.0] * 3, [2.0] * 3])),
    ]
    for sdf, bbox in cases:
        verts, faces = marching_cubes_sdf(sdf, bbox)
        ref_verts, ref_faces = _full_grid_marching_cubes(sdf, bbox)
        assert np.array_equal(faces, ref_faces)  # same triangles, same order
        # Vertices agree up to float32 rounding (skimage returns float32 coordinates in its own grid frame).
        spacing = (bbox[1] - bbox[0]) / (np.array(sdf.shape) - 1)
        assert np.allclose(verts, ref_verts, rtol=0, atol=1e-5 * spacing.max())


def test_merged_mesh_equals_trimesh_processing():
    # Exact zeros give many coincident vertices for process=True to fuse.
    for sdf in (_noise_grid((20, 24, 22), seed=2, offset=0.5, quantize=True), _bumpy_sphere_grid(48)):
        verts, faces = marching_cubes_sdf(sdf, np.array([[-1.0] * 3, [1.0] * 3]))
        ref = trimesh.Trimesh(verts, faces, process=True)
        mesh = _merged_mesh(verts, faces)
        assert np.array_equal(mesh.vertices, ref.vertices)
        assert np.array_equal(mesh.faces, ref.faces)


def _split_reference(mesh: trimesh.Trimesh, min_fraction: float) -> trimesh.Trimesh:
    """The trimesh ``split`` formulation of ``remove_small_components``."""
    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh
    largest = max(len(p.faces) for p in parts)
    return trimesh.util.concatenate([p for p in parts if len(p.faces) >= min_fraction * largest])


def test_remove_small_components_matches_trimesh_split():
    spheres = []
    for i, (subdivisions, radius) in enumerate([(3, 1.0), (2, 0.3), (1, 0.2), (1, 0.1)]):
        s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
        spheres.append(s.apply_translation([3.0 * i, 0, 0]))
    verts, faces = marching_cubes_sdf(_noise_grid((16, 16, 16), seed=3, offset=0.8), np.array([[0.0] * 3, [1.0] * 3]))

    def rgba(points):
        return np.concatenate([np.abs(points) * 50 % 255, np.full((len(points), 1), 255)], 1).astype(np.uint8)

    for mesh in (trimesh.util.concatenate(spheres), trimesh.Trimesh(verts, faces, process=True)):
        mesh.visual.vertex_colors = rgba(np.asarray(mesh.vertices))
        for fraction in (1e-6, 0.05, 0.5, 1.0):
            kept = remove_small_components(mesh, fraction)
            assert np.array_equal(_triangles(kept), _triangles(_split_reference(mesh, fraction)))
            assert len(kept.vertices) == len(np.unique(kept.faces))  # no unused vertices
            # Colours follow their vertices.
            assert np.array_equal(kept.visual.vertex_colors, rgba(np.asarray(kept.vertices)))


def test_evaluate_sdf_grid_chunking():
    sizes = []

    def sdf(x):
        sizes.append(len(x))
        return (x - torch.tensor([0.5, 0.4, 0.3])).norm(dim=-1)

    bbox = np.array([[0.0, -1.0, 0.5], [1.0, 1.0, 2.0]])
    axes = [np.linspace(bbox[0, d], bbox[1, d], 17, dtype=np.float32) for d in range(3)]
    expected = sdf(torch.as_tensor(np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3))).reshape(17, 17, 17)
    for chunk in (100, 17 * 17, 3 * 17 * 17 + 5, 2**21):  # part of a slab, one slab, several, everything
        sizes.clear()
        grid = evaluate_sdf_grid(sdf, bbox, 17, torch.device("cpu"), chunk)
        assert max(sizes) <= chunk
        assert np.allclose(grid, expected.numpy(), atol=1e-6)
