"""One entry point for every scene format: detect, load, run the cheap checks.

``load_scene(path)`` accepts

* a NeuS/IDR folder (``cameras_sphere.npz``),
* a COLMAP folder: ``images/`` plus a sparse model in ``sparse/0/``, ``sparse/`` or the
  folder itself (``neus2cli.data.formats_colmap``; named JSON files take precedence),
* a folder with ``transforms_train.json`` / ``transform_train.json`` (+ sibling
  ``*_test.json`` or ``*_val.json`` as the test split), ``transforms.json``, or a
  single top-level ``*.json``,
* a JSON file (``*_train.json`` picks up its sibling test/val file).

``load_dynamic_scene(dir)`` reads a NeuS2 sequence: one JSON per time step.
Images are not decoded here (see ``neus2cli.data.images``); ``validate_scene`` does
the checks that need pixels.
"""

from __future__ import annotations

import re
from pathlib import Path

from neus2cli.data.formats_colmap import find_colmap_model, load_colmap_scene
from neus2cli.data.formats_json import load_json_scene, read_json
from neus2cli.data.formats_neus import CAMERAS_FILE, load_neus_folder
from neus2cli.data.scene import DynamicScene, Scene
from neus2cli.data.validate import check_scene
from neus2cli.errors import UserError

#: Top-level JSON files that are metadata written beside a scene, never frames.
METADATA_JSON = ("scene_info.json",)
_SPLIT_PAIRS = ("transforms_train.json", "transform_train.json")


def _sibling_test(train_json: Path) -> Path | None:
    """``x_train.json`` -> ``x_test.json`` (preferred) or ``x_val.json``, if present."""
    prefix = train_json.name[: -len("_train.json")]
    for split in ("test", "val"):
        candidate = train_json.with_name(f"{prefix}_{split}.json")
        if candidate.is_file():
            return candidate
    return None


def _json_files_for(json_path: Path) -> list[tuple[Path, str | None]]:
    if json_path.name.endswith("_train.json"):
        files: list[tuple[Path, str | None]] = [(json_path, "train")]
        test = _sibling_test(json_path)
        if test is not None:
            files.append((test, "test"))
        return files
    return [(json_path, None)]


def top_level_jsons(directory: Path) -> list[Path]:
    """Top-level ``*.json`` files of ``directory`` except known metadata, sorted by name.

    Raises ``UserError`` for a ``*.json`` entry that is not a regular file (a folder named
    ``0003.json``): skipping it would silently drop a time step.
    """
    entries = sorted(
        p for p in Path(directory).iterdir() if p.suffix.lower() == ".json" and p.name not in METADATA_JSON
    )
    for entry in entries:
        if not entry.is_file():
            raise UserError(
                f"is {'a folder' if entry.is_dir() else 'not a regular file'}, not a JSON file.",
                path=entry,
                hint="Every top-level .json entry of a scene or sequence folder is read as a scene file: "
                "rename or move it.",
            )
    return entries


def detect_format(path: str | Path) -> tuple[str, list[tuple[Path, str | None]]]:
    """What ``path`` holds.

    Returns:
        ("neus", [(folder, None)]) for a NeuS/IDR folder, ("colmap", [(folder, None)]) for a
        COLMAP folder, or ("json", [(file, split), ...]) with the JSON files to read and the
        split each one sets (None: per frame).
    """
    path = Path(path)
    if not path.exists():
        raise UserError("scene not found.", path=path, hint="Give a scene folder or a transforms JSON file.")
    if path.is_file():
        if path.name == CAMERAS_FILE:
            return "neus", [(path.parent, None)]
        if path.suffix.lower() != ".json":
            raise UserError(
                "not a scene file: expected a .json (Blender/NGP or NeuS2) or a folder.",
                path=path,
            )
        return "json", _json_files_for(path)
    if not path.is_dir():
        raise UserError("is neither a file nor a folder.", path=path, hint="Give a scene folder or a JSON file.")
    if (path / CAMERAS_FILE).exists():  # read_neus_cameras names it if it is not a readable file
        return "neus", [(path, None)]
    for name in _SPLIT_PAIRS:
        if (path / name).is_file():
            return "json", _json_files_for(path / name)
    if (path / "transforms.json").is_file():
        return "json", [(path / "transforms.json", None)]
    if find_colmap_model(path) is not None:
        return "colmap", [(path, None)]
    jsons = top_level_jsons(path)
    if len(jsons) == 1:
        return "json", _json_files_for(jsons[0])
    if len(jsons) > 1:
        raise UserError(
            f"found {len(jsons)} JSON files ({jsons[0].name}, {jsons[1].name}, ...) and no "
            "transforms.json or transform(s)_train.json, so the scene is ambiguous.",
            path=path,
            hint="If this is a dynamic sequence (one JSON per time step), train it with `neus2 train-dynamic`; "
            "otherwise pass the JSON file to use.",
        )
    raise UserError(
        f"no scene found: expected {CAMERAS_FILE} (NeuS/IDR), transforms_train.json, transform_train.json, "
        "transforms.json, a single .json file, or a COLMAP model (sparse/0/ with images/).",
        path=path,
    )


def load_scene(path: str | Path, test_views: list[int] | tuple[int, ...] | None = None) -> Scene:
    """Load a static scene of any supported format and run the cheap checks.

    Args:
        path: scene folder or JSON file (see the module docstring).
        test_views: NeuS/IDR and COLMAP: indices held out as the test split (default
            NeuS2's DTU test views for NeuS/IDR, none for COLMAP); ignored for JSON
            scenes, whose files set the split.

    Returns:
        ``Scene``; ``Scene.name`` is the folder name (a JSON file's parent folder).

    Raises:
        UserError: unknown layout, malformed file, missing image, bad pose, cameras
            not looking at the reconstruction box, ...
    """
    kind, files = detect_format(path)
    if kind == "neus":
        scene = load_neus_folder(files[0][0], test_views=test_views)
    elif kind == "colmap":
        scene = load_colmap_scene(files[0][0], test_views=test_views)
    else:
        json_path = files[0][0]
        root = Path(path)
        scene = load_json_scene(files, name=json_path.resolve().parent.name, root=root)
    scene.warnings += [w for w in check_scene(scene) if w not in scene.warnings]
    return scene


def _frame_stem(name: str) -> str:
    return re.sub(r"\.json$", "", name, flags=re.IGNORECASE)


def load_dynamic_scene(directory: str | Path, frames: slice | None = None) -> DynamicScene:
    """Load a NeuS2 dynamic sequence: every top-level ``*.json`` is one time step, in name order.

    Args:
        directory: the sequence folder; image paths in each JSON are relative to it.
        frames: which time steps to load (a slice of the sorted list), default all.

    Returns:
        ``DynamicScene`` whose ``frames[k]`` is the static scene of time step k, named
        after its JSON's stem; per-view ``split: "test"`` marks held-out views.
    """
    directory = Path(directory)
    if not directory.is_dir():
        what = "is not a folder" if directory.exists() else "not found"
        raise UserError(f"dynamic sequence folder {what}.", path=directory)
    jsons = top_level_jsons(directory)
    if not jsons:
        raise UserError(
            "no JSON frames at the top level of the sequence folder.",
            path=directory,
            hint="A dynamic sequence has one NeuS2 JSON per time step (e.g. 0000.json, 0001.json, ...).",
        )
    total = len(jsons)
    if frames is not None:
        if not isinstance(frames, slice):
            raise ValueError(f"frames must be a slice or None, got {type(frames).__name__}")
        jsons = jsons[frames]
        if not jsons:
            raise UserError(
                f"the frame selection {frames.start}:{frames.stop}:{frames.step} selects none of the {total} frames.",
                path=directory,
            )
    scenes, warnings = [], []
    for json_path in jsons:
        if "frames" not in read_json(json_path):
            warnings.append(f"{json_path.name}: no 'frames' list, skipped (not a time step).")
            continue
        scene = load_json_scene([(json_path, None)], name=_frame_stem(json_path.name), root=json_path)
        scene.warnings += check_scene(scene)
        scenes.append(scene)
    if not scenes:
        raise UserError("none of the top-level JSON files has a 'frames' list.", path=directory)
    for scene in scenes:
        warnings += [f"{scene.name}: {w}" for w in scene.warnings if f"{scene.name}: {w}" not in warnings]
    return DynamicScene(
        name=directory.resolve().name,
        root=directory,
        frames=scenes,
        frame_names=[s.name for s in scenes],
        warnings=warnings,
    )


def is_dynamic_dir(path: str | Path) -> bool:
    """True for a folder that ``load_scene`` cannot take but ``load_dynamic_scene`` can:
    several top-level JSONs and no NeuS, train/test, transforms.json or COLMAP files."""
    path = Path(path)
    if not path.is_dir() or (path / CAMERAS_FILE).exists() or (path / "transforms.json").is_file():
        return False
    if find_colmap_model(path) is not None:
        return False
    if any((path / name).is_file() for name in _SPLIT_PAIRS):
        return False
    return len(top_level_jsons(path)) > 1
