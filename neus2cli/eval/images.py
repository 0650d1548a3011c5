"""Image metrics for held-out views: PSNR, SSIM and (if the ``lpips`` package is installed) LPIPS.

Images are float in [0, 1], (H, W, C) (usually C = 3), as numpy arrays or torch
tensors (any device; they are copied to float64 numpy). Masks are (H, W) bool,
True for the pixels to score. Every metric is computed over the whole image and,
when a mask is given, over the masked region only.

* PSNR = -10 log10(MSE) with a data range of 1, the MSE averaged over pixels and
  channels (in the mask). Identical images give +inf.
* SSIM (Wang et al. 2004): 11x11 Gaussian window with sigma 1.5, constants
  C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 1, population (weighted) variances,
  computed per channel and averaged over channels. The map is only formed where the
  whole window fits ("valid" region, 5 pixels in from each border), as in the
  reference implementation and scikit-image; the masked SSIM is the mean of this
  map over the mask's pixels in that region.
* LPIPS needs the optional ``lpips`` package; without it the value is None.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.ndimage import correlate1d

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (H, W, C) or (H, W), got shape {arr.shape}")
    return arr


def _check_pair(pred: Any, gt: Any, mask: Any | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    p, g = _to_numpy(pred, "pred"), _to_numpy(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    m = None
    if mask is not None:
        if hasattr(mask, "detach"):
            mask = mask.detach().cpu().numpy()
        m = np.asarray(mask)
        if m.ndim == 3 and m.shape[-1] == 1:
            m = m[..., 0]
        if m.shape != p.shape[:2]:
            raise ValueError(f"mask must be (H, W) = {p.shape[:2]}, got shape {m.shape}")
        m = m.astype(bool)
    return p, g, m


def psnr(pred: Any, gt: Any, mask: Any | None = None) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1].

    Args:
        pred: (H, W, C) prediction.
        gt: (H, W, C) reference.
        mask: (H, W) bool; only these pixels count (all channels).

    Returns:
        ``-10 log10(MSE)``; +inf for identical images, NaN for an empty mask.
    """
    p, g, m = _check_pair(pred, gt, mask)
    err = (p - g) ** 2
    if m is not None:
        err = err[m]
    if err.size == 0:
        return float("nan")
    mse = float(err.mean())
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


@functools.lru_cache(maxsize=1)
def _gaussian_window() -> np.ndarray:
    x = np.arange(SSIM_WINDOW, dtype=np.float64) - (SSIM_WINDOW - 1) / 2
    w = np.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return w / w.sum()


def ssim_map(pred: Any, gt: Any) -> np.ndarray:
    """Per-pixel SSIM, averaged over channels, where the 11x11 window fits.

    Args:
        pred: (H, W, C) prediction in [0, 1], H, W >= 11.
        gt: (H, W, C) reference in [0, 1].

    Returns:
        (H - 10, W - 10) float64 map; entry (i, j) belongs to pixel (i + 5, j + 5).
    """
    p, g, _ = _check_pair(pred, gt, None)
    if min(p.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"pred must be at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels for SSIM, got {p.shape[:2]}")
    w = _gaussian_window()
    r = SSIM_WINDOW // 2

    def blur(a: np.ndarray) -> np.ndarray:
        # Separable Gaussian; the border (where the window would leave the image) is cropped.
        a = correlate1d(correlate1d(a, w, axis=0, mode="constant"), w, axis=1, mode="constant")
        return a[r:-r, r:-r]

    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_p, mu_g = blur(p), blur(g)
    var_p = blur(p * p) - mu_p**2
    var_g = blur(g * g) - mu_g**2
    cov = blur(p * g) - mu_p * mu_g
    num = (2 * mu_p * mu_g + c1) * (2 * cov + c2)
    den = (mu_p**2 + mu_g**2 + c1) * (var_p + var_g + c2)
    return (num / den).mean(axis=-1)


def ssim(pred: Any, gt: Any, mask: Any | None = None) -> float:
    """Mean structural similarity (Gaussian 11x11 window, sigma 1.5) of images in [0, 1].

    Args:
        pred: (H, W, C) prediction, H, W >= 11.
        gt: (H, W, C) reference.
        mask: (H, W) bool; the mean is taken over the mask's pixels in the valid
            region (5 pixels in from each border).

    Returns:
        SSIM in [-1, 1] (1: identical); NaN when the mask has no pixel in the valid region.
    """
    p, g, m = _check_pair(pred, gt, mask)
    smap = ssim_map(p, g)
    if m is None:
        return float(smap.mean())
    r = SSIM_WINDOW // 2
    m = m[r:-r, r:-r]
    return float(smap[m].mean()) if m.any() else float("nan")


@functools.lru_cache(maxsize=1)
def _lpips_model():
    import lpips as lpips_pkg  # optional dependency

    return lpips_pkg.LPIPS(net="alex", verbose=False).eval()


def lpips_available() -> bool:
    """True when the optional ``lpips`` package can be imported."""
    try:
        import lpips  # noqa: F401
    except Exception:
        return False
    return True


def lpips(pred: Any, gt: Any) -> float | None:
    """LPIPS (AlexNet) distance of (H, W, 3) images in [0, 1]; None without the ``lpips`` package."""
    if not lpips_available():
        return None
    import torch

    p, g, _ = _check_pair(pred, gt, None)

    def to_tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).float().permute(2, 0, 1)[None] * 2 - 1  # [0, 1] -> [-1, 1]

    with torch.no_grad():
        return float(_lpips_model()(to_tensor(p), to_tensor(g)).item())


METRIC_KEYS = ("psnr", "ssim", "lpips", "psnr_masked", "ssim_masked")


def evaluate_images(
    preds: Sequence[Any],
    gts: Sequence[Any],
    masks: Sequence[Any] | None = None,
    names: Sequence[str] | None = None,
) -> dict:
    """Score rendered views against their references.

    Args:
        preds: V images (H, W, C) in [0, 1] (sizes may differ between views).
        gts: V reference images, same sizes as ``preds``.
        masks: V (H, W) bool masks, or None (then the masked metrics are None).
        names: V view names (default ``"0"``, ``"1"``, ...).

    Returns:
        ``{"views": [{"name", "psnr", "ssim", "lpips", "psnr_masked", "ssim_masked"}, ...],
        "mean": {metric: mean over views (None where no view has a value)},
        "n_views": V}``. The mean PSNR is the mean of per-view PSNRs (the usual
        NeRF convention), not the PSNR of the pooled MSE.
    """
    if len(preds) != len(gts):
        raise ValueError(f"preds and gts must have the same length, got {len(preds)} and {len(gts)}")
    if masks is not None and len(masks) != len(preds):
        raise ValueError(f"masks must have one entry per view ({len(preds)}), got {len(masks)}")
    if names is not None and len(names) != len(preds):
        raise ValueError(f"names must have one entry per view ({len(preds)}), got {len(names)}")
    views = []
    for i, (pred, gt) in enumerate(zip(preds, gts, strict=True)):
        mask = None if masks is None else masks[i]
        row: dict[str, Any] = {"name": str(names[i]) if names is not None else str(i)}
        row["psnr"] = psnr(pred, gt)
        row["ssim"] = ssim(pred, gt)
        row["lpips"] = lpips(pred, gt)
        row["psnr_masked"] = None if mask is None else psnr(pred, gt, mask)
        row["ssim_masked"] = None if mask is None else ssim(pred, gt, mask)
        views.append(row)
    mean: dict[str, float | None] = {}
    for key in METRIC_KEYS:
        values = [v[key] for v in views if v[key] is not None and not math.isnan(v[key])]
        mean[key] = float(np.mean(values)) if values else None
    return {"views": views, "mean": mean, "n_views": len(views)}
