"""Blender / Instant-NGP and NeuS2 JSON scenes -> ``View`` lists and a ``Scene``.

Both formats are one JSON per split (``transforms_train.json``, ``transform_train.json``)
or one JSON for everything (``transforms.json``). What differs (full spec in the
project's format notes):

* Blender/NGP: ``transform_matrix`` is an **OpenGL** camera-to-world; intrinsics come
  from ``camera_angle_x`` (+ ``camera_angle_y``) or ``fl_x``/``fl_y``/``cx``/``cy``,
  top level or per frame; pixel centres at +0.5.
* NeuS2: per-frame ``intrinsic_matrix``; ``from_na: true`` makes ``transform_matrix``
  an **OpenCV** camera-to-world; ``integer_pixel_centers: true`` (our extension)
  means K puts pixel centres at integers, so 0.5 is added to cx and cy.

Images are resolved relative to the JSON's folder. Only image headers are read, and
only when the JSON lacks ``w``/``h``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from neus2cli.data.cameras import intrinsics_from_fov, opengl_to_opencv
from neus2cli.data.images import UNSUPPORTED_EXTENSIONS, read_image_size, resolve_image_path
from neus2cli.data.scene import Normalization, Scene, View
from neus2cli.errors import UserError

#: NeuS2 / Instant-NGP defaults for the world -> unit-cube similarity.
DEFAULT_SCALE = 0.33
DEFAULT_OFFSET = (0.5, 0.5, 0.5)
DISTORTION_KEYS = ("k1", "k2", "p1", "p2")


def read_json(path: Path) -> dict:
    """Parse a scene JSON; ``UserError`` naming the file (and line) when it is malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise UserError("scene file not found.", path=path) from None
    except IsADirectoryError:
        raise UserError("is a folder, not a JSON file.", path=path, hint="Rename or move it.") from None
    except json.JSONDecodeError as err:
        raise UserError(
            f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}.",
            path=path,
            hint="Fix the syntax (a trailing comma or a missing quote is the usual cause).",
        ) from None
    except (OSError, UnicodeDecodeError, RecursionError) as err:
        raise UserError(f"cannot read the file ({type(err).__name__}: {err}).", path=path) from None
    if not isinstance(meta, dict):
        raise UserError("expected a JSON object with a 'frames' list at the top level.", path=path)
    return meta


def is_neus2_json(meta: dict) -> bool:
    """NeuS2 format: the top level has ``from_na`` or some frame has ``intrinsic_matrix``."""
    frames = meta.get("frames")
    frames = frames if isinstance(frames, list) else []
    return "from_na" in meta or any(isinstance(f, dict) and "intrinsic_matrix" in f for f in frames)


def json_normalization(meta: dict, path: Path) -> Normalization:
    """``Normalization`` from the top-level ``scale``, ``offset`` and ``aabb`` (NGP defaults)."""
    try:
        scale = float(meta.get("scale", DEFAULT_SCALE))
        offset = np.asarray(meta.get("offset", DEFAULT_OFFSET), dtype=np.float64).reshape(3)
        aabb = np.asarray(meta.get("aabb", [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), dtype=np.float64).reshape(2, 3)
    except (TypeError, ValueError, OverflowError):
        raise UserError(
            "'scale' must be a number, 'offset' a list of 3 numbers and 'aabb' two lists of 3 numbers.",
            path=path,
        ) from None
    if not (np.isfinite(scale) and scale > 0):
        raise UserError(f"'scale' must be a positive number, got {scale}.", path=path)
    if not (np.all(np.isfinite(offset)) and np.all(np.isfinite(aabb)) and np.all(aabb[1] > aabb[0])):
        raise UserError(
            f"'offset' {offset.tolist()} and 'aabb' {aabb.tolist()} must be finite with aabb min < max.",
            path=path,
        )
    return Normalization(scale=scale, offset=offset, aabb=aabb)


def _matrix(value, frame_label: str, key: str, path: Path, shapes: tuple[tuple[int, int], ...]) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        m = None
    if m is None or m.shape not in shapes:
        got = "non-numeric" if m is None else f"shape {m.shape}"
        want = " or ".join(f"{a}x{b}" for a, b in shapes)
        raise UserError(f"{frame_label}: '{key}' must be a {want} matrix, got {got}.", path=path)
    return m


def _number(frame: dict, meta: dict, key: str, frame_label: str, path: Path):
    """Per-frame value, else top-level value, else None (as float)."""
    value = frame.get(key, meta.get(key))
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{frame_label}: '{key}' must be a number, got {value!r}.", path=path) from None


def _frame_intrinsics(frame: dict, meta: dict, width: int, height: int, label: str, path: Path) -> np.ndarray:
    """(3, 3) K in the file's pixel convention from ``intrinsic_matrix`` or NGP fields."""
    if "intrinsic_matrix" in frame:
        m = _matrix(frame["intrinsic_matrix"], label, "intrinsic_matrix", path, ((4, 4), (3, 3)))
        K = m[:3, :3].copy()
        if not np.all(np.isfinite(K)) or K[2, 2] == 0:
            raise UserError(f"{label}: 'intrinsic_matrix' is not a valid pinhole matrix.", path=path)
        return K / K[2, 2]
    fl_x = _number(frame, meta, "fl_x", label, path)
    fl_y = _number(frame, meta, "fl_y", label, path)
    angle_x = _number(frame, meta, "camera_angle_x", label, path)
    angle_y = _number(frame, meta, "camera_angle_y", label, path)
    cx = _number(frame, meta, "cx", label, path)
    cy = _number(frame, meta, "cy", label, path)
    if fl_x is None and angle_x is None:
        raise UserError(
            f"{label}: no intrinsics: neither 'intrinsic_matrix', 'fl_x' nor 'camera_angle_x' is given "
            "(per frame or at the top level).",
            path=path,
            hint="Add 'camera_angle_x' (horizontal field of view in radians) at the top level.",
        )
    if fl_x is None:
        if not (0 < angle_x < np.pi):
            raise UserError(f"{label}: 'camera_angle_x' must be in (0, pi) radians, got {angle_x}.", path=path)
        fl_x = float(intrinsics_from_fov(width, height, angle_x)[0, 0])
    if fl_y is None and angle_y is not None:
        if not (0 < angle_y < np.pi):
            raise UserError(f"{label}: 'camera_angle_y' must be in (0, pi) radians, got {angle_y}.", path=path)
        fl_y = 0.5 * height / np.tan(0.5 * angle_y)
    if fl_y is None:
        fl_y = fl_x
    return np.array(
        [
            [fl_x, 0.0, width / 2.0 if cx is None else cx],
            [0.0, fl_y, height / 2.0 if cy is None else cy],
            [0.0, 0.0, 1.0],
        ]
    )


def _frame_distortion(frame: dict, meta: dict, label: str, path: Path) -> np.ndarray | None:
    values = [_number(frame, meta, k, label, path) or 0.0 for k in DISTORTION_KEYS]
    if not all(np.isfinite(values)):
        shown = ", ".join(f"{k}={v}" for k, v in zip(DISTORTION_KEYS, values, strict=True))
        raise UserError(f"{label}: distortion ({shown}) must be finite.", path=path)
    return None if not any(values) else np.asarray(values, dtype=np.float64)


def _image_path(frame: dict, label: str, json_path: Path) -> Path:
    file_path = frame.get("file_path")
    if not isinstance(file_path, str) or not file_path:
        raise UserError(f"{label}: missing or empty 'file_path'.", path=json_path)
    base = json_path.parent / file_path
    if base.suffix.lower() in UNSUPPORTED_EXTENSIONS:
        raise UserError(
            f"{label}: {base.suffix} images are not supported ({file_path}).",
            path=json_path,
            hint="Convert the images to PNG and update 'file_path'.",
        )
    resolved = resolve_image_path(base)
    if resolved is None and base.is_dir():
        raise UserError(
            f"{label}: image '{file_path}' is a folder, not an image file ({base}).",
            path=json_path,
            hint="'file_path' must name an image file (relative to the JSON's folder).",
        )
    if resolved is None:
        raise UserError(
            f"{label}: image '{file_path}' not found (looked for {base} as given and with .png, .jpg, .jpeg appended).",
            path=json_path,
            hint="Paths are relative to the JSON's folder; check the path and that the images were copied.",
        )
    return resolved


def _frame_mask_path(value, label: str, json_path: Path) -> Path:
    """The mask file named by a frame's ``mask_path`` (relative to the JSON's folder)."""
    if not isinstance(value, str) or not value:
        raise UserError(f"{label}: 'mask_path' must be a non-empty string, got {value!r}.", path=json_path)
    base = json_path.parent / value
    resolved = resolve_image_path(base)
    if resolved is None:
        what = "is a folder, not an image file" if base.is_dir() else "not found"
        raise UserError(
            f"{label}: mask '{value}' {what}.", path=json_path, hint="Paths are relative to the JSON's folder."
        )
    return resolved


def _view_name(image_path: Path, json_path: Path) -> str:
    """Image path relative to the JSON's folder, without extension: unique across splits."""
    try:
        rel = image_path.relative_to(json_path.parent)
    except ValueError:
        rel = Path(image_path.name)
    return rel.with_suffix("").as_posix()


def parse_json_frames(json_path: Path, meta: dict) -> tuple[list[View], list[str | None], list[str]]:
    """Views of one JSON file.

    Returns:
        views: one ``View`` per frame (OpenCV c2w in the world frame, K with pixel
            centres at +0.5).
        splits: each frame's ``split`` field, or None.
        warnings: non-fatal notes (``from_na: false``, ...).
    """
    frames = meta.get("frames")
    if not isinstance(frames, list):
        raise UserError("no 'frames' list at the top level.", path=json_path)
    neus2 = is_neus2_json(meta)
    warnings: list[str] = []
    from_na = bool(meta.get("from_na", False)) if neus2 else False
    if neus2 and "from_na" in meta and not meta["from_na"]:
        warnings.append(
            f"{json_path.name}: 'from_na' is false, so transform_matrix is read as OpenGL camera-to-world; "
            "NeuS2 itself only checks that the key exists and would read it as OpenCV. Remove the key or "
            "set it to true if the poses are OpenCV."
        )
    integer_centres = bool(meta.get("integer_pixel_centers", False))
    top_w, top_h = meta.get("w"), meta.get("h")
    views: list[View] = []
    splits: list[str | None] = []
    for i, frame in enumerate(frames):
        label = f"frame {i}"
        if not isinstance(frame, dict):
            raise UserError(f"{label}: expected an object with 'file_path' and 'transform_matrix'.", path=json_path)
        if isinstance(frame.get("file_path"), str):
            label = f"frame {i} ({frame['file_path']})"
        image_path = _image_path(frame, label, json_path)
        if "transform_matrix" not in frame:
            raise UserError(f"{label}: missing 'transform_matrix'.", path=json_path)
        pose = _matrix(frame["transform_matrix"], label, "transform_matrix", json_path, ((4, 4), (3, 4)))
        if pose.shape == (3, 4):
            pose = np.vstack([pose, [0.0, 0.0, 0.0, 1.0]])
        c2w = pose if from_na else opengl_to_opencv(pose)
        w, h = frame.get("w", top_w), frame.get("h", top_h)
        if w is None or h is None:
            w, h = read_image_size(image_path)
        try:
            w, h = int(w), int(h)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"{label}: 'w' and 'h' must be integers, got {w!r}, {h!r}.", path=json_path) from None
        if w <= 0 or h <= 0:
            raise UserError(f"{label}: image size must be positive, got {w}x{h}.", path=json_path)
        K = _frame_intrinsics(frame, meta, w, h, label, json_path)
        if integer_centres:
            K[0, 2] += 0.5
            K[1, 2] += 0.5
        mask_path = None
        if frame.get("mask_path") is not None:  # our extension: a separate mask image per frame
            mask_path = _frame_mask_path(frame["mask_path"], label, json_path)
        views.append(
            View(
                name=_view_name(image_path, json_path),
                image_path=image_path,
                width=w,
                height=h,
                K=K,
                c2w=c2w,
                distortion=_frame_distortion(frame, meta, label, json_path),
                mask_path=mask_path,
            )
        )
        split = frame.get("split")
        splits.append(str(split) if split is not None else None)
    return views, splits, warnings


def load_json_scene(files: list[tuple[Path, str | None]], name: str, root: Path) -> Scene:
    """Build a ``Scene`` from one or more JSON files.

    Args:
        files: (json path, split) pairs. ``split`` "train"/"test" puts every frame of
            that file in the split; None uses each frame's ``split`` field (default
            "train"). The first file sets the format and the normalization.
        name, root: copied into the ``Scene``.
    """
    if not files:
        raise ValueError("files must name at least one JSON")
    views: list[View] = []
    split: dict[str, list[int]] = {"train": [], "test": []}
    warnings: list[str] = []
    fmt = None
    normalization = None
    for json_path, file_split in files:
        meta = read_json(json_path)
        file_views, frame_splits, file_warnings = parse_json_frames(json_path, meta)
        warnings += file_warnings
        norm = json_normalization(meta, json_path)
        if normalization is None:
            normalization = norm
            fmt = "neus2" if is_neus2_json(meta) else "blender"
            aabb_scale = meta.get("aabb_scale")
            if isinstance(aabb_scale, (int, float)) and aabb_scale > 1 and "aabb" not in meta:
                warnings.append(
                    f"{json_path.name}: aabb_scale={aabb_scale} is ignored: only the unit cube "
                    "(the normalized [0, 1]^3) is reconstructed."
                )
        elif norm.scale != normalization.scale or not np.allclose(norm.offset, normalization.offset):
            warnings.append(
                f"{json_path.name}: scale/offset differ from {files[0][0].name}; using {files[0][0].name}'s."
            )
        for view, frame_split in zip(file_views, frame_splits, strict=True):
            s = file_split or frame_split or "train"
            if s not in ("train", "test", "val"):
                raise UserError(f"view {view.name}: unknown split {s!r} (expected 'train' or 'test').", path=json_path)
            split["test" if s == "val" else s].append(len(views))
            views.append(view)
    return Scene(
        name=name,
        root=root,
        format=fmt,
        views=views,
        split=split,
        normalization=normalization,
        warnings=warnings,
    )
