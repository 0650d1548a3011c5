"""Per-frame field storage for sequences: lossless, compressed deltas against the previous frame.

A frame's tensors (network weights, the occupancy bitfield) are stored bit-exactly, as
unsigned words of their item size (bools packed 8 to a byte). A delta frame stores
``zigzag(words - prev_words)`` (wrapping integer difference, sign moved to the lowest
bit); a keyframe, written every few frames to bound the rebuild chain, stores the words
themselves. Fine-tuning moves weights by small amounts, so a delta word is zero high bits
over a few noisy low bits, and many are exactly zero (entries the frame did not touch):

* a bitmask marks the non-zero words, and only those are stored;
* the words are split into byte planes (every word's lowest byte, then every second byte,
  ...), so the near-zero high bytes sit together and compress to almost nothing;
* every plane is cut into chunks, deflated on a thread pool with zlib's run-length
  strategy, and kept as is where deflate does not help (the noisy low bytes).

Container: ``MAGIC``, the JSON header's length and CRC-32 (little-endian uint32s), the
header, the chunks as stored::

    {"version": 1, "keyframe": bool, "crc32": CRC-32 of the stored chunks,
     "tensors": [[name, dtype, shape, non-zero words], ...],
     "chunks": [[stored bytes, "zlib" | "raw"], ...]}

Per tensor, in order, the payload holds ``ceil(words / 8)`` mask bytes and ``itemsize``
planes of ``non-zero words`` bytes, concatenated and then chunked.
"""

from __future__ import annotations

import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from neus2cli.io import atomic_write_bytes

MAGIC = b"NS2FRAME"
VERSION = 1
KEYFRAME_FLAG = "keyframe"
_CHUNK = 1 << 21  # independently deflated bytes: enough pieces to keep every core busy


def _words(t: torch.Tensor) -> np.ndarray:
    """The tensor's bit patterns as unsigned words of its item size (bools packed 8 to a byte)."""
    t = t.detach().cpu().contiguous().reshape(-1)
    if t.dtype == torch.bool:
        return np.packbits(t.numpy())
    return t.view(torch.uint8).numpy().view(f"<u{t.element_size()}")


def _zigzag(d: np.ndarray) -> np.ndarray:
    """In place: the sign to the lowest bit, so small negative differences have zero high bits too."""
    s = d.view(f"<i{d.itemsize}")
    sign = s >> (8 * d.itemsize - 1)
    s <<= 1
    s ^= sign
    return d


def _unzigzag(z: np.ndarray) -> np.ndarray:
    """In place inverse of ``_zigzag``."""
    sign = z & 1
    np.negative(sign, out=sign)
    z >>= 1
    z ^= sign
    return z


def _deflate(chunk: memoryview) -> tuple[bytes | memoryview, str]:
    # Run-length + Huffman only: byte planes have skewed byte frequencies and zero runs but no
    # repeated strings, so deflate's string search (levels 1-9) costs time and gains nothing.
    z = zlib.compressobj(strategy=zlib.Z_RLE)
    packed = z.compress(chunk) + z.flush()
    return (packed, "zlib") if len(packed) < len(chunk) else (chunk, "raw")


def encode_frame(state: dict[str, torch.Tensor], prev: dict[str, torch.Tensor] | None) -> bytes:
    """Compressed bytes of ``state`` given the previous frame's state (None = keyframe)."""
    tensors, streams = [], []
    for name, tensor in state.items():
        words = _words(tensor)
        if prev is not None:
            words = _zigzag(words - _words(prev[name]))  # unsigned arithmetic wraps: exactly invertible
        nonzero = words != 0
        words = words[nonzero]
        tensors.append([name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape), len(words)])
        streams.append(np.packbits(nonzero))
        streams.extend(words.view(np.uint8).reshape(-1, words.itemsize).T.copy())  # byte planes, low byte first
    # Chunks never straddle two streams, so each is homogeneous (all noise or all near-zero).
    chunks = [memoryview(s)[i : i + _CHUNK] for s in streams for i in range(0, len(s), _CHUNK)]
    with ThreadPoolExecutor() as pool:  # zlib releases the GIL while it works
        packed = list(pool.map(_deflate, chunks))
    crc = 0
    for data, _ in packed:
        crc = zlib.crc32(data, crc)
    header = {
        "version": VERSION,
        KEYFRAME_FLAG: prev is None,
        "crc32": crc,
        "tensors": tensors,
        "chunks": [[len(data), codec] for data, codec in packed],
    }
    head = json.dumps(header).encode()
    return b"".join([MAGIC, struct.pack("<II", len(head), zlib.crc32(head)), head, *(data for data, _ in packed)])


def _header(blob: bytes) -> tuple[dict, int]:
    """The JSON header and where the chunks start; ValueError for anything else."""
    start = len(MAGIC) + 8
    if not blob.startswith(MAGIC) or len(blob) < start:
        raise ValueError("not a neus2cli frame (unknown file format)")
    size, crc = struct.unpack_from("<II", blob, len(MAGIC))
    head = blob[start : start + size]
    if zlib.crc32(head) != crc:
        raise ValueError("corrupt neus2cli frame: header checksum mismatch")
    header = json.loads(head)
    if header.get("version") != VERSION:
        raise ValueError(f"neus2cli frame format version {header.get('version')} is not supported (reads {VERSION})")
    return header, start + size


def _payload(blob: bytes, header: dict, start: int) -> bytes:
    """Check and inflate the chunks, joined."""
    view = memoryview(blob)
    if sum(size for size, _ in header["chunks"]) != len(blob) - start or zlib.crc32(view[start:]) != header["crc32"]:
        raise ValueError("corrupt neus2cli frame: truncated or checksum mismatch")
    pieces, offset = [], start
    for size, codec in header["chunks"]:
        pieces.append((view[offset : offset + size], codec))
        offset += size

    def inflate(piece: tuple[memoryview, str]) -> bytes | memoryview:
        data, codec = piece
        return zlib.decompress(data) if codec == "zlib" else data

    with ThreadPoolExecutor() as pool:
        return b"".join(pool.map(inflate, pieces))


def decode_frame(
    blob: bytes, prev: dict[str, torch.Tensor] | None, like: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Inverse of ``encode_frame``; ``like`` names the tensors wanted and gives their shapes and dtypes."""
    header, start = _header(blob)
    keyframe = header[KEYFRAME_FLAG]
    if not keyframe and prev is None:
        raise ValueError("a delta frame needs the previous frame's state")
    payload = np.frombuffer(_payload(blob, header, start), np.uint8)
    out, offset = {}, 0
    for name, dtype, shape, n_nonzero in header["tensors"]:
        numel = int(np.prod(shape))
        n_words, item = ((numel + 7) // 8, 1) if dtype == "bool" else (numel, getattr(torch, dtype).itemsize)
        mask = np.unpackbits(payload[offset : offset + (n_words + 7) // 8], count=n_words).view(bool)
        offset += (n_words + 7) // 8
        planes = payload[offset : offset + item * n_nonzero].reshape(item, n_nonzero)
        offset += item * n_nonzero
        ref = like.get(name)
        if ref is None:
            continue
        if str(ref.dtype).removeprefix("torch.") != dtype or list(ref.shape) != shape:
            raise ValueError(f"frame tensor {name} is {dtype} {shape}, expected {ref.dtype} {list(ref.shape)}")
        words = np.zeros(n_words, f"<u{item}")
        words[mask] = planes.T.copy().view(words.dtype).reshape(-1)
        if not keyframe:
            words = _unzigzag(words)
            words += _words(prev[name])
        if dtype == "bool":
            out[name] = torch.from_numpy(np.unpackbits(words, count=numel).view(bool).reshape(shape))
        else:
            out[name] = torch.from_numpy(words.view(np.uint8)).view(ref.dtype).reshape(shape)
    if offset != len(payload):
        raise ValueError("corrupt neus2cli frame: payload size does not match its tensors")
    if like.keys() - out.keys():
        raise ValueError(f"frame lacks tensors {sorted(like.keys() - out.keys())}")
    return out


def is_keyframe(blob: bytes) -> bool:
    return bool(_header(blob)[0][KEYFRAME_FLAG])


def write_frame(path: Path, state: dict[str, torch.Tensor], prev: dict[str, torch.Tensor] | None) -> int:
    """Write one frame's blob atomically; returns its size in bytes."""
    blob = encode_frame(state, prev)
    atomic_write_bytes(path, blob)
    return len(blob)
