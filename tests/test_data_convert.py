"""``convert_neus``: NeuS/IDR folder -> NeuS2 JSON, cameras preserved exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from neus2cli.data.convert import convert_neus
from neus2cli.data.loader import load_scene
from neus2cli.errors import UserError
from tests import cli_table
from tests.conftest import REPO_ROOT
from tests.test_data_scenes import write_neus_folder


def run_cli(argv: list[str]) -> int:
    """Run ``neus2 ARGV`` in-process; its exit code. The output is passed on to stdout/stderr
    (for ``capsys``)."""
    result = cli_table.run_cli(argv)
    sys.stdout.write(result.out)
    sys.stderr.write(result.err)
    return result.code


def _project_converted(frame: dict, X_sphere: np.ndarray) -> np.ndarray:
    """(N, 2) pixels of (N, 3) sphere-frame points with a converted frame's K and c2w."""
    K = np.asarray(frame["intrinsic_matrix"])[:3, :3]
    c2w = np.asarray(frame["transform_matrix"])
    x_cam = (X_sphere - c2w[:3, 3]) @ c2w[:3, :3]
    p = x_cam @ K.T
    return p[:, :2] / p[:, 2:]


def _assert_same_projection(src, dst, n_points: int = 200) -> None:
    """Converted cameras project random world points exactly like world_mat."""
    npz = np.load(src / "cameras_sphere.npz")
    frames = {}
    for name in ("transform_train.json", "transform_test.json"):
        if (dst / name).exists():
            for f in json.loads((dst / name).read_text())["frames"]:
                frames[f["file_path"]] = f
    images = sorted((src / "image").iterdir())
    rng = np.random.default_rng(0)
    for i, image in enumerate(images):
        P, S = npz[f"world_mat_{i}"], npz[f"scale_mat_{i}"]
        # Points around the object (inside twice its bounding sphere), in world units.
        X_s = rng.uniform(-1.0, 1.0, size=(n_points, 3))
        X_w = X_s @ S[:3, :3].T + S[:3, 3]
        p = np.c_[X_w, np.ones(n_points)] @ P[:3].T
        expected = p[:, :2] / p[:, 2:]
        got = _project_converted(frames[f"images/{image.stem}.png"], X_s)
        # Relative 1e-6: float64 RQ and inverse are exact to ~1e-12 relative; the JSON keeps
        # full float64 precision (repr round trip).
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def _assert_same_scene(src_scene, dst_scene) -> None:
    """Same cameras in the normalized frame, same internal K, same images and masks."""
    by_name = {v.name.split("/")[-1]: v for v in dst_scene.views}
    assert len(by_name) == len(src_scene.views)
    for va in src_scene.views:
        vb = by_name[va.name]
        ca = src_scene.normalization.c2w_to_normalized(va.c2w)
        cb = dst_scene.normalization.c2w_to_normalized(vb.c2w)
        # Both are exact float64 decompositions of the same projections: 1e-6 is loose.
        np.testing.assert_allclose(cb, ca, atol=1e-6)
        np.testing.assert_allclose(vb.K, va.K, rtol=1e-6)
        assert (vb.width, vb.height) == (va.width, va.height)


def test_convert_synthetic_neus_folder(tmp_path):
    src, _, _ = write_neus_folder(tmp_path / "src", n=6)
    dst = tmp_path / "dst"
    paths = convert_neus(src, dst, test_views=(1, 4), progress=False)
    assert paths[:2] == [dst / "transform_train.json", dst / "transform_test.json"]
    meta = json.loads((dst / "transform_train.json").read_text())
    assert meta["from_na"] is True and meta["integer_pixel_centers"] is True
    assert meta["scale"] == 0.5 and meta["offset"] == [0.5, 0.5, 0.5] and meta["aabb_scale"] == 1
    assert (meta["w"], meta["h"]) == (40, 30)
    assert [f["file_path"] for f in meta["frames"]] == [f"images/{i:06d}.png" for i in (0, 2, 3, 5)]
    _assert_same_projection(src, dst)
    src_scene, dst_scene = load_scene(src, test_views=(1, 4)), load_scene(dst)
    _assert_same_scene(src_scene, dst_scene)
    assert [v.name for v in dst_scene.test_views] == ["images/000001", "images/000004"]
    # RGBA output: colour from image/, alpha from mask/.
    rgba = iio.imread(dst / "images" / "000002.png")
    np.testing.assert_array_equal(rgba[..., :3], iio.imread(src / "image" / "000002.png"))
    np.testing.assert_array_equal(rgba[..., 3], iio.imread(src / "mask" / "002.png")[..., 0])
    assert not list(dst.rglob("*.tmp"))  # atomic writes leave no temp files


def test_convert_no_split_and_overwrite_rules(tmp_path):
    src, _, _ = write_neus_folder(tmp_path / "src", n=4)
    dst = tmp_path / "dst"
    convert_neus(src, dst, progress=False)
    with pytest.raises(UserError, match="not empty"):
        convert_neus(src, dst, progress=False)
    convert_neus(src, dst, split=False, overwrite=True, progress=False)
    assert not (dst / "transform_test.json").exists()
    assert len(json.loads((dst / "transform_train.json").read_text())["frames"]) == 4
    assert load_scene(dst).split == {"train": [0, 1, 2, 3], "test": []}
    with pytest.raises(UserError, match="not a NeuS"):
        convert_neus(dst, tmp_path / "again", progress=False)


def test_convert_dtu(dtu_scan24, tmp_path):
    dst = tmp_path / "dtu_neus2"
    convert_neus(dtu_scan24, dst, progress=False)
    _assert_same_projection(dtu_scan24, dst, n_points=50)
    src_scene, dst_scene = load_scene(dtu_scan24), load_scene(dst)
    _assert_same_scene(src_scene, dst_scene)
    assert len(dst_scene.test_views) == 7 and dst_scene.format == "neus2"


def test_cli_convert_success_and_refusal(tmp_path, capsys):
    src, _, _ = write_neus_folder(tmp_path / "src", n=4)
    assert run_cli(["convert-neus", str(src), str(tmp_path / "out"), "--test-views", "0,3"]) == 0
    assert "wrote 4 images" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "out" / "transform_test.json").read_text())["frames"]) == 2
    # Refusing a non-empty destination goes through the CLI's one-paragraph error path.
    proc = subprocess.run(
        [sys.executable, "-m", "neus2cli", "convert-neus", str(src), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = " ".join(proc.stderr.split())  # the paragraph is wrapped at 100 columns
    assert "not empty" in err and "--force" in err
    assert run_cli(["convert-neus", str(src), str(tmp_path / "out2"), "--test-views", "1,x"]) == 2
    assert "--test-views must be comma-separated" in " ".join(capsys.readouterr().err.split())


def test_convert_16bit_grayscale_images_and_masks(tmp_path):
    """16-bit grayscale images -> 8-bit RGB (round(x / 257) in every channel); 16-bit masks -> alpha."""
    from PIL import Image

    src, _, _ = write_neus_folder(tmp_path / "src", n=4)
    rng = np.random.default_rng(1)
    grays = {}
    for image, mask in zip(sorted((src / "image").iterdir()), sorted((src / "mask").iterdir()), strict=True):
        gray = rng.integers(0, 65536, (30, 40)).astype(np.uint16)
        Image.fromarray(gray).save(image)
        fg = iio.imread(mask)[..., 0] > 127
        Image.fromarray(np.where(fg, 65535, 0).astype(np.uint16)).save(mask)
        grays[image.stem] = (gray, fg)
    convert_neus(src, tmp_path / "dst", test_views=(1,), progress=False)
    for stem, (gray, fg) in grays.items():
        rgba = iio.imread(tmp_path / "dst" / "images" / f"{stem}.png")
        expected = ((gray.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # round(x * 255 / 65535)
        for c in range(3):
            np.testing.assert_array_equal(rgba[..., c], expected)
        np.testing.assert_array_equal(rgba[..., 3], np.where(fg, 255, 0))


def test_convert_builds_beside_dst_and_force_keeps_other_files(tmp_path):
    src, _, _ = write_neus_folder(tmp_path / "src", n=4)
    dst = tmp_path / "deep" / "dst"  # missing parents are created
    convert_neus(src, dst, test_views=(1,), progress=False)
    (tmp_path / "plain").mkdir()
    # Built in a temporary folder and renamed: the usual permissions, not a private temp folder's 0700.
    assert dst.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    (dst / "notes.txt").write_text("mine")
    (dst / "images" / "stale.png").write_bytes(b"old")
    (dst / "images" / "keep.txt").write_text("mine too")
    convert_neus(src, dst, split=False, overwrite=True, progress=False)
    assert (dst / "notes.txt").read_text() == "mine" and (dst / "images" / "keep.txt").exists()
    assert sorted(p.name for p in (dst / "images").glob("*.png")) == [f"{i:06d}.png" for i in range(4)]
    assert not (dst / "transform_test.json").exists()
    assert [p.name for p in dst.parent.iterdir()] == ["dst"]  # no temporary folder left beside it
