"""Per-frame field storage for sequences: lossless, compressed deltas against the previous frame.

A frame's tensors (network weights, the occupancy bitfield) are stored as the bitwise
XOR of their float32 patterns with the previous frame's, deflate-compressed. Entries a
frame did not change (most hash-table rows) XOR to zero and cost almost nothing, and
XOR is exactly invertible, so any frame rebuilds bit-for-bit. Every ``keyframe_every``
frames the tensors are stored whole (XOR against zeros) to bound the rebuild chain.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from neus2cli.io import atomic_write_bytes

KEYFRAME_FLAG = "__keyframe__"


def _as_words(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bool:
        return np.packbits(t.contiguous().numpy().reshape(-1))
    # Everything else is stored as float32 bit patterns (weights are float32 already).
    return t.float().contiguous().numpy().reshape(-1).view(np.uint32)


def encode_frame(state: dict[str, torch.Tensor], prev: dict[str, torch.Tensor] | None) -> bytes:
    """Compressed bytes of ``state`` given the previous frame's state (None = keyframe)."""
    arrays: dict[str, np.ndarray] = {KEYFRAME_FLAG: np.array([prev is None])}
    for name, tensor in state.items():
        words = _as_words(tensor)
        if prev is not None:
            words = words ^ _as_words(prev[name])
        arrays[name] = words
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def decode_frame(
    blob: bytes, prev: dict[str, torch.Tensor] | None, like: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Inverse of ``encode_frame``; ``like`` gives each tensor's shape and dtype."""
    with np.load(io.BytesIO(blob)) as data:
        keyframe = bool(data[KEYFRAME_FLAG][0])
        out = {}
        for name, ref in like.items():
            words = data[name]
            if not keyframe:
                if prev is None:
                    raise ValueError("a delta frame needs the previous frame's state")
                words = words ^ _as_words(prev[name])
            if ref.dtype == torch.bool:
                bits = np.unpackbits(words)[: ref.numel()].astype(bool)
                out[name] = torch.from_numpy(bits.reshape(ref.shape))
            else:
                out[name] = torch.from_numpy(words.view(np.float32).copy().reshape(ref.shape)).to(ref.dtype)
        return out


def is_keyframe(blob: bytes) -> bool:
    with np.load(io.BytesIO(blob)) as data:
        return bool(data[KEYFRAME_FLAG][0])


def write_frame(path: Path, state: dict[str, torch.Tensor], prev: dict[str, torch.Tensor] | None) -> int:
    """Write one frame's blob atomically; returns its size in bytes."""
    blob = encode_frame(state, prev)
    atomic_write_bytes(path, blob)
    return len(blob)
