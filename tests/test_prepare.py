"""``neus2 prepare``: photos -> COLMAP scene. Bad input and a missing pycolmap always; real SfM where pycolmap is."""

from __future__ import annotations

import builtins
import importlib.util
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from tests.cli_table import Row, run_cli, run_row

HAS_PYCOLMAP = importlib.util.find_spec("pycolmap") is not None


def write_photos(folder: Path, n: int, size: int = 24) -> Path:
    """``n`` small random PNG photos in ``folder`` (enough for the input checks, not for SfM)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        iio.imwrite(folder / f"{i:03d}.png", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    return folder


def photos(n: int, edit=None):
    def setup(root: Path) -> dict[str, str]:
        folder = write_photos(root / "photos", n)
        if edit is not None:
            edit(folder)
        return {"photos": str(folder), "out": str(root / "out")}

    return setup


def truncate_one(folder: Path) -> None:
    path = folder / "001.png"
    path.write_bytes(path.read_bytes()[:60])  # the header still reads; the pixels do not


def heic_only(root: Path) -> dict[str, str]:
    folder = root / "p"
    folder.mkdir()
    (folder / "a.heic").write_bytes(b"not decoded: only the extension matters")
    return {"photos": str(folder), "out": str(root / "out")}


def out_untouched(values: dict[str, str]) -> None:
    out = Path(values["out"])
    assert not out.exists() or [p.name for p in out.iterdir()] == ["mine.txt"]
    assert not [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def out_not_empty(root: Path) -> dict[str, str]:
    values = photos(3)(root)
    Path(values["out"]).mkdir()
    (Path(values["out"]) / "mine.txt").write_text("keep")
    return values


ROWS = [
    Row("missing folder", ("prepare", "{root}/nope", "{root}/out"), ("nope", "does not exist")),
    Row(
        "a file, not a folder",
        ("prepare", "{photos}/000.png", "{out}"),
        ("000.png", "must be a folder"),
        setup=photos(3),
    ),
    Row(
        "two photos",
        ("prepare", "{photos}", "{out}"),
        ("found 2 photo(s)", "at least 3"),
        setup=photos(2),
        check=out_untouched,
    ),
    Row(
        "other formats are named",
        ("prepare", "{photos}", "{out}"),
        ("found 0 photo(s)", "other file(s) skipped", "a.heic", "convert other formats"),
        setup=heic_only,
    ),
    Row(
        "unreadable photo",
        ("prepare", "{photos}", "{out}"),
        ("001.png", "cannot be decoded", "1 of the 3 photos"),
        setup=photos(3, truncate_one),
        check=out_untouched,
    ),
    Row(
        "out not empty",
        ("prepare", "{photos}", "{out}"),
        ("out is not empty", "new folder"),
        setup=out_not_empty,
        check=out_untouched,
    ),
    Row(
        "unknown camera model",
        ("prepare", "{photos}", "{out}", "--camera-model", "FISHEYE"),
        ("--camera-model fisheye", "simple_radial"),
        setup=photos(3),
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_bad_input(row, tmp_path):
    run_row(row, tmp_path)


def test_missing_pycolmap_names_the_extra(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_pycolmap(name, *args, **kwargs):
        if name == "pycolmap":
            raise ImportError("No module named 'pycolmap'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pycolmap)
    folder = write_photos(tmp_path / "photos", 3)
    result = run_cli(["prepare", str(folder), str(tmp_path / "out")])
    assert result.code == 2
    assert "neus2cli[colmap]" in result.err and "pycolmap" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not HAS_PYCOLMAP, reason="pycolmap not installed (pip install 'neus2cli[colmap]')")
def test_photos_that_cannot_be_posed_are_a_user_error(tmp_path):
    # Independent noise images: features, but no two photos of one scene (~2 s).
    folder = write_photos(tmp_path / "photos", 4, size=64)
    result = run_cli(["prepare", str(folder), str(tmp_path / "out"), "--no-progress"])
    assert result.code == 2 and "could not pose the photos" in result.text and "Traceback" not in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no OUT, no temporary folder


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares s, R, t with dst ~ s R src + t for (N, 3) point sets (Umeyama 1991)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    u, sv, vt = np.linalg.svd(xd.T @ xs / len(src))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    scale = float((sv * np.diag(d)).sum() / (xs**2).sum(1).mean())
    return scale, rot, mu_d - scale * rot @ mu_s


@pytest.mark.skipif(not HAS_PYCOLMAP, reason="pycolmap not installed (pip install 'neus2cli[colmap]')")
@pytest.mark.slow
def test_sfm_recovers_the_generator_cameras(tmp_path):
    """20 rendered views of a speckled blob -> prepare -> the loader's cameras = the generator's, up to similarity.

    About 20 s on two CPU cores (5 s rendering, 15 s SfM).
    """
    from data_tools.camera_paths import CameraRig
    from data_tools.generate import generate_static_scene
    from data_tools.render_mesh import Shading
    from neus2cli.data.loader import load_scene
    from tests.scenes import speckled_blob

    # 20 views over elevations -10..50 degrees are ~25 degrees apart: SIFT matches across that
    # (at ~40 degrees, with 16 views over -30..60, COLMAP posed only half of them).
    scene = generate_static_scene(
        speckled_blob(),
        tmp_path / "gen",
        n_views=20,
        n_test=0,
        width=384,
        height=384,
        rig=CameraRig(layout="sphere", min_elevation_deg=-10, max_elevation_deg=50),
        shading=Shading(supersample=1),
        progress=False,
    )
    truth = load_scene(scene)
    folder = tmp_path / "photos"
    folder.mkdir()
    for view in truth.views:  # plain photos: composited over grey, no alpha
        rgba = iio.imread(view.image_path).astype(np.float64) / 255
        rgb = rgba[..., :3] * rgba[..., 3:] + 0.5 * (1 - rgba[..., 3:])
        iio.imwrite(folder / f"{Path(view.name).name}.png", (rgb * 255 + 0.5).astype(np.uint8))

    out = tmp_path / "scene"
    result = run_cli(["prepare", str(folder), str(out)])
    assert result.code == 0, result.err
    assert "posed 20 of 20 photos" in result.text and "registering photos" in result.err
    assert run_cli(["inspect", str(out)]).code == 0

    posed = load_scene(out)  # what `neus2 train OUT` reads
    assert posed.format == "colmap" and len(posed.views) == 20
    by_name = {Path(v.name).name: v for v in truth.views}
    true_c2w = np.stack([by_name[v.name].c2w for v in posed.views])
    c2w = np.stack([v.c2w for v in posed.views])
    scale, rot, shift = _similarity(c2w[:, :3, 3], true_c2w[:, :3, 3])
    centres = scale * c2w[:, :3, 3] @ rot.T + shift
    distance = np.linalg.norm(true_c2w[:, :3, 3], axis=1).mean()  # 2.75 object radii
    centre_err = np.linalg.norm(centres - true_c2w[:, :3, 3], axis=1).max() / distance
    cos = (np.einsum("nij,nij->n", rot @ c2w[:, :3, :3], true_c2w[:, :3, :3]) - 1) / 2
    rot_err = np.degrees(np.arccos(np.clip(cos, -1, 1))).max()
    focal_err = abs(posed.views[0].K[0, 0] / truth.views[0].K[0, 0] - 1)
    # Measured: 0.2 % of the camera distance, 0.19 degrees, focal 0.2 % (COLMAP's mean reprojection
    # error is ~0.13 px on these renders). The bounds are 5x that: a wrong convention (a transposed
    # rotation, a flipped axis, c2w taken for w2c) gives tens of percent and degrees.
    print(
        f"centres {100 * centre_err:.2f} % of the distance, rotations {rot_err:.2f} deg, focal {100 * focal_err:.2f} %"
    )
    assert centre_err < 0.01 and rot_err < 1.0 and focal_err < 0.01
