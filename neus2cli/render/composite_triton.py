"""Triton kernels of ``neus2cli.render.composite.composite_neus``: NeuS alpha, transmittance and compositing.

Imported only through ``composite_neus(..., impl="triton")`` (this module imports triton). One
program per ``BLOCK_RAYS`` rays, one lane per ray; the samples are packed and sorted, so a ray is a
contiguous run, found by two binary searches of ``ray_indices`` (the run of ray r is
``[lower_bound(r), lower_bound(r + 1))``; nothing is read back to the host and no shape depends on
the data, so both kernels can be captured in a CUDA graph). Each lane then walks its ray:

* forward, in marching order: alpha from the twin's formula (``render.neus.neus_alpha``, operation
  for operation), ``T`` before the sample (a float64 running product, as ``transmittance_sorted``
  keeps its running sums in float64; factors ``1 - alpha`` below 1e-30 are clamped as there),
  ``w = T alpha`` and the colour and opacity sums; ``T`` is written per sample for the backward;
* backward, in reverse order (the standard volume-rendering backward): with
  ``g_i = dL/dw_i = dL/dcolor . (rgb_i - bg) + dL/dopacity`` and the suffix sum
  ``H_i = sum_{k > i} g_k w_k`` (float64, accumulated while walking back),
  ``dL/dalpha_i = g_i T_i - H_i / (1 - alpha_i)`` (the second term 0 where the factor was clamped:
  ``transmittance_sorted``'s rule at alpha = 1), then alpha recomputed from the inputs and
  differentiated by hand down to sdf, grad, dirs, dists and ``inv_s``. The ``inv_s`` gradient is one
  partial per program, added up by ``torch.sum`` (no atomics: the result does not depend on the
  order in which programs finish). Samples past the last ray's run (padding, ``ray_indices >=
  n_rays``) are visited by no lane; the backward's programs zero their gradients in a strided pass.

Launches per training step: one forward kernel; one backward kernel and one ``sum``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from neus2cli.render.neus import ALPHA_EPS

BLOCK_RAYS = 128  # one ray per thread at 4 warps
ZERO_BLOCK = 1024  # samples per step of the padding's zero-fill
MIN_FACTOR = 1e-30  # ``volrend._MIN_FACTOR``


@triton.jit
def _lower_bound(ri_ptr, n, target, N_ITERS: tl.constexpr):
    """First position in the sorted ri[0:n] whose value is >= target (vector of int64 targets)."""
    lo = tl.zeros_like(target)
    hi = lo + n
    for _ in range(N_ITERS):  # the open interval halves each step: bit_length(n) steps close it
        open_ = lo < hi
        mid = (lo + hi) // 2
        value = tl.load(ri_ptr + mid, mask=open_, other=0)
        right = open_ & (value < target)
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(open_ & (value >= target), mid, hi)
    return lo


@triton.jit
def _ray_runs(ri_ptr, n_samples, n_rays, pid, BLOCK: tl.constexpr, N_ITERS: tl.constexpr):
    rays = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    ray_ok = rays < n_rays
    start = _lower_bound(ri_ptr, n_samples, rays, N_ITERS)
    end = _lower_bound(ri_ptr, n_samples, rays + 1, N_ITERS)
    count = tl.where(ray_ok, end - start, 0)
    return rays, ray_ok, start, count


@triton.jit
def _load_sample(sdf_ptr, grad_ptr, dirs_ptr, dists_ptr, valid_ptr, i, m):
    sdf = tl.load(sdf_ptr + i, mask=m, other=0.0)
    gx = tl.load(grad_ptr + i * 3 + 0, mask=m, other=0.0)
    gy = tl.load(grad_ptr + i * 3 + 1, mask=m, other=0.0)
    gz = tl.load(grad_ptr + i * 3 + 2, mask=m, other=0.0)
    dx = tl.load(dirs_ptr + i * 3 + 0, mask=m, other=0.0)
    dy = tl.load(dirs_ptr + i * 3 + 1, mask=m, other=0.0)
    dz = tl.load(dirs_ptr + i * 3 + 2, mask=m, other=0.0)
    dist = tl.load(dists_ptr + i, mask=m, other=0.0)
    valid = m & (tl.load(valid_ptr + i, mask=m, other=0) != 0)
    return sdf, gx, gy, gz, dx, dy, dz, dist, valid


@triton.jit
def _alpha(sdf, gx, gy, gz, dx, dy, dz, dist, s, r, EPS: tl.constexpr):
    """``neus_alpha``'s operations in its order; returns alpha and what its derivative needs."""
    true_cos = dx * gx + dy * gy + dz * gz
    t1 = -true_cos * 0.5 + 0.5
    t2 = -true_cos
    iter_cos = -(tl.maximum(t1, 0.0) * (1.0 - r) + tl.maximum(t2, 0.0) * r)
    half = iter_cos * dist * 0.5
    prev = sdf - half
    nxt = sdf + half
    p = tl.sigmoid(prev * s)
    n = tl.sigmoid(nxt * s)
    den = p + EPS
    raw = (p - n + EPS) / den
    alpha = tl.minimum(tl.maximum(raw, 0.0), 1.0)
    return alpha, raw, den, p, n, prev, nxt, iter_cos, t1, t2


@triton.jit
def _forward_kernel(
    sdf_ptr,
    grad_ptr,
    dirs_ptr,
    dists_ptr,
    rgb_ptr,
    valid_ptr,
    ri_ptr,
    inv_s_ptr,
    ratio_ptr,
    ratio_value,
    bg_ptr,
    color_ptr,
    opacity_ptr,
    trans_ptr,
    n_samples,
    n_rays,
    BLOCK: tl.constexpr,
    N_ITERS: tl.constexpr,
    RATIO_IS_TENSOR: tl.constexpr,
    EPS: tl.constexpr,
    MIN_F: tl.constexpr,
):
    pid = tl.program_id(0)
    rays, ray_ok, start, count = _ray_runs(ri_ptr, n_samples, n_rays, pid, BLOCK, N_ITERS)
    s = tl.load(inv_s_ptr)
    r = ratio_value
    if RATIO_IS_TENSOR:
        r = tl.load(ratio_ptr)
    trans = tl.full([BLOCK], 1.0, dtype=tl.float64)
    acc_r = tl.zeros([BLOCK], dtype=tl.float32)
    acc_g = tl.zeros([BLOCK], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK], dtype=tl.float32)
    acc_w = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(0, tl.max(count, axis=0)):
        m = k < count
        i = start + k
        sdf, gx, gy, gz, dx, dy, dz, dist, valid = _load_sample(sdf_ptr, grad_ptr, dirs_ptr, dists_ptr, valid_ptr, i, m)
        alpha, _, _, _, _, _, _, _, _, _ = _alpha(sdf, gx, gy, gz, dx, dy, dz, dist, s, r, EPS)
        alpha = tl.where(valid, alpha, 0.0)
        t32 = trans.to(tl.float32)
        tl.store(trans_ptr + i, t32, mask=m)
        w = t32 * alpha
        acc_r += w * tl.load(rgb_ptr + i * 3 + 0, mask=m, other=0.0)
        acc_g += w * tl.load(rgb_ptr + i * 3 + 1, mask=m, other=0.0)
        acc_b += w * tl.load(rgb_ptr + i * 3 + 2, mask=m, other=0.0)
        acc_w += w
        trans = trans * tl.maximum(1.0 - alpha.to(tl.float64), MIN_F)
    one_minus = 1.0 - acc_w
    bg_r = tl.load(bg_ptr + rays * 3 + 0, mask=ray_ok, other=0.0)
    bg_g = tl.load(bg_ptr + rays * 3 + 1, mask=ray_ok, other=0.0)
    bg_b = tl.load(bg_ptr + rays * 3 + 2, mask=ray_ok, other=0.0)
    tl.store(color_ptr + rays * 3 + 0, acc_r + one_minus * bg_r, mask=ray_ok)
    tl.store(color_ptr + rays * 3 + 1, acc_g + one_minus * bg_g, mask=ray_ok)
    tl.store(color_ptr + rays * 3 + 2, acc_b + one_minus * bg_b, mask=ray_ok)
    tl.store(opacity_ptr + rays, acc_w, mask=ray_ok)


@triton.jit
def _backward_kernel(
    sdf_ptr,
    grad_ptr,
    dirs_ptr,
    dists_ptr,
    rgb_ptr,
    valid_ptr,
    ri_ptr,
    inv_s_ptr,
    ratio_ptr,
    ratio_value,
    bg_ptr,
    trans_ptr,
    d_color_ptr,
    d_opacity_ptr,
    d_sdf_ptr,
    d_grad_ptr,
    d_dirs_ptr,
    d_dists_ptr,
    d_rgb_ptr,
    d_s_part_ptr,
    n_samples,
    n_rays,
    zero_chunk,
    BLOCK: tl.constexpr,
    N_ITERS: tl.constexpr,
    RATIO_IS_TENSOR: tl.constexpr,
    HAS_D_COLOR: tl.constexpr,
    HAS_D_OPACITY: tl.constexpr,
    NEED_SDF: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    NEED_DIRS: tl.constexpr,
    NEED_DISTS: tl.constexpr,
    NEED_RGB: tl.constexpr,
    NEED_S: tl.constexpr,
    EPS: tl.constexpr,
    MIN_F: tl.constexpr,
    ZBLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    rays, ray_ok, start, count = _ray_runs(ri_ptr, n_samples, n_rays, pid, BLOCK, N_ITERS)
    s = tl.load(inv_s_ptr)
    r = ratio_value
    if RATIO_IS_TENSOR:
        r = tl.load(ratio_ptr)
    zero = tl.zeros([BLOCK], dtype=tl.float32)
    gc_r, gc_g, gc_b, g_o = zero, zero, zero, zero
    if HAS_D_COLOR:
        gc_r = tl.load(d_color_ptr + rays * 3 + 0, mask=ray_ok, other=0.0)
        gc_g = tl.load(d_color_ptr + rays * 3 + 1, mask=ray_ok, other=0.0)
        gc_b = tl.load(d_color_ptr + rays * 3 + 2, mask=ray_ok, other=0.0)
    if HAS_D_OPACITY:
        g_o = tl.load(d_opacity_ptr + rays, mask=ray_ok, other=0.0)
    bg_r = tl.load(bg_ptr + rays * 3 + 0, mask=ray_ok, other=0.0)
    bg_g = tl.load(bg_ptr + rays * 3 + 1, mask=ray_ok, other=0.0)
    bg_b = tl.load(bg_ptr + rays * 3 + 2, mask=ray_ok, other=0.0)
    # dL/dopacity in full: the background blend (1 - opacity) bg adds -dL/dcolor . bg.
    g_opacity = g_o + -(gc_r * bg_r + gc_g * bg_g + gc_b * bg_b)
    suffix = tl.zeros([BLOCK], dtype=tl.float64)  # sum over the ray's later samples of g_k w_k
    acc_s = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(0, tl.max(count, axis=0)):
        m = k < count
        i = start + count - 1 - k
        sdf, gx, gy, gz, dx, dy, dz, dist, valid = _load_sample(sdf_ptr, grad_ptr, dirs_ptr, dists_ptr, valid_ptr, i, m)
        alpha, raw, den, p, n, prev, nxt, iter_cos, t1, t2 = _alpha(sdf, gx, gy, gz, dx, dy, dz, dist, s, r, EPS)
        alpha = tl.where(valid, alpha, 0.0)
        t32 = tl.load(trans_ptr + i, mask=m, other=0.0)
        w = t32 * alpha
        c_r = tl.load(rgb_ptr + i * 3 + 0, mask=m, other=0.0)
        c_g = tl.load(rgb_ptr + i * 3 + 1, mask=m, other=0.0)
        c_b = tl.load(rgb_ptr + i * 3 + 2, mask=m, other=0.0)
        if NEED_RGB:
            tl.store(d_rgb_ptr + i * 3 + 0, w * gc_r, mask=m)
            tl.store(d_rgb_ptr + i * 3 + 1, w * gc_g, mask=m)
            tl.store(d_rgb_ptr + i * 3 + 2, w * gc_b, mask=m)
        g_w = (gc_r * c_r + gc_g * c_g + gc_b * c_b) + g_opacity
        factor = 1.0 - alpha.to(tl.float64)
        through = tl.where(factor < MIN_F, 0.0, -suffix / tl.maximum(factor, MIN_F))
        suffix += (g_w * alpha).to(tl.float64) * t32.to(tl.float64)
        g_alpha = tl.where(valid, g_w * t32 + through.to(tl.float32), 0.0)
        # clamp(0, 1) passes the gradient at its bounds, as torch.clamp's backward does.
        g_raw = tl.where((raw >= 0.0) & (raw <= 1.0), g_alpha, 0.0)
        # raw = num / den, num = p - n + eps, den = p + eps (torch's division backward, term by term).
        g_num = g_raw / den
        g_den = -g_raw * (raw / den)
        g_u = (g_num + g_den) * (1.0 - p) * p  # u = prev * s, p = sigmoid(u)
        g_v = -g_num * (1.0 - n) * n  # v = next * s
        g_prev = g_u * s
        g_next = g_v * s
        if NEED_S:
            acc_s += tl.where(m, g_u * prev + g_v * nxt, 0.0)
        if NEED_SDF:
            tl.store(d_sdf_ptr + i, g_prev + g_next, mask=m)
        g_half = g_next - g_prev  # prev = sdf - half, next = sdf + half; half = iter_cos * dist * 0.5
        if NEED_DISTS:
            tl.store(d_dists_ptr + i, g_half * 0.5 * iter_cos, mask=m)
        if NEED_GRAD or NEED_DIRS:
            g_iter = g_half * 0.5 * dist
            # iter_cos = -(relu(t1) (1 - r) + relu(t2) r), t1 = -cos / 2 + 1/2, t2 = -cos; relu' = 1[t > 0].
            g_t1 = tl.where(t1 > 0.0, -g_iter * (1.0 - r), 0.0)
            g_t2 = tl.where(t2 > 0.0, -g_iter * r, 0.0)
            g_cos = -0.5 * g_t1 - g_t2
            if NEED_GRAD:
                tl.store(d_grad_ptr + i * 3 + 0, g_cos * dx, mask=m)
                tl.store(d_grad_ptr + i * 3 + 1, g_cos * dy, mask=m)
                tl.store(d_grad_ptr + i * 3 + 2, g_cos * dz, mask=m)
            if NEED_DIRS:
                tl.store(d_dirs_ptr + i * 3 + 0, g_cos * gx, mask=m)
                tl.store(d_dirs_ptr + i * 3 + 1, g_cos * gy, mask=m)
                tl.store(d_dirs_ptr + i * 3 + 2, g_cos * gz, mask=m)
    if NEED_S:
        tl.store(d_s_part_ptr + pid, tl.sum(acc_s, axis=0))
    # Padding samples (from the first index >= n_rays on) belong to no lane: zero their gradients,
    # each program a contiguous chunk.
    pad_start = tl.min(_lower_bound(ri_ptr, n_samples, tl.zeros([BLOCK], dtype=tl.int64) + n_rays, N_ITERS), axis=0)
    chunk_end = tl.minimum((pid + 1).to(tl.int64) * zero_chunk, n_samples)
    for base in range(pid.to(tl.int64) * zero_chunk, chunk_end, ZBLOCK):
        j = base + tl.arange(0, ZBLOCK).to(tl.int64)
        mz = (j >= pad_start) & (j < chunk_end)
        zeros = tl.zeros([ZBLOCK], dtype=tl.float32)
        if NEED_SDF:
            tl.store(d_sdf_ptr + j, zeros, mask=mz)
        if NEED_DISTS:
            tl.store(d_dists_ptr + j, zeros, mask=mz)
        for c in tl.static_range(3):
            if NEED_GRAD:
                tl.store(d_grad_ptr + j * 3 + c, zeros, mask=mz)
            if NEED_DIRS:
                tl.store(d_dirs_ptr + j * 3 + c, zeros, mask=mz)
            if NEED_RGB:
                tl.store(d_rgb_ptr + j * 3 + c, zeros, mask=mz)


def _n_iters(n_samples: int) -> int:
    return max(1, int(n_samples).bit_length())


def _ratio_args(ratio: Tensor | float, like: Tensor) -> tuple[Tensor, float, bool]:
    if isinstance(ratio, Tensor):
        return ratio, 0.0, True
    return like, float(ratio), False  # ``like``: a pointer the kernel does not read


def forward(
    sdf: Tensor,
    grad: Tensor,
    dirs: Tensor,
    dists: Tensor,
    rgb: Tensor,
    inv_s: Tensor,
    bg_color: Tensor,
    sample_valid: Tensor,
    ray_indices: Tensor,
    n_rays: int,
    ratio: Tensor | float,
) -> tuple[Tensor, Tensor, Tensor]:
    """color (R, 3), opacity (R,) and the transmittance (S,) of every visited sample (float32)."""
    n_samples = sdf.shape[0]
    color = sdf.new_empty((n_rays, 3))
    opacity = sdf.new_empty((n_rays,))
    trans = sdf.new_empty((n_samples,))
    if n_rays:
        ratio_t, ratio_v, ratio_is_tensor = _ratio_args(ratio, inv_s)
        _forward_kernel[(triton.cdiv(n_rays, BLOCK_RAYS),)](
            sdf, grad, dirs, dists, rgb, sample_valid.view(torch.uint8), ray_indices, inv_s, ratio_t, ratio_v,
            bg_color, color, opacity, trans, n_samples, n_rays,
            BLOCK=BLOCK_RAYS, N_ITERS=_n_iters(n_samples), RATIO_IS_TENSOR=ratio_is_tensor, EPS=ALPHA_EPS,
            MIN_F=MIN_FACTOR, num_warps=4,
        )  # fmt: skip
    return color, opacity, trans


def backward(
    sdf: Tensor,
    grad: Tensor,
    dirs: Tensor,
    dists: Tensor,
    rgb: Tensor,
    inv_s: Tensor,
    bg_color: Tensor,
    sample_valid: Tensor,
    ray_indices: Tensor,
    n_rays: int,
    ratio: Tensor | float,
    trans: Tensor,
    d_color: Tensor | None,
    d_opacity: Tensor | None,
    need: tuple[bool, ...],
) -> tuple[Tensor | None, ...]:
    """Gradients of (sdf, grad, dirs, dists, rgb, inv_s) for ``need``'s True entries, else None."""
    need_sdf, need_grad, need_dirs, need_dists, need_rgb, need_s = need
    n_samples = sdf.shape[0]
    d_sdf = torch.empty_like(sdf) if need_sdf else None
    d_grad = torch.empty_like(grad) if need_grad else None
    d_dirs = torch.empty_like(dirs) if need_dirs else None
    d_dists = torch.empty_like(dists) if need_dists else None
    d_rgb = torch.empty_like(rgb) if need_rgb else None
    if not n_rays:  # no lane: every sample is padding
        zeros = [torch.zeros_like(t) if t is not None else None for t in (d_sdf, d_grad, d_dirs, d_dists, d_rgb)]
        return (*zeros, torch.zeros_like(inv_s) if need_s else None)
    n_programs = triton.cdiv(n_rays, BLOCK_RAYS)
    d_s_part = sdf.new_empty((n_programs,)) if need_s else None
    ratio_t, ratio_v, ratio_is_tensor = _ratio_args(ratio, inv_s)
    dummy = sdf  # a pointer for arguments the constexpr flags leave unread
    _backward_kernel[(n_programs,)](
        sdf, grad, dirs, dists, rgb, sample_valid.view(torch.uint8), ray_indices, inv_s, ratio_t, ratio_v, bg_color,
        trans,
        d_color.contiguous() if d_color is not None else dummy,
        d_opacity.contiguous() if d_opacity is not None else dummy,
        *(t if t is not None else dummy for t in (d_sdf, d_grad, d_dirs, d_dists, d_rgb, d_s_part)),
        n_samples, n_rays, triton.cdiv(n_samples, n_programs),
        BLOCK=BLOCK_RAYS, N_ITERS=_n_iters(n_samples), RATIO_IS_TENSOR=ratio_is_tensor,
        HAS_D_COLOR=d_color is not None, HAS_D_OPACITY=d_opacity is not None,
        NEED_SDF=need_sdf, NEED_GRAD=need_grad, NEED_DIRS=need_dirs, NEED_DISTS=need_dists, NEED_RGB=need_rgb,
        NEED_S=need_s, EPS=ALPHA_EPS, MIN_F=MIN_FACTOR, ZBLOCK=ZERO_BLOCK, num_warps=4,
    )  # fmt: skip
    d_s = d_s_part.sum() if need_s else None
    return d_sdf, d_grad, d_dirs, d_dists, d_rgb, d_s
