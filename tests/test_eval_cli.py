"""``neus2 evaluate`` end to end: JSON output, the table, and each user error (exit 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

JSON_KEYS = {
    "accuracy",
    "completeness",
    "chamfer",
    "fscore",
    "precision",
    "recall",
    "thresholds",
    "normal_consistency",
    "n_pred_points",
    "n_gt_points",
    "units",
}


def neus2(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "neus2cli", "evaluate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def spheres(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("spheres")
    trimesh.creation.icosphere(4, radius=1.0).export(root / "pred.ply")
    trimesh.creation.icosphere(4, radius=1.05).export(root / "gt.ply")
    return root / "pred.ply", root / "gt.ply"


def test_json_output(spheres, tmp_path):
    pred, gt = spheres
    out = neus2(
        pred,
        "--gt",
        gt,
        "--json",
        "-t",
        "0.01",
        "-t",
        "0.1",
        "--n-points",
        "20000",
        "--plot",
        tmp_path / "e.ply",
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)  # stdout holds the JSON object and nothing else
    assert JSON_KEYS <= set(result)
    assert result["thresholds"] == [0.01, 0.1]
    assert set(result["fscore"]) == set(result["precision"]) == set(result["recall"]) == {"0.01", "0.1"}
    # Radius gap 0.05: nothing within 0.01, everything within 0.1 (see test_eval_geometry).
    assert result["fscore"]["0.01"] == 0.0 and result["fscore"]["0.1"] == 1.0
    assert result["accuracy"] == pytest.approx(0.05, abs=0.005)
    assert result["n_pred_points"] == result["n_gt_points"] == 20000
    assert result["units"] == "GT units"
    assert len(trimesh.load(tmp_path / "e.ply", process=False).visual.vertex_colors) == 2562


def test_table_output_names_the_units(spheres):
    pred, gt = spheres
    out = neus2(pred, "--gt", gt, "--n-points", "5000", "--units", "mm")
    assert out.returncode == 0, out.stderr
    assert "Chamfer-L1 (mm)" in out.stdout and "F-score @ 0.036 mm" in out.stdout  # 1% of 2.1 * sqrt(3)


def test_dtu_official_via_the_cli(tmp_path):
    from tests.test_eval_dtu import D1, SCAN, make_dtu_dir, make_prediction

    dtu = make_dtu_dir(tmp_path / "dtu")
    out = neus2(make_prediction(tmp_path / "p.npy"), "--dtu-official", dtu, "--scan", SCAN, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["accuracy"] == pytest.approx(D1, abs=1e-6) and result["units"] == "mm"


def _empty_mesh(path: Path) -> Path:
    path.write_text(
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        "element face 0\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n"
    )
    return path


ERROR_CASES = {
    "missing": (lambda d, gt: [d / "nope.ply", "--gt", gt], "does not exist"),
    "unreadable": (lambda d, gt: [_write(d / "bad.ply", "garbage"), "--gt", gt], "could not read"),
    "empty mesh": (lambda d, gt: [_empty_mesh(d / "empty.ply"), "--gt", gt], "no faces"),
    "empty cloud": (lambda d, gt: [_npy(d / "empty.npy", np.zeros((0, 3))), "--gt", gt], "no points"),
    "units": (lambda d, gt: [_sphere(d / "big.ply", 100.0), "--gt", gt], "--scale-mat"),
    "no overlap": (lambda d, gt: [_sphere(d / "far.ply", 1.0, [10, 0, 0]), "--gt", gt], "do not overlap"),
    "bad scale mat": (
        lambda d, gt: [_sphere(d / "s.ply", 1.0), "--gt", gt, "--scale-mat", _npz(d / "cams.npz")],
        "scale_mat_0",
    ),
    "no gt": (lambda d, gt: [gt], "--gt"),
    "dtu without scan": (lambda d, gt: [gt, "--dtu-official", d], "--scan"),
    "folder without checkpoint": (lambda d, gt: [d], "checkpoint"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_user_errors(case, spheres, tmp_path):
    # In-process, through the console script's entry point (tests/cli_table.run_cli: the same exit code,
    # stdout and stderr), not an interpreter per case; the tests above run `neus2 evaluate` as a process.
    from tests.cli_table import run_cli

    make_args, phrase = ERROR_CASES[case]
    result = run_cli(["evaluate", *map(str, make_args(tmp_path, spheres[1]))])
    out = subprocess.CompletedProcess(None, result.code, result.out, result.err)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert phrase in " ".join(out.stderr.split())  # the message is wrapped to 100 columns
    assert out.stdout == ""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _npy(path: Path, arr: np.ndarray) -> Path:
    np.save(path, arr)
    return path


def _npz(path: Path) -> Path:
    np.savez(path, world_mat_0=np.eye(4))
    return path


def _sphere(path: Path, radius: float, offset=(0.0, 0.0, 0.0)) -> Path:
    m = trimesh.creation.icosphere(2, radius=radius)
    m.apply_translation(offset)
    m.export(path)
    return path
