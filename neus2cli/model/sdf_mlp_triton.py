"""Triton kernels of ``neus2cli.model.sdf_mlp.sdf_mlp_fused``: the SDF MLP and its closed-form gradient.

Imported only through ``sdf_mlp_fused(..., impl="triton")`` (this module imports triton). The
maths is the twin's (``sdf_mlp.py``'s docstring); what the kernels add is that nothing of size
(N, hidden) leaves the chip:

* forward: one program per BLOCK rows builds the input ``u = [x - 0.5, features * level_mask]``
  in registers (no ``torch.cat``, no float32 copy of the fp16 features), computes
  ``pre = u W1^T``, ``out = relu(pre) W2^T`` and, where asked, ``g = 1[pre > 0] (w2 * W1)``,
  and writes ``out``, ``g_x = g[:, :3]`` and ``g_features = g[:, 3:] * level_mask``;
* backward: a fixed number of programs, each looping over row blocks, recompute ``pre`` (cheaper
  than storing it) and write ``d_x`` and ``d_features`` per row; the weight gradients are summed in
  registers per program, written as one partial per program and added up by ``torch.sum``, so the
  result does not depend on the order in which programs finish (no atomics).

Dots run in ``DOT_PRECISION``: "tf32x3" splits each float32 operand in two TF32 parts, which keeps
float32 accuracy (~1e-6 relative) on the tensor cores. Plain "tf32" measured 0.65 ms faster per
step on an H200 with the same static-benchmark accuracy, but it moves the SDF by ~1e-3 against the
reference path and the GPU dynamic test's recovered rotation past its bound (2.01 of 2.0 degrees),
so it is not the default (BENCHMARKS.md, 2026-12-03). The ReLU mask is ``pre > 0`` as in the twin;
where a pre-activation rounds across zero differently, that unit's mask differs (measure-zero in
exact arithmetic, a few units in a million here), which the GPU test's tolerance accounts for.

The first call per process compiles the kernels (seconds; Triton caches them under ``~/.triton``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

DOT_PRECISION = "tf32x3"
BLOCK = 64  # rows per program step: (64, 64) float32 tiles keep the backward within registers at 8 warps
BACKWARD_PROGRAMS = 528  # 4 per SM of an H100/H200: enough to fill it, few partials to add up
# The backward's loop is not software-pipelined (num_stages=1): with Triton's default 3 stages its
# staged dot operands need more shared memory than an H200 has (238 KB of 227 KB, measured).


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))  # tl.dot needs every dimension >= 16


@triton.jit
def _load_inputs(x_ptr, f_ptr, lm_ptr, rows, row_ok, cols, F: tl.constexpr):
    """u = [x - 0.5, f * level_mask] as a (BLOCK, KP) float32 tile (zero past 3 + F); level_mask (KP,)."""
    is_x = cols < 3
    is_f = (cols >= 3) & (cols < 3 + F)
    fcol = tl.where(is_f, cols - 3, 0)
    xv = tl.load(x_ptr + rows[:, None] * 3 + cols[None, :], mask=row_ok[:, None] & is_x[None, :], other=0.5)
    fv = tl.load(f_ptr + rows[:, None] * F + fcol[None, :], mask=row_ok[:, None] & is_f[None, :], other=0.0)
    lm = tl.load(lm_ptr + fcol, mask=is_f, other=0.0)
    u = tl.where(is_x[None, :], xv - 0.5, fv.to(tl.float32) * lm[None, :])
    return u, lm


@triton.jit
def _forward_kernel(
    x_ptr,
    f_ptr,
    lm_ptr,
    w1_ptr,
    w2_ptr,
    out_ptr,
    gx_ptr,
    gf_ptr,
    n_rows,
    F: tl.constexpr,
    H: tl.constexpr,
    O: tl.constexpr,
    KP: tl.constexpr,
    HP: tl.constexpr,
    OP: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < n_rows
    cols = tl.arange(0, KP)
    hid = tl.arange(0, HP)
    outs = tl.arange(0, OP)
    D = 3 + F
    w1 = tl.load(w1_ptr + hid[:, None] * D + cols[None, :], mask=(hid[:, None] < H) & (cols[None, :] < D), other=0.0)
    w2 = tl.load(w2_ptr + outs[:, None] * H + hid[None, :], mask=(outs[:, None] < O) & (hid[None, :] < H), other=0.0)
    u, lm = _load_inputs(x_ptr, f_ptr, lm_ptr, rows, row_ok, cols, F)
    pre = tl.dot(u, tl.trans(w1), input_precision=PRECISION)  # (BLOCK, HP)
    out = tl.dot(tl.maximum(pre, 0.0), tl.trans(w2), input_precision=PRECISION)  # (BLOCK, OP)
    tl.store(out_ptr + rows[:, None] * O + outs[None, :], out, mask=row_ok[:, None] & (outs[None, :] < O))
    if WITH_GRAD:
        w2_0 = tl.load(w2_ptr + hid, mask=hid < H, other=0.0)
        active = (pre > 0.0).to(tl.float32)
        g = tl.dot(active, w1 * w2_0[:, None], input_precision=PRECISION)  # (BLOCK, KP)
        is_x = cols < 3
        is_f = (cols >= 3) & (cols < D)
        fcol = tl.where(is_f, cols - 3, 0)
        tl.store(gx_ptr + rows[:, None] * 3 + cols[None, :], g, mask=row_ok[:, None] & is_x[None, :])
        tl.store(gf_ptr + rows[:, None] * F + fcol[None, :], g * lm[None, :], mask=row_ok[:, None] & is_f[None, :])


@triton.jit
def _backward_kernel(
    x_ptr,
    f_ptr,
    lm_ptr,
    w1_ptr,
    w2_ptr,
    d_out_ptr,
    d_gx_ptr,
    d_gf_ptr,
    dx_ptr,
    df_ptr,
    dw1_part_ptr,
    dw2_part_ptr,
    n_rows,
    F: tl.constexpr,
    H: tl.constexpr,
    O: tl.constexpr,
    KP: tl.constexpr,
    HP: tl.constexpr,
    OP: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    HAS_D_OUT: tl.constexpr,
    HAS_D_G: tl.constexpr,
    NEED_INPUTS: tl.constexpr,
    NEED_WEIGHTS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    cols = tl.arange(0, KP)
    hid = tl.arange(0, HP)
    outs = tl.arange(0, OP)
    D = 3 + F
    is_x = cols < 3
    is_f = (cols >= 3) & (cols < D)
    fcol = tl.where(is_f, cols - 3, 0)
    w1 = tl.load(w1_ptr + hid[:, None] * D + cols[None, :], mask=(hid[:, None] < H) & (cols[None, :] < D), other=0.0)
    w2 = tl.load(w2_ptr + outs[:, None] * H + hid[None, :], mask=(outs[:, None] < O) & (hid[None, :] < H), other=0.0)
    w2_0 = tl.load(w2_ptr + hid, mask=hid < H, other=0.0)
    acc_w1 = tl.zeros((HP, KP), dtype=tl.float32)
    acc_w2 = tl.zeros((OP, HP), dtype=tl.float32)
    acc_w2_0 = tl.zeros((HP,), dtype=tl.float32)
    for start in range(pid * BLOCK_ROWS, n_rows, n_programs * BLOCK_ROWS):
        rows = start + tl.arange(0, BLOCK_ROWS)
        row_ok = rows < n_rows
        u, lm = _load_inputs(x_ptr, f_ptr, lm_ptr, rows, row_ok, cols, F)
        pre = tl.dot(u, tl.trans(w1), input_precision=PRECISION)  # (BLOCK, HP)
        active = (pre > 0.0).to(tl.float32)
        if HAS_D_OUT:
            d_out = tl.load(
                d_out_ptr + rows[:, None] * O + outs[None, :], mask=row_ok[:, None] & (outs[None, :] < O), other=0.0
            )
            d_pre = tl.dot(d_out, w2, input_precision=PRECISION) * active  # (BLOCK, HP)
            if NEED_INPUTS:
                d_u = tl.dot(d_pre, w1, input_precision=PRECISION)  # (BLOCK, KP)
                tl.store(dx_ptr + rows[:, None] * 3 + cols[None, :], d_u, mask=row_ok[:, None] & is_x[None, :])
                d_f = (d_u * lm[None, :]).to(df_ptr.dtype.element_ty)
                tl.store(df_ptr + rows[:, None] * F + fcol[None, :], d_f, mask=row_ok[:, None] & is_f[None, :])
            if NEED_WEIGHTS:
                acc_w1 += tl.dot(tl.trans(d_pre), u, input_precision=PRECISION)
                acc_w2 += tl.dot(tl.trans(d_out), tl.maximum(pre, 0.0), input_precision=PRECISION)
        if HAS_D_G:
            if NEED_WEIGHTS:
                d_gx = tl.load(
                    d_gx_ptr + rows[:, None] * 3 + cols[None, :], mask=row_ok[:, None] & is_x[None, :], other=0.0
                )
                d_gf = tl.load(
                    d_gf_ptr + rows[:, None] * F + fcol[None, :], mask=row_ok[:, None] & is_f[None, :], other=0.0
                )
                # g_features = g[:, 3:] * level_mask, so g's feature columns receive d_gf * level_mask.
                d_g = tl.where(is_x[None, :], d_gx, d_gf.to(tl.float32) * lm[None, :])
                m_g = tl.dot(tl.trans(active), d_g, input_precision=PRECISION)  # (HP, KP)
                acc_w1 += w2_0[:, None] * m_g
                acc_w2_0 += tl.sum(w1 * m_g, axis=1)
    if NEED_WEIGHTS:
        part1 = dw1_part_ptr + pid * HP * KP
        tl.store(part1 + hid[:, None] * KP + cols[None, :], acc_w1)
        part2 = dw2_part_ptr + pid * OP * HP
        acc_w2 += tl.where(outs[:, None] == 0, acc_w2_0[None, :], 0.0)
        tl.store(part2 + outs[:, None] * HP + hid[None, :], acc_w2)


def _shapes(features: Tensor, w1: Tensor, w2: Tensor) -> tuple[int, int, int, int, int, int]:
    n_features, hidden, n_out = features.shape[1], w1.shape[0], w2.shape[0]
    return n_features, hidden, n_out, _pow2(3 + n_features), _pow2(hidden), _pow2(n_out)


def forward(
    x: Tensor, features: Tensor, level_mask: Tensor, w1: Tensor, w2: Tensor, with_grad: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """out (N, O); with ``with_grad`` also g_x (N, 3) and g_features (N, F), all float32."""
    n_rows = x.shape[0]
    n_features, hidden, n_out, kp, hp, op = _shapes(features, w1, w2)
    out = x.new_empty((n_rows, n_out))
    g_x = x.new_empty((n_rows, 3)) if with_grad else out
    g_f = x.new_empty((n_rows, n_features)) if with_grad else out
    if n_rows:
        _forward_kernel[(triton.cdiv(n_rows, BLOCK),)](
            x, features, level_mask, w1, w2, out, g_x, g_f, n_rows,
            F=n_features, H=hidden, O=n_out, KP=kp, HP=hp, OP=op, BLOCK_ROWS=BLOCK,
            WITH_GRAD=with_grad, PRECISION=DOT_PRECISION, num_warps=4,
        )  # fmt: skip
    return (out, g_x, g_f) if with_grad else (out, None, None)


def backward(
    x: Tensor,
    features: Tensor,
    level_mask: Tensor,
    w1: Tensor,
    w2: Tensor,
    d_out: Tensor | None,
    d_gx: Tensor | None,
    d_gf: Tensor | None,
    need_inputs: bool,
    need_weights: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """d_x (N, 3), d_features (N, F) in the features' dtype, d_w1 (H, 3 + F), d_w2 (O, H); None where not needed."""
    n_rows = x.shape[0]
    n_features, hidden, n_out, kp, hp, op = _shapes(features, w1, w2)
    has_d_out = d_out is not None
    has_d_g = d_gx is not None or d_gf is not None
    if has_d_g:
        d_gx = torch.zeros_like(x) if d_gx is None else d_gx.contiguous()
        d_gf = torch.zeros((n_rows, n_features), dtype=x.dtype, device=x.device) if d_gf is None else d_gf.contiguous()
    need_inputs = need_inputs and has_d_out  # the g path gives the inputs no gradient (a.e.)
    d_x = x.new_empty((n_rows, 3)) if need_inputs else None
    d_f = torch.empty_like(features) if need_inputs else None
    n_programs = max(1, min(BACKWARD_PROGRAMS, triton.cdiv(n_rows, BLOCK)))
    part1 = x.new_empty((n_programs, hp, kp)) if need_weights else None
    part2 = x.new_empty((n_programs, op, hp)) if need_weights else None
    if n_rows and (need_inputs or need_weights):
        dummy = x  # a pointer for arguments the constexpr flags leave unread
        _backward_kernel[(n_programs,)](
            x, features, level_mask, w1, w2,
            d_out.contiguous() if has_d_out else dummy, d_gx if has_d_g else dummy, d_gf if has_d_g else dummy,
            d_x if need_inputs else dummy, d_f if need_inputs else dummy,
            part1 if need_weights else dummy, part2 if need_weights else dummy, n_rows,
            F=n_features, H=hidden, O=n_out, KP=kp, HP=hp, OP=op, BLOCK_ROWS=BLOCK,
            HAS_D_OUT=has_d_out, HAS_D_G=has_d_g, NEED_INPUTS=need_inputs, NEED_WEIGHTS=need_weights,
            PRECISION=DOT_PRECISION, num_warps=8, num_stages=1,
        )  # fmt: skip
    d_w1 = d_w2 = None
    if need_weights:
        if n_rows:
            d_w1 = part1.sum(0)[:hidden, : 3 + n_features]
            d_w2 = part2.sum(0)[:n_out, :hidden]
        else:
            d_w1, d_w2 = torch.zeros_like(w1), torch.zeros_like(w2)
    if need_inputs and not n_rows:
        d_x, d_f = torch.zeros_like(x), torch.zeros_like(features)
    return d_x, d_f, d_w1, d_w2
