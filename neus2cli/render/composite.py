"""NeuS compositing of a packed training batch: alpha, transmittance, weights, colour and opacity in one call.

``composite_neus`` is what ``render_rays_fixed`` runs after the SDF and colour networks:

    alpha_i = neus_alpha(sdf_i, grad_i, dir_i, dist_i, s, r)   (0 where the slot is not a valid sample)
    T_i     = prod_{j < i, same ray} (1 - alpha_j)              (``transmittance_sorted``)
    w_i     = T_i alpha_i
    colour  = sum_i w_i rgb_i + (1 - opacity) bg,   opacity = sum_i w_i   (per ray)

Two implementations with one signature:

* ``impl="torch"``, the twin: exactly the PyTorch ops the training step ran before (``neus_alpha``,
  ``torch.where``, ``transmittance_sorted``, two ``index_add``, the background blend), on any device,
  differentiable to first order through autograd: about 50 PyTorch ops forward and 70 backward.
* ``impl="triton"``: ``neus2cli.render.composite_triton``, one kernel forward (one program per block
  of rays, each lane walking its ray's samples in order) and one backward (the reverse walk) plus a
  sum of the per-program ``inv_s`` partials. No host reads and no data-dependent shapes, so it can
  be captured in a CUDA graph. It saves only ``T`` (n_samples,) for the backward and recomputes
  alpha from the inputs. Results agree with the twin to float32 rounding (tests/test_composite.py).

Semantics both keep: padding samples carry ``ray_indices >= n_rays`` and contribute nothing; at
``1 - alpha < 1e-30`` (alpha = 1) the gradient alpha receives through later samples' transmittance
is zero (``transmittance_sorted``'s clamp); the clamp of alpha to [0, 1] passes gradients at its
bounds (PyTorch's ``clamp``), the ReLUs of the annealed cosine do not at 0 (PyTorch's ``relu``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from neus2cli.backends import import_triton_kernels
from neus2cli.render.neus import neus_alpha
from neus2cli.render.volrend import transmittance_sorted

Impl = Literal["torch", "triton"]

__all__ = ["Impl", "composite_neus"]


def _check(sdf, grad, dirs, dists, rgb, sample_valid, ray_indices, n_rays, inv_s, cos_anneal_ratio, bg_color) -> None:
    n = sdf.shape[0] if sdf.ndim == 1 else -1
    expected = {
        "sdf": (sdf, (n,)),
        "grad": (grad, (n, 3)),
        "dirs": (dirs, (n, 3)),
        "dists": (dists, (n,)),
        "rgb": (rgb, (n, 3)),
        "sample_valid": (sample_valid, (n,)),
        "ray_indices": (ray_indices, (n,)),
        "bg_color": (bg_color, (n_rays, 3)),
    }
    for name, (tensor, shape) in expected.items():
        if n < 0 or tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape if n >= 0 else '(n_samples,)'}, got {tuple(tensor.shape)}")
    if sample_valid.dtype != torch.bool:
        raise ValueError(f"sample_valid must be bool, got {sample_valid.dtype}")
    if ray_indices.dtype != torch.int64:
        raise ValueError(f"ray_indices must be int64, got {ray_indices.dtype}")
    if not isinstance(inv_s, Tensor) or inv_s.ndim != 0:
        raise ValueError(f"inv_s must be a 0-d tensor, got {inv_s!r}")
    if isinstance(cos_anneal_ratio, Tensor) and cos_anneal_ratio.ndim != 0:
        raise ValueError(f"cos_anneal_ratio must be a float or a 0-d tensor, got shape {tuple(cos_anneal_ratio.shape)}")


def _composite_torch(sdf, grad, dirs, dists, rgb, sample_valid, ray_indices, n_rays, inv_s, cos_anneal_ratio, bg_color):
    alpha = neus_alpha(sdf, grad, dirs, dists, inv_s, cos_anneal_ratio)
    alpha = torch.where(sample_valid, alpha, 0.0)
    weights = transmittance_sorted(alpha, ray_indices) * alpha
    # One extra row collects the padding (zero weights), so no index is out of range.
    color = rgb.new_zeros(n_rays + 1, 3).index_add(0, ray_indices, weights[:, None] * rgb)[:n_rays]
    opacity = weights.new_zeros(n_rays + 1).index_add(0, ray_indices, weights)[:n_rays]
    color = color + (1.0 - opacity[:, None]) * bg_color
    return color, opacity


def _triton_module(t: Tensor) -> ModuleType:
    return import_triton_kernels("neus2cli.render.composite_triton", t.device)


class _CompositeNeuS(torch.autograd.Function):
    """The Triton kernels behind an autograd node (first order: training never differentiates its backward)."""

    @staticmethod
    def forward(ctx, sdf, grad, dirs, dists, rgb, inv_s, bg_color, sample_valid, ray_indices, n_rays, ratio):
        kernels = _triton_module(sdf)
        color, opacity, trans = kernels.forward(
            sdf, grad, dirs, dists, rgb, inv_s, bg_color, sample_valid, ray_indices, n_rays, ratio
        )  # trans (S,): T at every sample, the one intermediate the backward reads
        ratio_tensor = ratio if isinstance(ratio, Tensor) else None
        ctx.ratio = None if isinstance(ratio, Tensor) else ratio
        ctx.n_rays = n_rays
        ctx.save_for_backward(sdf, grad, dirs, dists, rgb, inv_s, bg_color, sample_valid, ray_indices, trans, opacity,
                              ratio_tensor)  # fmt: skip
        ctx.set_materialize_grads(False)
        return color, opacity

    @staticmethod
    @once_differentiable
    def backward(ctx, d_color, d_opacity):
        sdf, grad, dirs, dists, rgb, inv_s, bg_color, sample_valid, ray_indices, trans, opacity, ratio_tensor = (
            ctx.saved_tensors
        )
        ratio = ratio_tensor if ratio_tensor is not None else ctx.ratio
        need = ctx.needs_input_grad[:7]  # sdf, grad, dirs, dists, rgb, inv_s, bg_color
        if (d_color is None and d_opacity is None) or not any(need):
            return (None,) * 11
        d_bg = None
        if need[6]:
            d_bg = d_color * (1.0 - opacity[:, None]) if d_color is not None else torch.zeros_like(bg_color)
        d_sdf = d_grad = d_dirs = d_dists = d_rgb = d_inv_s = None
        if any(need[:6]):
            d_sdf, d_grad, d_dirs, d_dists, d_rgb, d_inv_s = _triton_module(sdf).backward(
                sdf, grad, dirs, dists, rgb, inv_s, bg_color, sample_valid, ray_indices, ctx.n_rays, ratio, trans,
                d_color, d_opacity, need[:6],
            )  # fmt: skip
        return d_sdf, d_grad, d_dirs, d_dists, d_rgb, d_inv_s, d_bg, None, None, None, None


def composite_neus(
    sdf: Tensor,
    grad: Tensor,
    dirs: Tensor,
    dists: Tensor,
    rgb: Tensor,
    sample_valid: Tensor,
    ray_indices: Tensor,
    n_rays: int,
    inv_s: Tensor,
    cos_anneal_ratio: Tensor | float,
    bg_color: Tensor,
    *,
    impl: Impl = "torch",
) -> tuple[Tensor, Tensor]:
    """Colour and opacity of R rays from their packed NeuS samples (module docstring).

    Args:
        sdf: (S,) SDF at the sections' midpoints, normalized units.
        grad: (S, 3) SDF gradient there (unnormalized; NeuS2 uses ``grad . dir`` as the cosine).
        dirs: (S, 3) unit ray directions of the samples.
        dists: (S,) section lengths, normalized units.
        rgb: (S, 3) sample colours.
        sample_valid: (S,) bool; invalid slots get alpha 0.
        ray_indices: (S,) int64, sorted, each ray's samples contiguous and in marching order;
            padding slots carry an index ``>= n_rays`` (``n_rays`` in ``render_rays_fixed``). Not
            checked (that would read back to the host); an unsorted array gives wrong results.
        n_rays: R.
        inv_s: 0-d sharpness s = exp(10 variance) (learned: it receives a gradient).
        cos_anneal_ratio: NeuS cosine annealing in [0, 1], a float or a 0-d tensor (a constant).
        bg_color: (R, 3) background colour.
        impl: ``"torch"`` (the twin, any device) or ``"triton"`` (float32 CUDA tensors, or CPU
            tensors under ``TRITON_INTERPRET=1``); ``Compute.kernel_impl``.

    Returns:
        color (R, 3) composited over the background and opacity (R,), both differentiable (first
        order) with respect to ``sdf``, ``grad``, ``dirs``, ``dists``, ``rgb``, ``inv_s`` and ``bg_color``.
    """
    _check(sdf, grad, dirs, dists, rgb, sample_valid, ray_indices, n_rays, inv_s, cos_anneal_ratio, bg_color)
    if impl == "torch":
        return _composite_torch(
            sdf, grad, dirs, dists, rgb, sample_valid, ray_indices, n_rays, inv_s, cos_anneal_ratio, bg_color
        )
    if impl != "triton":
        raise ValueError(f"impl must be 'torch' or 'triton', got {impl!r}")
    floats = (sdf, grad, dirs, dists, rgb, inv_s, bg_color)
    if any(t.dtype != torch.float32 for t in floats):
        raise ValueError(f"impl='triton' needs float32 tensors, got {[t.dtype for t in floats]}")
    named = dict(grad=grad, dirs=dirs, dists=dists, rgb=rgb, sample_valid=sample_valid, ray_indices=ray_indices,
                 inv_s=inv_s, cos_anneal_ratio=cos_anneal_ratio, bg_color=bg_color)  # fmt: skip
    for name, t in named.items():
        if isinstance(t, Tensor) and t.device != sdf.device:  # the kernels read them through pointers
            raise ValueError(f"{name} must be on {sdf.device} with impl='triton', got {t.device}")
    if isinstance(cos_anneal_ratio, Tensor):
        if cos_anneal_ratio.requires_grad:
            raise ValueError("impl='triton' treats cos_anneal_ratio as a constant; pass it without requires_grad")
        cos_anneal_ratio = cos_anneal_ratio.to(torch.float32).contiguous()
    else:
        cos_anneal_ratio = float(cos_anneal_ratio)
    color, opacity = _CompositeNeuS.apply(
        *(t.contiguous() for t in floats),
        sample_valid.contiguous(),
        ray_indices.contiguous(),
        n_rays,
        cos_anneal_ratio,
    )
    return color, opacity
