"""COLMAP sparse models (text or binary) + ``images/`` (+ ``masks/``) -> ``Scene``.

Layout of a COLMAP scene folder ``ROOT``::

    ROOT/images/<NAME>            the images, under the names the model uses (subfolders allowed)
    ROOT/sparse/0/                the model: cameras, images, points3D (.bin or .txt)
        (or ROOT/sparse/, or the three files directly in ROOT)
    ROOT/masks/<NAME>             optional: one mask per image, same name with any image
        extension (0001.jpg -> 0001.png), or COLMAP's own <NAME>.png (0001.jpg.png)

When a model folder holds both, the binary files are read (COLMAP's default output):
``cameras.bin`` or ``images.bin`` present means binary, and then all three must be. Only registered images
(those in ``images.*``) become views, sorted by name. The binary layouts are those of
https://colmap.github.io/format.html (little endian; ids uint32, counts uint64).

Conventions, from COLMAP's to ours (``neus2cli.data.scene``):

* **Pose.** COLMAP stores, per image, the **world-to-camera** rotation as a unit quaternion
  ``(qw, qx, qy, qz)`` (Hamilton, scalar first) and a translation ``t``:
  ``x_cam = R(q) x_world + t``. Its camera frame is OpenCV's (x right, y down, z forward),
  so the OpenCV camera-to-world is exactly ``c2w = [[R^T, -R^T t], [0, 0, 0, 1]]``. The
  quaternion is normalized first; ``q`` and ``-q`` (negative ``qw``) are the same rotation.
* **Pixels.** COLMAP's image origin is the top-left corner of the top-left pixel, whose
  centre is (0.5, 0.5): the same as ours (centres at +0.5), so cx, cy are used unchanged.
* **Intrinsics and distortion** (``CAMERA_MODELS`` lists the parameter order):
  SIMPLE_PINHOLE (f, cx, cy), PINHOLE (fx, fy, cx, cy): no distortion;
  SIMPLE_RADIAL (f, cx, cy, k) -> (k1, k2, p1, p2) = (k, 0, 0, 0);
  RADIAL (f, cx, cy, k1, k2) -> (k1, k2, 0, 0);
  OPENCV (fx, fy, cx, cy, k1, k2, p1, p2) -> (k1, k2, p1, p2).
  COLMAP's polynomials for these models are OpenCV's with k3 = 0, i.e. ``rays.distort_points``.
  All-zero coefficients give ``distortion=None``. Fisheye, FOV, FULL_OPENCV and thin-prism
  models are refused (undistort the images with ``colmap image_undistorter`` first).
* **World frame** is the model's own (arbitrary origin, orientation and scale); meshes come
  out in it.
* **Normalization.** Until automatic bounds exist, the sparse points place the object: the
  box between the 1st and 99th percentiles (per axis) of the points seen by at least 3
  images (track length >= 3; COLMAP keeps at most one observation per image), grown by 10 %,
  is centred in the unit cube with its longest side filling it (``validate.fit_normalization``).
  With fewer than ``MIN_POINTS`` such points every point is used, with a warning. The sparse
  points of a real capture include the background, so the object may fill only part of the
  cube: ``neus2 inspect`` then reports the masked content's extent and a scale/offset that
  would fit it.
* **Split.** Every view trains unless ``test_views`` (indices into the name-sorted views)
  are held out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neus2cli.data.images import IMAGE_EXTENSIONS
from neus2cli.data.scene import Normalization, Scene, View
from neus2cli.data.validate import fit_normalization
from neus2cli.errors import UserError

#: COLMAP camera model id -> (name, number of parameters), as in COLMAP's camera_models.h.
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
_PARAM_COUNT = {name: n for name, n in CAMERA_MODELS.values()}
SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
MODEL_FILES = ("cameras", "images", "points3D")
#: Points seen by fewer images are left out of the normalization box (likely outliers).
MIN_TRACK = 3
#: Fewer well-seen points than this: every point is used instead.
MIN_POINTS = 10
#: Per-axis percentiles of the points that bound the object.
BOX_PERCENTILES = (1.0, 99.0)
#: Relative growth of that box before it is fitted into the unit cube.
BOX_MARGIN = 0.10

_UNDISTORT_HINT = (
    "Undistort the images with `colmap image_undistorter` (it writes PINHOLE cameras) or "
    "re-run COLMAP with one of the camera models " + ", ".join(SUPPORTED_MODELS) + "."
)


@dataclass(frozen=True)
class ColmapCamera:
    """One COLMAP camera: ``model`` name, image size in pixels and the model's ``params``."""

    camera_id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]


@dataclass(frozen=True)
class ColmapImage:
    """One registered image: world-to-camera ``qvec`` (qw, qx, qy, qz), ``tvec``, camera, file name."""

    image_id: int
    qvec: tuple[float, float, float, float]
    tvec: tuple[float, float, float]
    camera_id: int
    name: str


@dataclass
class ColmapModel:
    """A sparse model as read from disk.

    Attributes:
        path: the model folder.
        kind: "binary" or "text".
        files: the three files read, by stem ("cameras", "images", "points3D").
        cameras, images: by id.
        points: (n, 3) float64 world positions of the 3D points.
        track_lengths: (n,) int64, observations per point (= images that see it).
    """

    path: Path
    kind: str
    files: dict[str, Path]
    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points: np.ndarray
    track_lengths: np.ndarray


# --------------------------------------------------------------------------------------------
# Finding the model.


def _has_model_files(folder: Path) -> bool:
    return any((folder / f"{stem}{ext}").is_file() for stem in ("cameras", "images") for ext in (".bin", ".txt"))


def find_colmap_model(root: str | Path) -> Path | None:
    """The model folder of the COLMAP scene ``root``: ``sparse/0``, ``sparse`` or ``root`` itself
    (the first holding ``cameras.bin/.txt`` or ``images.bin/.txt``), or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    for folder in (root / "sparse" / "0", root / "sparse", root):
        if folder.is_dir() and _has_model_files(folder):
            return folder
    return None


def _model_paths(model_dir: Path) -> tuple[str, dict[str, Path]]:
    """("binary" | "text", {stem: path}) of the three model files; ``UserError`` for a missing one."""
    ext = ".bin" if (model_dir / "cameras.bin").exists() or (model_dir / "images.bin").exists() else ".txt"
    kind = "binary" if ext == ".bin" else "text"
    paths = {stem: model_dir / f"{stem}{ext}" for stem in MODEL_FILES}
    for path in paths.values():
        if not path.is_file():
            what = "is not a regular file" if path.exists() else "is missing"
            raise UserError(
                f"{what}: a {kind} COLMAP model needs {', '.join(p.name for p in paths.values())}.",
                path=path,
                hint="Re-export the model (`colmap model_converter --output_type "
                f"{'BIN' if kind == 'binary' else 'TXT'}`), or copy the missing file from the reconstruction.",
            )
    return kind, paths


# --------------------------------------------------------------------------------------------
# Text files.


def _read_text(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read the COLMAP file ({type(err).__name__}: {err}).", path=path) from None


def _data_lines(path: Path, keep_blank: bool = False) -> list[tuple[int, str]]:
    """(1-based line number, line) of every line that is not a ``#`` comment (nor blank, unless kept)."""
    out = []
    for i, line in enumerate(_read_text(path), start=1):
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not keep_blank):
            continue
        out.append((i, stripped))
    return out


def _text_error(path: Path, lineno: int, what: str, layout: str) -> UserError:
    return UserError(f"line {lineno}: {what}; expected {layout}.", path=path, hint="Fix or re-export the model.")


_CAMERA_LAYOUT = "CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]"
_IMAGE_LAYOUT = "IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, then a line of POINTS2D"
_POINT_LAYOUT = "POINT3D_ID X Y Z R G B ERROR TRACK[] (IMAGE_ID POINT2D_IDX pairs)"


def read_cameras_text(path: Path) -> dict[int, ColmapCamera]:
    """``cameras.txt`` -> cameras by id (any model name; parameters counted against the model)."""
    cameras: dict[int, ColmapCamera] = {}
    for lineno, line in _data_lines(path):
        tokens = line.split()
        if len(tokens) < 4:
            raise _text_error(path, lineno, f"{len(tokens)} fields", _CAMERA_LAYOUT)
        model = tokens[1]
        if model not in _PARAM_COUNT:
            raise UserError(
                f"line {lineno}: unknown camera model {model!r}.",
                path=path,
                hint=f"Supported: {', '.join(SUPPORTED_MODELS)}. {_UNDISTORT_HINT}",
            )
        try:
            camera_id, width, height = int(tokens[0]), int(tokens[2]), int(tokens[3])
            params = tuple(float(x) for x in tokens[4:])
        except ValueError:
            raise _text_error(path, lineno, "a field is not a number", _CAMERA_LAYOUT) from None
        if len(params) != _PARAM_COUNT[model]:
            raise _text_error(
                path, lineno, f"{model} takes {_PARAM_COUNT[model]} parameters, got {len(params)}", _CAMERA_LAYOUT
            )
        _add(cameras, camera_id, ColmapCamera(camera_id, model, width, height, params), "camera", path)
    return cameras


def read_images_text(path: Path) -> dict[int, ColmapImage]:
    """``images.txt`` -> registered images by id (the POINTS2D lines are skipped).

    Every image takes two lines; the second (its 2D points) may be empty, so blank lines
    count here. The name is the rest of the first line after CAMERA_ID.
    """
    images: dict[int, ColmapImage] = {}
    lines = _data_lines(path, keep_blank=True)
    for lineno, line in lines[0::2]:
        tokens = line.split(maxsplit=9)
        if len(tokens) < 10:
            raise _text_error(path, lineno, f"{len(tokens)} fields in an image line", _IMAGE_LAYOUT)
        try:
            image_id, camera_id = int(tokens[0]), int(tokens[8])
            values = [float(x) for x in tokens[1:8]]
        except ValueError:
            raise _text_error(path, lineno, "a field is not a number", _IMAGE_LAYOUT) from None
        q, t = tuple(values[:4]), tuple(values[4:])
        _add(images, image_id, ColmapImage(image_id, q, t, camera_id, tokens[9]), "image", path)
    return images


def read_points3d_text(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``points3D.txt`` -> ((n, 3) positions, (n,) track lengths)."""
    xyz, tracks = [], []
    for lineno, line in _data_lines(path):
        tokens = line.split()
        if len(tokens) < 8 or (len(tokens) - 8) % 2:
            raise _text_error(path, lineno, f"{len(tokens)} fields", _POINT_LAYOUT)
        try:
            xyz.append([float(x) for x in tokens[1:4]])
        except ValueError:
            raise _text_error(path, lineno, "a coordinate is not a number", _POINT_LAYOUT) from None
        tracks.append((len(tokens) - 8) // 2)
    return np.asarray(xyz, dtype=np.float64).reshape(-1, 3), np.asarray(tracks, dtype=np.int64)


def _add(table: dict, key: int, value, what: str, path: Path) -> None:
    if key in table:
        raise UserError(f"{what} id {key} appears twice.", path=path, hint="Fix or re-export the model.")
    table[key] = value


# --------------------------------------------------------------------------------------------
# Binary files.


class _BinaryReader:
    """Sequential little-endian reads from a whole file, with ``UserError`` on truncation."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as err:
            raise UserError(f"cannot read the COLMAP file ({type(err).__name__}: {err}).", path=path) from None
        self.offset = 0

    def _truncated(self, need: int, what: str) -> UserError:
        return UserError(
            f"truncated: {what} needs {need} bytes at byte {self.offset}, but the file ends at byte {len(self.data)}.",
            path=self.path,
            hint="The file is incomplete or not a COLMAP binary model (an interrupted copy?): re-export it "
            "from the reconstruction.",
        )

    def read(self, fmt: struct.Struct, what: str) -> tuple:
        if self.offset + fmt.size > len(self.data):
            raise self._truncated(fmt.size, what)
        values = fmt.unpack_from(self.data, self.offset)
        self.offset += fmt.size
        return values

    def skip(self, n_bytes: int, what: str) -> None:
        if self.offset + n_bytes > len(self.data):
            raise self._truncated(n_bytes, what)
        self.offset += n_bytes

    def doubles(self, n: int, what: str) -> tuple[float, ...]:
        return self.read(struct.Struct(f"<{n}d"), what)

    def cstring(self, what: str) -> str:
        end = self.data.find(b"\0", self.offset)
        if end < 0:
            raise self._truncated(len(self.data) - self.offset + 1, what)
        raw = self.data[self.offset : end]
        self.offset = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{what} is not UTF-8 text.", path=self.path, hint="Re-export the model.") from None

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise UserError(
                f"{len(self.data) - self.offset} bytes follow the last record (byte {self.offset}).",
                path=self.path,
                hint="The file is corrupt or not a COLMAP binary model: re-export it from the reconstruction.",
            )


_U64 = struct.Struct("<Q")
_CAMERA = struct.Struct("<IiQQ")  # camera_id, model_id, width, height
_IMAGE = struct.Struct("<I4d3dI")  # image_id, qw qx qy qz, tx ty tz, camera_id
_POINT = struct.Struct("<Q3d3BdQ")  # point3D_id, xyz, rgb, error, track length
_POINT2D_BYTES = 24  # x, y (double), point3D_id (int64)
_TRACK_ELEMENT_BYTES = 8  # image_id, point2D_idx (uint32)


def read_cameras_binary(path: Path) -> dict[int, ColmapCamera]:
    """``cameras.bin`` -> cameras by id."""
    f = _BinaryReader(path)
    (n,) = f.read(_U64, "the camera count")
    cameras: dict[int, ColmapCamera] = {}
    for i in range(n):
        camera_id, model_id, width, height = f.read(_CAMERA, f"camera {i + 1} of {n}")
        if model_id not in CAMERA_MODELS:
            raise UserError(
                f"camera {camera_id}: unknown camera model id {model_id}.",
                path=path,
                hint=f"Supported: {', '.join(SUPPORTED_MODELS)}. {_UNDISTORT_HINT}",
            )
        model, n_params = CAMERA_MODELS[model_id]
        params = f.doubles(n_params, f"the {model} parameters of camera {camera_id}")
        _add(cameras, camera_id, ColmapCamera(camera_id, model, width, height, params), "camera", path)
    f.finish()
    return cameras


def read_images_binary(path: Path) -> dict[int, ColmapImage]:
    """``images.bin`` -> registered images by id (2D points skipped)."""
    f = _BinaryReader(path)
    (n,) = f.read(_U64, "the image count")
    images: dict[int, ColmapImage] = {}
    for i in range(n):
        image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = f.read(_IMAGE, f"image {i + 1} of {n}")
        name = f.cstring(f"the name of image {image_id}")
        (n_points,) = f.read(_U64, f"the 2D point count of image {image_id}")
        f.skip(n_points * _POINT2D_BYTES, f"the {n_points} 2D points of image {image_id}")
        _add(images, image_id, ColmapImage(image_id, (qw, qx, qy, qz), (tx, ty, tz), camera_id, name), "image", path)
    f.finish()
    return images


def read_points3d_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``points3D.bin`` -> ((n, 3) positions, (n,) track lengths)."""
    f = _BinaryReader(path)
    (n,) = f.read(_U64, "the point count")
    # Each point takes at least one record: more points than records fit is a corrupt count.
    if n > (len(f.data) - f.offset) // _POINT.size:
        raise f._truncated(n * _POINT.size, f"{n} points")
    xyz = np.empty((n, 3), dtype=np.float64)
    tracks = np.empty(n, dtype=np.int64)
    for i in range(n):
        _, x, y, z, _, _, _, _, track = f.read(_POINT, f"point {i + 1} of {n}")
        f.skip(track * _TRACK_ELEMENT_BYTES, f"the track of point {i + 1}")
        xyz[i] = (x, y, z)
        tracks[i] = track
    f.finish()
    return xyz, tracks


def read_colmap_model(model_dir: str | Path) -> ColmapModel:
    """Read the three files of a sparse model folder, binary or text (see the module docstring)."""
    model_dir = Path(model_dir)
    kind, paths = _model_paths(model_dir)
    if kind == "binary":
        cameras = read_cameras_binary(paths["cameras"])
        images = read_images_binary(paths["images"])
        points, tracks = read_points3d_binary(paths["points3D"])
    else:
        cameras = read_cameras_text(paths["cameras"])
        images = read_images_text(paths["images"])
        points, tracks = read_points3d_text(paths["points3D"])
    return ColmapModel(model_dir, kind, paths, cameras, images, points, tracks)


# --------------------------------------------------------------------------------------------
# Conversion to our conventions.


def qvec_to_rotation(qvec) -> np.ndarray:
    """(3, 3) rotation of the quaternion (qw, qx, qy, qz), normalized first; q and -q agree.

    Raises ``ValueError`` for a non-finite or zero quaternion.
    """
    q = np.asarray(qvec, dtype=np.float64).reshape(4)
    norm = np.linalg.norm(q)
    if not (np.isfinite(norm) and norm > 1e-12):
        raise ValueError(f"quaternion {q.tolist()} is zero or not finite")
    w, x, y, z = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def colmap_pose_to_c2w(qvec, tvec) -> np.ndarray:
    """(4, 4) OpenCV camera-to-world from COLMAP's world-to-camera (qvec (4,), tvec (3,)).

    ``x_cam = R x_world + t`` inverts to ``c2w = [[R^T, -R^T t], [0, 0, 0, 1]]``; COLMAP's
    camera axes are OpenCV's, so no axis flip is involved.
    """
    R = qvec_to_rotation(qvec)
    t = np.asarray(tvec, dtype=np.float64).reshape(3)
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ t
    return c2w


def camera_intrinsics(camera: ColmapCamera, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(K (3, 3), distortion (4,) (k1, k2, p1, p2) or None) of a supported COLMAP camera.

    K is in pixels with centres at +0.5 (COLMAP's convention and ours). ``UserError`` naming
    ``path`` (the cameras file) for an unsupported model or invalid values.
    """
    if camera.model not in SUPPORTED_MODELS:
        raise UserError(
            f"camera {camera.camera_id} uses the {camera.model} model, which neus2cli does not support "
            f"(supported: {', '.join(SUPPORTED_MODELS)}).",
            path=path,
            hint=_UNDISTORT_HINT,
        )
    p = camera.params
    if camera.model == "SIMPLE_PINHOLE":
        (f, cx, cy), dist = p, (0.0, 0.0, 0.0, 0.0)
        fx = fy = f
    elif camera.model == "PINHOLE":
        (fx, fy, cx, cy), dist = p, (0.0, 0.0, 0.0, 0.0)
    elif camera.model == "SIMPLE_RADIAL":
        f, cx, cy, k = p
        fx = fy = f
        dist = (k, 0.0, 0.0, 0.0)
    elif camera.model == "RADIAL":
        f, cx, cy, k1, k2 = p
        fx = fy = f
        dist = (k1, k2, 0.0, 0.0)
    else:  # OPENCV
        fx, fy, cx, cy, k1, k2, p1, p2 = p
        dist = (k1, k2, p1, p2)
    if not (np.all(np.isfinite(p)) and fx > 0 and fy > 0 and camera.width > 0 and camera.height > 0):
        raise UserError(
            f"camera {camera.camera_id} ({camera.model}, {camera.width}x{camera.height}, parameters "
            f"{list(p)}) needs a positive size, positive focal lengths and finite parameters.",
            path=path,
        )
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    distortion = None if not any(dist) else np.asarray(dist, dtype=np.float64)
    return K, distortion


def normalization_points(points: np.ndarray, track_lengths: np.ndarray) -> tuple[np.ndarray, bool]:
    """The points the normalization is fitted to: (m, 3) finite points seen by ``MIN_TRACK`` or more
    images, or every finite point (second value True) when fewer than ``MIN_POINTS`` are."""
    finite = np.all(np.isfinite(points), axis=1)
    good = points[finite & (track_lengths >= MIN_TRACK)]
    if len(good) < MIN_POINTS:
        return points[finite], True
    return good, False


def sparse_points(root: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """For ``inspect --plot``: the COLMAP scene's normalization points (m, 3) and their robust box (2, 3)
    (the ``BOX_PERCENTILES`` per axis), both in the **world** frame; None when ``root`` holds no model
    or no usable point."""
    model_dir = find_colmap_model(root)
    if model_dir is None:
        return None
    model = read_colmap_model(model_dir)
    good, _ = normalization_points(model.points, model.track_lengths)
    if len(good) < 2:
        return None
    return good, np.percentile(good, BOX_PERCENTILES, axis=0)


def points_normalization(points: np.ndarray, track_lengths: np.ndarray, path: Path) -> tuple[Normalization, list[str]]:
    """``Normalization`` that fits the robust box of the sparse points into the unit cube (module docstring).

    Args:
        points: (n, 3) world positions; track_lengths: (n,) images seeing each.
        path: the points file, named in errors and warnings.

    Returns:
        (normalization, warnings).
    """
    good, all_points = normalization_points(points, track_lengths)
    warnings = []
    if all_points:
        warnings.append(
            f"{path.name}: fewer than {MIN_POINTS} points are seen by {MIN_TRACK} or more images; the "
            f"normalization uses all {len(good)} points, which may include outliers."
        )
    if len(good) < 2:
        raise UserError(
            f"has {len(good)} usable 3D points: too few to place the object in the unit cube.",
            path=path,
            hint="Triangulate points for the model (`colmap point_triangulator`), or convert the scene to a "
            "NeuS2 JSON with your own 'scale' and 'offset'.",
        )
    box = np.percentile(good, BOX_PERCENTILES, axis=0)
    if not np.max(box[1] - box[0]) > 0:
        raise UserError(
            "the 3D points all coincide, so they give no extent for the normalization.",
            path=path,
            hint="Re-run the reconstruction, or use a NeuS2 JSON with your own 'scale' and 'offset'.",
        )
    unit = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    scale, offset = fit_normalization(box, unit, margin=BOX_MARGIN)
    return Normalization(scale=scale, offset=offset, aabb=unit), warnings


def _find_mask(mask_dir: Path, name: str) -> Path | None:
    """``masks/NAME``, ``masks/NAME`` with another image extension, or COLMAP's ``masks/NAME.png``."""
    base = mask_dir / name
    candidates = [base] + [base.with_suffix(ext) for ext in IMAGE_EXTENSIONS]
    candidates += [base.with_name(base.name + ext) for ext in IMAGE_EXTENSIONS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def _name_list(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_colmap_scene(root: str | Path, test_views: list[int] | tuple[int, ...] | None = None) -> Scene:
    """Load a COLMAP scene folder (layout and conventions in the module docstring).

    Args:
        root: folder with ``images/`` and the model (``sparse/0``, ``sparse`` or the files in ``root``).
        test_views: indices (into the views sorted by image name) held out as the test split;
            default none.

    Returns:
        ``Scene`` with format "colmap": OpenCV c2w in the model's world frame, K with pixel
        centres at +0.5, distortion for SIMPLE_RADIAL/RADIAL/OPENCV, masks from ``masks/``,
        normalization from the sparse points.

    Raises:
        UserError: missing or malformed model files (named), an unsupported camera model, an
            image listed in the model but absent from ``images/``, a mask folder lacking masks, ...
    """
    root = Path(root)
    model_dir = find_colmap_model(root)
    if model_dir is None:
        raise UserError(
            "no COLMAP model: expected cameras, images and points3D (.bin or .txt) in sparse/0/, sparse/ or "
            "the folder itself.",
            path=root,
        )
    model = read_colmap_model(model_dir)
    paths = model.files
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise UserError(
            "no images/ folder beside the COLMAP model.",
            path=root,
            hint="Give the scene folder that holds images/ and sparse/ (not the model folder itself).",
        )
    if not model.images:
        raise UserError("the model has no registered images.", path=paths["images"])
    warnings: list[str] = []
    if model_dir == root / "sparse" / "0":
        others = sorted(p.name for p in (root / "sparse").iterdir() if p.is_dir() and p.name != "0")
        others = [name for name in others if _has_model_files(root / "sparse" / name)]
        if others:
            warnings.append(
                f"{root.name}: sparse/ holds {len(others) + 1} models; using sparse/0 (COLMAP numbers the "
                f"largest first), not sparse/{', sparse/'.join(others)}."
            )
    images = sorted(model.images.values(), key=lambda im: im.name)
    names = [im.name for im in images]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"image name(s) {_name_list(dup)} appear more than once.", path=paths["images"])
    missing = [n for n in names if not (image_dir / n).is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} of the model's {len(names)} images are not in images/: {_name_list(missing)}.",
            path=image_dir,
            hint="The model's image names are paths relative to images/ (as given to COLMAP's --image_path).",
        )
    on_disk = {
        p.relative_to(image_dir).as_posix() for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
    }
    unposed = sorted(on_disk - set(names))
    if unposed:
        warnings.append(
            f"{root.name}: {len(unposed)} image(s) in images/ are not registered in the model and are "
            f"skipped: {_name_list(unposed)}."
        )
    mask_dir = next((root / n for n in ("masks", "mask") if (root / n).is_dir()), None)
    masks: list[Path | None] = [None] * len(images)
    if mask_dir is not None:
        masks = [_find_mask(mask_dir, n) for n in names]
        lacking = [n for n, m in zip(names, masks, strict=True) if m is None]
        if lacking:
            raise UserError(
                f"{len(lacking)} of the {len(names)} images have no mask: {_name_list(lacking)}.",
                path=mask_dir,
                hint=f"Give every image a mask of the same name (any of {', '.join(IMAGE_EXTENSIONS)}), or "
                f"COLMAP's NAME.png; or remove {mask_dir.name}/ to train without masks.",
            )
    else:
        warnings.append(
            f"{root.name}: no masks/ folder: every pixel is treated as foreground (train with --config unmasked, "
            "whose background model explains what is not the object)."
        )
    intrinsics: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    views = []
    for im in images:
        if im.camera_id not in model.cameras:
            raise UserError(
                f"image {im.name} (id {im.image_id}) uses camera {im.camera_id}, which {paths['cameras'].name} "
                "does not define.",
                path=paths["images"],
            )
        if im.camera_id not in intrinsics:
            intrinsics[im.camera_id] = camera_intrinsics(model.cameras[im.camera_id], paths["cameras"])
        K, distortion = intrinsics[im.camera_id]
        try:
            c2w = colmap_pose_to_c2w(im.qvec, im.tvec)
        except ValueError as err:
            raise UserError(f"image {im.name} (id {im.image_id}): {err}.", path=paths["images"]) from None
        if not np.all(np.isfinite(c2w)):
            raise UserError(f"image {im.name} (id {im.image_id}): the translation is not finite.", path=paths["images"])
        camera = model.cameras[im.camera_id]
        views.append(
            View(
                name=Path(im.name).with_suffix("").as_posix(),
                image_path=image_dir / im.name,
                width=int(camera.width),
                height=int(camera.height),
                K=K.copy(),
                c2w=c2w,
                distortion=None if distortion is None else distortion.copy(),
                mask_path=masks[len(views)],
            )
        )
    normalization, norm_warnings = points_normalization(model.points, model.track_lengths, paths["points3D"])
    warnings += norm_warnings
    held_out = set(test_views or ())
    split = {
        "train": [i for i in range(len(views)) if i not in held_out],
        "test": [i for i in range(len(views)) if i in held_out],
    }
    return Scene(
        name=root.resolve().name,
        root=root,
        format="colmap",
        views=views,
        split=split,
        normalization=normalization,
        warnings=warnings,
    )
