"""The official DTU MVS evaluation protocol (Jensen et al., CVPR 2014), from its public description.

Needs DTU's evaluation files for scan ``N`` under one folder (the layout of
DTU's "SampleSet/MVS Data" plus the STL point clouds)::

    DIR/ObsMask/ObsMask{N}_10.mat   ObsMask (X, Y, Z) bool voxels that the scanner observed,
                                    BB (2, 3) [min, max] corner in mm, Res voxel size in mm
    DIR/ObsMask/Plane{N}.mat        P (4,) ground plane: [x, y, z, 1] . P > 0 above the table
    DIR/Points/stl/stl{N:03}_total.ply   the structured-light (STL) reference points, in mm

(``Plane{N}.mat`` may also sit in ``DIR/Calibration``, and each file directly in ``DIR``.)

Protocol, all in DTU world millimetres:

1. The prediction (mapped with ``--scale-mat`` if it is in NeuS's unit-sphere
   frame) is sampled by area and thinned to 0.2 mm spacing (greedy radius).
2. Accuracy uses only prediction points that are in the observed region: within
   ``BB`` expanded by ``patch`` (60 mm) and in a voxel ``round((p - BB[0]) / Res)``
   that is set in ``ObsMask``. Distance to the nearest STL point.
3. Completeness uses the STL points above the ground plane; distance to the
   nearest prediction point within the expanded box.
4. Means leave out distances of ``max_dist`` (20 mm) or more (outliers are
   dropped, not clipped); Chamfer ("overall") is the mean of the two.

Precision / recall (not part of DTU's original protocol) are fractions of the same
point sets within each threshold, with far points counted as misses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neus2cli.errors import UserError
from neus2cli.eval.geometry import (
    GeometryMetrics,
    GeometryOptions,
    PointSample,
    ProgressFn,
    check_units,
    downsample,
    load_geometry,
    metrics_from_distances,
    nearest,
    prepare_prediction,
    sample_surface,
    write_error_plot,
)

DTU_SPACING_MM = 0.2
"""Point spacing the prediction is thinned to, as in DTU's evaluation."""

DTU_MAX_DIST_MM = 20.0
"""Distances at or above this are left out of the means."""

DTU_PATCH_MM = 60.0
"""Margin around ``BB`` inside which prediction points take part."""

DTU_THRESHOLDS_MM = (1.0,)
"""Default F-score threshold for the DTU protocol."""


@dataclass
class ObsMask:
    """DTU's observability mask for one scan.

    Attributes:
        mask: (X, Y, Z) bool, True where the scanner observed the surface.
        bb: (2, 3) float64 [min, max] corner of the voxel grid, mm; voxel (i, j, k)
            is centred at ``bb[0] + res * (i, j, k)``.
        res: voxel size, mm.
    """

    mask: np.ndarray
    bb: np.ndarray
    res: float


@dataclass
class DTUFiles:
    """Paths of one scan's evaluation files."""

    obs_mask: Path
    plane: Path
    stl: Path


def find_dtu_files(dtu_dir: str | Path, scan: int) -> DTUFiles:
    """Locate ``ObsMask{scan}_10.mat``, ``Plane{scan}.mat`` and ``stl{scan:03}_total.ply``.

    Raises:
        UserError: a file is missing (the message lists the places looked in).
    """
    root = Path(dtu_dir)
    if not root.is_dir():
        raise UserError("the --dtu-official folder does not exist.", path=root)
    candidates = {
        "obs_mask": [f"ObsMask/ObsMask{scan}_10.mat", f"ObsMask{scan}_10.mat"],
        "plane": [f"ObsMask/Plane{scan}.mat", f"Calibration/Plane{scan}.mat", f"Plane{scan}.mat"],
        "stl": [
            f"Points/stl/stl{scan:03}_total.ply",
            f"stl/stl{scan:03}_total.ply",
            f"stl{scan:03}_total.ply",
        ],
    }
    found = {}
    for name, rels in candidates.items():
        hit = next((root / r for r in rels if (root / r).is_file()), None)
        if hit is None:
            raise UserError(
                f"DTU evaluation file for scan {scan} not found; looked for {', '.join(rels)}.",
                path=root,
                hint="Download DTU's SampleSet (ObsMask, Plane) and the STL point clouds (Points/stl) "
                "and arrange them as DIR/ObsMask/ObsMask{N}_10.mat, DIR/ObsMask/Plane{N}.mat, "
                "DIR/Points/stl/stl{NNN}_total.ply.",
            )
        found[name] = hit
    return DTUFiles(**found)


def _loadmat(path: Path, keys: tuple[str, ...]) -> dict:
    from scipy.io import loadmat

    try:
        data = loadmat(path)
    except Exception as err:
        raise UserError(f"could not read the MATLAB file ({err}).", path=path) from err
    missing = [k for k in keys if k not in data]
    if missing:
        raise UserError(f"the MATLAB file lacks {', '.join(missing)}.", path=path)
    return data


def load_obs_mask(path: str | Path) -> ObsMask:
    """Read ``ObsMask{N}_10.mat`` (keys ``ObsMask``, ``BB``, ``Res``)."""
    path = Path(path)
    data = _loadmat(path, ("ObsMask", "BB", "Res"))
    mask = np.asarray(data["ObsMask"]).astype(bool)
    bb = np.asarray(data["BB"], dtype=np.float64)
    res = float(np.asarray(data["Res"], dtype=np.float64).ravel()[0])
    if mask.ndim != 3 or bb.shape != (2, 3) or not res > 0:
        raise UserError(
            f"unexpected ObsMask contents: ObsMask {mask.shape}, BB {bb.shape}, Res {res}; "
            "expected a 3D mask, a (2, 3) box and a positive voxel size.",
            path=path,
        )
    return ObsMask(mask=mask, bb=bb, res=res)


def load_ground_plane(path: str | Path) -> np.ndarray:
    """Read ``Plane{N}.mat`` (key ``P``): (4,) float64 plane, ``[x, y, z, 1] . P > 0`` above it."""
    path = Path(path)
    plane = np.asarray(_loadmat(path, ("P",))["P"], dtype=np.float64).ravel()
    if plane.shape != (4,):
        raise UserError(f"the ground plane P has {plane.size} numbers, expected 4.", path=path)
    return plane


def in_expanded_box(points: np.ndarray, obs: ObsMask, patch: float = DTU_PATCH_MM) -> np.ndarray:
    """(N,) bool: (N, 3) mm points within ``obs.bb`` grown by ``patch`` on every side."""
    return np.all((points >= obs.bb[0] - patch) & (points <= obs.bb[1] + patch), axis=1)


def in_observed_region(points: np.ndarray, obs: ObsMask) -> np.ndarray:
    """(N,) bool: (N, 3) mm points whose nearest voxel centre is set in ``obs.mask``.

    The voxel of p is ``floor((p - bb[0]) / res + 0.5)`` (rounding to the nearest
    centre); points outside the grid are not observed.
    """
    idx = np.floor((points - obs.bb[0]) / obs.res + 0.5).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(obs.mask.shape)), axis=1)
    out = np.zeros(points.shape[0], dtype=bool)
    i = idx[inside]
    out[inside] = obs.mask[i[:, 0], i[:, 1], i[:, 2]]
    return out


def above_plane(points: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """(N,) bool: ``[x, y, z, 1] . plane > 0`` for (N, 3) points."""
    return points @ plane[:3] + plane[3] > 0


def evaluate_dtu_official(
    pred_path: str | Path,
    dtu_dir: str | Path,
    scan: int,
    options: GeometryOptions | None = None,
    *,
    max_dist: float = DTU_MAX_DIST_MM,
    patch: float = DTU_PATCH_MM,
    on_progress: ProgressFn | None = None,
) -> GeometryMetrics:
    """Score a prediction against DTU scan ``scan`` with the official protocol (see module doc).

    Args:
        pred_path: predicted mesh or point cloud, in DTU world mm (or in the unit-sphere
            frame together with ``options.scale_mat``).
        dtu_dir: folder with ``ObsMask/``, ``Points/stl/`` (see ``find_dtu_files``).
        scan: DTU scan number.
        options: sampling options. ``downsample`` defaults to 0.2 mm (0 disables) with
            the ``"radius"`` method, ``density`` to one point per spacing^2,
            ``thresholds`` to 1 mm; ``crop`` and ``clip`` are not used by this protocol.
        max_dist: distances at or above it are left out of the means (mm).
        patch: margin around the mask's box for prediction points (mm).
        on_progress: ``(stage, fraction)`` callback.

    Returns:
        GeometryMetrics in mm, protocol ``"dtu-official"``.
    """
    options = options or GeometryOptions()
    if options.crop is not None or options.clip is not None:
        raise ValueError("evaluate_dtu_official: options.crop and options.clip are not part of the DTU protocol")
    report = on_progress or (lambda stage, fraction: None)
    files = find_dtu_files(dtu_dir, scan)

    report("loading", 0.0)
    obs = load_obs_mask(files.obs_mask)
    plane = load_ground_plane(files.plane)
    stl_geom = load_geometry(files.stl, what="DTU STL point cloud")
    stl = PointSample(stl_geom.points, stl_geom.normals)
    pred = prepare_prediction(pred_path, options)
    if options.check_units:
        check_units(pred.points, stl.points, pred_path=Path(pred_path))

    spacing = DTU_SPACING_MM if options.downsample is None else float(options.downsample)
    density = options.density
    if options.n_points is None and density is None and spacing > 0:
        # About as dense as DTU's per-triangle grid (one point per spacing^2) before thinning.
        density = 1.0 / spacing**2
    report("sampling the prediction", 0.1)
    pred_s = sample_surface(pred, n_points=options.n_points, density=density, seed=options.seed)
    if spacing > 0:
        report("downsampling", 0.3)
        pred_s = downsample(pred_s, spacing, method=options.downsample_method or "radius", seed=options.seed)

    in_box = in_expanded_box(pred_s.points, obs, patch)
    observed = in_box & in_observed_region(pred_s.points, obs)
    if not observed.any():
        raise UserError(
            f"no prediction point lies in the observed region of DTU scan {scan}.",
            path=Path(pred_path),
            hint="Check --scan; a mesh in NeuS's unit-sphere frame needs --scale-mat cameras_sphere.npz.",
        )
    pred_obs, pred_box = pred_s.subset(observed), pred_s.subset(in_box)
    stl_above = stl.subset(above_plane(stl.points, plane))
    if len(stl_above) == 0:
        raise UserError("no STL point lies above the ground plane.", path=files.plane)

    thresholds = list(options.thresholds) if options.thresholds else list(DTU_THRESHOLDS_MM)
    # Distances of max_dist or more are dropped from the means and are misses for every
    # threshold, so the search can stop there (+inf); this keeps far outliers cheap.
    bound = max(max_dist, max(thresholds))
    report("accuracy (prediction -> STL)", 0.5)
    d_acc, i_acc = nearest(pred_obs.points, stl.points, max_distance=bound)
    report("completeness (STL -> prediction)", 0.7)
    d_comp, i_comp = nearest(stl_above.points, pred_box.points, max_distance=bound)

    nc = None
    if pred_s.normals is not None and stl.normals is not None:
        # Over the pairs closer than max_dist, like the means (others have no neighbour: -1).
        a, b = d_acc < max_dist, d_comp < max_dist
        if a.any() and b.any():
            nc_a = np.abs(np.einsum("ij,ij->i", pred_obs.normals[a], stl.normals[i_acc[a]])).mean()
            nc_b = np.abs(np.einsum("ij,ij->i", stl_above.normals[b], pred_box.normals[i_comp[b]])).mean()
            nc = float(0.5 * (nc_a + nc_b))
    metrics = metrics_from_distances(
        d_acc,
        d_comp,
        thresholds,
        drop_above=max_dist,
        normal_consistency=nc,
        units="mm",
        protocol="dtu-official",
    )
    if options.plot is not None:
        report("writing error plot", 0.9)
        valid = in_expanded_box(pred.points, obs, patch) & in_observed_region(pred.points, obs)
        write_error_plot(pred, stl.points, options.plot, max(thresholds), valid=valid)
    report("done", 1.0)
    return metrics
