"""Rigid transforms for dynamic scenes: a 6D-rotation parametrisation and ray mapping.

Composition order (also in the README): frame k's normalized points x map into the
canonical frame (frame 0's normalized frame) by ``x_c = A_k x`` with
``A_k = A_{k-1} @ D_k``: first the per-frame delta ``D_k`` (learned, it maps frame k onto
frame k-1), then the previous frame's accumulated transform ``A_{k-1}``. All 4x4
matrices act on homogeneous column vectors.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from neus2cli.data.scene import Normalization


def rotation_from_6d(r6: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3) rotation by Gram-Schmidt on two vectors (Zhou et al. 2019).

    The two 3-vectors become the first two columns of the matrix.
    """
    a1, a2 = r6[..., :3], r6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def _pivot_tensor(pivot: float | np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.broadcast_to(np.asarray(pivot, dtype=np.float32), (3,)).copy())


class RigidDelta(nn.Module):
    """Learned rigid motion about a pivot: x -> R (x - p) + p + t (normalized frame).

    The pivot should be where the object is: rotating about a far-away point couples every
    rotation to a translation of the object, which the optimiser must then undo.
    """

    def __init__(self, pivot: float | np.ndarray | torch.Tensor = 0.5):
        super().__init__()
        self.r6 = nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
        self.translation = nn.Parameter(torch.zeros(3))
        self.register_buffer("pivot", _pivot_tensor(pivot))

    @torch.no_grad()
    def set_pivot(self, pivot: float | np.ndarray | torch.Tensor) -> None:
        """Move the rotation centre (normalized frame) before training starts."""
        self.pivot.copy_(_pivot_tensor(pivot))

    def matrix(self) -> torch.Tensor:
        """(4, 4) homogeneous matrix of the current delta."""
        rot = rotation_from_6d(self.r6)
        p = self.pivot.to(rot)
        m = torch.eye(4, device=rot.device, dtype=rot.dtype)
        m[:3, :3] = rot
        m[:3, 3] = p - rot @ p + self.translation
        return m


class FrameToCanonical(nn.Module):
    """Maps rays of the current frame into the canonical frame: ``A_prev @ D`` (D learned).

    ``pivot``: (3,) where the object is in the previous frame's normalized coordinates (D's
    rotation centre); default the cube centre.
    """

    def __init__(self, accumulated_prev: np.ndarray | torch.Tensor, pivot: np.ndarray | float = 0.5):
        super().__init__()
        self.delta = RigidDelta(pivot)
        self.register_buffer("prev", torch.as_tensor(np.asarray(accumulated_prev), dtype=torch.float32).clone())

    def matrix(self) -> torch.Tensor:
        """(4, 4) accumulated transform A_k = A_{k-1} @ D_k (normalized frame)."""
        return self.prev.to(self.delta.r6.device) @ self.delta.matrix()

    def forward(self, rays_o: torch.Tensor, rays_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rays_o, rays_d (n, 3) frame-normalized -> canonical-normalized (directions stay unit)."""
        m = self.matrix()
        return rays_o @ m[:3, :3].T + m[:3, 3], rays_d @ m[:3, :3].T


def world_to_canonical_world(normalized_transform: np.ndarray, normalization: Normalization) -> np.ndarray:
    """Normalized-frame transform A -> the same motion in world units: N^-1 A N (4, 4)."""
    n = normalization.matrix()
    return np.linalg.inv(n) @ np.asarray(normalized_transform, dtype=np.float64) @ n


def rotation_angle_deg(rot: np.ndarray) -> float:
    """Angle of a (3, 3) rotation in degrees."""
    cos = (np.trace(rot) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
