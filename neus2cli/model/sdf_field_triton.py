"""Triton kernels of ``neus2cli.model.sdf_field``: hash grid, SDF MLP and the SDF's gradient in one pass.

Imported only through ``sdf_field_with_gradient(..., impl="triton")`` / ``sdf_field_value`` (this
module imports triton). The maths is the twin's (``sdf_field.py``'s docstring). What fusing buys:
the (N, n_levels * F) features, their input Jacobian, the (N, hidden) activations and the MLP input
never leave the chip, and tinycudann's four grid passes (forward, backward, input Jacobian, and its
second-order backward) become two, each reading the 8 corners of every level once per pass:

* forward: one program per ``BLOCK`` rows gathers the corners of every level (columns of a
  (BLOCK, LFP) tile, column ``j`` = level ``j // F``, feature ``j % F``), accumulating the features
  and, where asked, the three columns of their input Jacobian; then the MLP and the closed-form
  gradient ``grad = g_x + J^T g_features``;
* backward: a fixed number of programs loop over row blocks. Each gathers the corners once more for
  the features and ``J v`` (v = d loss / d grad), recomputes the MLP, sums the weight gradients in
  registers (one partial per program, added by ``torch.sum``: no atomics there), and scatters into
  the table gradient ``w_c d_features + (grad w_c . v) g_features`` per corner, the first- and the
  second-order term in one atomic add (relaxed; rows whose cotangents are zero, the padding, add
  nothing).

The corner indices follow tinycudann exactly (``neus2cli.model.encoding``'s module docstring): the
vertex-space position is one fused multiply-add ``x * scale + 0.5``, dense levels index
``i + j res + k res^2`` and hashed levels ``i ^ j 2654435761 ^ k 805459861`` in uint32, then
modulo the level's size. The table is read in float32 (tinycudann reads an fp16 copy), so the
features are those of the PyTorch grid to float32 rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from neus2cli.model.sdf_mlp_triton import DOT_PRECISION

BLOCK = 64  # rows per program step
FORWARD_WARPS = 4
# Not 8: with 8 warps Triton 3.6 lays out the (HP, BLOCK) x (BLOCK, LFP) weight-gradient dot past the
# end of its shared memory on sm_90 (compute-sanitizer: "Invalid __shared__ read of size 512 bytes",
# then illegal addresses at NeuS2's grid); 4 warps are memcheck-clean (tests/test_sdf_field_fused.py).
BACKWARD_WARPS = 4
BACKWARD_PROGRAMS = 528  # 4 per SM of an H100/H200 (as the MLP kernels): few weight partials to add up
XP = tl.constexpr(16)  # the MLP's 3 direct inputs, padded to tl.dot's smallest K


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def column_constants(layout, device: torch.device) -> Tensor:
    """(5, LFP) int32 per-column constants of a ``GridLayout``: scale (float32 bits), resolution, size,
    the column's first element in the flat table (level offset * F + feature) and whether the level
    is hashed; columns past n_levels * F have size 0 (masked)."""
    f = layout.n_features_per_level
    n_cols = layout.n_levels * f
    lfp = _pow2(n_cols)
    out = torch.zeros(5, lfp, dtype=torch.int32)
    level = torch.arange(n_cols) // f
    feature = torch.arange(n_cols) % f
    out[0, :n_cols] = torch.tensor(layout.scales, dtype=torch.float32)[level].view(torch.int32)
    out[1, :n_cols] = torch.tensor(layout.resolutions, dtype=torch.int32)[level]
    out[2, :n_cols] = torch.tensor(layout.sizes, dtype=torch.int32)[level]
    out[3, :n_cols] = torch.tensor(layout.offsets[:-1], dtype=torch.int32)[level] * f + feature
    out[4, :n_cols] = torch.tensor(layout.hashed, dtype=torch.int32)[level]
    return out.to(device)


@triton.jit
def _load_columns(consts_ptr, LFP: tl.constexpr):
    cols = tl.arange(0, LFP)
    scale = tl.load(consts_ptr + cols).to(tl.float32, bitcast=True)
    res = tl.load(consts_ptr + LFP + cols).to(tl.uint32, bitcast=True)
    size = tl.load(consts_ptr + 2 * LFP + cols)
    base = tl.load(consts_ptr + 3 * LFP + cols)
    hashed = tl.load(consts_ptr + 4 * LFP + cols) != 0
    valid = size > 0
    size_u = tl.where(valid, size, 1).to(tl.uint32, bitcast=True)
    return cols, scale, res, size_u, base, hashed, valid


@triton.jit
def _cell(xa, scale):
    """(BLOCK,) coordinate, (LFP,) scales -> the lower vertex (int32) and the fraction, per column."""
    pos = tl.fma(xa[:, None], scale[None, :], 0.5)
    floor = tl.floor(pos)
    return floor.to(tl.int32), pos - floor


@triton.jit
def _corner(cx, cy, cz, tx, ty, tz, scale, res, size_u, base, hashed, F: tl.constexpr, C: tl.constexpr):
    """Corner C (= bx + 2 by + 4 bz) of every (row, column): its element in the flat table, its weight
    and the weight's gradient with respect to x (3 tiles)."""
    bx = C & 1
    by = (C >> 1) & 1
    bz = (C >> 2) & 1
    vx = (cx + bx).to(tl.uint32, bitcast=True)
    vy = (cy + by).to(tl.uint32, bitcast=True)
    vz = (cz + bz).to(tl.uint32, bitcast=True)
    hashed_index = vx ^ (vy * 2654435761) ^ (vz * 805459861)
    dense_index = vx + vy * res[None, :] + vz * (res * res)[None, :]
    index = tl.where(hashed[None, :], hashed_index, dense_index) % size_u[None, :]
    element = index.to(tl.int32) * F + base[None, :]
    wx = tx if bx else 1.0 - tx
    wy = ty if by else 1.0 - ty
    wz = tz if bz else 1.0 - tz
    sx = scale[None, :] if bx else -scale[None, :]
    sy = scale[None, :] if by else -scale[None, :]
    sz = scale[None, :] if bz else -scale[None, :]
    return element, wx * wy * wz, sx * wy * wz, wx * sy * wz, wx * wy * sz


@triton.jit
def _load_weights(w1_ptr, w2_ptr, cols, NF, H: tl.constexpr, O: tl.constexpr, LFP: tl.constexpr,
                  HP: tl.constexpr, OP: tl.constexpr):  # fmt: skip
    """W1's direct-input columns (HP, XP), its feature columns (HP, LFP), W2 (OP, HP) and W2's row 0 (HP,)."""
    D = 3 + NF
    hid = tl.arange(0, HP)
    xcols = tl.arange(0, 16)
    outs = tl.arange(0, OP)
    hid_ok = hid[:, None] < H
    w1x = tl.load(w1_ptr + hid[:, None] * D + xcols[None, :], mask=hid_ok & (xcols[None, :] < 3), other=0.0)
    w1f = tl.load(w1_ptr + hid[:, None] * D + 3 + cols[None, :], mask=hid_ok & (cols[None, :] < NF), other=0.0)
    w2 = tl.load(w2_ptr + outs[:, None] * H + hid[None, :], mask=(outs[:, None] < O) & (hid[None, :] < H), other=0.0)
    w2_0 = tl.load(w2_ptr + hid, mask=hid < H, other=0.0)
    return hid, xcols, outs, w1x, w1f, w2, w2_0


@triton.jit
def _forward_kernel(
    x_ptr, params_ptr, consts_ptr, lm_ptr, w1_ptr, w2_ptr, out_ptr, grad_ptr, n_rows,
    F: tl.constexpr, NF: tl.constexpr, H: tl.constexpr, O: tl.constexpr, LFP: tl.constexpr,
    HP: tl.constexpr, OP: tl.constexpr, BLOCK_ROWS: tl.constexpr, WITH_GRAD: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < n_rows
    cols, scale, res, size_u, base, hashed, valid = _load_columns(consts_ptr, LFP)
    lm = tl.load(lm_ptr + cols, mask=cols < NF, other=0.0)
    hid, xcols, outs, w1x, w1f, w2, w2_0 = _load_weights(w1_ptr, w2_ptr, cols, NF, H, O, LFP, HP, OP)
    xx = tl.load(x_ptr + rows * 3, mask=row_ok, other=0.5)
    xy = tl.load(x_ptr + rows * 3 + 1, mask=row_ok, other=0.5)
    xz = tl.load(x_ptr + rows * 3 + 2, mask=row_ok, other=0.5)
    cx, tx = _cell(xx, scale)
    cy, ty = _cell(xy, scale)
    cz, tz = _cell(xz, scale)
    load_ok = row_ok[:, None] & valid[None, :]
    feat = tl.zeros((BLOCK_ROWS, LFP), dtype=tl.float32)
    jac_x = tl.zeros((BLOCK_ROWS, LFP), dtype=tl.float32)
    jac_y = tl.zeros((BLOCK_ROWS, LFP), dtype=tl.float32)
    jac_z = tl.zeros((BLOCK_ROWS, LFP), dtype=tl.float32)
    for c in tl.static_range(8):
        element, w, dwx, dwy, dwz = _corner(cx, cy, cz, tx, ty, tz, scale, res, size_u, base, hashed, F, c)
        theta = tl.load(params_ptr + element, mask=load_ok, other=0.0)
        feat += w * theta
        if WITH_GRAD:
            jac_x += dwx * theta
            jac_y += dwy * theta
            jac_z += dwz * theta
    ux = tl.load(x_ptr + rows[:, None] * 3 + xcols[None, :], mask=row_ok[:, None] & (xcols[None, :] < 3), other=0.5)
    ux = ux - 0.5
    fm = feat * lm[None, :]
    pre = tl.dot(ux, tl.trans(w1x), input_precision=PRECISION) + tl.dot(fm, tl.trans(w1f), input_precision=PRECISION)
    out = tl.dot(tl.maximum(pre, 0.0), tl.trans(w2), input_precision=PRECISION)
    tl.store(out_ptr + rows[:, None] * O + outs[None, :], out, mask=row_ok[:, None] & (outs[None, :] < O))
    if WITH_GRAD:
        mw = tl.where(pre > 0.0, w2_0[None, :], 0.0)  # (BLOCK, HP): m * w2
        g_f = tl.dot(mw, w1f, input_precision=PRECISION) * lm[None, :]
        g_x = tl.dot(mw, w1x, input_precision=PRECISION)  # (BLOCK, XP), columns >= 3 zero
        gx = tl.sum(tl.where(xcols[None, :] == 0, g_x, 0.0), axis=1) + tl.sum(jac_x * g_f, axis=1)
        gy = tl.sum(tl.where(xcols[None, :] == 1, g_x, 0.0), axis=1) + tl.sum(jac_y * g_f, axis=1)
        gz = tl.sum(tl.where(xcols[None, :] == 2, g_x, 0.0), axis=1) + tl.sum(jac_z * g_f, axis=1)
        tl.store(grad_ptr + rows * 3, gx, mask=row_ok)
        tl.store(grad_ptr + rows * 3 + 1, gy, mask=row_ok)
        tl.store(grad_ptr + rows * 3 + 2, gz, mask=row_ok)


@triton.jit
def _backward_kernel(
    x_ptr, params_ptr, consts_ptr, lm_ptr, w1_ptr, w2_ptr, d_out_ptr, d_grad_ptr,
    d_params_ptr, dw1x_part_ptr, dw1f_part_ptr, dw2_part_ptr, n_rows,
    F: tl.constexpr, NF: tl.constexpr, H: tl.constexpr, O: tl.constexpr, LFP: tl.constexpr,
    HP: tl.constexpr, OP: tl.constexpr, BLOCK_ROWS: tl.constexpr, HAS_D_OUT: tl.constexpr,
    HAS_D_GRAD: tl.constexpr, NEED_PARAMS: tl.constexpr, NEED_WEIGHTS: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    cols, scale, res, size_u, base, hashed, valid = _load_columns(consts_ptr, LFP)
    lm = tl.load(lm_ptr + cols, mask=cols < NF, other=0.0)
    hid, xcols, outs, w1x, w1f, w2, w2_0 = _load_weights(w1_ptr, w2_ptr, cols, NF, H, O, LFP, HP, OP)
    acc_w1x = tl.zeros((HP, XP), dtype=tl.float32)
    acc_w1f = tl.zeros((HP, LFP), dtype=tl.float32)
    acc_w2 = tl.zeros((OP, HP), dtype=tl.float32)
    acc_w2_0 = tl.zeros((HP,), dtype=tl.float32)
    for start in range(pid * BLOCK_ROWS, n_rows, n_programs * BLOCK_ROWS):
        rows = start + tl.arange(0, BLOCK_ROWS)
        row_ok = rows < n_rows
        xx = tl.load(x_ptr + rows * 3, mask=row_ok, other=0.5)
        xy = tl.load(x_ptr + rows * 3 + 1, mask=row_ok, other=0.5)
        xz = tl.load(x_ptr + rows * 3 + 2, mask=row_ok, other=0.5)
        if HAS_D_GRAD:
            vx = tl.load(d_grad_ptr + rows * 3, mask=row_ok, other=0.0)
            vy = tl.load(d_grad_ptr + rows * 3 + 1, mask=row_ok, other=0.0)
            vz = tl.load(d_grad_ptr + rows * 3 + 2, mask=row_ok, other=0.0)
        cx, tx = _cell(xx, scale)
        cy, ty = _cell(xy, scale)
        cz, tz = _cell(xz, scale)
        load_ok = row_ok[:, None] & valid[None, :]
        feat = tl.zeros((BLOCK_ROWS, LFP), dtype=tl.float32)
        jv = tl.zeros((BLOCK_ROWS, LFP), dtype=tl.float32)  # J v: d loss / d g_features
        for c in tl.static_range(8):
            element, w, dwx, dwy, dwz = _corner(cx, cy, cz, tx, ty, tz, scale, res, size_u, base, hashed, F, c)
            theta = tl.load(params_ptr + element, mask=load_ok, other=0.0)
            feat += w * theta
            if HAS_D_GRAD:
                jv += (dwx * vx[:, None] + dwy * vy[:, None] + dwz * vz[:, None]) * theta
        ux = tl.load(x_ptr + rows[:, None] * 3 + xcols[None, :], mask=row_ok[:, None] & (xcols[None, :] < 3), other=0.5)
        ux = ux - 0.5
        fm = feat * lm[None, :]
        pre = tl.dot(ux, tl.trans(w1x), input_precision=PRECISION)
        pre += tl.dot(fm, tl.trans(w1f), input_precision=PRECISION)
        active = (pre > 0.0).to(tl.float32)
        d_feat = tl.zeros((BLOCK_ROWS, LFP), dtype=tl.float32)
        g_f = tl.zeros((BLOCK_ROWS, LFP), dtype=tl.float32)
        if HAS_D_OUT:
            d_out = tl.load(
                d_out_ptr + rows[:, None] * O + outs[None, :], mask=row_ok[:, None] & (outs[None, :] < O), other=0.0
            )
            d_pre = tl.dot(d_out, w2, input_precision=PRECISION) * active  # (BLOCK, HP)
            if NEED_PARAMS:
                d_feat = tl.dot(d_pre, w1f, input_precision=PRECISION) * lm[None, :]
            if NEED_WEIGHTS:
                acc_w1x += tl.dot(tl.trans(d_pre), ux, input_precision=PRECISION)
                acc_w1f += tl.dot(tl.trans(d_pre), fm, input_precision=PRECISION)
                acc_w2 += tl.dot(tl.trans(d_out), tl.maximum(pre, 0.0), input_precision=PRECISION)
        if HAS_D_GRAD:
            if NEED_PARAMS:
                g_f = tl.dot(active * w2_0[None, :], w1f, input_precision=PRECISION) * lm[None, :]
            if NEED_WEIGHTS:
                # g = W1^T (m * w2) gets the cotangent [v, lm * J v]; every weight term comes from m^T of it.
                v16 = tl.where(
                    xcols[None, :] == 0, vx[:, None], tl.where(xcols[None, :] == 1, vy[:, None], vz[:, None])
                )
                v16 = tl.where(xcols[None, :] < 3, v16, 0.0)
                m_gx = tl.dot(tl.trans(active), v16, input_precision=PRECISION)  # (HP, XP)
                m_gf = tl.dot(tl.trans(active), jv * lm[None, :], input_precision=PRECISION)  # (HP, LFP)
                acc_w1x += w2_0[:, None] * m_gx
                acc_w1f += w2_0[:, None] * m_gf
                acc_w2_0 += tl.sum(w1x * m_gx, axis=1) + tl.sum(w1f * m_gf, axis=1)
        if NEED_PARAMS:
            for c in tl.static_range(8):
                element, w, dwx, dwy, dwz = _corner(cx, cy, cz, tx, ty, tz, scale, res, size_u, base, hashed, F, c)
                coef = w * d_feat
                if HAS_D_GRAD:
                    coef += (dwx * vx[:, None] + dwy * vy[:, None] + dwz * vz[:, None]) * g_f
                tl.atomic_add(d_params_ptr + element, coef, mask=load_ok & (coef != 0.0), sem="relaxed")
    if NEED_WEIGHTS:
        tl.store(dw1x_part_ptr + pid * HP * XP + hid[:, None] * XP + xcols[None, :], acc_w1x)
        tl.store(dw1f_part_ptr + pid * HP * LFP + hid[:, None] * LFP + cols[None, :], acc_w1f)
        acc_w2 += tl.where(outs[:, None] == 0, acc_w2_0[None, :], 0.0)
        tl.store(dw2_part_ptr + pid * OP * HP + outs[:, None] * HP + hid[None, :], acc_w2)


def _dims(consts: Tensor, level_mask: Tensor, w1: Tensor, w2: Tensor) -> dict:
    hidden, n_out = w1.shape[0], w2.shape[0]
    return {
        "NF": level_mask.shape[0],
        "H": hidden,
        "O": n_out,
        "LFP": consts.shape[1],
        "HP": _pow2(hidden),
        "OP": _pow2(n_out),
        "BLOCK_ROWS": BLOCK,
        "PRECISION": DOT_PRECISION,
    }


def forward(
    x: Tensor, params: Tensor, consts: Tensor, n_features_per_level: int, level_mask: Tensor, w1: Tensor,
    w2: Tensor, with_grad: bool,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """out (N, O) and, with ``with_grad``, grad (N, 3) = d out[:, 0] / d x; float32."""
    n_rows = x.shape[0]
    out = x.new_empty((n_rows, w2.shape[0]))
    grad = x.new_empty((n_rows, 3)) if with_grad else out
    if n_rows:
        _forward_kernel[(triton.cdiv(n_rows, BLOCK),)](
            x, params, consts, level_mask, w1, w2, out, grad, n_rows, F=n_features_per_level,
            WITH_GRAD=with_grad, num_warps=FORWARD_WARPS, **_dims(consts, level_mask, w1, w2),
        )  # fmt: skip
    return out, (grad if with_grad else None)


def backward(
    x: Tensor, params: Tensor, consts: Tensor, n_features_per_level: int, level_mask: Tensor, w1: Tensor,
    w2: Tensor, d_out: Tensor | None, d_grad: Tensor | None, need_params: bool, need_weights: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # fmt: skip
    """d_params (like ``params``), d_w1 (H, 3 + NF), d_w2 (O, H); None where not needed."""
    n_rows = x.shape[0]
    dims = _dims(consts, level_mask, w1, w2)
    hp, op, lfp, nf = dims["HP"], dims["OP"], dims["LFP"], dims["NF"]
    has_d_out, has_d_grad = d_out is not None, d_grad is not None
    d_params = torch.zeros_like(params) if need_params else None
    n_programs = max(1, min(BACKWARD_PROGRAMS, triton.cdiv(n_rows, BLOCK)))
    parts = [
        x.new_empty((n_programs, *shape)) if need_weights else None for shape in ((hp, XP.value), (hp, lfp), (op, hp))
    ]
    if n_rows and (has_d_out or has_d_grad) and (need_params or need_weights):
        dummy = x  # a pointer for arguments the constexpr flags leave unread
        _backward_kernel[(n_programs,)](
            x, params, consts, level_mask, w1, w2,
            d_out.contiguous() if has_d_out else dummy, d_grad.contiguous() if has_d_grad else dummy,
            d_params if need_params else dummy, *(p if p is not None else dummy for p in parts), n_rows,
            F=n_features_per_level, HAS_D_OUT=has_d_out, HAS_D_GRAD=has_d_grad, NEED_PARAMS=need_params,
            NEED_WEIGHTS=need_weights, num_warps=BACKWARD_WARPS, num_stages=1, **dims,
        )  # fmt: skip
        d_w1 = d_w2 = None
        if need_weights:
            d_w1 = torch.cat([parts[0].sum(0)[: w1.shape[0], :3], parts[1].sum(0)[: w1.shape[0], :nf]], dim=1)
            d_w2 = parts[2].sum(0)[: w2.shape[0], : w1.shape[0]]
        return d_params, d_w1, d_w2
    zeros = (torch.zeros_like(w1), torch.zeros_like(w2)) if need_weights else (None, None)
    return d_params, *zeros
