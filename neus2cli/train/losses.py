"""Training losses: Huber colour loss, eikonal regulariser, optional mask BCE."""

from __future__ import annotations

import math

import torch


def huber_loss(pred: torch.Tensor, target: torch.Tensor, delta: float) -> torch.Tensor:
    """Mean Huber loss: 0.5 r^2 for |r| <= delta, delta (|r| - 0.5 delta) beyond."""
    return torch.nn.functional.huber_loss(pred, target, delta=delta, reduction="mean")


def eikonal_loss(grad: torch.Tensor) -> torch.Tensor:
    """mean((|grad f| - 1)^2) over samples; grad (n, 3). Zero samples give 0."""
    if grad.shape[0] == 0:
        return grad.sum() * 0.0
    return ((grad.norm(dim=-1) - 1.0) ** 2).mean()


def mask_bce(opacity: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy between accumulated opacity (n,) and the mask (n,) in [0, 1]."""
    return torch.nn.functional.binary_cross_entropy(opacity.clamp(1e-4, 1 - 1e-4), mask)


def psnr_from_mse(mse: float) -> float:
    return -10.0 * math.log10(max(mse, 1e-12))


def color_target(rgba: torch.Tensor, bg: torch.Tensor, own_background: bool) -> torch.Tensor:
    """(n, 3) the colour a ray is trained towards, from its pixel ``rgba`` (n, 4) in [0, 1].

    Without a background field (``own_background`` False) the pixel is composited over the ray's
    ``bg`` (n, 3), so the mask acts through the random background: outside it nothing may be opaque.
    With one, the target is the image's own colour whatever its alpha: the background field explains
    what is not the object, and masks act only through the mask loss.
    """
    if own_background:
        return rgba[:, :3]
    mask = rgba[:, 3:4]
    return rgba[:, :3] * mask + (1.0 - mask) * bg
