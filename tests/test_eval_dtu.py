"""The official DTU protocol on small synthetic ObsMask / Plane / STL files (neus2cli.eval.dtu)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh
from scipy.io import savemat

from neus2cli.errors import UserError
from neus2cli.eval.dtu import (
    ObsMask,
    above_plane,
    evaluate_dtu_official,
    find_dtu_files,
    in_observed_region,
    load_obs_mask,
)
from neus2cli.eval.geometry import GeometryOptions

SCAN = 7
D1 = 0.3  # height of the good prediction above the STL surface, mm


def grid(lo: float, hi: float, step: float, z: float) -> np.ndarray:
    """(n, 3) points of a square grid [lo, hi]^2 at height z."""
    t = np.arange(lo, hi + step / 2, step)
    x, y = np.meshgrid(t, t, indexing="ij")
    return np.stack([x.ravel(), y.ravel(), np.full(x.size, z)], axis=1)


def make_dtu_dir(root: Path, *, observed_x_max: int = 22, plane_height: float = 5.0) -> Path:
    """A tiny DTU evaluation folder in the official layout.

    Voxels of 1 mm over BB = [0, 40]^3, observed for x-index <= observed_x_max; STL points:
    an object surface (0.5 mm grid on [0, 20]^2 at z = 10) and a table (1 mm grid on [0, 40]^2
    at z = 2); the ground plane z = plane_height.
    """
    (root / "ObsMask").mkdir(parents=True)
    (root / "Points" / "stl").mkdir(parents=True)
    mask = np.zeros((41, 41, 41), dtype=np.uint8)
    mask[: observed_x_max + 1] = 1
    savemat(
        root / "ObsMask" / f"ObsMask{SCAN}_10.mat",
        {"ObsMask": mask, "BB": [[0, 0, 0], [40, 40, 40]], "Res": [[1.0]]},
    )
    savemat(root / "ObsMask" / f"Plane{SCAN}.mat", {"P": np.array([[0.0], [0.0], [1.0], [-plane_height]])})
    stl = np.concatenate([grid(0, 20, 0.5, 10.0), grid(0, 40, 1.0, 2.0)])
    trimesh.PointCloud(stl).export(root / "Points" / "stl" / f"stl{SCAN:03}_total.ply")
    return root


def make_prediction(path: Path) -> Path:
    """Good surface D1 above the object; an unobserved blob 10 mm above the table; 2 far observed outliers."""
    good = grid(0, 20, 0.5, 10.0 + D1)  # 1681 points, each right above an STL point
    blob = grid(30, 35, 1.0, 12.0)  # 36 points at x >= 30: unobserved; 10 mm above table points
    outliers = np.array([[5.0, 5.0, 35.0], [6.0, 6.0, 35.0]])  # observed, 25 mm from the STL
    np.save(path, np.concatenate([good, blob, outliers]))
    return path


N_GOOD, N_BLOB, N_OUT, N_STL_OBJECT = 41 * 41, 36, 2, 41 * 41


def test_official_protocol_masks_and_plane(tmp_path):
    dtu = make_dtu_dir(tmp_path / "dtu")
    pred = make_prediction(tmp_path / "pred.npy")
    m = evaluate_dtu_official(pred, dtu, SCAN, GeometryOptions(thresholds=[1.0]))
    # Accuracy: only observed points (the good surface + 2 outliers); the outliers are 25 mm away,
    # beyond max_dist = 20, so they leave the mean: exactly D1.
    assert m.accuracy == pytest.approx(D1, abs=1e-6)  # float32 PLY coordinates
    # Completeness: STL points above the plane z = 5 (the object, not the table), each D1 below
    # a predicted point.
    assert m.completeness == pytest.approx(D1, abs=1e-6)
    assert m.chamfer == pytest.approx(D1, abs=1e-6)
    assert m.n_pred_points == N_GOOD + N_OUT and m.n_gt_points == N_STL_OBJECT
    # The far outliers are misses for the F-score.
    assert m.precision["1"] == pytest.approx(N_GOOD / (N_GOOD + N_OUT))
    assert m.recall["1"] == 1.0
    assert m.units == "mm" and m.protocol == "dtu-official"


def test_without_the_observation_mask_the_blob_counts(tmp_path):
    dtu = make_dtu_dir(tmp_path / "dtu", observed_x_max=40)  # everything observed
    m = evaluate_dtu_official(make_prediction(tmp_path / "pred.npy"), dtu, SCAN)
    # The blob now counts, each point 10 mm above a table point (on the 1 mm grid).
    assert m.accuracy == pytest.approx((N_GOOD * D1 + N_BLOB * 10.0) / (N_GOOD + N_BLOB), abs=1e-5)
    assert m.n_pred_points == N_GOOD + N_BLOB + N_OUT
    assert m.thresholds == [1.0]  # the DTU default


def test_without_the_ground_plane_the_table_counts(tmp_path):
    dtu = make_dtu_dir(tmp_path / "dtu", plane_height=1.0)  # the table (z = 2) is now above it
    m = evaluate_dtu_official(make_prediction(tmp_path / "pred.npy"), dtu, SCAN)
    assert m.n_gt_points == N_STL_OBJECT + 41 * 41
    assert m.completeness > 2 * D1


def test_voxel_rounding_and_plane_side():
    obs = ObsMask(mask=np.zeros((41, 41, 41), bool), bb=np.array([[0.0, 0, 0], [40, 40, 40]]), res=1.0)
    obs.mask[:23] = True
    pts = np.array([[22.4, 1, 1], [22.6, 1, 1], [-0.4, 1, 1], [-0.6, 1, 1], [40.4, 1, 1]])
    # Nearest voxel centre: 22.4 -> 22 (observed), 22.6 -> 23 (not), -0.4 -> 0, -0.6 -> -1 (off the grid).
    np.testing.assert_array_equal(in_observed_region(pts, obs), [True, False, True, False, False])
    np.testing.assert_array_equal(
        above_plane(np.array([[0, 0, 6.0], [0, 0, 4.0]]), np.array([0, 0, 1, -5.0])), [True, False]
    )


def test_mesh_prediction_is_sampled_and_thinned(tmp_path):
    dtu = make_dtu_dir(tmp_path / "dtu")
    v = np.array([[0, 0, 10 + D1], [20, 0, 10 + D1], [20, 20, 10 + D1], [0, 20, 10 + D1]], dtype=np.float64)
    trimesh.Trimesh(v, [[0, 1, 2], [0, 2, 3]], process=False).export(tmp_path / "pred.ply")
    m = evaluate_dtu_official(tmp_path / "pred.ply", dtu, SCAN)
    # Random points D1 above a 0.5 mm STL grid: the sideways offset to the nearest grid point is at
    # most 0.25 * sqrt(2), so every distance lies in [D1, sqrt(D1^2 + 0.125)].
    assert D1 <= m.accuracy <= np.sqrt(D1**2 + 0.125)
    # Thinned to 0.2 mm from 25 points per mm^2 over 400 mm^2 (10,000 samples): kept points are
    # > 0.2 apart, and every sample lies within 0.2 of one, so discs of radius 0.2 around the kept
    # points cover the samples, which spread over the square (largest empty circle ~0.35 mm): at
    # least half of 400 / (pi 0.2^2) kept points.
    assert 0.5 * 400 / (np.pi * 0.04) <= m.n_pred_points < 10_000


def test_missing_files_and_bad_mat(tmp_path):
    with pytest.raises(UserError, match="ObsMask"):
        find_dtu_files(tmp_path, SCAN)
    dtu = make_dtu_dir(tmp_path / "dtu")
    savemat(dtu / "ObsMask" / f"ObsMask{SCAN}_10.mat", {"Mask": np.zeros((2, 2, 2))})
    with pytest.raises(UserError, match="lacks ObsMask, BB, Res"):
        load_obs_mask(find_dtu_files(dtu, SCAN).obs_mask)
    dtu = make_dtu_dir(tmp_path / "dtu2")
    (dtu / "ObsMask" / f"Plane{SCAN}.mat").write_text("not a mat file")
    with pytest.raises(UserError, match="could not read"):
        evaluate_dtu_official(make_prediction(tmp_path / "p.npy"), dtu, SCAN)


def test_prediction_outside_the_observed_region(tmp_path):
    dtu = make_dtu_dir(tmp_path / "dtu")
    np.save(tmp_path / "p.npy", grid(30, 38, 1.0, 12.0))  # only the unobserved blob
    with pytest.raises(UserError, match="observed region"):
        evaluate_dtu_official(tmp_path / "p.npy", dtu, SCAN)
