"""Rigid transforms (6D rotations, composition order) and lossless per-frame deltas."""

from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np
import pytest
import torch

from neus2cli.data.scene import Normalization
from neus2cli.train.frame_store import MAGIC, decode_frame, encode_frame, is_keyframe
from neus2cli.train.rigid import (
    FrameToCanonical,
    RigidDelta,
    rotation_angle_deg,
    rotation_from_6d,
    world_to_canonical_world,
)


def test_6d_rotation_is_orthonormal_and_identity_at_init():
    r6 = torch.randn(100, 6, dtype=torch.float64)
    rot = rotation_from_6d(r6)
    eye = torch.eye(3, dtype=torch.float64).expand(100, 3, 3)
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, eye)
    torch.testing.assert_close(torch.det(rot), torch.ones(100, dtype=torch.float64))
    torch.testing.assert_close(rotation_from_6d(torch.tensor([1.0, 0, 0, 0, 1, 0])), torch.eye(3))


def test_composition_order_and_ray_mapping():
    prev = np.eye(4)
    prev[:3, 3] = [0.1, 0.0, 0.0]
    mod = FrameToCanonical(prev)
    with torch.no_grad():
        mod.delta.r6.copy_(torch.tensor([0.0, 1.0, 0.0, -1.0, 0.0, 0.0]))  # 90 degrees about z
    a = mod.matrix()
    # A_k = A_{k-1} @ D_k: rotate about the cube centre first, then shift by the previous translation.
    x = torch.tensor([[0.6, 0.5, 0.5]])
    expected = torch.tensor([[0.5 + 0.1, 0.6, 0.5]])
    o, d = mod(x, torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(o, expected)
    torch.testing.assert_close(d, torch.tensor([[0.0, 1.0, 0.0]]))
    torch.testing.assert_close(a[:3, :3] @ x[0] + a[:3, 3], expected[0])


def test_delta_rotates_about_its_pivot():
    pivot = np.array([0.2, 0.7, 0.4])
    delta = RigidDelta(pivot)
    with torch.no_grad():
        delta.r6.copy_(torch.tensor([0.0, 1.0, 0.0, -1.0, 0.0, 0.0]))  # 90 degrees about z
        delta.translation.copy_(torch.tensor([0.01, -0.02, 0.03]))
    m = delta.matrix().detach().double().numpy()
    # The pivot only translates; a point one unit away along x swings to +y about it.
    np.testing.assert_allclose(m[:3, :3] @ pivot + m[:3, 3], pivot + [0.01, -0.02, 0.03], atol=1e-6)
    np.testing.assert_allclose(m[:3, :3] @ (pivot + [1, 0, 0]) + m[:3, 3], pivot + [0.01, 0.98, 0.03], atol=1e-6)


def test_world_units_conjugation():
    norm = Normalization(scale=0.2, offset=np.array([0.5, 0.5, 0.5]))
    a = np.eye(4)
    a[:3, 3] = [0.02, 0, 0]  # 0.02 normalized units = 0.1 world units
    w = world_to_canonical_world(a, norm)
    np.testing.assert_allclose(w[:3, 3], [0.1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(w[:3, :3], np.eye(3))
    rot = np.array([[math.cos(0.3), -math.sin(0.3), 0], [math.sin(0.3), math.cos(0.3), 0], [0, 0, 1]])
    assert math.isclose(rotation_angle_deg(rot), math.degrees(0.3), rel_tol=1e-9)


def test_frame_deltas_are_lossless_and_small_for_sparse_changes():
    g = torch.Generator().manual_seed(0)
    frame0 = {"w": torch.randn(200_000, generator=g), "bits": torch.rand(64, 64, 64, generator=g) > 0.7}
    frame1 = {k: v.clone() for k, v in frame0.items()}
    frame1["w"][:1000] += 0.01  # a frame touches 0.5 % of the table
    frame1["bits"][:2] = ~frame1["bits"][:2]
    key = encode_frame(frame0, None)
    delta = encode_frame(frame1, frame0)
    assert is_keyframe(key) and not is_keyframe(delta)
    like = frame0
    back0 = decode_frame(key, None, like)
    back1 = decode_frame(delta, back0, like)
    for name in frame1:
        assert torch.equal(back1[name], frame1[name]), name  # bit-exact
    assert len(delta) < 0.05 * len(key)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns, so NaN payloads and -0.0 compare exactly."""
    return t if t.dtype == torch.bool else t.reshape(-1).view(torch.uint8)


def _assert_same(back: dict, want: dict) -> None:
    assert back.keys() == want.keys()
    for name, t in want.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape, name
        assert torch.equal(_bits(back[name]), _bits(t)), name


def test_frames_round_trip_every_dtype_and_odd_bit_pattern():
    g = torch.Generator().manual_seed(1)
    # quiet NaN, NaN with a payload, negative signalling NaN, -0.0, +inf, the smallest denormal
    special = np.array([0x7FC00000, 0x7FC00001, 0xFFA00000, 0x80000000, 0x7F800000, 1], np.uint32).view(np.float32)
    frame0 = {
        "w": torch.cat([torch.randn(5000, generator=g), torch.from_numpy(special)]),
        "half": torch.randn(5, 7, generator=g).half(),
        "bf16": torch.randn(33, generator=g).bfloat16(),
        "f64": torch.randn(4, 4, generator=g).double(),
        "i64": torch.randint(-(2**40), 2**40, (50,), generator=g),
        "u8": torch.randint(0, 256, (13,), generator=g, dtype=torch.uint8),
        "bits": torch.rand(3, 5, 7, generator=g) > 0.5,  # 105 bits: not a whole number of bytes
        "scalar": torch.tensor(0.5),
        "empty": torch.zeros(0, 3),
    }
    frame1 = {k: v.clone() for k, v in frame0.items()}
    frame1["w"][:100] += 1e-4
    frame1["w"][200] = -0.0
    frame1["w"][-6:] = torch.from_numpy(special[::-1].copy())  # NaN <-> denormal etc.: large, sign-crossing deltas
    frame1["half"][0] = -frame1["half"][0]
    frame1["bf16"][1:3] = float("nan")
    frame1["f64"] *= -1
    frame1["i64"][::3] -= 2**62  # wraps in the delta
    frame1["u8"] = 255 - frame1["u8"]
    frame1["bits"][0] = ~frame1["bits"][0]
    frame1["scalar"] = torch.tensor(-0.0)
    key, delta = encode_frame(frame0, None), encode_frame(frame1, frame0)
    assert is_keyframe(key) and not is_keyframe(delta)
    back0 = decode_frame(key, None, frame0)
    _assert_same(back0, frame0)
    _assert_same(decode_frame(delta, back0, frame0), frame1)
    _assert_same(decode_frame(encode_frame(frame1, frame1), frame1, frame1), frame1)  # an all-zero delta
    assert decode_frame(key, None, {"bits": frame0["bits"]}).keys() == {"bits"}  # ``like`` picks tensors


def test_frame_decoding_rejects_unknown_and_corrupt_blobs():
    state = {"w": torch.randn(1000), "bits": torch.ones(10, dtype=torch.bool)}
    blob = encode_frame(state, None)
    header_at = len(MAGIC) + 8
    size = struct.unpack_from("<I", blob, len(MAGIC))[0]
    header = json.loads(blob[header_at : header_at + size])
    header["version"] = 99
    head = json.dumps(header).encode()
    future = MAGIC + struct.pack("<II", len(head), zlib.crc32(head)) + head + blob[header_at + size :]

    def flipped(i: int) -> bytes:
        return blob[:i] + bytes([blob[i] ^ 1]) + blob[i + 1 :]

    bad = {
        "empty": b"",
        "garbage": b"not a frame at all",
        "zip garbage": b"PK\x03\x04 not really a zip",
        "truncated": blob[:-1],
        "trailing bytes": blob + b"\0",
        "header bit flip": flipped(header_at + 3),
        "payload bit flip": flipped(len(blob) - 1),
        "future version": future,
    }
    for what, b in bad.items():
        with pytest.raises(ValueError):
            decode_frame(b, None, state)
            pytest.fail(f"accepted: {what}")  # not a ValueError: names the case that got through
    with pytest.raises(ValueError, match="version 99"):
        is_keyframe(future)
    with pytest.raises(ValueError, match="previous frame"):
        decode_frame(encode_frame(state, state), None, state)
    with pytest.raises(ValueError, match="expected"):
        decode_frame(blob, None, {"w": torch.zeros(999)})
    with pytest.raises(ValueError, match="lacks"):
        decode_frame(blob, None, {**state, "other": torch.zeros(1)})
