"""The frames of a dynamic run folder: ``frames/kkkk/field.bin`` and the fields rebuilt from them.

A frame stores every model tensor plus the occupancy bitfield (``field_state``), as a lossless
delta against the previous stored frame or as a keyframe (``frame_store``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neus2cli.compute import Compute
from neus2cli.config import load_run_config
from neus2cli.data.scene import Normalization
from neus2cli.errors import UserError
from neus2cli.io import read_json
from neus2cli.train.frame_store import decode_frame, is_keyframe, write_frame
from neus2cli.train.outputs import TrainedField, empty_field

KEYFRAME_EVERY = 50


def frame_dir(run_dir: Path, index: int) -> Path:
    """``run_dir/frames/kkkk`` (k: the frame's index in the input sequence)."""
    return Path(run_dir) / "frames" / f"{index:04d}"


def field_state(model: torch.nn.Module, grid: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a frame stores: every model tensor (``model.*``) plus the occupancy bitfield (``grid.binaries``)."""
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["grid.binaries"] = grid.binaries
    return state


def store_field(run_dir: Path, index: int, state: dict[str, torch.Tensor], prev: dict | None) -> int:
    """Write frame ``index``'s field (a keyframe when ``prev`` is None); returns its size in bytes."""
    return write_frame(frame_dir(run_dir, index) / "field.bin", state, prev)


def _read_frame(run_dir: Path, index: int, read: Callable[..., Any], *args):
    """``read(blob, *args)`` on frame ``index``'s stored field; a damaged file is a ``UserError`` naming it."""
    path = frame_dir(run_dir, index) / "field.bin"
    try:
        return read(path.read_bytes(), *args)
    except ValueError as err:
        raise UserError(
            f"the stored field of frame {index:04d} cannot be read ({err}).",
            path=path,
            hint="The file is damaged or was written by another version of neus2cli; retrain from the frame "
            "before it (delete this frame's folder and the later ones, then train-dynamic --resume).",
        ) from None


def stored_state(
    run_dir: Path, frame: int, stored: list[int], like: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], int]:
    """Frame ``frame``'s field state (``field_state``'s layout) rebuilt from its keyframe and the deltas
    after it, and how many frames it is after that keyframe.

    ``stored``: the run's frames whose ``field.bin`` exists, in run order (``frame`` among them);
    ``like``: a state of the run's model, for the tensors' shapes and dtypes.
    """
    chain = stored[: stored.index(frame) + 1]
    start = max(i for i, k in enumerate(chain) if _read_frame(run_dir, k, is_keyframe))
    state = None
    for k in chain[start:]:
        state = _read_frame(run_dir, k, decode_frame, state, like)
    return state, len(chain) - 1 - start


def frame_is_complete(run_dir: Path, frame: int) -> bool:
    """Every file of the output contract of frame ``frame`` is on disk (``field.bin``, ``mesh.ply``,
    ``transform.json``, ``metrics.json``)."""
    folder = frame_dir(run_dir, frame)
    return all((folder / name).is_file() for name in ("field.bin", "mesh.ply", "transform.json", "metrics.json"))


def field_for_frame(run_dir: Path, frame: int, compute: Compute) -> tuple[TrainedField, Normalization, np.ndarray]:
    """Rebuild frame ``frame`` of a dynamic run from its stored deltas.

    Returns the field (model + occupancy grid in the canonical frame), the normalization and the
    4x4 canonical-world -> frame-world matrix (world units).
    """
    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.exists():
        raise UserError("not a dynamic run folder (no run.json).", path=run_dir)
    info = read_json(info_path, hint="The run's record is damaged; its frames cannot be located.")
    if not isinstance(info, dict) or not isinstance(info.get("frames"), list) or not info["frames"]:
        raise UserError(
            "not a dynamic run folder: its run.json lists no frames.",
            path=run_dir,
            hint="--frame applies to runs of `neus2 train-dynamic`; export a static run without it.",
        )
    indices = info["frames"]
    if frame not in indices:
        raise UserError(f"frame {frame} is not part of this run (frames {indices[0]}..{indices[-1]}).", path=run_dir)
    done = [i for i in indices if (frame_dir(run_dir, i) / "field.bin").exists()]
    if frame not in done:
        raise UserError(f"frame {frame} has not been trained yet.", path=run_dir, hint="Resume the run first.")
    field = empty_field(load_run_config(run_dir / "config.json"), compute)
    state, _ = stored_state(run_dir, frame, done, field_state(field.model, field.grid))
    field.model.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
    field.grid.binaries.copy_(state["grid.binaries"].to(field.grid.binaries.device))
    transform_path = frame_dir(run_dir, frame) / "transform.json"
    damaged = f"Frame {frame}'s transform is damaged: delete frames/{frame:04d} and the frames after it, then --resume."
    if not transform_path.is_file():
        raise UserError("is missing: the frame's pose cannot be known.", path=transform_path, hint=damaged)
    transform = read_json(transform_path, hint=damaged)
    try:
        world_to_canonical = np.asarray(transform["world_to_canonical"], dtype=np.float64)
        world_from_canonical = np.linalg.inv(world_to_canonical)
        ok = world_to_canonical.shape == (4, 4) and np.isfinite(world_from_canonical).all()
    except (TypeError, KeyError, ValueError, np.linalg.LinAlgError):
        ok = False
    if not ok:
        raise UserError("holds no invertible 4x4 'world_to_canonical' matrix.", path=transform_path, hint=damaged)
    normalization = Normalization.from_dict(transform.get("normalization", info["normalization"]))
    return field, normalization, world_from_canonical


def chained_world_to_canonical(run_dir: Path, frame: int) -> tuple[np.ndarray, int]:
    """(4, 4) frame ``frame``'s world -> the world of the earliest canonical frame its chunks chain to, and
    that frame (world units; ``x_root = M @ x_world``).

    Each frame's ``world_to_canonical`` maps into its chunk's canonical frame. A chunk that started from
    overlap frames (``dynamic.chunk_overlap``) has an overlap frame of the chunk before as its canonical
    frame, and that frame's own transform maps it on: ``M_k = M_r @ world_to_canonical_k`` with r the
    chunk's canonical frame. A chunk trained from scratch at its own first frame is a root: with no
    overlap every chunk is one, and relating two roots takes a registration of their meshes.
    """
    run_dir = Path(run_dir)
    matrix, k = np.eye(4), frame
    while True:
        path = frame_dir(run_dir, k) / "transform.json"
        if not path.is_file():
            raise UserError(f"frame {k:04d} has no transform.json (not trained yet?).", path=path)
        transform = read_json(path)
        matrix = np.asarray(transform["world_to_canonical"], dtype=np.float64) @ matrix
        chunk = transform.get("chunk")
        if chunk is None:  # a run from before chunks existed: its first frame is every frame's canonical one
            return matrix, read_json(run_dir / "run.json")["frames"][0]
        if chunk["canonical_frame"] == chunk["first_frame"] or chunk["canonical_frame"] == k:
            return matrix, chunk["canonical_frame"]
        k = chunk["canonical_frame"]
