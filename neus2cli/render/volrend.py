"""Volume-rendering compositing of packed samples, with nerfacc's signatures and semantics.

Samples are **packed**: flat per-sample tensors of shape (n_samples,) plus ``ray_indices``
(n_samples,) int64, sorted by ray, samples of one ray contiguous and in marching order
(what ``OccGridEstimator.sampling`` returns). A ray's segment may also be given as
``packed_info`` (n_rays, 2) = [start, count], or the inputs may be batched (n_rays, n_samples).

    T_i = prod_{j < i} (1 - alpha_j)      (transmittance, exclusive product along the ray)
    w_i = T_i * alpha_i                    (weights)

Every public function takes ``impl``: ``"torch"`` is the twin (the CPU path and the reference in
tests), ``"nerfacc"`` is nerfacc's implementation. The renderer passes ``Compute.composite_impl``,
so the backend a command resolved decides, never the tensors' device. ``"auto"`` (the default for
direct callers) calls nerfacc when the tensors are float32 on CUDA and nerfacc is importable, else the twin.

The twin lays each ray's factors out in a dense (n_rays, max_samples + 1) array and uses
``torch.cumprod``, whose backward is exact when a factor is 0 (alpha = 1). nerfacc 0.5.x's CUDA
backward of ``exclusive_prod`` divides by the factor (``nerfacc/cuda/csrc/scan.cu``, marked
FIXME there), so at alpha = 1 nerfacc drops the gradient that alpha_i receives through later
samples' transmittance; the twin keeps it. Elsewhere both agree to float32 rounding.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from neus2cli.backends import import_nerfacc
from neus2cli.errors import DependencyError

Impl = Literal["auto", "torch", "nerfacc"]

__all__ = [
    "Impl",
    "accumulate_along_rays",
    "composite",
    "exclusive_prod",
    "exclusive_sum",
    "pack_info",
    "render_transmittance_from_alpha",
    "render_transmittance_from_density",
    "render_visibility_from_alpha",
    "render_visibility_from_density",
    "render_weight_from_alpha",
    "transmittance_sorted",
]


# --------------------------------------------------------------------------- dispatch

_AUTO_PROBE: dict[str, object] = {}


def _nerfacc_or_none(impl: Impl, *tensors: Tensor):
    """nerfacc's module when ``impl`` asks for it (or allows it and it applies), else None."""
    if impl == "torch":
        return None
    if impl not in ("auto", "nerfacc"):
        raise ValueError(f"impl must be 'auto', 'torch' or 'nerfacc', got {impl!r}")
    on_gpu = all(t.is_cuda for t in tensors if t is not None)
    # nerfacc's scan kernels are float32-only (data_ptr<float>).
    is_f32 = all(t.dtype == torch.float32 for t in tensors if t is not None and t.is_floating_point())
    if impl == "auto":
        if not (on_gpu and is_f32):
            return None
        if "nerfacc" not in _AUTO_PROBE:  # probe once per process; failures fall back silently
            try:
                _AUTO_PROBE["nerfacc"] = import_nerfacc()
            except DependencyError:
                _AUTO_PROBE["nerfacc"] = None
        return _AUTO_PROBE["nerfacc"]
    if not on_gpu or not is_f32:
        raise ValueError("impl='nerfacc' needs float32 CUDA tensors (nerfacc's packed kernels are CUDA-only)")
    return import_nerfacc()


# --------------------------------------------------------------------------- packing


@torch.no_grad()
def pack_info(ray_indices: Tensor, n_rays: int | None = None) -> Tensor:
    """(n_samples,) sorted ray indices -> (n_rays, 2) int64 [start, count] of each ray's samples.

    Unlike nerfacc's ``pack_info`` this also runs on the CPU. ``n_rays`` defaults to
    ``max(ray_indices) + 1``.
    """
    _check_ray_indices(ray_indices, n_rays)
    if n_rays is None:
        n_rays = int(ray_indices.max().item()) + 1 if ray_indices.numel() else 0
    counts = torch.bincount(ray_indices, minlength=n_rays)
    starts = torch.cumsum(counts, 0) - counts
    return torch.stack([starts, counts], dim=-1)


def _check_ray_indices(ray_indices: Tensor, n_rays: int | None) -> None:
    if ray_indices.ndim != 1:
        raise ValueError(f"ray_indices must have shape (n_samples,), got {tuple(ray_indices.shape)}")
    if ray_indices.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"ray_indices must be int64 or int32, got {ray_indices.dtype}")
    if ray_indices.numel() == 0:
        return
    # Packed means sorted: a segmented scan over unsorted indices would mix rays silently.
    if bool((ray_indices[1:] < ray_indices[:-1]).any()):
        raise ValueError("ray_indices must be sorted (samples packed by ray, in marching order)")
    if int(ray_indices[0]) < 0 or (n_rays is not None and int(ray_indices[-1]) >= n_rays):
        raise ValueError(
            f"ray_indices must lie in [0, n_rays={n_rays}), got [{int(ray_indices[0])}, {int(ray_indices[-1])}]"
        )


def _packed_layout(
    n_samples: int, packed_info: Tensor | None, ray_indices: Tensor | None, n_rays: int | None, device
) -> tuple[Tensor, Tensor, int, int]:
    """Each sample's (ray, position within its ray), the number of rays and the longest ray."""
    if packed_info is not None:
        if packed_info.ndim != 2 or packed_info.shape[-1] != 2:
            raise ValueError(f"packed_info must have shape (n_rays, 2), got {tuple(packed_info.shape)}")
        starts, counts = packed_info.to(device=device, dtype=torch.int64).unbind(-1)
        if int(counts.sum()) != n_samples or bool((starts != torch.cumsum(counts, 0) - counts).any()):
            raise ValueError(
                "packed_info must describe contiguous chunks covering all samples in order (start = cumulative count)"
            )
        rays = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
    elif ray_indices is not None:
        if ray_indices.shape != (n_samples,):
            raise ValueError(f"ray_indices must have shape ({n_samples},), got {tuple(ray_indices.shape)}")
        _check_ray_indices(ray_indices, n_rays)
        rays = ray_indices.to(device=device, dtype=torch.int64)
        total = n_rays if n_rays is not None else (int(rays[-1]) + 1 if n_samples else 0)
        counts = torch.bincount(rays, minlength=total)
        starts = torch.cumsum(counts, 0) - counts
    else:
        raise ValueError("flattened inputs need packed_info or ray_indices")
    position = torch.arange(n_samples, device=device) - starts[rays]
    max_count = int(counts.max()) if counts.numel() else 0
    return rays, position, int(counts.numel()), max_count


def _exclusive_scan(inputs: Tensor, packed_info: Tensor | None, ray_indices: Tensor | None, n_rays, op: str):
    """Exclusive product or sum along each ray; batched (..., n) or packed (n_samples,)."""
    identity = 1.0 if op == "prod" else 0.0
    scan = torch.cumprod if op == "prod" else torch.cumsum
    if packed_info is None and ray_indices is None:
        # Batched: scan the last dimension.
        shifted = torch.cat([torch.full_like(inputs[..., :1], identity), inputs[..., :-1]], dim=-1)
        return scan(shifted, dim=-1)
    if inputs.ndim != 1:
        raise ValueError(f"packed inputs must have shape (n_samples,), got {tuple(inputs.shape)}")
    n = inputs.shape[0]
    rays, position, rays_total, max_count = _packed_layout(n, packed_info, ray_indices, n_rays, inputs.device)
    if n == 0:
        return inputs.clone()
    # Dense layout with a leading identity column: column j+1 holds sample j, so the inclusive
    # scan read at column j is the exclusive scan at sample j. Padding is the identity.
    width = max_count + 1
    flat = (rays * width + position + 1).reshape(-1)
    dense = torch.full((rays_total * width,), identity, dtype=inputs.dtype, device=inputs.device)
    dense = dense.index_put((flat,), inputs)
    return scan(dense.view(rays_total, width), dim=1).reshape(-1)[flat - 1]


def exclusive_prod(
    inputs: Tensor, packed_info: Tensor | None = None, ray_indices: Tensor | None = None, n_rays=None
) -> Tensor:
    """Exclusive product along rays (the twin of ``nerfacc.exclusive_prod``), differentiable.

    ``inputs`` is (n_samples,) with ``packed_info`` (n_rays, 2) or ``ray_indices`` (n_samples,),
    or batched (..., n) with neither. Gradients are exact where inputs are 0.
    """
    return _exclusive_scan(inputs, packed_info, ray_indices, n_rays, "prod")


def exclusive_sum(
    inputs: Tensor, packed_info: Tensor | None = None, ray_indices: Tensor | None = None, n_rays=None
) -> Tensor:
    """Exclusive sum along rays (the twin of ``nerfacc.exclusive_sum``), differentiable."""
    return _exclusive_scan(inputs, packed_info, ray_indices, n_rays, "sum")


# --------------------------------------------------------------------------- transmittance & weights


def render_transmittance_from_alpha(
    alphas: Tensor,
    packed_info: Tensor | None = None,
    ray_indices: Tensor | None = None,
    n_rays: int | None = None,
    *,
    impl: Impl = "auto",
) -> Tensor:
    """Transmittance ``T_i = prod_{j<i} (1 - alpha_j)`` before each sample.

    Args:
        alphas: (n_samples,) packed opacities in [0, 1] (or batched (n_rays, n_samples)).
        packed_info: (n_rays, 2) [start, count] per ray, or None.
        ray_indices: (n_samples,) sorted ray index per sample, or None.
        n_rays: number of rays (default: ``max(ray_indices) + 1``).
        impl: see the module docstring.

    Returns:
        (n_samples,) transmittance, same shape and dtype as ``alphas``; differentiable.
    """
    nf = _nerfacc_or_none(impl, alphas)
    if nf is not None:
        return nf.render_transmittance_from_alpha(alphas, packed_info, ray_indices, n_rays)
    return exclusive_prod(1.0 - alphas, packed_info, ray_indices, n_rays)


def render_weight_from_alpha(
    alphas: Tensor,
    packed_info: Tensor | None = None,
    ray_indices: Tensor | None = None,
    n_rays: int | None = None,
    *,
    impl: Impl = "auto",
) -> tuple[Tensor, Tensor]:
    """Weights ``w_i = T_i * alpha_i`` and transmittance ``T_i``, both (n_samples,).

    Arguments as in ``render_transmittance_from_alpha``. Differentiable with respect to ``alphas``.
    """
    trans = render_transmittance_from_alpha(alphas, packed_info, ray_indices, n_rays, impl=impl)
    return trans * alphas, trans


def render_transmittance_from_density(
    t_starts: Tensor,
    t_ends: Tensor,
    sigmas: Tensor,
    packed_info: Tensor | None = None,
    ray_indices: Tensor | None = None,
    n_rays: int | None = None,
    *,
    impl: Impl = "auto",
) -> tuple[Tensor, Tensor]:
    """Transmittance ``exp(-sum_{j<i} sigma_j dt_j)`` and alphas ``1 - exp(-sigma_i dt_i)``.

    ``t_starts``, ``t_ends`` (distances along the ray) and ``sigmas`` (per unit distance) are
    (n_samples,). Returns (trans, alphas), both (n_samples,).
    """
    nf = _nerfacc_or_none(impl, sigmas, t_starts)
    if nf is not None:
        return nf.render_transmittance_from_density(t_starts, t_ends, sigmas, packed_info, ray_indices, n_rays)
    sigmas_dt = sigmas * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-sigmas_dt)
    trans = torch.exp(-exclusive_sum(sigmas_dt, packed_info, ray_indices, n_rays))
    return trans, alphas


@torch.no_grad()
def render_visibility_from_alpha(
    alphas: Tensor,
    packed_info: Tensor | None = None,
    ray_indices: Tensor | None = None,
    n_rays: int | None = None,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
    *,
    impl: Impl = "auto",
) -> Tensor:
    """(n_samples,) bool: samples worth shading, ``T_i >= early_stop_eps`` and (when
    ``alpha_thre > 0``) ``alpha_i >= alpha_thre``. So a sample with alpha = 1 is itself kept and
    every later sample on its ray dropped. Not differentiable."""
    trans = render_transmittance_from_alpha(alphas, packed_info, ray_indices, n_rays, impl=impl)
    vis = trans >= early_stop_eps
    if alpha_thre > 0:
        vis = vis & (alphas >= alpha_thre)
    return vis


@torch.no_grad()
def render_visibility_from_density(
    t_starts: Tensor,
    t_ends: Tensor,
    sigmas: Tensor,
    packed_info: Tensor | None = None,
    ray_indices: Tensor | None = None,
    n_rays: int | None = None,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
    *,
    impl: Impl = "auto",
) -> Tensor:
    """The density twin of ``render_visibility_from_alpha`` (alphas from ``sigma * dt``)."""
    trans, alphas = render_transmittance_from_density(
        t_starts, t_ends, sigmas, packed_info, ray_indices, n_rays, impl=impl
    )
    vis = trans >= early_stop_eps
    if alpha_thre > 0:
        vis = vis & (alphas >= alpha_thre)
    return vis


# Factors (1 - alpha) below this are clamped in ``transmittance_sorted``: the transmittance after
# such a sample is under 1e-30, i.e. zero for every use, and its log stays finite.
_MIN_FACTOR = 1e-30


def _segment_bounds(ray_indices: Tensor) -> tuple[Tensor, Tensor]:
    """(n,) sorted ray indices -> each sample's first and last position in its ray, without a host read.

    Binary searches of the sorted array itself (PyTorch's cummax/cummin scans are ~100x slower here).
    """
    start = torch.searchsorted(ray_indices, ray_indices, side="left")
    end = torch.searchsorted(ray_indices, ray_indices, side="right") - 1
    return start, end


class _SortedTransmittance(torch.autograd.Function):
    """``log T_i = C_i - C_{s(i)}``, C the exclusive running sum of ``log(1 - alpha)`` (float64).

    The backward is written out, so that it is two running sums and two gathers (autograd's own
    would scatter-add the gather at the ray starts, which sorts on CUDA):
    ``dL/dlog(1 - alpha_j) = sum_{i > j, same ray} g_i T_i``, a suffix sum within the ray.
    """

    @staticmethod
    def forward(ctx, alphas: Tensor, ray_indices: Tensor) -> Tensor:
        factor = 1.0 - alphas.double()
        clamped = factor < _MIN_FACTOR
        log_factor = torch.log(factor.clamp_min(_MIN_FACTOR))
        exclusive = torch.cumsum(log_factor, 0) - log_factor
        start, end = _segment_bounds(ray_indices)
        trans = torch.exp(exclusive - exclusive[start])
        ctx.save_for_backward(trans, factor, clamped, end)
        return trans.to(alphas.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_trans: Tensor) -> tuple[Tensor, None]:
        trans, factor, clamped, end = ctx.saved_tensors
        h = grad_trans.double() * trans
        suffix = torch.cat([torch.cumsum(h.flip(0), 0).flip(0), h.new_zeros(1)])  # suffix[j] = sum_{k>=j} h_k
        grad_log = suffix[1:] - suffix[end + 1]  # sum over k in (j, end(j)]
        grad_alpha = torch.where(clamped, 0.0, -grad_log / factor.clamp_min(_MIN_FACTOR))
        return grad_alpha.to(grad_trans.dtype), None


def transmittance_sorted(alphas: Tensor, ray_indices: Tensor) -> Tensor:
    """``T_i = prod_{j<i, same ray} (1 - alpha_j)`` with fixed shapes and no read back to the host.

    The twin above sizes a dense layout from the longest ray (one wait on the GPU); this form is a
    segmented scan written as a global one: ``log T_i = C_i - C_{s(i)}`` with ``C`` the exclusive
    running sum of ``log(1 - alpha)`` over the whole packed array and ``s(i)`` the first sample of
    i's ray. The sums run in float64, so the difference keeps ~1e-9 absolute accuracy in log T even
    after 2^20 samples (float32 would lose ~1e-2). A factor below 1e-30 (alpha = 1) is clamped
    there, so the gradient alpha_i receives through later samples' transmittance is zero at
    alpha_i = 1, as in nerfacc's kernel.

    Args:
        alphas: (n_samples,) opacities in [0, 1], any float dtype.
        ray_indices: (n_samples,) int64 sorted; padding entries may share one index past the
            last ray (they form a ray of their own).

    Returns:
        (n_samples,) transmittance in ``alphas``' dtype; differentiable with respect to ``alphas``
        (first order).
    """
    if alphas.ndim != 1 or ray_indices.shape != alphas.shape:
        raise ValueError(
            f"alphas and ray_indices must both have shape (n_samples,), got {tuple(alphas.shape)} and "
            f"{tuple(ray_indices.shape)}"
        )
    if alphas.shape[0] == 0:
        return alphas.clone()
    return _SortedTransmittance.apply(alphas, ray_indices)


# --------------------------------------------------------------------------- accumulation


def accumulate_along_rays(
    weights: Tensor,
    values: Tensor | None = None,
    ray_indices: Tensor | None = None,
    n_rays: int | None = None,
) -> Tensor:
    """Per-ray sum of ``weights * values``: (n_rays, C), or (n_rays, 1) for ``values=None``.

    Packed: ``weights`` (n_samples,), ``values`` (n_samples, C), ``ray_indices`` (n_samples,) and
    ``n_rays`` required (rays without samples get 0). Batched: ``weights`` (n_rays, n_samples),
    ``values`` (n_rays, n_samples, C). Differentiable with respect to ``weights`` and ``values``.
    Plain PyTorch on every device: nerfacc's version is the same ``index_add_``.
    """
    if values is None:
        src = weights[..., None]
    else:
        if values.ndim != weights.ndim + 1 or values.shape[:-1] != weights.shape:
            raise ValueError(f"values must have shape {tuple(weights.shape)} + (C,), got {tuple(values.shape)}")
        src = weights[..., None] * values
    if ray_indices is None:
        return src.sum(dim=-2)
    if n_rays is None:
        raise ValueError("n_rays must be given with ray_indices")
    if weights.ndim != 1 or ray_indices.shape != weights.shape:
        raise ValueError(
            f"packed weights and ray_indices must both have shape (n_samples,), got "
            f"{tuple(weights.shape)} and {tuple(ray_indices.shape)}"
        )
    out = torch.zeros((n_rays, src.shape[-1]), dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices.long(), src)


def composite(
    alphas: Tensor,
    values: Tensor,
    ray_indices: Tensor,
    n_rays: int,
    *,
    impl: Impl = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Weights and per-ray composites of packed samples in one call.

    Args:
        alphas: (n_samples,) opacities.
        values: (n_samples, C) per-sample values (colours, normals, depths, ...).
        ray_indices: (n_samples,) sorted ray index per sample.
        n_rays: number of rays.
        impl: see the module docstring.

    Returns:
        ``weights`` (n_samples,), ``composited`` (n_rays, C) = sum of w_i * values_i, and
        ``opacity`` (n_rays, 1) = sum of w_i. Add ``(1 - opacity) * background`` for a background.
    """
    weights, _ = render_weight_from_alpha(alphas, ray_indices=ray_indices, n_rays=n_rays, impl=impl)
    composited = accumulate_along_rays(weights, values, ray_indices, n_rays)
    opacity = accumulate_along_rays(weights, None, ray_indices, n_rays)
    return weights, composited, opacity
