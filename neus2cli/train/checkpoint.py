"""Checkpoint files of static runs: one ``checkpoint.pt`` per run, written atomically, and the field they hold.

Contents (a dict): ``version``, ``kind`` ("static"), ``config`` (resolved, plain data),
``backend``, ``normalization`` (``Normalization.to_dict``), ``scene`` (path, name,
format), and ``trainer`` (``NeuSTrainer.state_dict``: weights, EMA, optimiser,
occupancy grid, step, ray count, RNG, and the training seconds, samples and
last training PSNR of every segment so far).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from neus2cli.compute import Compute
from neus2cli.config import config_from_dict
from neus2cli.errors import UserError
from neus2cli.io import atomic_write_bytes
from neus2cli.train.ema import WeightEMA
from neus2cli.train.outputs import TrainedField, empty_field

CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, payload: dict) -> Path:
    buffer = io.BytesIO()
    torch.save({"version": CHECKPOINT_VERSION, **payload}, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def find_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint file or a run folder holding one ``checkpoint.*``."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("checkpoint.*"))
        if not found:
            raise UserError(
                "no checkpoint.* in this folder.",
                path=path,
                hint="Pass a run folder written by `neus2 train`, or the checkpoint file itself.",
            )
        return found[0]
    if not path.exists():
        raise UserError("checkpoint not found.", path=path, hint="Check the path (a run folder or its checkpoint.pt).")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = find_checkpoint(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # corrupt or foreign file: say so plainly
        raise UserError(
            f"cannot read this checkpoint ({type(err).__name__}: {err}).",
            path=path,
            hint="It may be truncated or not written by neus2; retrain or pass another file.",
        ) from None
    if not isinstance(data, dict) or data.get("version") != CHECKPOINT_VERSION:
        raise UserError(
            "this file is not a neus2 checkpoint of a supported version.",
            path=path,
            hint="Pass a checkpoint written by this version of `neus2 train`.",
        )
    data["path"] = str(path)
    return data


def field_from_checkpoint(ckpt: dict, compute: Compute) -> TrainedField:
    """The field a loaded checkpoint holds, with its averaged (EMA) weights, on any backend."""
    field = empty_field(config_from_dict(ckpt["config"], ckpt.get("path", "checkpoint")), compute)
    state = ckpt["trainer"]
    field.model.load_state_dict(state["model"])
    field.grid.load_state_dict(state["grid"])
    ema = WeightEMA(field.model, state["ema"]["decay"])
    ema.load_state_dict(state["ema"])
    ema.copy_to(field.model)
    return field
