"""Rigid transforms (6D rotations, composition order) and lossless per-frame deltas."""

from __future__ import annotations

import math

import numpy as np
import torch

from neus2cli.data.scene import Normalization
from neus2cli.train.frame_store import decode_frame, encode_frame, is_keyframe
from neus2cli.train.rigid import (
    FrameToCanonical,
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
