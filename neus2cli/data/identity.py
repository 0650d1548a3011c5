"""A scene's identity: where it is and a digest of its camera files, so that a run can tell its own scene.

The digest covers the files that define the cameras (``transforms*.json``, NeuS2 ``transform_*.json``,
NeuS's ``cameras_sphere.npz``, a COLMAP model's ``cameras``/``images``/``points3D`` files, a sequence's
per-frame JSONs), not the images: reading every image
would make ``--resume`` as slow as loading the scene, and a different scene nearly always comes with
different camera files. A scene that moved keeps its digest, so it is still recognised.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from neus2cli.data.formats_colmap import MODEL_FILES, find_colmap_model
from neus2cli.data.formats_neus import CAMERAS_FILE
from neus2cli.data.loader import detect_format, top_level_jsons


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _identity(path: Path, files: list[Path]) -> dict:
    """``{"path": resolved path, "files": {name: sha256}, "sha256": digest of the names and digests}``."""
    per_file = {f.name: _sha256(f) for f in sorted(files, key=lambda f: f.name)}
    combined = hashlib.sha256("".join(f"{name}\0{d}\n" for name, d in per_file.items()).encode())
    return {"path": str(Path(path).resolve()), "files": per_file, "sha256": combined.hexdigest()}


def scene_identity(path: str | Path) -> dict:
    """The identity of the static scene at ``path`` (any form ``load_scene`` takes); reads only camera files.

    Raises ``UserError`` where ``path`` holds no scene (as ``load_scene`` does).
    """
    kind, found = detect_format(path)
    if kind == "neus":
        files = [found[0][0] / CAMERAS_FILE]
    elif kind == "colmap":  # ``found`` names the scene folder: digest the model's files (those present)
        model_dir = find_colmap_model(found[0][0])
        files = [
            model_dir / f"{s}{e}" for s in MODEL_FILES for e in (".bin", ".txt") if (model_dir / f"{s}{e}").is_file()
        ]
    else:
        files = [f for f, _ in found]
    return _identity(Path(path), files)


def sequence_identity(directory: str | Path) -> dict:
    """The identity of a dynamic sequence folder: its top-level per-frame JSONs."""
    return _identity(Path(directory), top_level_jsons(Path(directory)))


def same_scene(recorded: dict, given: dict) -> bool:
    """True when ``given`` (an identity) is the scene ``recorded`` describes.

    Compared by digest where one was recorded (a moved or copied scene still matches); by resolved
    path otherwise (runs whose checkpoint holds only the scene's path).
    """
    if recorded.get("sha256"):
        return recorded["sha256"] == given["sha256"]
    return Path(recorded["path"]).resolve() == Path(given["path"]).resolve()
