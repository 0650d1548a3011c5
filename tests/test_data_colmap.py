"""COLMAP sparse models (text and binary) -> Scene: poses, pixel convention, distortion, errors.

The fixtures write COLMAP models with ``data_tools.colmap``'s writers, following the documented
layouts (https://colmap.github.io/format.html), for known cameras and known 3D points. The
2D observations stored in the model are computed here with COLMAP's projection written out
independently of the loader (rotation matrices, not quaternions; each model's distortion
polynomial spelled out), so "the loaded cameras reproject the points onto the stored
observations" checks pose, intrinsics, distortion and the pixel convention at once.
"""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from data_tools.colmap import SparseCamera as Cam
from data_tools.colmap import SparseImage as Img
from data_tools.colmap import SparseModel, write_binary_model, write_text_model
from data_tools.colmap import SparsePoint as Pt
from neus2cli.data.cameras import look_at
from neus2cli.data.formats_colmap import colmap_pose_to_c2w, qvec_to_rotation, sparse_points
from neus2cli.data.loader import detect_format, is_dynamic_dir, load_scene
from neus2cli.data.rays import project_points
from neus2cli.data.validate import validate_scene
from neus2cli.errors import UserError
from tests.test_data_convert import run_cli


@dataclass
class Model(SparseModel):
    """A sparse model plus the known OpenCV camera-to-world of each image, by name."""

    c2w: dict[str, np.ndarray] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# The synthetic model: known cameras, poses and points; observations by COLMAP's projection.


def colmap_project(cam: Cam, R: np.ndarray, t: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) pixels (COLMAP: top-left pixel centre at (0.5, 0.5)) and (N,) depths of world points X.

    COLMAP's models, written out: normalized u = x/z, v = y/z; SIMPLE_RADIAL adds u * k r2,
    RADIAL u * (k1 r2 + k2 r2^2), OPENCV the same plus the tangential terms; then f u + c.
    """
    Xc = X @ R.T + t
    u, v = Xc[:, 0] / Xc[:, 2], Xc[:, 1] / Xc[:, 2]
    r2 = u * u + v * v
    p = cam.params
    if cam.model == "SIMPLE_PINHOLE":
        fx = fy = p[0]
        cx, cy = p[1:3]
        du = dv = 0.0
    elif cam.model == "PINHOLE":
        fx, fy, cx, cy = p
        du = dv = 0.0
    elif cam.model == "SIMPLE_RADIAL":
        fx = fy = p[0]
        cx, cy, k = p[1:]
        du, dv = u * k * r2, v * k * r2
    elif cam.model == "RADIAL":
        fx = fy = p[0]
        cx, cy, k1, k2 = p[1:]
        radial = k1 * r2 + k2 * r2 * r2
        du, dv = u * radial, v * radial
    else:
        fx, fy, cx, cy, k1, k2, p1, p2 = p
        radial = k1 * r2 + k2 * r2 * r2
        du = u * radial + 2 * p1 * u * v + p2 * (r2 + 2 * u * u)
        dv = v * radial + 2 * p2 * u * v + p1 * (r2 + 2 * v * v)
    return np.stack([fx * (u + du) + cx, fy * (v + dv) + cy], axis=1), Xc[:, 2]


CAMERAS = [
    Cam(1, "PINHOLE", 40, 30, (38.0, 41.0, 20.5, 14.25)),
    Cam(2, "SIMPLE_PINHOLE", 36, 36, (40.0, 17.5, 18.5)),
    Cam(3, "SIMPLE_RADIAL", 40, 32, (39.0, 20.0, 16.0, -0.08)),
    Cam(4, "RADIAL", 32, 40, (42.0, 16.25, 19.75, 0.05, -0.02)),
    Cam(5, "OPENCV", 44, 34, (40.0, 39.0, 22.0, 17.0, -0.1, 0.03, 0.002, -0.003)),
]


def build_model(n_points: int = 80, seed: int = 0) -> Model:
    """Six images (camera 1 used twice, ids not contiguous), points in a ball of radius 0.6.

    Image 13's quaternion is written with negative w (the same rotation as +q).
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_points, 3))
    X *= (0.6 * rng.random(n_points) ** (1 / 3) / np.linalg.norm(X, axis=1))[:, None]
    X += np.array([0.3, -0.2, 0.1])  # not centred at the origin
    cam_of = [1, 2, 3, 4, 5, 1]
    ids = [3, 7, 13, 20, 21, 40]
    images, c2ws = [], {}
    points = [Pt(100 + k, tuple(X[k].tolist())) for k in range(n_points)]
    by_id = {c.camera_id: c for c in CAMERAS}
    for n, (image_id, cam_id) in enumerate(zip(ids, cam_of, strict=True)):
        theta = 2 * np.pi * n / len(ids)
        eye = 3.5 * np.array([np.cos(theta), np.sin(theta), 0.4 * (-1) ** n])
        c2w = look_at(eye, np.array([0.3, -0.2, 0.1]))
        R, t = c2w[:3, :3].T, -c2w[:3, :3].T @ c2w[:3, 3]
        x, y, z, w = Rotation.from_matrix(R).as_quat()  # scipy: scalar last
        q = np.array([w, x, y, z])
        if (image_id == 13) == (q[0] > 0):
            q = -q
        name = f"view_{n:02d}.png" if n != 4 else "sub/view_04.png"
        c2ws[name] = c2w
        uv, depth = colmap_project(by_id[cam_id], R, t, X)
        im = Img(image_id, tuple(q.tolist()), tuple(t.tolist()), cam_id, name)
        for k in range(n_points):
            assert depth[k] > 0
            im.points2d.append((float(uv[k, 0]), float(uv[k, 1]), points[k].point_id))
            points[k].track.append((image_id, k))
        images.append(im)
    # A point without a track (as COLMAP writes after filtering), and a 2D point without a 3D point.
    points.append(Pt(999, (50.0, 50.0, 50.0)))
    images[0].points2d.append((1.5, 2.5, -1))
    return Model(CAMERAS, images, points, c2ws)


def write_scene(root: Path, kind: str = "text", model: Model | None = None, model_dir: str = "sparse/0") -> Model:
    """A COLMAP scene folder: images/ (sized as their cameras) and the model in ``root/model_dir``."""
    model = build_model() if model is None else model
    by_id = {c.camera_id: c for c in model.cameras}
    for im in model.images:
        cam = by_id[im.camera_id]
        path = root / "images" / im.name
        path.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(path, np.full((cam.height, cam.width, 3), 90 + im.image_id, dtype=np.uint8))
    (write_text_model if kind == "text" else write_binary_model)(root / model_dir, model)
    return model


def _observations(model: Model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per image name: ((N, 3) world points, (N, 2) stored pixels) of its observations with a 3D point."""
    xyz = {p.point_id: p.xyz for p in model.points}
    out = {}
    for im in model.images:
        obs = [(xyz[pid], (x, y)) for x, y, pid in im.points2d if pid >= 0]
        out[im.name] = (np.array([o[0] for o in obs]), np.array([o[1] for o in obs]))
    return out


# --------------------------------------------------------------------------------------------
# Poses, pixels, distortion.


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_loaded_cameras_reproject_the_stored_observations(tmp_path, kind):
    model = write_scene(tmp_path, kind)
    scene = load_scene(tmp_path)
    assert scene.format == "colmap" and len(scene.views) == 6
    assert [v.name for v in scene.views] == sorted(Path(im.name).with_suffix("").as_posix() for im in model.images)
    obs = _observations(model)
    for view in scene.views:
        X, uv_file = obs[view.image_path.relative_to(tmp_path / "images").as_posix()]
        dist = None if view.distortion is None else torch.as_tensor(view.distortion)
        uv, depth = project_points(torch.as_tensor(X), torch.as_tensor(view.K), torch.as_tensor(view.c2w), dist)
        assert bool((depth > 0).all())
        # COLMAP and neus2cli both put the top-left pixel's centre at (0.5, 0.5): no offset. The
        # stored pixels are float64 values of the same projection, so they agree to rounding
        # (~1e-13 px); 1e-6 px leaves room for the quaternion round trip (~1e-15 relative).
        np.testing.assert_allclose(uv.numpy(), uv_file, atol=1e-6, rtol=0)


def test_poses_are_the_known_cameras_including_negative_w(tmp_path):
    model = write_scene(tmp_path, "binary")
    assert next(im for im in model.images if im.image_id == 13).qvec[0] < 0
    assert sum(im.qvec[0] > 0 for im in model.images) >= 1
    scene = load_scene(tmp_path)
    for view in scene.views:
        known = model.c2w[view.image_path.relative_to(tmp_path / "images").as_posix()]
        # float64 quaternion <-> matrix round trips are exact to ~1e-15; the translation is ~3.5.
        np.testing.assert_allclose(view.c2w, known, atol=1e-12, rtol=0)


def test_quaternion_conversion():
    # 90 degrees about z: (w, z) = (cos 45, sin 45) rotates x onto y.
    q = (np.sqrt(0.5), 0.0, 0.0, np.sqrt(0.5))
    np.testing.assert_allclose(qvec_to_rotation(q), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    np.testing.assert_array_equal(qvec_to_rotation(q), qvec_to_rotation(tuple(-x for x in q)))
    # Not unit length: normalized first.
    np.testing.assert_allclose(qvec_to_rotation(tuple(3 * x for x in q)), qvec_to_rotation(q), atol=1e-15)
    # World-to-camera x_cam = R x + t: the camera centre is -R^T t, and it maps to x_cam = 0.
    t = np.array([1.0, 2.0, 3.0])
    c2w = colmap_pose_to_c2w(q, t)
    R = qvec_to_rotation(q)
    np.testing.assert_allclose(R @ c2w[:3, 3] + t, 0.0, atol=1e-15)
    np.testing.assert_allclose(c2w[:3, :3], R.T, atol=0)
    with pytest.raises(ValueError, match="zero"):
        qvec_to_rotation((0.0, 0.0, 0.0, 0.0))


def test_camera_models_map_to_K_and_distortion(tmp_path):
    write_scene(tmp_path, "text")
    scene = load_scene(tmp_path)
    by_name = {v.name: v for v in scene.views}
    expected = {
        "view_00": ([[38.0, 0, 20.5], [0, 41.0, 14.25]], None),  # PINHOLE
        "view_01": ([[40.0, 0, 17.5], [0, 40.0, 18.5]], None),  # SIMPLE_PINHOLE
        "view_02": ([[39.0, 0, 20.0], [0, 39.0, 16.0]], [-0.08, 0, 0, 0]),  # SIMPLE_RADIAL
        "view_03": ([[42.0, 0, 16.25], [0, 42.0, 19.75]], [0.05, -0.02, 0, 0]),  # RADIAL
        "sub/view_04": ([[40.0, 0, 22.0], [0, 39.0, 17.0]], [-0.1, 0.03, 0.002, -0.003]),  # OPENCV
        "view_05": ([[38.0, 0, 20.5], [0, 41.0, 14.25]], None),  # camera 1 again
    }
    for name, (K2, dist) in expected.items():
        view = by_name[name]
        np.testing.assert_array_equal(view.K, np.array([*K2, [0, 0, 1.0]]))
        if dist is None:
            assert view.distortion is None
        else:
            np.testing.assert_array_equal(view.distortion, dist)
    assert (by_name["sub/view_04"].width, by_name["sub/view_04"].height) == (44, 34)


def test_text_and_binary_give_identical_scenes(tmp_path):
    write_scene(tmp_path / "t", "text")
    write_scene(tmp_path / "b", "binary")
    a, b = load_scene(tmp_path / "t"), load_scene(tmp_path / "b")
    assert len(a.views) == len(b.views)
    for va, vb in zip(a.views, b.views, strict=True):
        assert va.name == vb.name and (va.width, va.height) == (vb.width, vb.height)
        assert va.image_path.relative_to(tmp_path / "t") == vb.image_path.relative_to(tmp_path / "b")
        np.testing.assert_array_equal(va.K, vb.K)
        np.testing.assert_array_equal(va.c2w, vb.c2w)
        assert (va.distortion is None) == (vb.distortion is None)
        if va.distortion is not None:
            np.testing.assert_array_equal(va.distortion, vb.distortion)
    assert a.normalization.to_dict() == b.normalization.to_dict()
    assert a.split == b.split == {"train": list(range(6)), "test": []}


def test_normalization_fits_the_well_seen_points_into_the_cube(tmp_path):
    model = write_scene(tmp_path, "binary")
    n = load_scene(tmp_path).normalization
    pts = np.array([p.xyz for p in model.points if p.track])
    inside = n.world_to_normalized(pts)
    # The 1-99% box grown by 10% holds all but the extreme points of a ball; its centre is the cube's.
    assert np.mean(np.all((inside > 0) & (inside < 1), axis=1)) > 0.95
    box = np.percentile(pts, [1, 99], axis=0)
    np.testing.assert_allclose(n.world_to_normalized(box.mean(axis=0)), 0.5, atol=1e-12)
    assert np.isclose(((box[1] - box[0]).max() * 1.1) * n.scale, 1.0)
    # The trackless outlier at (50, 50, 50) is ignored.
    assert np.all(n.world_to_normalized(np.array([50.0, 50, 50])) > 10)


# --------------------------------------------------------------------------------------------
# Layouts, masks, detection.


@pytest.mark.parametrize("model_dir", ["sparse/0", "sparse", "."])
def test_detected_in_every_layout(tmp_path, model_dir):
    write_scene(tmp_path, "text", model_dir=model_dir)
    kind, files = detect_format(tmp_path)
    assert kind == "colmap" and files == [(tmp_path, None)]
    assert not is_dynamic_dir(tmp_path)
    assert len(load_scene(tmp_path).views) == 6


def test_masks_warnings_and_test_views(tmp_path):
    model = write_scene(tmp_path, "text")
    (tmp_path / "images" / "unposed.png").write_bytes((tmp_path / "images" / "view_00.png").read_bytes())
    write_text_model(tmp_path / "sparse" / "1", model)
    by_id = {c.camera_id: c for c in model.cameras}
    for k, im in enumerate(model.images):
        cam = by_id[im.camera_id]
        stem = Path(im.name).with_suffix("")
        # Same name, another extension, or COLMAP's NAME.png.
        mask_name = {0: im.name, 1: f"{stem}.jpg", 2: f"{im.name}.png"}.get(k % 3)
        mask = tmp_path / "masks" / mask_name
        mask.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(mask, np.full((cam.height, cam.width), 255, dtype=np.uint8))
    scene = load_scene(tmp_path, test_views=[1, 4])
    assert all(v.mask_path is not None and v.mask_path.is_file() for v in scene.views)
    assert scene.split == {"train": [0, 2, 3, 5], "test": [1, 4]}
    text = " ".join(scene.warnings)
    assert "unposed.png" in text and "sparse/1" in text
    assert validate_scene(scene, progress=False) is not None  # images and masks decode, sizes agree
    (tmp_path / "masks" / "view_03.png").unlink()
    with pytest.raises(UserError, match="have no mask: view_03.png") as err:
        load_scene(tmp_path)
    assert str(tmp_path / "masks") in str(err.value)


def test_inspect_reads_a_colmap_scene(tmp_path, capsys):
    write_scene(tmp_path, "binary")
    assert run_cli(["inspect", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"format": "colmap"' in out and '"n_distorted": 3' in out


def test_sparse_points_are_the_normalization_points_and_inspect_plots_them(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model = write_scene(tmp_path / "scene", "text")
    points, box = sparse_points(tmp_path / "scene")
    # The tracked points (the trackless outlier is left out), and the box the cube was fitted to:
    # its centre maps to the cube's centre.
    tracked = np.array([p.xyz for p in model.points if p.track])
    assert len(points) == len(tracked) and not np.any(np.all(points == 50.0, axis=1))
    n = load_scene(tmp_path / "scene").normalization
    np.testing.assert_allclose(n.world_to_normalized(box.mean(axis=0)), 0.5, atol=1e-12)
    plot = tmp_path / "cams.png"
    assert run_cli(["inspect", str(tmp_path / "scene"), "--plot", str(plot), "--json"]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sparse_points(tmp_path / "nothing-here") is None


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A generated scene (6 train + 2 test views, 32 px, RGBA) and its COLMAP exports, binary and text."""
    from data_tools.colmap import export_colmap
    from tests.scenes import static_scene

    root = tmp_path_factory.mktemp("generated")
    scene = static_scene(root / "gen", views=6, size=32)
    binary = export_colmap(scene, root / "colmap_bin", n_points=400)
    text = export_colmap(scene, root / "colmap_txt", binary=False, n_points=400)
    return scene, binary, text


@pytest.mark.parametrize("kind", ["bin", "txt"])
def test_generated_scene_exported_as_colmap_reprojects_like_the_scene(generated, kind):
    """data_tools.colmap: the written model's cameras put world points on the scene's own pixels."""
    scene_root, _, _ = generated
    root = generated[1 if kind == "bin" else 2]
    assert (root / "sparse" / "0" / f"cameras.{kind}").is_file()
    original, loaded = load_scene(scene_root), load_scene(root)
    assert loaded.format == "colmap" and len(loaded.views) == len(original.views) == 8
    by_name = {v.image_path.relative_to(root / "images").as_posix(): v for v in loaded.views}
    rng = np.random.default_rng(3)
    X = torch.as_tensor(rng.uniform(-1.0, 1.0, (200, 3)))  # the object's bounding sphere has radius 1
    for view in original.views:
        got = by_name[view.image_path.relative_to(scene_root).as_posix()]
        assert (got.width, got.height) == (view.width, view.height) and got.distortion is None
        uv0, z0 = project_points(X, torch.as_tensor(view.K), torch.as_tensor(view.c2w))
        uv1, z1 = project_points(X, torch.as_tensor(got.K), torch.as_tensor(got.c2w))
        # Matrix -> quaternion -> matrix in float64 is exact to ~1e-15; the pixels (~32 px, focal ~37 px)
        # to ~1e-13. 1e-6 px would catch any convention slip (a half-pixel shift, a transposed rotation).
        np.testing.assert_allclose(uv1.numpy(), uv0.numpy(), atol=1e-6, rtol=0)
        np.testing.assert_allclose(z1.numpy(), z0.numpy(), atol=1e-9, rtol=0)
        # The masks are the scene's alpha, the images its colours: the trainer sees the same RGBA.
        np.testing.assert_array_equal(got.load_rgba(), view.load_rgba())
    assert validate_scene(loaded, progress=False) is not None


def test_generated_colmap_points_are_on_the_mesh_and_bound_the_object(generated):
    import trimesh

    from neus2cli.data.formats_colmap import find_colmap_model, read_colmap_model

    scene_root, root, _ = generated
    model = read_colmap_model(find_colmap_model(root))
    truth = trimesh.load(scene_root / "gt_mesh.ply")
    # Points on the surface, each seen by 2+ of the 8 views (occluded views left out: a convex-ish object
    # seen from all round shows each point to about half of them), 1.5 on average at least.
    tris = np.asarray(truth.triangles)  # brute force (trimesh's proximity queries need rtree)
    dist = [
        np.linalg.norm(trimesh.triangles.closest_point(tris, np.repeat(p[None], len(tris), 0)) - p, axis=1).min()
        for p in model.points[::4]
    ]
    assert max(dist) < 1e-6 and len(model.points) > 300
    assert model.track_lengths.min() >= 2 and 2.5 < model.track_lengths.mean() < 6.5
    # The automatic bounds from these points hold the whole object in the unit cube.
    inside = load_scene(root).normalization.world_to_normalized(np.asarray(truth.vertices))
    assert inside.min() > 0.0 and inside.max() < 1.0, (inside.min(), inside.max())


def test_generated_colmap_observations_are_the_points_projections(generated):
    """The text model's 2D points (read here, the loader skips them) are their 3D points' projections,
    and tracks and observations point at each other."""
    _, _, root = generated
    folder = root / "sparse" / "0"
    xyz, tracks = {}, {}
    for line in (folder / "points3D.txt").read_text().splitlines()[1:]:
        t = line.split()
        xyz[int(t[0])] = [float(v) for v in t[1:4]]
        tracks[int(t[0])] = [(int(i), int(j)) for i, j in zip(t[8::2], t[9::2], strict=True)]
    lines = (folder / "images.txt").read_text().splitlines()[2:]
    views = {v.image_path.relative_to(root / "images").as_posix(): v for v in load_scene(root).views}
    n_obs = 0
    for head, obs in zip(lines[0::2], lines[1::2], strict=True):
        image_id, name = int(head.split()[0]), head.split()[9]
        t = obs.split()
        uv = np.array([[float(x), float(y)] for x, y in zip(t[0::3], t[1::3], strict=True)])
        pids = [int(p) for p in t[2::3]]
        for idx, pid in enumerate(pids):
            assert (image_id, idx) in tracks[pid]
        view = views[name]
        X = torch.as_tensor(np.array([xyz[p] for p in pids]))
        got, _ = project_points(X, torch.as_tensor(view.K), torch.as_tensor(view.c2w))
        np.testing.assert_allclose(got.numpy(), uv, atol=1e-6, rtol=0)
        n_obs += len(pids)
    assert n_obs == sum(len(t) for t in tracks.values())


def test_to_colmap_cli_and_its_errors(generated, tmp_path, capsys):
    from data_tools.__main__ import main

    scene_root, _, _ = generated
    out = tmp_path / "c"

    def ok(*args: str) -> None:
        with pytest.raises(SystemExit) as exc:  # typer exits with 0 after a command
            main(["to-colmap", str(scene_root), *args])
        assert exc.value.code == 0, capsys.readouterr().err

    ok(str(out), "--text", "--no-masks", "--camera-model", "OPENCV", "--points", "50")
    assert (out / "sparse" / "0" / "cameras.txt").read_text().count("OPENCV") == 1  # one shared camera
    assert not (out / "masks").exists()
    rgb = iio.imread(out / "images" / "train" / "0000.png")
    assert rgb.shape == (32, 32, 3) and (rgb == 255).all(axis=2).any()  # composited over white
    assert load_scene(out).views[0].distortion is None  # zero OPENCV coefficients: a pinhole
    for args, needle in (
        (["to-colmap", str(scene_root), str(out)], str(out)),  # exists, no --overwrite
        (["to-colmap", str(scene_root), str(tmp_path / "d"), "--points", "3"], "--points"),
        (["to-colmap", str(scene_root), str(tmp_path / "e"), "--mesh", str(tmp_path / "no.ply")], "no.ply"),
        (["to-colmap", str(tmp_path / "nothing"), str(tmp_path / "f")], "nothing"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2, args
        err = capsys.readouterr().err
        assert needle in err.replace("\n", "") and "Traceback" not in err, (args, err)
    ok(str(out), "--overwrite", "--points", "50")
    assert (out / "sparse" / "0" / "cameras.bin").is_file() and (out / "masks").is_dir()


# --------------------------------------------------------------------------------------------
# Malformed input: a UserError that names the file.


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("stem", ["cameras", "images", "points3D"])
def test_truncated_binary_files(tmp_path, stem):
    write_scene(tmp_path, "binary")
    path = tmp_path / "sparse" / "0" / f"{stem}.bin"
    _truncate(path, path.stat().st_size - 5)
    with pytest.raises(UserError, match="truncated") as err:
        load_scene(tmp_path)
    assert str(path) in str(err.value)


def test_binary_count_larger_than_the_file(tmp_path):
    write_scene(tmp_path, "binary")
    path = tmp_path / "sparse" / "0" / "points3D.bin"
    data = bytearray(path.read_bytes())
    data[:8] = struct.pack("<Q", 2**62)
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="truncated") as err:
        load_scene(tmp_path)
    assert str(path) in str(err.value)


def test_binary_trailing_bytes_and_unknown_model_id(tmp_path):
    write_scene(tmp_path, "binary")
    path = tmp_path / "sparse" / "0" / "cameras.bin"
    good = path.read_bytes()
    path.write_bytes(good + b"\0\0\0")
    with pytest.raises(UserError, match="3 bytes follow the last record") as err:
        load_scene(tmp_path)
    assert str(path) in str(err.value)
    data = bytearray(good)
    data[12:16] = struct.pack("<i", 77)  # first camera's model id, after the count and camera_id
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="unknown camera model id 77") as err:
        load_scene(tmp_path)
    assert str(path) in str(err.value)


def test_bad_model_name_and_unsupported_model(tmp_path):
    write_scene(tmp_path, "text")
    path = tmp_path / "sparse" / "0" / "cameras.txt"
    text = path.read_text()
    path.write_text(text.replace("SIMPLE_RADIAL", "SIMPLE_RADIALX"))
    with pytest.raises(UserError, match="line 5: unknown camera model 'SIMPLE_RADIALX'") as err:
        load_scene(tmp_path)
    assert str(path) in str(err.value)
    path.write_text(text.replace("SIMPLE_RADIAL 40 32 39.0", "SIMPLE_RADIAL_FISHEYE 40 32 39.0"))
    with pytest.raises(UserError, match="SIMPLE_RADIAL_FISHEYE model, which neus2cli does not support") as err:
        load_scene(tmp_path)
    assert str(path) in str(err.value) and "image_undistorter" in str(err.value)
    path.write_text(text.replace("38.0 41.0 20.5 14.25", "38.0 41.0 20.5"))
    with pytest.raises(UserError, match="line 3: PINHOLE takes 4 parameters, got 3") as err:
        load_scene(tmp_path)


def test_missing_and_malformed_text_files(tmp_path):
    write_scene(tmp_path, "text")
    images = tmp_path / "sparse" / "0" / "images.txt"
    text = images.read_text()
    images.unlink()
    assert detect_format(tmp_path)[0] == "colmap"  # cameras.txt alone marks the model
    with pytest.raises(UserError, match="is missing") as err:
        load_scene(tmp_path)
    assert str(images) in str(err.value)
    images.write_text(text.replace(" 1 view_00.png", " x view_00.png"))
    with pytest.raises(UserError, match="line 3: a field is not a number") as err:
        load_scene(tmp_path)
    assert str(images) in str(err.value)
    images.write_text(text.replace(" 1 view_00.png", " 9 view_00.png"))
    with pytest.raises(UserError, match="uses camera 9") as err:
        load_scene(tmp_path)
    assert str(images) in str(err.value)


def test_image_missing_from_images_folder(tmp_path):
    write_scene(tmp_path, "binary")
    (tmp_path / "images" / "sub" / "view_04.png").unlink()
    with pytest.raises(UserError, match="1 of the model's 6 images are not in images/: sub/view_04.png"):
        load_scene(tmp_path)


def test_no_images_folder_and_no_points(tmp_path):
    model = write_scene(tmp_path, "text")
    shutil.rmtree(tmp_path / "images")
    with pytest.raises(UserError, match="no images/ folder"):
        load_scene(tmp_path)
    write_scene(tmp_path, "text", Model(model.cameras, model.images, [], model.c2w))
    with pytest.raises(UserError, match="0 usable 3D points") as err:
        load_scene(tmp_path)
    assert "points3D.txt" in str(err.value)


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_scene_identity_digests_the_model_files(tmp_path, kind):
    """`train` records the scene's identity before loading it: for a COLMAP folder, the model's files."""
    from neus2cli.data.identity import scene_identity

    write_scene(tmp_path, kind)
    ext = ".txt" if kind == "text" else ".bin"
    first = scene_identity(tmp_path)
    assert sorted(first["files"]) == sorted(f"{s}{ext}" for s in ("cameras", "images", "points3D"))
    images = tmp_path / "sparse" / "0" / f"images{ext}"
    images.write_bytes(images.read_bytes() + b"# edited\n")  # any change to a model file changes the digest
    assert scene_identity(tmp_path)["sha256"] != first["sha256"]
