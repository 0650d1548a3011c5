"""Geometry metrics: accuracy, completeness, Chamfer-L1, F-score and normal consistency.

A prediction and a ground truth (each a triangle mesh or a point cloud) are
turned into point samples -- meshes sampled uniformly by area, point clouds used
as they are -- optionally mapped to world units (``--scale-mat``), cropped to a
box and thinned to a fixed spacing; nearest-neighbour distances are then taken
both ways with ``scipy.spatial.cKDTree`` (all cores):

* accuracy     = mean over pred points of the distance to the nearest GT point,
* completeness = mean over GT points of the distance to the nearest pred point,
* Chamfer-L1   = (accuracy + completeness) / 2,
* precision(t) = fraction of pred points closer than ``t`` to the GT, recall(t)
  likewise for GT points, F(t) = 2PR / (P + R),
* normal consistency = mean |n_a . n_b| over nearest-neighbour pairs, averaged
  over both directions (only when both sides have normals).

All distances are in the units of the frame the points are compared in: the GT's
own frame (after ``--scale-mat`` for the prediction). ``neus2cli`` meshes are
already in the scene's world frame; NeuS-style meshes in the unit-sphere frame
need ``--scale-mat cameras_sphere.npz`` (``x_world = S[:3, :3] @ x + S[:3, 3]``).

The official DTU protocol (observation masks, ground plane) lives in
``neus2cli.eval.dtu`` and reuses the pieces here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from neus2cli.errors import UserError

ProgressFn = Callable[[str, float], None]
"""``on_progress(stage, fraction_done)``: called between stages of a long evaluation."""

DEFAULT_N_POINTS = 200_000
"""Points sampled on a mesh when neither a count nor a density is given."""

MAX_SAMPLES = 30_000_000
"""Refuse to sample more points than this (about 1.4 GB of float64 points and normals)."""

MESH_ONLY_SUFFIXES = {".obj", ".stl", ".off", ".glb", ".gltf", ".dae"}
POINT_TEXT_SUFFIXES = {".xyz", ".txt", ".pts"}


# --------------------------------------------------------------------------- types


@dataclass
class Geometry:
    """A loaded prediction or ground truth, in the frame of its file.

    Attributes:
        points: (N, 3) float64 mesh vertices or cloud points.
        faces: (F, 3) int64 triangle indices, or None for a point cloud.
        normals: (N, 3) float64 unit per-point normals of a point cloud, or None
            (meshes get face normals when they are sampled).
        path: the file it came from, for messages.
    """

    points: np.ndarray
    faces: np.ndarray | None = None
    normals: np.ndarray | None = None
    path: Path | None = None

    @property
    def is_mesh(self) -> bool:
        return self.faces is not None

    def transformed(self, matrix: np.ndarray) -> Geometry:
        """Apply the (4, 4) affine ``x' = M[:3, :3] @ x + M[:3, 3]``; normals by the inverse transpose."""
        points = apply_affine(self.points, matrix)
        normals = None
        if self.normals is not None:
            normals = _unit(self.normals @ np.linalg.inv(np.asarray(matrix, np.float64)[:3, :3]))
        return Geometry(points=points, faces=self.faces, normals=normals, path=self.path)


@dataclass
class PointSample:
    """Points compared by the metrics.

    Attributes:
        points: (N, 3) float64 points, in the evaluation frame.
        normals: (N, 3) float64 unit normals, or None when unknown.
    """

    points: np.ndarray
    normals: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def subset(self, index: np.ndarray) -> PointSample:
        """The points selected by a boolean mask or an index array."""
        return PointSample(self.points[index], None if self.normals is None else self.normals[index])


class InvalidOption(ValueError):
    """``GeometryOptions`` fields out of range: ``fields`` names them, ``reason`` says why (a command
    maps the fields to its own option names)."""

    def __init__(self, fields: str | tuple[str, ...], reason: str):
        self.fields = (fields,) if isinstance(fields, str) else tuple(fields)
        self.reason = reason
        super().__init__(" and ".join(f"GeometryOptions.{f}" for f in self.fields) + f" {reason}")


@dataclass
class GeometryOptions:
    """How ``evaluate_geometry`` (and the official DTU protocol) sample and compare.

    Attributes:
        thresholds: F-score thresholds, in evaluation units. None: 1% of the GT
            bounding-box diagonal, to two significant digits (DTU protocol: 1 mm).
        n_points: points sampled uniformly by area on each mesh (point clouds are
            used as they are). None: ``DEFAULT_N_POINTS`` unless ``density`` is set.
        density: points per unit area on each mesh, instead of a fixed count.
        seed: the prediction is sampled with ``seed``, the GT with ``seed + 1``,
            so that a mesh compared with itself shows the sampling noise floor.
        clip: distances above this are clipped to it before averaging accuracy
            and completeness (precision/recall use the unclipped distances).
        crop: (2, 3) [min, max] box in evaluation units; points outside it are
            dropped from both sides after sampling.
        scale_mat: a NeuS/IDR ``cameras_sphere.npz``; its ``scale_mat_{index}``
            maps the prediction from the unit-sphere frame to world units.
        scale_mat_index: which ``scale_mat_i`` to use.
        downsample: thin both samples to this point spacing (evaluation units);
            None or 0: no thinning.
        downsample_method: ``"voxel"`` (one point per cube of side ``downsample``,
            fast) or ``"radius"`` (greedy: no two kept points closer than it,
            as DTU's evaluation script does). None: voxel, radius for DTU.
        check_units: refuse to compare samples whose bounding boxes differ in size
            by more than 10x or do not overlap.
        units: the name of the evaluation units, reported with the numbers.
        plot: write the prediction with per-vertex error colours to this PLY.
    """

    thresholds: Sequence[float] | None = None
    n_points: int | None = None
    density: float | None = None
    seed: int = 0
    clip: float | None = None
    crop: np.ndarray | None = None
    scale_mat: Path | None = None
    scale_mat_index: int = 0
    downsample: float | None = None
    downsample_method: str | None = None
    check_units: bool = True
    units: str = "GT units"
    plot: Path | None = None

    def __post_init__(self) -> None:
        if self.n_points is not None and self.density is not None:
            raise InvalidOption(("n_points", "density"), "exclude each other: give one, not both")
        if self.n_points is not None and self.n_points < 1:
            raise InvalidOption("n_points", f"must be at least 1, got {self.n_points}")
        if self.density is not None and not self.density > 0:
            raise InvalidOption("density", f"must be a positive number, got {self.density}")
        if self.thresholds is not None:
            self.thresholds = [float(t) for t in self.thresholds]
            if not self.thresholds or any(not (np.isfinite(t) and t > 0) for t in self.thresholds):
                raise InvalidOption("thresholds", f"must be positive numbers, got {self.thresholds}")
        if self.clip is not None and not (self.clip > 0 and np.isfinite(self.clip)):
            raise InvalidOption("clip", f"must be a positive number, got {self.clip}")
        if self.crop is not None:
            crop = np.asarray(self.crop, dtype=np.float64).reshape(2, 3)
            if not np.isfinite(crop).all():
                raise InvalidOption(
                    "crop", f"must be six finite numbers XMIN YMIN ZMIN XMAX YMAX ZMAX, got {crop.ravel().tolist()}"
                )
            if np.any(crop[1] <= crop[0]):
                raise InvalidOption("crop", f"must be [min, max] with each min < max, got {crop.tolist()}")
            self.crop = crop
        if self.downsample is not None and not self.downsample >= 0:
            raise InvalidOption("downsample", f"must be >= 0, got {self.downsample}")
        if self.downsample_method not in (None, "voxel", "radius"):
            raise InvalidOption("downsample_method", f"must be 'voxel' or 'radius', got {self.downsample_method!r}")


@dataclass
class GeometryMetrics:
    """The result of a geometry evaluation (all distances in ``units``).

    ``precision``, ``recall`` and ``fscore`` map ``threshold_key(t)`` (e.g. ``"0.01"``)
    to a fraction in [0, 1]. ``normal_consistency`` is None when either side has
    no normals.
    """

    accuracy: float
    completeness: float
    chamfer: float
    thresholds: list[float]
    precision: dict[str, float]
    recall: dict[str, float]
    fscore: dict[str, float]
    normal_consistency: float | None
    n_pred_points: int
    n_gt_points: int
    units: str
    protocol: str = "sampled"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain JSON-ready data (the keys of ``neus2 evaluate --json``)."""
        return {
            "accuracy": self.accuracy,
            "completeness": self.completeness,
            "chamfer": self.chamfer,
            "fscore": dict(self.fscore),
            "precision": dict(self.precision),
            "recall": dict(self.recall),
            "thresholds": list(self.thresholds),
            "normal_consistency": self.normal_consistency,
            "n_pred_points": self.n_pred_points,
            "n_gt_points": self.n_gt_points,
            "units": self.units,
            "protocol": self.protocol,
        }


def threshold_key(t: float) -> str:
    """The dictionary key of a threshold: shortest exact-looking form, ``0.01`` -> ``"0.01"``."""
    return f"{float(t):g}"


# --------------------------------------------------------------------------- loading


def load_geometry(path: str | Path, *, what: str = "mesh") -> Geometry:
    """Read a triangle mesh or a point cloud.

    Meshes: anything trimesh reads (PLY, OBJ, STL, OFF, GLB). Point clouds: a PLY
    without faces (``nx, ny, nz`` vertex properties become normals), ``.xyz`` /
    ``.txt`` / ``.pts`` text with 3 (points) or 6 (points and normals) columns, or
    ``.npy`` arrays of shape (N, 3) or (N, 6).

    Args:
        path: the file.
        what: how to name it in error messages (``"prediction"``, ``"ground truth"``).

    Raises:
        UserError: missing or unreadable file, no points, a mesh with no faces,
            non-finite coordinates.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"the {what} file does not exist.", path=path)
    if path.is_dir():
        raise UserError(f"the {what} is a folder, expected a mesh or point-cloud file.", path=path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            try:
                array = np.load(path, allow_pickle=False)
            except ValueError as err:
                raise UserError(
                    f"could not read the {what} ({_numpy_read_error(err, '.npy array')}).", path=path
                ) from err
            geom = _cloud_from_array(array, path, what)
        elif suffix in POINT_TEXT_SUFFIXES:
            geom = _cloud_from_array(np.loadtxt(path, ndmin=2), path, what)
        else:
            geom = _load_with_trimesh(path, what)
    except UserError:
        raise
    except Exception as err:  # any parser error: the file is not what it claims to be
        raise UserError(
            f"could not read the {what} ({type(err).__name__}: {err}).",
            path=path,
            hint="Expected a mesh (PLY, OBJ, STL, OFF, GLB) or points (PLY, XYZ, NPY).",
        ) from err
    if geom.points.shape[0] == 0:
        raise UserError(f"the {what} is empty: it has no points.", path=path)
    if geom.faces is not None and geom.faces.shape[0] == 0:
        raise UserError(f"the {what} is an empty mesh: it has vertices but no faces.", path=path)
    if not np.all(np.isfinite(geom.points)):
        raise UserError(f"the {what} has non-finite (NaN or infinite) coordinates.", path=path)
    return geom


def _numpy_read_error(err: Exception, kind: str) -> str:
    """Why ``np.load`` failed, in the user's terms. Without ``allow_pickle`` numpy calls any file it does
    not recognise "pickled (object) data" and suggests loading it unsafely: advice not to pass on."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return f"it is not a NumPy {kind}"


def _cloud_from_array(arr: np.ndarray, path: Path, what: str) -> Geometry:
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] not in (3, 6):
        if arr.size == 0:
            return Geometry(points=np.zeros((0, 3)), path=path)
        raise UserError(
            f"the {what} array has shape {arr.shape}; expected (N, 3) points or (N, 6) points and normals.",
            path=path,
        )
    normals = _unit(arr[:, 3:6]) if arr.shape[1] == 6 else None
    return Geometry(points=np.ascontiguousarray(arr[:, :3]), normals=normals, path=path)


def _load_with_trimesh(path: Path, what: str) -> Geometry:
    import trimesh

    loaded = trimesh.load(path, process=False)
    if isinstance(loaded, trimesh.Scene):
        meshes = [g for g in loaded.geometry.values() if isinstance(g, trimesh.Trimesh)]
        if meshes:
            loaded = loaded.to_geometry() if len(meshes) > 1 or len(loaded.geometry) > 1 else meshes[0]
        else:
            clouds = [g for g in loaded.geometry.values() if isinstance(g, trimesh.PointCloud)]
            if not clouds:
                return Geometry(points=np.zeros((0, 3)), path=path)
            loaded = trimesh.PointCloud(np.concatenate([c.vertices for c in clouds]))
    if isinstance(loaded, trimesh.Trimesh):
        return Geometry(
            points=np.asarray(loaded.vertices, dtype=np.float64),
            faces=np.asarray(loaded.faces, dtype=np.int64).reshape(-1, 3),
            path=path,
        )
    if isinstance(loaded, trimesh.PointCloud):
        points = np.asarray(loaded.vertices, dtype=np.float64).reshape(-1, 3)
        raw = loaded.metadata.get("_ply_raw", {}) if hasattr(loaded, "metadata") else {}
        # trimesh returns a PointCloud for a PLY whose face element is empty: that is an
        # empty mesh (a failed extraction), not a point cloud.
        if "face" in raw or path.suffix.lower() in MESH_ONLY_SUFFIXES:
            return Geometry(points=points, faces=np.zeros((0, 3), np.int64), path=path)
        normals = None
        data = raw.get("vertex", {}).get("data", {})
        if isinstance(data, dict) and all(k in data for k in ("nx", "ny", "nz")):
            normals = _unit(np.stack([np.ravel(data[k]) for k in ("nx", "ny", "nz")], axis=1).astype(np.float64))
        return Geometry(points=points, normals=normals, path=path)
    raise UserError(f"the {what} holds a {type(loaded).__name__}, not a mesh or point cloud.", path=path)


# --------------------------------------------------------------------------- frames


def load_scale_mat(path: str | Path, index: int = 0) -> np.ndarray:
    """Read ``scale_mat_{index}`` from a NeuS/IDR ``cameras_sphere.npz``.

    Returns:
        (4, 4) float64 matrix mapping the unit-sphere (NeuS-normalized) frame to
        world units: ``x_world = S[:3, :3] @ x + S[:3, 3]``.

    Raises:
        UserError: unreadable file, missing key, wrong shape or a singular matrix.
    """
    path = Path(path)
    key = f"scale_mat_{index}"
    hint = "Pass the cameras_sphere.npz of the scene (NeuS/IDR layout), which holds scale_mat_0."
    if not path.is_file():
        raise UserError("the --scale-mat file does not exist.", path=path, hint=hint)
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:
        raise UserError(
            f"could not read the --scale-mat file ({_numpy_read_error(err, '.npz archive')}).", path=path, hint=hint
        ) from err
    if not isinstance(data, np.lib.npyio.NpzFile) or key not in data.files:
        found = ", ".join(sorted(data.files)[:8]) if isinstance(data, np.lib.npyio.NpzFile) else "a plain array"
        raise UserError(
            f"the --scale-mat file has no '{key}' array (found: {found or 'nothing'}).", path=path, hint=hint
        )
    mat = np.asarray(data[key], dtype=np.float64)
    if mat.shape == (3, 4):
        mat = np.vstack([mat, [0.0, 0.0, 0.0, 1.0]])
    if mat.shape != (4, 4) or not np.all(np.isfinite(mat)) or abs(np.linalg.det(mat[:3, :3])) < 1e-12:
        raise UserError(f"'{key}' in the --scale-mat file is not an invertible 4x4 matrix.", path=path, hint=hint)
    return mat


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(N, 3) points -> (N, 3) ``matrix[:3, :3] @ p + matrix[:3, 3]`` for a (4, 4) or (3, 4) matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape not in ((4, 4), (3, 4)):
        raise ValueError(f"matrix must be (4, 4) or (3, 4), got {matrix.shape}")
    return np.asarray(points, dtype=np.float64) @ matrix[:3, :3].T + matrix[:3, 3]


def sphere_to_world(points: np.ndarray, scale_mat: np.ndarray) -> np.ndarray:
    """(N, 3) NeuS unit-sphere points -> (N, 3) world points, with a (4, 4) ``scale_mat``."""
    return apply_affine(points, scale_mat)


def world_to_sphere(points: np.ndarray, scale_mat: np.ndarray) -> np.ndarray:
    """(N, 3) world points -> (N, 3) NeuS unit-sphere points (inverse of ``sphere_to_world``)."""
    return apply_affine(points, np.linalg.inv(np.asarray(scale_mat, dtype=np.float64)))


# --------------------------------------------------------------------------- sampling


def surface_area(geometry: Geometry) -> float:
    """Total triangle area of a mesh (squared units); 0 for a point cloud."""
    if not geometry.is_mesh:
        return 0.0
    tri = geometry.points[geometry.faces]
    return float(0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum())


def sample_surface(
    geometry: Geometry,
    *,
    n_points: int | None = None,
    density: float | None = None,
    seed: int = 0,
) -> PointSample:
    """Points uniformly distributed by area over a mesh, with their face normals.

    A point cloud is returned as it is (its normals too, if it has them).

    Args:
        geometry: the mesh or cloud.
        n_points: how many points (default ``DEFAULT_N_POINTS`` when ``density`` is None).
        density: points per unit area instead (``round(area * density)``, at least 1).
        seed: seeds ``numpy.random.default_rng``; same seed, same points.

    Returns:
        PointSample with (n, 3) points and (n, 3) unit normals (meshes).
    """
    if not geometry.is_mesh:
        return PointSample(geometry.points.copy(), None if geometry.normals is None else geometry.normals.copy())
    if n_points is not None and density is not None:
        raise ValueError("sample_surface: give n_points or density, not both")
    tri = geometry.points[geometry.faces]  # (F, 3, 3)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    double_area = np.linalg.norm(cross, axis=1)
    area = 0.5 * float(double_area.sum())
    if not area > 0:
        raise UserError("the mesh has zero surface area (all its faces are degenerate).", path=geometry.path)
    if density is not None:
        n = max(1, int(round(area * density)))
    else:
        n = DEFAULT_N_POINTS if n_points is None else int(n_points)
    if n > MAX_SAMPLES:
        raise UserError(
            f"sampling {n:,} points (surface area {area:.4g} x density) is more than the limit of {MAX_SAMPLES:,}.",
            path=geometry.path,
            hint="Lower --density or pass --n-points.",
        )
    rng = np.random.default_rng(seed)
    # Face chosen with probability proportional to its area; zero-area faces have an empty
    # CDF step and are never chosen.
    cdf = np.cumsum(double_area)
    face = np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(cdf) - 1)
    # Uniform in the triangle: uniform in the parallelogram, folded back across its diagonal.
    u, v = rng.random(n), rng.random(n)
    fold = u + v > 1.0
    u[fold], v[fold] = 1.0 - u[fold], 1.0 - v[fold]
    t = tri[face]
    points = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    normals = cross[face] / double_area[face, None]
    return PointSample(points, normals)


def crop_sample(sample: PointSample, box: np.ndarray) -> PointSample:
    """Keep the points inside the (2, 3) [min, max] box (bounds included)."""
    box = np.asarray(box, dtype=np.float64).reshape(2, 3)
    inside = np.all((sample.points >= box[0]) & (sample.points <= box[1]), axis=1)
    return sample.subset(inside)


def downsample(sample: PointSample, spacing: float, *, method: str = "voxel", seed: int = 0) -> PointSample:
    """Thin a sample to a point spacing.

    Args:
        sample: (N, 3) points (and normals).
        spacing: in the units of the points; <= 0 returns the sample unchanged.
        method: ``"voxel"``: one random point per cube of side ``spacing``;
            ``"radius"``: greedy in a random order, a point is kept when no kept
            point lies within ``spacing`` of it (DTU's evaluation does this with
            0.2 mm), so kept points are more than ``spacing`` apart.
        seed: the random order.

    Returns:
        The kept points, in their original order.
    """
    if method not in ("voxel", "radius"):
        raise ValueError(f"method must be 'voxel' or 'radius', got {method!r}")
    n = len(sample)
    if spacing <= 0 or n < 2:
        return sample
    order = np.random.default_rng(seed).permutation(n)
    points = sample.points[order]
    if method == "voxel":
        keep = order[_first_per_voxel(points, spacing)]
    else:
        keep = order[_greedy_radius(points, spacing)]
    return sample.subset(np.sort(keep))


def _first_per_voxel(points: np.ndarray, spacing: float) -> np.ndarray:
    """Indices of the first point (in array order) in each occupied voxel."""
    cells = np.floor((points - points.min(axis=0)) / spacing).astype(np.int64)
    dims = cells.max(axis=0) + 1
    if np.prod(dims.astype(np.float64)) < 2.0**62:
        _, first = np.unique(np.ravel_multi_index(cells.T, dims), return_index=True)
    else:
        _, first = np.unique(cells, axis=0, return_index=True)
    return first


def _greedy_radius(points: np.ndarray, radius: float) -> np.ndarray:
    """Indices kept by the sequential rule "keep i unless an earlier kept point is within radius".

    Computed in parallel rounds instead of a Python loop over points: a point is
    decided "kept" once every earlier neighbour is decided and none is kept, and
    "removed" as soon as an earlier neighbour is kept. This gives exactly the
    sequential result (the lexicographically-first maximal independent set of the
    radius graph); for a random order the number of rounds grows only
    polylogarithmically with the number of points.
    """
    n = points.shape[0]
    pairs = cKDTree(points).query_pairs(radius, output_type="ndarray")  # (m, 2), i < j
    lo, hi = pairs[:, 0], pairs[:, 1]
    state = np.zeros(n, dtype=np.int8)  # 0 undecided, 1 kept, 2 removed
    while True:
        undecided = state == 0
        if not undecided.any():
            break
        blocked = np.zeros(n, dtype=bool)
        blocked[hi] = True  # every live pair joins two undecided points
        state[undecided & ~blocked] = 1
        state[hi[state[lo] == 1]] = 2
        live = (state[lo] == 0) & (state[hi] == 0)
        lo, hi = lo[live], hi[live]
    return np.flatnonzero(state == 1)


# --------------------------------------------------------------------------- metrics


def nearest(
    query: np.ndarray,
    points: np.ndarray,
    *,
    tree: cKDTree | None = None,
    max_distance: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each query point to its nearest neighbour among ``points``.

    Args:
        query: (Q, 3) points.
        points: (P, 3) points, P >= 1 (ignored when ``tree`` is given).
        tree: a prebuilt ``cKDTree`` of ``points``.
        max_distance: stop searching beyond this distance: such queries get +inf and
            index -1. Much faster for queries far from every point (the search visits
            the points within about ``sqrt(2 * distance * leaf size)`` sideways).

    Returns:
        (Q,) float64 Euclidean distances and (Q,) int64 indices into ``points``.
    """
    if tree is None:
        if len(points) == 0:
            raise ValueError("nearest: points is empty")
        tree = cKDTree(points, balanced_tree=False)  # unbalanced: builds faster, queries as fast
    if len(query) == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    # Queries in spatial order reuse the cache between neighbouring lookups: about 2x faster
    # for randomly ordered surface samples.
    order = _spatial_order(query)
    bound = np.inf if max_distance is None else float(max_distance)
    dist_sorted, idx_sorted = tree.query(query[order], k=1, workers=-1, distance_upper_bound=bound)
    dist = np.empty(len(query), dtype=np.float64)
    idx = np.empty(len(query), dtype=np.int64)
    dist[order], idx[order] = dist_sorted, idx_sorted
    idx[~np.isfinite(dist)] = -1
    return dist, idx


def _spatial_order(points: np.ndarray, cells: int = 128) -> np.ndarray:
    """A permutation that groups (N, 3) points by cell of a cells^3 grid over their box."""
    lo = points.min(axis=0)
    size = float((points.max(axis=0) - lo).max()) / cells * (1 + 1e-9)
    if not size > 0:
        return np.arange(len(points))
    c = np.minimum(np.floor((points - lo) / size).astype(np.int64), cells - 1)
    return np.argsort((c[:, 0] * cells + c[:, 1]) * cells + c[:, 2], kind="stable")


def normal_consistency(
    pred_normals: np.ndarray | None,
    gt_normals: np.ndarray | None,
    pred_to_gt: np.ndarray,
    gt_to_pred: np.ndarray,
) -> float | None:
    """Mean |cos| between matched normals, averaged over both directions.

    Args:
        pred_normals: (P, 3) unit normals of the pred points, or None.
        gt_normals: (G, 3) unit normals of the GT points, or None.
        pred_to_gt: (P,) index of each pred point's nearest GT point (-1: none found).
        gt_to_pred: (G,) index of each GT point's nearest pred point (-1: none found).

    Returns:
        A value in [0, 1] (1: parallel or anti-parallel everywhere), or None when
        either side has no normals or nothing was matched.
    """
    if pred_normals is None or gt_normals is None:
        return None
    a, b = pred_to_gt >= 0, gt_to_pred >= 0
    if not a.any() or not b.any():
        return None
    cos_a = np.abs(np.einsum("ij,ij->i", pred_normals[a], gt_normals[pred_to_gt[a]])).mean()
    cos_b = np.abs(np.einsum("ij,ij->i", gt_normals[b], pred_normals[gt_to_pred[b]])).mean()
    return float(0.5 * (cos_a + cos_b))


def metrics_from_distances(
    pred_to_gt: np.ndarray,
    gt_to_pred: np.ndarray,
    thresholds: Sequence[float],
    *,
    clip: float | None = None,
    drop_above: float | None = None,
    normal_consistency: float | None = None,
    units: str = "GT units",
    protocol: str = "sampled",
) -> GeometryMetrics:
    """Summarize nearest-neighbour distances.

    Args:
        pred_to_gt: (P,) distance of each pred point to the GT.
        gt_to_pred: (G,) distance of each GT point to the prediction.
        thresholds: F-score thresholds, same units.
        clip: distances above it count as ``clip`` in accuracy / completeness.
        drop_above: distances >= it are left out of accuracy / completeness
            (DTU's ``max_dist``); precision and recall still count them as misses.
        normal_consistency: passed through.

    Returns:
        GeometryMetrics. Means of empty sets are NaN.
    """
    thresholds = [float(t) for t in thresholds]

    def mean_of(d: np.ndarray) -> float:
        if drop_above is not None:
            d = d[d < drop_above]
        if clip is not None:
            d = np.minimum(d, clip)
        return float(d.mean()) if d.size else float("nan")

    def frac_below(d: np.ndarray, t: float) -> float:
        return float(np.count_nonzero(d < t) / d.size) if d.size else float("nan")

    accuracy, completeness = mean_of(pred_to_gt), mean_of(gt_to_pred)
    precision, recall, fscore = {}, {}, {}
    for t in thresholds:
        key = threshold_key(t)
        p, r = frac_below(pred_to_gt, t), frac_below(gt_to_pred, t)
        precision[key], recall[key] = p, r
        fscore[key] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return GeometryMetrics(
        accuracy=accuracy,
        completeness=completeness,
        chamfer=0.5 * (accuracy + completeness),
        thresholds=thresholds,
        precision=precision,
        recall=recall,
        fscore=fscore,
        normal_consistency=normal_consistency,
        n_pred_points=int(pred_to_gt.size),
        n_gt_points=int(gt_to_pred.size),
        units=units,
        protocol=protocol,
    )


def compare_samples(
    pred: PointSample,
    gt: PointSample,
    thresholds: Sequence[float],
    *,
    clip: float | None = None,
    units: str = "GT units",
) -> GeometryMetrics:
    """All metrics between two point samples (the core of ``evaluate_geometry``).

    Args:
        pred: (P, 3) predicted points (and normals), P >= 1.
        gt: (G, 3) ground-truth points (and normals), G >= 1, same frame and units.
        thresholds: F-score thresholds.
        clip: see ``metrics_from_distances``. With a clip, the nearest-neighbour search
            stops at ``max(clip, max(thresholds))`` (farther distances only count as
            ``clip`` and as misses), which makes far-off points cheap; the normal
            consistency is then taken over the pairs found within that distance.
    """
    if len(pred) == 0 or len(gt) == 0:
        raise ValueError(f"compare_samples: empty sample (pred {len(pred)}, gt {len(gt)} points)")
    # Without a bound, a query at distance D from a surface visits the points within about
    # sqrt(2 D leaf_size) sideways: far-off predictions (floaters, a wrong frame) cost the most.
    bound = None if clip is None else max(clip, *thresholds)
    d_pred, i_pred = nearest(pred.points, gt.points, max_distance=bound)
    d_gt, i_gt = nearest(gt.points, pred.points, max_distance=bound)
    nc = normal_consistency(pred.normals, gt.normals, i_pred, i_gt)
    return metrics_from_distances(d_pred, d_gt, thresholds, clip=clip, normal_consistency=nc, units=units)


def default_thresholds(gt_points: np.ndarray) -> list[float]:
    """[1% of the (N, 3) points' bounding-box diagonal], rounded to two significant digits."""
    diag = float(np.linalg.norm(np.ptp(gt_points, axis=0)))
    if not diag > 0:
        raise UserError("the ground truth is a single point: pass --threshold explicitly.")
    return [float(f"{0.01 * diag:.2g}")]


def check_units(
    pred_points: np.ndarray,
    gt_points: np.ndarray,
    *,
    pred_path: Path | None = None,
    max_ratio: float = 10.0,
) -> None:
    """Refuse a prediction and a GT that cannot be in the same frame and units.

    Raises:
        UserError: when the bounding-box diagonals differ by more than ``max_ratio``
            or the boxes, each grown by 10% of the larger diagonal, do not overlap;
            the message suggests ``--scale-mat``.
    """
    pmin, pmax = pred_points.min(axis=0), pred_points.max(axis=0)
    gmin, gmax = gt_points.min(axis=0), gt_points.max(axis=0)
    ps, gs = float(np.linalg.norm(pmax - pmin)), float(np.linalg.norm(gmax - gmin))
    for name, size in (("prediction", ps), ("ground truth", gs)):
        if size == 0:  # a size ratio against zero would blame the units
            raise UserError(
                f"every point of the {name} is at the same position (a single point?): there is no shape to compare.",
                path=pred_path if name == "prediction" else None,
                hint="Pass a mesh, or a point cloud sampled over the surface.",
            )
    tiny = 1e-12 * max(ps, gs, 1e-300)
    ratio = max(ps, gs) / max(min(ps, gs), tiny)
    # Boxes grown by 10% of the larger diagonal: a flat GT and a prediction just above it still
    # "overlap", a unit-sphere mesh against a scan hundreds of units away does not.
    margin = 0.1 * max(ps, gs)
    overlap = bool(np.all(np.maximum(pmin, gmin) <= np.minimum(pmax, gmax) + margin))
    if ratio <= max_ratio and overlap:
        return
    why = (
        f"differ in size by {ratio:.3g}x (diagonals {ps:.4g} and {gs:.4g})"
        if ratio > max_ratio
        else f"do not overlap (pred box {_fmt_box(pmin, pmax)}, GT box {_fmt_box(gmin, gmax)})"
    )
    raise UserError(
        f"the bounding boxes of the prediction and the ground truth {why}, so they are probably in "
        "different frames or units.",
        path=pred_path,
        hint="The prediction may be in the normalized (unit-sphere) frame: pass --scale-mat "
        "cameras_sphere.npz to map it to world units, or --no-check-units to compare anyway.",
    )


def _fmt_box(lo: np.ndarray, hi: np.ndarray) -> str:
    return "[" + ", ".join(f"{a:.3g}..{b:.3g}" for a, b in zip(lo, hi, strict=True)) + "]"


# --------------------------------------------------------------------------- error plot


def error_colors(distances: np.ndarray, vmax: float, valid: np.ndarray | None = None) -> np.ndarray:
    """(N,) distances -> (N, 4) uint8 RGBA: blue (0) - cyan - yellow - red (>= vmax); invalid: grey."""
    stops = np.array([0.0, 1 / 3, 2 / 3, 1.0])
    rgb = np.array([[40, 60, 190], [40, 190, 210], [250, 220, 50], [215, 30, 30]], dtype=np.float64)
    t = np.clip(np.asarray(distances, dtype=np.float64) / vmax, 0.0, 1.0)
    out = np.empty((t.size, 4), dtype=np.uint8)
    for c in range(3):
        out[:, c] = np.round(np.interp(t, stops, rgb[:, c])).astype(np.uint8)
    out[:, 3] = 255
    if valid is not None:
        out[~valid, :3] = 160
    return out


def write_error_plot(
    pred: Geometry,
    gt_points: np.ndarray,
    path: str | Path,
    vmax: float,
    *,
    valid: np.ndarray | None = None,
) -> None:
    """Write ``pred`` (evaluation frame) as a PLY whose vertex colours show the distance to the GT.

    Args:
        pred: the prediction, already in the evaluation frame.
        gt_points: (G, 3) GT points the distances are measured to.
        path: output ``.ply``.
        vmax: the distance shown as full red (the largest F-score threshold).
        valid: (N,) bool, vertices that were evaluated; others are grey.
    """
    import trimesh

    path = Path(path)
    if path.suffix.lower() != ".ply":
        raise UserError("--plot must name a .ply file (it stores per-vertex colours).", path=path)
    dist, _ = nearest(pred.points, gt_points, max_distance=vmax)  # farther: +inf, shown as vmax
    colors = error_colors(dist, vmax, valid)
    if pred.is_mesh:
        obj = trimesh.Trimesh(vertices=pred.points, faces=pred.faces, vertex_colors=colors, process=False)
    else:
        obj = trimesh.PointCloud(pred.points, colors=colors)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        obj.export(path)
    except OSError as err:
        raise UserError(f"could not write the error plot ({err}).", path=path) from err


# --------------------------------------------------------------------------- pipeline


def prepare_prediction(path: str | Path, options: GeometryOptions) -> Geometry:
    """Load the prediction and map it to world units with ``options.scale_mat`` if given."""
    pred = load_geometry(path, what="prediction")
    if options.scale_mat is not None:
        pred = pred.transformed(load_scale_mat(options.scale_mat, options.scale_mat_index))
    return pred


def evaluate_geometry(
    pred_path: str | Path,
    gt_path: str | Path,
    options: GeometryOptions | None = None,
    *,
    on_progress: ProgressFn | None = None,
) -> GeometryMetrics:
    """Compare a predicted mesh (or cloud) with a ground-truth mesh or cloud.

    Steps: load both; map the prediction with ``--scale-mat``; check the frames
    agree; sample meshes by area (pred with ``seed``, GT with ``seed + 1``); crop;
    downsample; nearest neighbours both ways; optionally write the error plot.

    Args:
        pred_path: predicted mesh or point cloud.
        gt_path: ground-truth mesh (sampled) or point cloud (used as is).
        options: see ``GeometryOptions``.
        on_progress: ``(stage, fraction)`` callback for a progress bar.

    Returns:
        GeometryMetrics in ``options.units`` (the GT's units).

    Raises:
        UserError: unreadable or empty inputs, a bad ``--scale-mat``, frames that
            do not match, nothing left inside ``--crop``.
    """
    options = options or GeometryOptions()
    report = on_progress or (lambda stage, fraction: None)
    report("loading meshes", 0.0)
    pred = prepare_prediction(pred_path, options)
    gt = load_geometry(gt_path, what="ground truth")
    if options.check_units:
        check_units(pred.points, gt.points, pred_path=Path(pred_path))

    report("sampling surfaces", 0.15)
    pred_s = sample_surface(pred, n_points=options.n_points, density=options.density, seed=options.seed)
    gt_s = sample_surface(gt, n_points=options.n_points, density=options.density, seed=options.seed + 1)
    if options.crop is not None:
        pred_s, gt_s = crop_sample(pred_s, options.crop), crop_sample(gt_s, options.crop)
        for name, s in (("prediction", pred_s), ("ground truth", gt_s)):
            if len(s) == 0:
                raise UserError(
                    f"no {name} points lie inside --crop {_fmt_box(*options.crop)}.",
                    hint="The box is in evaluation (GT) units, after --scale-mat.",
                )
    if options.downsample:
        report("downsampling", 0.3)
        method = options.downsample_method or "voxel"
        pred_s = downsample(pred_s, options.downsample, method=method, seed=options.seed)
        gt_s = downsample(gt_s, options.downsample, method=method, seed=options.seed + 1)

    thresholds = list(options.thresholds) if options.thresholds else default_thresholds(gt_s.points)
    report("nearest neighbours", 0.45)
    metrics = compare_samples(pred_s, gt_s, thresholds, clip=options.clip, units=options.units)
    if options.plot is not None:
        report("writing error plot", 0.9)
        valid = None
        if options.crop is not None:
            valid = np.all((pred.points >= options.crop[0]) & (pred.points <= options.crop[1]), axis=1)
        write_error_plot(pred, gt_s.points, options.plot, max(thresholds), valid=valid)
    report("done", 1.0)
    return metrics


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, norm, out=np.zeros_like(v, dtype=np.float64), where=norm > 0)
