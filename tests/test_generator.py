"""Synthetic scene generator (data_tools): renderer, camera layouts, static and dynamic scenes.

The scenes are read back here with plain json/imageio (not the neus2cli loaders), so these
tests pin the files themselves: cameras, masks and ground truth must agree geometrically.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh
from PIL import Image

from data_tools import demo_scene_path
from data_tools.camera_paths import (
    CameraRig,
    fibonacci_directions,
    intrinsics_from_fov,
    look_at,
    ring_cameras,
    sphere_cameras,
)
from data_tools.dynamic import Deformation, deform_points, generate_dynamic_sequence
from data_tools.generate import GL_FROM_CV, generate_static_scene
from data_tools.render_mesh import MeshRenderer, Shading, embree_available, load_mesh
from neus2cli.errors import UserError
from tests.conftest import REPO_ROOT, shared_path

SIZE = 64


# ---------------------------------------------------------------- helpers


def textured_blob() -> trimesh.Trimesh:
    """An asymmetric closed blob (squashed icosphere with a bump) with a checker texture via UVs."""
    m = trimesh.creation.icosphere(subdivisions=3)
    v = m.vertices * np.array([1.0, 0.7, 0.5])
    v[:, 0] += 0.3 * np.exp(-8 * ((v[:, 1] - 0.3) ** 2 + v[:, 2] ** 2)) * (v[:, 0] > 0)
    d = m.vertices
    uv = np.stack([np.arctan2(d[:, 2], d[:, 0]) / (2 * np.pi) + 0.5, np.arcsin(d[:, 1]) / np.pi + 0.5], axis=1)
    checker = (np.indices((64, 64)).sum(axis=0) // 8 % 2).astype(bool)
    tex = np.where(checker[..., None], [230, 60, 40], [40, 90, 220]).astype(np.uint8)
    return trimesh.Trimesh(
        vertices=v, faces=m.faces, visual=trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(tex))
    )


def read_cameras(json_path: Path) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(K (3, 3), OpenCV c2w (4, 4), file_path) per frame, from either JSON convention."""
    doc = json.loads(json_path.read_text())
    out = []
    for f in doc["frames"]:
        tm = np.asarray(f["transform_matrix"], dtype=np.float64)
        if "intrinsic_matrix" in f:
            assert doc["from_na"] is True
            K, c2w = np.asarray(f["intrinsic_matrix"])[:3, :3], tm
        else:
            fx = 0.5 * doc["w"] / math.tan(doc["camera_angle_x"] / 2)
            K = np.array([[fx, 0, doc["cx"]], [0, fx, doc["cy"]], [0, 0, 1.0]])
            c2w = tm @ GL_FROM_CV
        out.append((K, c2w, f["file_path"]))
    return out


def project(K: np.ndarray, c2w: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points -> continuous pixel coordinates (u, v) (pixel (i, j) covers [j, j+1) x [i, i+1)),
    and camera depth."""
    w2c = np.linalg.inv(c2w)
    pc = points @ w2c[:3, :3].T + w2c[:3, 3]
    uvw = pc @ K.T
    return uvw[:, :2] / uvw[:, 2:], pc[:, 2]


def check_silhouette(alpha: np.ndarray, K: np.ndarray, c2w: np.ndarray, mesh: trimesh.Trimesh) -> None:
    """Every vertex of a closed mesh projects inside the object's silhouette, and the extreme
    vertices are its extremes."""
    uv, z = project(K, c2w, mesh.vertices)
    assert (z > 0).all()
    h, w = alpha.shape
    assert uv.min() >= 0 and uv[:, 0].max() < w and uv[:, 1].max() < h, "object must be fully in view"
    cols = np.floor(uv[:, 0]).astype(int)
    rows = np.floor(uv[:, 1]).astype(int)
    inside = alpha[rows, cols] > 0
    # A vertex on the outline (the surface is grazing there) can land in a pixel whose covered
    # part misses all 2x2 subsamples (they sit 0.25 px from the pixel edges). So: every vertex
    # within one pixel of the mask, and every vertex whose surface faces the camera
    # (|cos| > 0.3, i.e. away from the outline) inside it.
    view = mesh.vertices - c2w[:3, 3]
    view /= np.linalg.norm(view, axis=1, keepdims=True)
    facing = np.abs(np.sum(view * mesh.vertex_normals, axis=1)) > 0.3
    # Sharp tips (spot's horns) have averaged normals facing the camera while sitting on the
    # outline: allow 1 % of the facing vertices (3 of ~2900 on spot's worst view).
    assert inside[facing].mean() >= 0.99, f"{(~inside[facing]).sum()} camera-facing vertices outside"
    padded = np.pad(alpha > 0, 1)
    near = np.zeros_like(padded)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            near |= np.roll(np.roll(padded, dr, 0), dc, 1)
    assert near[rows + 1, cols + 1].all()
    # Mask bbox in continuous pixel coordinates: covered pixels span [first, last + 1). The
    # extreme vertex lies in the extreme covered pixel, up to one pixel for subsample misses.
    rr, cc = np.nonzero(alpha > 0)
    assert abs(cc.min() - uv[:, 0].min()) <= 1.0
    assert abs(cc.max() + 1 - uv[:, 0].max()) <= 1.0
    assert abs(rr.min() - uv[:, 1].min()) <= 1.0
    assert abs(rr.max() + 1 - uv[:, 1].max()) <= 1.0
    # Independent check of the whole silhouette: rasterize the projected triangles at the same
    # 2x2 subsample positions; the per-pixel hit counts must equal alpha * 4 / 255. Only a
    # subsample within float32 rounding of a triangle edge may flip (Embree works in float32).
    counts = raster_counts(K, c2w, mesh, w, h, 2)
    rendered = np.round(alpha.astype(np.float64) * 4 / 255).astype(int)
    assert np.abs(counts - rendered).sum() <= max(2, 0.001 * rendered.sum())


def raster_counts(K: np.ndarray, c2w: np.ndarray, mesh: trimesh.Trimesh, width: int, height: int, s: int):
    """(H, W) number of the s x s subsamples of each pixel (at u + (j + 0.5) / s) covered by a
    projected triangle: point-in-triangle tests in image space, no ray casting."""
    uv, _ = project(K, c2w, mesh.vertices)
    cover = np.zeros((height * s, width * s), dtype=bool)
    for t in uv[mesh.faces]:
        lo = np.maximum(np.floor(t.min(axis=0) * s - 0.5).astype(int), 0)
        hi = np.minimum(np.ceil(t.max(axis=0) * s - 0.5).astype(int), [width * s - 1, height * s - 1])
        if (hi < lo).any():
            continue
        x, y = np.meshgrid((np.arange(lo[0], hi[0] + 1) + 0.5) / s, (np.arange(lo[1], hi[1] + 1) + 0.5) / s)
        edge = np.stack(
            [(t[(i + 1) % 3, 0] - t[i, 0]) * (y - t[i, 1]) - (t[(i + 1) % 3, 1] - t[i, 1]) * (x - t[i, 0])
             for i in range(3)]
        )  # fmt: skip
        cover[lo[1] : hi[1] + 1, lo[0] : hi[0] + 1] |= (edge >= 0).all(axis=0) | (edge <= 0).all(axis=0)
    return cover.reshape(height, s, width, s).sum(axis=(1, 3))


def read_alpha(path: Path) -> np.ndarray:
    img = iio.imread(path)
    assert img.ndim == 3 and img.shape[2] == 4 and img.dtype == np.uint8
    return img[..., 3]


def all_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def blob_scenes(tmp_path_factory) -> dict[str, Path]:
    """The same textured blob, seed 0, in both conventions; plus a rerun and another seed."""
    root = tmp_path_factory.mktemp("static")
    blob = textured_blob()
    kw = dict(n_views=4, n_test=2, width=SIZE, height=SIZE, progress=False)
    return {
        "neus2": generate_static_scene(blob, root / "neus2", convention="neus2", seed=0, **kw),
        "rerun": generate_static_scene(blob, root / "rerun", convention="neus2", seed=0, **kw),
        "blender": generate_static_scene(blob, root / "blender", convention="blender", seed=0, **kw),
        "seed1": generate_static_scene(blob, root / "seed1", convention="neus2", seed=1, **kw),
    }


@pytest.fixture(scope="module")
def dynamic_seq(tmp_path_factory) -> Path:
    """A plain (procedurally coloured) capsule, elongated along z, rotating, moving and bending."""
    capsule = trimesh.creation.capsule(height=1.6, radius=0.35, count=[24, 24])
    return generate_dynamic_sequence(
        capsule,
        tmp_path_factory.mktemp("dyn") / "seq",
        n_frames=3,
        n_views=3,
        n_test_views=1,
        width=SIZE,
        height=SIZE,
        rotation_deg_per_frame=20.0,
        translation_per_frame=(0.1, 0.05, 0.0),
        deformation="bend",
        deformation_deg_per_frame=15.0,
        progress=False,
    )


# ---------------------------------------------------------------- renderer


def test_embree_is_used_when_available():
    # With embreex (the dev extra) Embree casts the rays; without it the pure-numpy intersector does.
    expected = "embree" if embree_available() else "numpy"
    assert MeshRenderer(textured_blob()).backend == expected


def test_numpy_fallback_matches_embree():
    """The pure-numpy intersector (used without embreex) gives the same images."""
    pytest.importorskip("embreex")
    blob = textured_blob()
    K = intrinsics_from_fov(SIZE, SIZE, 50.0)
    c2w = look_at(np.array([1.0, 1.5, 2.5]), np.zeros(3), np.array([0.0, 1.0, 0.0]))
    a = MeshRenderer(blob, backend="embree").render(K, c2w, SIZE, SIZE, supersample=2)
    b = MeshRenderer(blob, backend="numpy").render(K, c2w, SIZE, SIZE, supersample=2)
    # Only a subsample within float32 rounding of an edge may pick the neighbouring triangle
    # (same colour to 1/255 there, or a one-subsample alpha step): allow 0.5 % of pixels.
    differ = np.abs(a.rgba.astype(int) - b.rgba.astype(int)).max(axis=2) > 1
    assert differ.mean() <= 0.005


def test_texture_orientation_on_a_quad():
    """A quad facing the camera, UV (0,0) at its bottom-left (OBJ convention: v up). Texture image
    quadrants: top-left red, top-right green, bottom-left blue, bottom-right white. The rendered
    quadrants must match (no v flip error, no u mirror)."""
    verts = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=float)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    tex = np.zeros((32, 32, 3), np.uint8)
    tex[:16, :16], tex[:16, 16:], tex[16:, :16], tex[16:, 16:] = [255, 0, 0], [0, 255, 0], [0, 0, 255], 255
    quad = trimesh.Trimesh(verts, faces, visual=trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(tex)))
    K = intrinsics_from_fov(SIZE, SIZE, 60.0)
    c2w = look_at(np.array([0.0, 0.0, 4.0]), np.zeros(3), np.array([0.0, 1.0, 0.0]))
    out = MeshRenderer(quad, ambient=1.0, diffuse=0.0).render(K, c2w, SIZE, SIZE)
    q = SIZE // 2
    # Sample a pixel well inside each quadrant of the quad's image (which spans about 28 px here).
    at = {name: out.rgba[q + dv, q + du, :3] for name, (du, dv) in
          {"tl": (-6, -6), "tr": (6, -6), "bl": (-6, 6), "br": (6, 6)}.items()}  # fmt: skip
    np.testing.assert_array_equal(at["tl"], [255, 0, 0])
    np.testing.assert_array_equal(at["tr"], [0, 255, 0])
    np.testing.assert_array_equal(at["bl"], [0, 0, 255])
    np.testing.assert_array_equal(at["br"], [255, 255, 255])
    assert out.rgba[0, 0, 3] == 0 and out.rgba[q, q, 3] == 255


def test_sphere_silhouette_closed_form():
    """A unit sphere at distance d seen by a centred camera: its image is a disc of radius
    f * tan(asin(1/d)) centred at (W/2, H/2) (pixel centres at +0.5), and depth at the image
    centre is d - 1."""
    sphere = trimesh.creation.icosphere(subdivisions=5)
    d = 3.0
    K = intrinsics_from_fov(SIZE, SIZE, 50.0)
    c2w = look_at(np.array([0.0, 0.0, -d]), np.zeros(3), np.array([0.0, 1.0, 0.0]))
    out = MeshRenderer(sphere).render(K, c2w, SIZE, SIZE, supersample=4)
    a = out.alpha.astype(np.float64)
    vv, uu = np.indices(a.shape) + 0.5
    # Polygonal sphere + 4x4 coverage sampling: centroid symmetric to well under 0.05 px;
    # a half-pixel centre error would show as 0.5 px.
    assert abs((a * uu).sum() / a.sum() - SIZE / 2) < 0.05
    assert abs((a * vv).sum() / a.sum() - SIZE / 2) < 0.05
    rho = K[0, 0] * math.tan(math.asin(1 / d))
    # Area within 2 %: the 20k-face icosphere is inscribed (about 0.1 % smaller), the 4x4
    # coverage estimate of a ~20 px disc is good to well under 1 %.
    assert a.sum() == pytest.approx(math.pi * rho**2, rel=0.02)
    c = SIZE // 2
    # Depth along the optical axis at the pixel next to the centre: d - 1 to within the
    # sphere's curvature over half a pixel plus faceting (< 1e-3 relative).
    assert out.depth[c, c] == pytest.approx(d - 1, rel=1e-3)
    assert np.isinf(out.depth[0, 0]) and out.alpha[0, 0] == 0


def test_plain_mesh_gets_procedural_colour_and_render_is_fast():
    import time

    sphere = trimesh.creation.icosphere(subdivisions=3)
    K = intrinsics_from_fov(SIZE, SIZE, 50.0)
    c2w = look_at(np.array([0.0, 0.0, 3.0]), np.zeros(3), np.array([0.0, 1.0, 0.0]))
    renderer = MeshRenderer(sphere, ambient=1.0, diffuse=0.0)
    t0 = time.perf_counter()
    out = renderer.render(K, c2w, SIZE, SIZE, supersample=2)
    # Budget from the brief: a 64x64 view in well under a second (about 10 ms with Embree).
    assert time.perf_counter() - t0 < 1.0
    rgb = out.rgba[out.rgba[..., 3] == 255, :3].astype(float)
    # Unlit albedo varies over the surface (colour bands), not a flat colour.
    assert rgb.std(axis=0).min() > 10


# ---------------------------------------------------------------- camera layouts


def test_look_at_is_opencv_and_upright():
    eye, up = np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, 0.0])
    c2w = look_at(eye, np.zeros(3), up)
    R = c2w[:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(R[:, 2], -eye / np.linalg.norm(eye), atol=1e-12)  # z looks at the target
    K = intrinsics_from_fov(SIZE, SIZE, 40.0)
    uv, _ = project(K, c2w, np.array([[0.0, 0.0, 0.0], [0.0, 0.5, 0.0]]))
    np.testing.assert_allclose(uv[0], [SIZE / 2, SIZE / 2], atol=1e-9)  # target at the image centre
    assert uv[1, 1] < uv[0, 1]  # a point above the target appears above it (image y points down)


def test_layouts():
    up = np.array([0.0, 0.0, 1.0])
    d = fibonacci_directions(50, up, min_elevation_deg=0.0)
    assert d.shape == (50, 3) and (d @ up > 0).all()
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    # Equal-area lattice: the mean direction of a full sphere is close to 0 (|mean| ~ 1/n).
    assert np.linalg.norm(fibonacci_directions(200).mean(axis=0)) < 0.02
    cams = ring_cameras(8, 3.0, SIZE, SIZE, 40.0, elevation_deg=30.0, center=(1, 2, 3), up=up)
    centres = np.stack([c.c2w[:3, 3] for c in cams]) - np.array([1, 2, 3])
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 3.0)
    np.testing.assert_allclose(centres @ up, 3.0 * math.sin(math.radians(30.0)))
    a = sphere_cameras(5, 3.0, SIZE, SIZE, 40.0, jitter_deg=2.0, seed=3)
    b = sphere_cameras(5, 3.0, SIZE, SIZE, 40.0, jitter_deg=2.0, seed=3)
    c = sphere_cameras(5, 3.0, SIZE, SIZE, 40.0, jitter_deg=2.0, seed=4)
    assert all(np.array_equal(x.c2w, y.c2w) for x, y in zip(a, b, strict=True))
    assert not np.allclose(a[0].c2w, c[0].c2w)
    with pytest.raises(ValueError, match="min_elevation_deg"):
        fibonacci_directions(4, min_elevation_deg=10.0, max_elevation_deg=0.0)


def test_rig_and_shading_validate_and_record_settings():
    rig = CameraRig(layout="ring", distance=3, fov_x_deg=40, up=[0, 0, 2], ring_elevation_deg=10)
    assert rig.up == (0.0, 0.0, 2.0) and isinstance(rig.distance, float)  # kept as given, not normalized
    assert list(rig.to_dict(12.5)) == [
        "distance_radii", "up", "min_elevation_deg", "max_elevation_deg", "ring_elevation_deg",
        "azimuth_offset_deg", "jitter_deg",
    ]  # fmt: skip
    assert list(rig.to_dict(12.5, fov_x_deg=40.0))[:2] == ["distance_radii", "fov_x_deg"]
    assert Shading().to_dict() == {"supersample": 2, "light_dir": [0.35, 0.8, 0.5], "ambient": 0.35, "diffuse": 0.65}
    for kwargs, match in (
        ({"layout": "grid"}, "layout"),
        ({"distance": 1.0}, "distance"),
        ({"fov_x_deg": 180.0}, "fov_x_deg"),
        ({"up": (0, 0, 0)}, "up"),
        ({"min_elevation_deg": 10.0, "max_elevation_deg": 0.0}, "min_elevation_deg"),
        ({"ring_elevation_deg": 90.0}, "ring_elevation_deg"),
        ({"jitter_deg": -1.0}, "jitter_deg"),
        ({"distance": float("nan")}, "distance"),
    ):
        with pytest.raises(ValueError, match=match):
            CameraRig(**kwargs)
    for kwargs, match in (
        ({"light_dir": (0, 0)}, "light_dir"),
        ({"ambient": -0.1}, "ambient"),
        ({"diffuse": "1"}, "diffuse"),
        ({"supersample": 0}, "supersample"),
        ({"supersample": 1.5}, "supersample"),
    ):
        with pytest.raises(ValueError, match=match):
            Shading(**kwargs)
    with pytest.raises(ValueError, match="rig must be a CameraRig"):
        generate_static_scene(textured_blob(), Path("unused"), rig={"layout": "ring"})


def test_heldout_cameras_fall_between_training_cameras():
    # Ring: the held-out azimuths are offset by half the spacing (360 / n / 2) from the training ones.
    cams = CameraRig(layout="ring").split_cameras(4, 4, SIZE, SIZE, (0.0, 0.0, 0.0), 1.0, seed=0)
    azim = [math.degrees(math.atan2(c.c2w[0, 3], c.c2w[2, 3])) for c in cams.train + cams.test]
    gaps = np.diff(np.sort(np.mod(azim, 360.0)))
    np.testing.assert_allclose(gaps, 45.0, atol=1e-9)
    assert CameraRig().split_cameras(3, 0, SIZE, SIZE, (0.0, 0.0, 0.0), 1.0, seed=0).test == []


# ---------------------------------------------------------------- static scenes


def test_static_scene_layout(blob_scenes):
    root = blob_scenes["neus2"]
    names = {p.name for p in root.iterdir()}
    assert {"transform_train.json", "transform_test.json", "gt_mesh.ply", "scene_info.json"} <= names
    doc = json.loads((root / "transform_train.json").read_text())
    assert doc["from_na"] is True and doc["aabb_scale"] == 1 and (doc["w"], doc["h"]) == (SIZE, SIZE)
    # Bounding sphere (radius 1 at the origin) -> radius 0.45 around the cube centre.
    assert doc["scale"] == pytest.approx(0.45) and doc["offset"] == [0.5, 0.5, 0.5]
    assert [f["file_path"] for f in doc["frames"]] == [f"train/{i:04d}.png" for i in range(4)]
    gt = trimesh.load(root / "gt_mesh.ply", process=False)
    r = np.linalg.norm(gt.vertices, axis=1).max()
    assert r == pytest.approx(1.0, abs=1e-6)  # float32 PLY
    info = json.loads((root / "scene_info.json").read_text())
    assert info["bounding_sphere"] == {"center": [0.0, 0.0, 0.0], "radius": 1.0}
    assert info["coloring"] == "texture"
    blender = json.loads((blob_scenes["blender"] / "transforms_train.json").read_text())
    assert [f["file_path"] for f in blender["frames"]] == [f"train/{i:04d}" for i in range(4)]


def test_static_silhouettes_match_projected_vertices(blob_scenes):
    root = blob_scenes["neus2"]
    gt = trimesh.load(root / "gt_mesh.ply", process=False)
    for split in ("train", "test"):
        for K, c2w, rel in read_cameras(root / f"transform_{split}.json"):
            check_silhouette(read_alpha(root / rel), K, c2w, gt)


def test_demo_scene_silhouettes_and_texture():
    root = demo_scene_path()
    info = json.loads((root / "scene_info.json").read_text())
    assert info["settings"]["n_views"] == 40 and info["settings"]["n_test"] == 8
    gt = trimesh.load(root / "gt_mesh.ply", process=False)
    cams = read_cameras(root / "transform_train.json")
    assert len(cams) == 40 and len(read_cameras(root / "transform_test.json")) == 8
    for K, c2w, rel in cams[::15]:
        check_silhouette(read_alpha(root / rel), K, c2w, gt)
    img = iio.imread(root / cams[5][2])
    inside = img[img[..., 3] == 255, :3].astype(float)
    # The spot texture (black patches on a light hide) must show: a wide luminance spread
    # inside the mask, far beyond what Lambert shading of a flat albedo would give.
    lum = inside.mean(axis=1)
    assert np.percentile(lum, 95) - np.percentile(lum, 5) > 100
    assert len(np.unique(inside, axis=0)) > 200
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 2_000_000


def test_conventions_describe_the_same_cameras(blob_scenes):
    for split in ("train", "test"):
        cv = read_cameras(blob_scenes["neus2"] / f"transform_{split}.json")
        gl = read_cameras(blob_scenes["blender"] / f"transforms_{split}.json")
        assert len(cv) == len(gl)
        for (K1, c1, p1), (K2, c2, p2) in zip(cv, gl, strict=True):
            # Round trip through tan/atan of camera_angle_x: float64 rounding only.
            np.testing.assert_allclose(K1, K2, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(c1, c2, atol=1e-12)
            # Same cameras, same renderer: the very same image bytes.
            assert (blob_scenes["neus2"] / p1).read_bytes() == (blob_scenes["blender"] / f"{p2}.png").read_bytes()


def test_static_scene_is_deterministic(blob_scenes):
    a, b = all_bytes(blob_scenes["neus2"]), all_bytes(blob_scenes["rerun"])
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], name
    other = json.loads((blob_scenes["seed1"] / "transform_train.json").read_text())
    same = json.loads((blob_scenes["neus2"] / "transform_train.json").read_text())
    assert other["frames"][0]["transform_matrix"] != same["frames"][0]["transform_matrix"]


def test_overwrite_rules(tmp_path, blob_scenes):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    blob = textured_blob()
    kw = dict(n_views=1, n_test=0, width=16, height=16, progress=False)
    with pytest.raises(UserError, match="not empty"):
        generate_static_scene(blob, foreign, **kw)
    with pytest.raises(UserError, match="did not write"):
        generate_static_scene(blob, foreign, overwrite=True, **kw)
    assert (foreign / "keep.txt").read_text() == "mine"
    ours = generate_static_scene(blob, tmp_path / "ours", **kw)
    generate_static_scene(blob, ours, overwrite=True, **kw)
    assert not (ours / "transform_test.json").exists()  # n_test = 0 writes no test JSON
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging left behind


def test_spot_from_shared_data(tmp_path):
    spot = load_mesh(shared_path("meshes", "spot", "spot.obj"))
    assert isinstance(spot.visual, trimesh.visual.TextureVisuals)
    root = generate_static_scene(
        shared_path("meshes", "spot", "spot.obj"), tmp_path / "spot", n_views=2, n_test=0,
        width=SIZE, height=SIZE, rig=CameraRig(layout="ring"), progress=False,
    )  # fmt: skip
    gt = trimesh.load(root / "gt_mesh.ply", process=False)
    for K, c2w, rel in read_cameras(root / "transform_train.json"):
        check_silhouette(read_alpha(root / rel), K, c2w, gt)
    assert (root / "source" / "LICENSE.txt").is_file()


# ---------------------------------------------------------------- dynamic sequences


def test_deformations_closed_forms():
    a, b = np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])
    L, angle = 2.0, 30.0
    rng = np.random.default_rng(0)
    p = rng.uniform(-1, 1, (100, 3)) * [0.5, 0.5, L]
    assert np.array_equal(deform_points(p, Deformation("bend", 0.0, a, b, L)), p)
    tw = deform_points(p, Deformation("twist", angle, a, b, L))
    # Twist: height and distance to the axis kept; the cross-section at h = L turns by `angle`.
    np.testing.assert_allclose(tw[:, 2], p[:, 2], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(tw[:, :2], axis=1), np.linalg.norm(p[:, :2], axis=1), atol=1e-12)
    top = deform_points(np.array([[1.0, 0.0, L]]), Deformation("twist", angle, a, b, L))[0]
    assert math.degrees(math.atan2(top[1], top[0])) == pytest.approx(angle)
    # Bend: the axis becomes an arc of the same length (unit speed), its end tangent turned by
    # `angle`, and a cross-section offset along b follows the turned normal.
    bend = Deformation("bend", angle, a, b, L)
    h = np.linspace(-L, L, 2001)
    spine = deform_points(h[:, None] * a, bend)
    speed = np.linalg.norm(np.diff(spine, axis=0), axis=1) / np.diff(h)
    np.testing.assert_allclose(speed, 1.0, atol=1e-6)  # chord/arc of 0.002-long steps: O(1e-7)
    ends = deform_points(np.array([[0.0, 0.0, L - 1e-6], [0.0, 0.0, L]]), bend)
    tangent = ends[1] - ends[0]
    # Chord over 1e-6 at the end: off the end tangent by ~1e-5 degrees.
    assert math.degrees(math.atan2(tangent @ b, tangent @ a)) == pytest.approx(angle, abs=1e-4)
    off = deform_points(np.array([[0.3, 0.0, L]]), bend)[0] - spine[-1]
    th = math.radians(angle)
    np.testing.assert_allclose(off, 0.3 * np.array([math.cos(th), 0.0, -math.sin(th)]), atol=1e-12)


def test_dynamic_layout_and_order(dynamic_seq):
    tops = sorted(dynamic_seq.glob("*.json"))
    assert [p.name for p in tops] == ["0000.json", "0001.json", "0002.json"]
    first = None
    for k, p in enumerate(tops):
        doc = json.loads(p.read_text())
        assert doc["from_na"] is True
        assert [f["file_path"] for f in doc["frames"]] == [f"images/{k:04d}/{i:04d}.png" for i in range(4)]
        assert [f.get("split", "train") for f in doc["frames"]] == ["train"] * 3 + ["test"]
        cams = [f["transform_matrix"] for f in doc["frames"]]
        first = first or (cams, doc["scale"], doc["offset"])
        assert (cams, doc["scale"], doc["offset"]) == first  # fixed cameras and normalization
    motion = json.loads((dynamic_seq / "gt" / "motion.json").read_text())
    assert [f["index"] for f in motion["frames"]] == [0, 1, 2]
    np.testing.assert_array_equal(motion["frames"][0]["world_from_canonical"], np.eye(4))
    assert motion["frames"][0]["deformation"]["angle_deg"] == 0.0
    assert motion["frames"][2]["deformation"]["angle_deg"] == pytest.approx(30.0)
    assert motion["frames"][2]["rotation_deg"] == pytest.approx(40.0)
    # Translation per frame in object diameters: (0.1, 0.05, 0) * 2 * radius 1, times k = 2.
    np.testing.assert_allclose(motion["frames"][2]["translation"], [0.4, 0.2, 0.0], atol=1e-12)


def test_dynamic_ground_truth_is_consistent(dynamic_seq):
    motion = json.loads((dynamic_seq / "gt" / "motion.json").read_text())
    canonical = trimesh.load(dynamic_seq / "gt" / "mesh_0000.ply", process=False).vertices
    doc = json.loads((dynamic_seq / "0000.json").read_text())
    scale, offset = doc["scale"], np.asarray(doc["offset"])
    for fr in motion["frames"]:
        k = fr["index"]
        mesh_k = trimesh.load(dynamic_seq / "gt" / f"mesh_{k:04d}.ply", process=False)
        W = np.asarray(fr["world_from_canonical"])
        expected = deform_points(canonical, fr["deformation"]) @ W[:3, :3].T + W[:3, 3]
        # Both sides come from float32 PLY vertices of magnitude < 2: rounding ~2e-7 each,
        # amplified at most ~2x by the bend; 1e-5 leaves a wide margin.
        np.testing.assert_allclose(mesh_k.vertices, expected, atol=1e-5)
        # The normalization keeps every frame inside the 0.45-radius ball around the cube centre.
        normed = mesh_k.vertices * scale + offset
        assert np.linalg.norm(normed - 0.5, axis=1).max() <= 0.45 + 1e-5
        frame = json.loads((dynamic_seq / f"{k:04d}.json").read_text())
        for f in frame["frames"]:
            K = np.asarray(f["intrinsic_matrix"])[:3, :3]
            check_silhouette(read_alpha(dynamic_seq / f["file_path"]), K, np.asarray(f["transform_matrix"]),
                             mesh_k)  # fmt: skip
    assert not np.allclose(
        trimesh.load(dynamic_seq / "gt" / "mesh_0002.ply", process=False).vertices, canonical, atol=0.05
    )


def test_dynamic_per_frame_jitter_and_determinism(tmp_path):
    blob = textured_blob()
    kw = dict(n_frames=2, n_views=2, width=16, height=16, per_frame_jitter_deg=3.0, seed=5, progress=False)
    a = generate_dynamic_sequence(blob, tmp_path / "a", **kw)
    b = generate_dynamic_sequence(blob, tmp_path / "b", **kw)
    assert all_bytes(a) == all_bytes(b)
    f0 = json.loads((a / "0000.json").read_text())["frames"][0]["transform_matrix"]
    f1 = json.loads((a / "0001.json").read_text())["frames"][0]["transform_matrix"]
    assert not np.allclose(f0, f1)


# ---------------------------------------------------------------- command line


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data_tools", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_static_and_errors(tmp_path, capsys):
    from data_tools.__main__ import main

    mesh = tmp_path / "blob.ply"
    trimesh.creation.icosphere(subdivisions=2).export(mesh)
    ok = _cli("static", str(mesh), str(tmp_path / "out"), "--views", "2", "--test-views", "1", "--size", "16x16")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "out" / "scene_info.json").read_text())["coloring"] == "procedural"
    # One error through a real process (exit code, no traceback), the others in-process.
    res = _cli("static", str(tmp_path / "missing.obj"), str(tmp_path / "x"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "missing.obj" in res.stderr
    for args in (
        ["static", str(mesh), str(tmp_path / "out")],  # exists, no --overwrite
        ["static", str(mesh), str(tmp_path / "y"), "--size", "big"],
        ["dynamic", str(mesh), str(tmp_path / "z"), "--translation", "a,b"],
        ["static", str(mesh), str(tmp_path / "w"), "--distance", "0.5"],  # an invalid CameraRig
    ):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2, args
        assert "error" in capsys.readouterr().err


def test_environment_sphere_views_have_no_alpha_and_show_the_sphere(tmp_path):
    """Generated unmasked views: RGB, the object where the masked render has it, the sphere's texture
    (seen along the pixel's centre ray) elsewhere."""
    from data_tools.background import EnvironmentSphere
    from data_tools.render_mesh import pixel_rays
    from neus2cli.data.loader import load_scene
    from tests.scenes import lumpy_ellipsoid

    env = EnvironmentSphere(8.0)
    kwargs = {"n_views": 2, "n_test": 0, "width": 32, "height": 32, "shading": Shading(supersample=1)}
    plain = generate_static_scene(lumpy_ellipsoid(), tmp_path / "a", progress=False, **kwargs)
    room = generate_static_scene(lumpy_ellipsoid(), tmp_path / "b", progress=False, background=env, **kwargs)
    a, b = iio.imread(plain / "train" / "0000.png"), iio.imread(room / "train" / "0000.png")
    assert a.shape == (32, 32, 4) and b.shape == (32, 32, 3)
    inside, outside = a[..., 3] == 255, a[..., 3] == 0
    assert inside.any() and outside.any()
    np.testing.assert_array_equal(b[inside], a[..., :3][inside])
    view = load_scene(room).train_views[0]
    o, d = pixel_rays(view.K, view.c2w, 32, 32, 1)
    expected = np.round(env.colors(o.reshape(-1, 3), d.reshape(-1, 3), 1.0) * 255).reshape(32, 32, 3)
    np.testing.assert_array_equal(b[outside], expected[outside].astype(np.uint8))
    assert json.loads((room / "scene_info.json").read_text())["settings"]["background"]["kind"] == "sphere"


def test_environment_sphere_must_hold_the_cameras(tmp_path):
    from data_tools.background import EnvironmentSphere
    from tests.scenes import lumpy_ellipsoid

    with pytest.raises(UserError, match="must hold the cameras"):  # the rig's default distance is 2.75 radii
        generate_static_scene(lumpy_ellipsoid(), tmp_path / "s", n_views=1, n_test=0, width=8, height=8,
                              background=EnvironmentSphere(2.0), progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="radius must be > 1"):
        EnvironmentSphere(0.5)
