"""Scene loaders: Blender/NGP JSON, NeuS2 JSON, NeuS/IDR folders, dynamic sequences.

Also holds the tiny synthetic-scene builders the other ``test_data_*`` files import:
a sphere of radius ``SPHERE_R`` at the world origin seen by cameras on a ring, with
exact analytic masks, written as any of the three formats.
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from neus2cli.data.cameras import intrinsics_from_fov, look_at, opencv_to_opengl
from neus2cli.data.loader import detect_format, is_dynamic_dir, load_dynamic_scene, load_scene
from neus2cli.data.rays import camera_rays, pixel_centers
from neus2cli.errors import UserError

SPHERE_R = 1.0
SIZE = 32  # pixels; small so that fixtures take milliseconds
FOV = 0.7  # radians


def ring_cameras(n: int = 8, radius: float = 4.0) -> list[np.ndarray]:
    """``n`` OpenCV c2w on a tilted ring around the origin, looking at it (world z up)."""
    poses = []
    for i in range(n):
        theta = 2 * np.pi * i / n
        elev = 0.5 if i % 2 else -0.3
        eye = radius * np.array([np.cos(theta) * np.cos(elev), np.sin(theta) * np.cos(elev), np.sin(elev)])
        poses.append(look_at(eye, np.zeros(3)))
    return poses


def sphere_mask(K: np.ndarray, c2w: np.ndarray, width: int, height: int, radius: float = SPHERE_R) -> np.ndarray:
    """(H, W) bool: pixel centres whose ray hits the sphere of ``radius`` at the origin."""
    uv = pixel_centers(height, width, dtype=torch.float64)
    o, d = camera_rays(uv, torch.as_tensor(K), torch.as_tensor(c2w))
    # Distance from the origin to the ray's line, for rays pointing at it.
    t = -(o * d).sum(-1)
    closest = o + d * t[:, None]
    hit = (torch.linalg.norm(closest, dim=-1) < radius) & (t > 0)
    return hit.reshape(height, width).numpy()


def rgba_image(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """(H, W, 4) uint8: random colours, alpha = mask * 255."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(*mask.shape, 4), dtype=np.uint8)
    img[..., 3] = np.where(mask, 255, 0)
    return img


def write_blender_scene(
    root: Path,
    n: int = 8,
    top: dict | None = None,
    frame_extra: dict[int, dict] | None = None,
    split_files: bool = False,
    ext_in_path: bool = False,
    size: int = SIZE,
) -> Path:
    """A Blender/NGP scene of the sphere. Returns the folder.

    ``top`` overrides top-level keys; ``frame_extra[i]`` adds keys to frame i;
    ``split_files`` writes transforms_train.json (even views) + transforms_test.json
    (odd views) instead of one transforms.json.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "rgb").mkdir(exist_ok=True)
    K = intrinsics_from_fov(size, size, FOV)
    frames = []
    for i, c2w in enumerate(ring_cameras(n)):
        iio.imwrite(root / "rgb" / f"v{i:02d}.png", rgba_image(sphere_mask(K, c2w, size, size), seed=i))
        frame = {
            "file_path": f"./rgb/v{i:02d}" + (".png" if ext_in_path else ""),
            "transform_matrix": opencv_to_opengl(c2w).tolist(),
        }
        frame.update((frame_extra or {}).get(i, {}))
        frames.append(frame)
    meta = {"camera_angle_x": FOV, **(top or {})}
    if split_files:
        for name, part in (("train", frames[0::2]), ("test", frames[1::2])):
            (root / f"transforms_{name}.json").write_text(json.dumps({**meta, "frames": part}))
    else:
        (root / "transforms.json").write_text(json.dumps({**meta, "frames": frames}))
    return root


def write_neus2_scene(
    root: Path,
    n: int = 8,
    top: dict | None = None,
    integer_centres: bool = False,
    from_na: bool = True,
    name: str = "transform_train.json",
    test_name: str | None = "transform_test.json",
    size: int = SIZE,
) -> Path:
    """A NeuS2 JSON scene of the sphere (OpenCV poses when ``from_na``), 3x3 and 4x4 K mixed."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    K = intrinsics_from_fov(size, size, FOV)
    K_file = K.copy()
    if integer_centres:
        K_file[:2, 2] -= 0.5
    frames = []
    for i, c2w in enumerate(ring_cameras(n)):
        iio.imwrite(root / "images" / f"{i:03d}.png", rgba_image(sphere_mask(K, c2w, size, size), seed=i))
        K4 = np.eye(4)
        K4[:3, :3] = K_file
        frames.append(
            {
                "file_path": f"images/{i:03d}.png",
                "transform_matrix": (c2w if from_na else opencv_to_opengl(c2w)).tolist(),
                "intrinsic_matrix": (K4 if i % 2 else K_file).tolist(),
            }
        )
    meta = {
        "from_na": from_na,
        "scale": 0.33,
        "offset": [0.5, 0.5, 0.5],
        "aabb_scale": 1,
        "w": size,
        "h": size,
    }
    if integer_centres:
        meta["integer_pixel_centers"] = True
    meta.update(top or {})
    if test_name is None:
        (root / name).write_text(json.dumps({**meta, "frames": frames}))
    else:
        (root / name).write_text(json.dumps({**meta, "frames": frames[:-2]}))
        (root / test_name).write_text(json.dumps({**meta, "frames": frames[-2:]}))
    return root


def write_neus_folder(
    root: Path,
    n: int = 6,
    n_masks: int | None = None,
    scale_mats: list[np.ndarray] | None = None,
    seed: int = 0,
) -> tuple[Path, list[np.ndarray], list[np.ndarray]]:
    """A NeuS/IDR folder of the sphere with a non-trivial scale_mat (s = 2, t = (1, -2, 3)).

    The object world is the sphere frame mapped by scale_mat. Returns (root,
    world_mats, scale_mats); world_mats put pixel centres at integers and carry an
    arbitrary negative overall factor, as real ones may.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "image").mkdir(exist_ok=True)
    (root / "mask").mkdir(exist_ok=True)
    S = np.diag([2.0, 2.0, 2.0, 1.0])
    S[:3, 3] = [1.0, -2.0, 3.0]
    width, height = 40, 30
    K = np.array([[45.0, 0.3, 19.2], [0.0, 44.0, 14.7], [0.0, 0.0, 1.0]])  # +0.5 convention
    K_int = K.copy()
    K_int[:2, 2] -= 0.5
    world_mats, smats, data = [], [], {}
    for i, c2w_sphere in enumerate(ring_cameras(n, radius=3.5)):
        mask = sphere_mask(K, c2w_sphere, width, height)
        c2w_world = S @ c2w_sphere  # rotation gets scaled by s: remove it
        c2w_world[:3, :3] /= S[0, 0]
        w2c = np.linalg.inv(c2w_world)
        P = np.eye(4)
        P[:3, :4] = K_int @ w2c[:3, :4] * (-3.7 if i % 2 else 1.0)
        Si = S if scale_mats is None else scale_mats[i]
        data[f"world_mat_{i}"] = P
        data[f"scale_mat_{i}"] = Si
        world_mats.append(P)
        smats.append(Si)
        rgb = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        iio.imwrite(root / "image" / f"{i:06d}.png", rgb)
        if n_masks is None or i < n_masks:
            iio.imwrite(root / "mask" / f"{i:03d}.png", np.repeat(mask[..., None] * 255, 3, -1).astype(np.uint8))
    np.savez(root / "cameras_sphere.npz", **data)
    return root, world_mats, smats


# ------------------------------------------------------------------------------------------
# Blender / NGP JSON


def test_blender_single_json_with_splits_and_extensions(tmp_path):
    extra = {1: {"split": "test"}, 3: {"split": "test"}}
    root = write_blender_scene(tmp_path / "ball", frame_extra=extra)
    scene = load_scene(root)
    assert scene.format == "blender" and scene.name == "ball"
    assert scene.split == {"train": [0, 2, 4, 5, 6, 7], "test": [1, 3]}
    view = scene.views[0]
    assert view.image_path.name == "v00.png" and view.name == "rgb/v00"
    # fx = 0.5 W / tan(fov / 2); principal point at the image centre (+0.5 convention).
    fx = 0.5 * SIZE / np.tan(FOV / 2)
    np.testing.assert_allclose(view.K, [[fx, 0, SIZE / 2], [0, fx, SIZE / 2], [0, 0, 1]], rtol=1e-12)
    # OpenGL in the file -> OpenCV in the scene: we wrote exactly the ring's OpenCV poses.
    np.testing.assert_allclose(view.c2w, ring_cameras(8)[0], atol=1e-12)
    assert view.width == SIZE and view.height == SIZE  # read from the PNG header
    assert scene.normalization.scale == pytest.approx(0.33)
    np.testing.assert_allclose(scene.normalization.offset, 0.5)


def test_blender_per_frame_intrinsics_distortion_and_extension_in_path(tmp_path):
    extra = {2: {"fl_x": 30.0, "fl_y": 31.0, "cx": 15.0, "cy": 17.0, "k1": -0.1, "p2": 0.01}}
    root = write_blender_scene(
        tmp_path / "s", top={"k2": 0.02, "w": SIZE, "h": SIZE}, frame_extra=extra, ext_in_path=True
    )
    scene = load_scene(root / "transforms.json")  # a JSON file works too; name = its folder
    assert scene.name == "s"
    v2 = scene.views[2]
    np.testing.assert_array_equal(v2.K, [[30.0, 0, 15.0], [0, 31.0, 17.0], [0, 0, 1]])
    # Per-frame values override top-level ones key by key: k2 stays from the top level.
    np.testing.assert_array_equal(v2.distortion, [-0.1, 0.02, 0.0, 0.01])
    np.testing.assert_array_equal(scene.views[0].distortion, [0.0, 0.02, 0.0, 0.0])


def test_blender_camera_angle_y_sets_fy(tmp_path):
    root = write_blender_scene(tmp_path / "s", top={"camera_angle_y": 0.5})
    K = load_scene(root).views[0].K
    assert K[1, 1] == pytest.approx(0.5 * SIZE / np.tan(0.25), rel=1e-12)
    assert K[0, 0] == pytest.approx(0.5 * SIZE / np.tan(FOV / 2), rel=1e-12)


def test_train_json_picks_up_sibling_test_file(tmp_path):
    root = write_blender_scene(tmp_path / "s", split_files=True)
    for path in (root, root / "transforms_train.json"):
        scene = load_scene(path)
        assert [v.name for v in scene.train_views] == [f"rgb/v{i:02d}" for i in (0, 2, 4, 6)]
        assert [v.name for v in scene.test_views] == [f"rgb/v{i:02d}" for i in (1, 3, 5, 7)]
    # val is the fallback when there is no test file.
    (root / "transforms_test.json").rename(root / "transforms_val.json")
    assert len(load_scene(root).test_views) == 4


def test_lego_half_blender(lego_half):
    scene = load_scene(lego_half)
    assert scene.format == "blender" and len(scene.train_views) == 100 and len(scene.test_views) == 20
    meta = json.loads((lego_half / "transforms_train.json").read_text())
    fx = 0.5 * 400 / np.tan(meta["camera_angle_x"] / 2)
    assert scene.views[0].K[0, 0] == pytest.approx(fx, rel=1e-12)
    # The file's OpenGL pose, flipped: camera z (forward) is minus the file's third column.
    gl = np.array(meta["frames"][0]["transform_matrix"])
    np.testing.assert_allclose(scene.views[0].c2w[:3, 2], -gl[:3, 2])
    np.testing.assert_allclose(scene.views[0].c2w[:3, 3], gl[:3, 3])
    assert scene.views[100].name == "test/r_0"


# ------------------------------------------------------------------------------------------
# NeuS2 JSON


def test_neus2_json_opencv_and_mixed_intrinsic_shapes(tmp_path):
    root = write_neus2_scene(tmp_path / "n2")
    scene = load_scene(root)
    assert scene.format == "neus2" and len(scene.train_views) == 6 and len(scene.test_views) == 2
    for view, c2w in zip(scene.views, ring_cameras(8), strict=True):
        np.testing.assert_allclose(view.c2w, c2w, atol=1e-12)
        np.testing.assert_allclose(view.K, intrinsics_from_fov(SIZE, SIZE, FOV), rtol=1e-12)
    assert not scene.warnings


def test_neus2_integer_pixel_centers_adds_half_pixel(tmp_path):
    a = load_scene(write_neus2_scene(tmp_path / "a", integer_centres=False))
    b = load_scene(write_neus2_scene(tmp_path / "b", integer_centres=True))
    # The files differ by -0.5 in cx, cy; after loading both are in the +0.5 convention.
    for va, vb in zip(a.views, b.views, strict=True):
        np.testing.assert_allclose(va.K, vb.K, atol=1e-12)


def test_neus2_from_na_false_reads_opengl_and_warns(tmp_path):
    scene = load_scene(write_neus2_scene(tmp_path / "gl", from_na=False))
    np.testing.assert_allclose(scene.views[0].c2w, ring_cameras(8)[0], atol=1e-12)
    assert any("from_na" in w and "OpenGL" in w for w in scene.warnings)


def test_neus2_single_json_any_name(tmp_path):
    root = write_neus2_scene(tmp_path / "one", name="my_scene.json", test_name=None)
    kind, files = detect_format(root)
    assert kind == "json" and files == [(root / "my_scene.json", None)]
    assert len(load_scene(root).views) == 8


def test_scene_info_json_is_not_a_frame_file(tmp_path):
    root = write_neus2_scene(tmp_path / "one", name="frames.json", test_name=None)
    (root / "scene_info.json").write_text("{}")
    assert len(load_scene(root).views) == 8


# ------------------------------------------------------------------------------------------
# NeuS / IDR


def test_neus_folder_synthetic_cameras_and_normalization(tmp_path):
    root, world_mats, scale_mats = write_neus_folder(tmp_path / "neus")
    scene = load_scene(root, test_views=(1, 4, 99))
    assert scene.format == "neus" and scene.split == {"train": [0, 2, 3, 5], "test": [1, 4]}
    # The unit sphere -> radius 0.5 around the cube centre: scale 0.5 / s, offset 0.5 - 0.5 t / s.
    np.testing.assert_allclose(scene.normalization.scale, 0.25)
    np.testing.assert_allclose(scene.normalization.offset, 0.5 - 0.5 * np.array([1.0, -2.0, 3.0]) / 2)
    for view, P in zip(scene.views, world_mats, strict=True):
        # Projecting with our K (+0.5) and c2w reproduces P's pixels + 0.5.
        X = np.array([0.7, -1.1, 2.9, 1.0])
        p = P[:3] @ X
        x_cam = np.linalg.inv(view.c2w) @ X
        uv = (view.K @ x_cam[:3])[:2] / x_cam[2]
        np.testing.assert_allclose(uv, p[:2] / p[2] + 0.5, rtol=1e-12)
        assert view.mask_path is not None and view.width == 40 and view.height == 30


def test_dtu_neus_folder(dtu_scan24):
    scene = load_scene(dtu_scan24)
    assert scene.format == "neus" and len(scene.views) == 49
    # NeuS2's DTU test views that exist (56 does not).
    assert scene.split["test"] == [8, 13, 16, 21, 26, 31, 34]
    assert all(v.mask_path is not None for v in scene.views)
    npz = np.load(dtu_scan24 / "cameras_sphere.npz")
    P, S = npz["world_mat_0"], npz["scale_mat_0"]
    # The sphere centre (scale_mat's translation) is the cube centre.
    np.testing.assert_allclose(scene.normalization.world_to_normalized(S[:3, 3]), 0.5, atol=1e-9)
    X = np.append(S[:3, 3], 1.0)
    p = P[:3] @ X
    v = scene.views[0]
    x_cam = np.linalg.inv(v.c2w) @ X
    np.testing.assert_allclose((v.K @ x_cam[:3])[:2] / x_cam[2], p[:2] / p[2] + 0.5, rtol=1e-9)


# ------------------------------------------------------------------------------------------
# Detection and dynamic sequences


def test_detection_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no scene found"):
        load_scene(tmp_path / "empty")
    with pytest.raises(UserError, match="scene not found"):
        load_scene(tmp_path / "missing")
    many = tmp_path / "many"
    many.mkdir()
    for k in range(3):
        (many / f"{k:04d}.json").write_text('{"frames": []}')
    with pytest.raises(UserError, match="ambiguous"):
        load_scene(many)
    assert is_dynamic_dir(many) and not is_dynamic_dir(tmp_path / "empty")


def test_dynamic_sequence(tmp_path):
    seq = tmp_path / "seq"
    base = write_neus2_scene(seq, name="0000.json", test_name=None)
    meta = json.loads((base / "0000.json").read_text())
    meta["frames"][3]["split"] = "test"
    for k in range(1, 4):  # same images, cameras moved by k along x
        m = json.loads(json.dumps(meta))
        for f in m["frames"]:
            f["transform_matrix"][0][3] += 0.1 * k
        (seq / f"{k:04d}.json").write_text(json.dumps(m))
    (seq / "0000.json").write_text(json.dumps(meta))
    (seq / "gt").mkdir()
    (seq / "gt" / "motion.json").write_text("{}")
    dyn = load_dynamic_scene(seq)
    assert dyn.name == "seq" and dyn.frame_names == ["0000", "0001", "0002", "0003"]
    assert dyn.frames[2].views[0].c2w[0, 3] == pytest.approx(ring_cameras(8)[0][0, 3] + 0.2)
    assert dyn.frames[0].split["test"] == [3]
    part = load_dynamic_scene(seq, frames=slice(1, 3))
    assert part.frame_names == ["0001", "0002"]
    with pytest.raises(UserError, match="selects none"):
        load_dynamic_scene(seq, frames=slice(10, 12))
