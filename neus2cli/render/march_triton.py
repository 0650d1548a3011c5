"""Triton kernel of ``neus2cli.render.march``: one program per (ray, segment of SEGMENT steps).

Imported only through ``march_rays(..., impl="triton")`` (this module imports triton). Two
launches of one kernel: pass 1 counts the kept samples of every (ray, segment) into an
(n_rays * n_segments,) int32 array; an exclusive ``torch.cumsum`` gives each segment's first
output slot (ray-major, so the output is sorted by ray, then t); pass 2 recomputes the same keep
mask and writes each kept sample at its segment's slot plus its rank in the segment
(``tl.cumsum`` of the mask). The arithmetic is the twin's, operation for operation, and the
kernel is compiled with ``enable_fp_fusion=False`` so that no multiply-add is contracted into
an FMA (which would round once instead of twice and break bit-equality with the twin).

The first call per process compiles the kernel (a second or two; Triton caches the binary on
disk under ``~/.triton``), once per set of specialised arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl
from torch import Tensor

if TYPE_CHECKING:  # march imports this module lazily; the type only, no runtime cycle
    from neus2cli.render.march import MarchInputs

# Steps per program: a ray of the unit cube at step sqrt(3)/1024 spans <= 1028 candidates,
# i.e. 5 segments; 256 lanes = 2 per thread at 4 warps.
SEGMENT = 256


@triton.jit
def _march_kernel(
    g0_ptr,
    gd_ptr,
    t_start_ptr,
    t_lo_ptr,
    t_hi_ptr,
    k_begin_ptr,
    n_steps_ptr,
    occupied_ptr,
    counts_ptr,
    offsets_ptr,
    ray_out_ptr,
    t_start_out_ptr,
    t_end_out_ptr,
    step,
    half_step,
    capacity,
    n_segments,
    rx,
    ry,
    rz,
    SEG: tl.constexpr,
    WRITE: tl.constexpr,
):
    ray = tl.program_id(0)
    segment = tl.program_id(1)
    lane = segment * SEG + tl.arange(0, SEG)
    in_range = lane < tl.load(n_steps_ptr + ray)
    k = tl.load(k_begin_ptr + ray) + lane
    t_k = tl.load(t_start_ptr + ray) + k.to(tl.float32) * step
    mid = t_k + half_step
    keep = in_range & (mid >= tl.load(t_lo_ptr + ray)) & (mid < tl.load(t_hi_ptr + ray))
    gx = tl.load(g0_ptr + ray * 3 + 0) + tl.load(gd_ptr + ray * 3 + 0) * mid
    gy = tl.load(g0_ptr + ray * 3 + 1) + tl.load(gd_ptr + ray * 3 + 1) * mid
    gz = tl.load(g0_ptr + ray * 3 + 2) + tl.load(gd_ptr + ray * 3 + 2) * mid
    # Clamp in float (like the twin's clamp before its int cast), then convert.
    cx = tl.minimum(tl.maximum(tl.floor(gx), 0.0), rx - 1.0).to(tl.int32)
    cy = tl.minimum(tl.maximum(tl.floor(gy), 0.0), ry - 1.0).to(tl.int32)
    cz = tl.minimum(tl.maximum(tl.floor(gz), 0.0), rz - 1.0).to(tl.int32)
    occupied = tl.load(occupied_ptr + (cx * ry + cy) * rz + cz, mask=keep, other=0)
    keep = keep & (occupied != 0)
    slot = ray * n_segments + segment
    if WRITE:
        rank = tl.cumsum(keep.to(tl.int32), axis=0) - 1
        position = tl.load(offsets_ptr + slot) + rank.to(tl.int64)
        store = keep & (position < capacity)
        tl.store(ray_out_ptr + position, tl.zeros([SEG], dtype=tl.int64) + ray, mask=store)
        tl.store(t_start_out_ptr + position, t_k, mask=store)
        tl.store(t_end_out_ptr + position, t_k + step, mask=store)
    else:
        tl.store(counts_ptr + slot, tl.sum(keep.to(tl.int32), axis=0))


def _offsets(prep: MarchInputs) -> tuple[Tensor, Tensor, int]:
    """Pass 1: (n_rays * n_segments,) int64 exclusive offsets, the 0-d int64 total, n_segments."""
    n_segments = triton.cdiv(prep.max_steps, SEGMENT)
    counts = torch.empty(prep.n_rays * n_segments, dtype=torch.int32, device=prep.g0.device)
    _launch(prep, n_segments, counts, counts, counts, counts, counts, capacity=0, write=False)
    ends = torch.cumsum(counts, 0)  # int64
    return ends - counts, ends[-1], n_segments


def _launch(prep, n_segments, counts, offsets, ray_out, t_start_out, t_end_out, capacity, write) -> None:
    _march_kernel[(prep.n_rays, n_segments)](
        prep.g0,
        prep.gd,
        prep.t_start,
        prep.t_lo,
        prep.t_hi,
        prep.k_begin,
        prep.n_steps,
        prep.binaries.view(torch.uint8),
        counts,
        offsets,
        ray_out,
        t_start_out,
        t_end_out,
        prep.step,
        prep.half_step,
        capacity,
        n_segments,
        *prep.res,
        SEG=SEGMENT,
        WRITE=write,
        enable_fp_fusion=False,
    )


def _outputs(size: int, n_rays: int, device) -> tuple[Tensor, Tensor, Tensor]:
    """Output arrays pre-filled with the padding (ray n_rays, t = 0)."""
    ray_out = torch.full((size,), n_rays, dtype=torch.int64, device=device)
    t_start_out = torch.zeros(size, dtype=torch.float32, device=device)
    return ray_out, t_start_out, torch.zeros_like(t_start_out)


def march_full(prep: MarchInputs) -> tuple[Tensor, Tensor, Tensor, bool]:
    """``march_rays``: the samples and whether any ray overflowed ``max_steps`` (one host wait)."""
    device = prep.g0.device
    if prep.n_rays == 0:
        return (*_outputs(0, 0, device), False)
    offsets, total, n_segments = _offsets(prep)
    size, overflow = torch.stack([total, prep.overflow.any().to(torch.int64)]).tolist()
    outputs = _outputs(size, prep.n_rays, device)
    if size:
        _launch(prep, n_segments, offsets, offsets, *outputs, capacity=size, write=True)
    return (*outputs, bool(overflow))


def march_capped(prep: MarchInputs, max_samples: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``march_rays_capped``: fixed-size outputs and the true count, without a host wait."""
    device = prep.g0.device
    outputs = _outputs(max_samples, prep.n_rays, device)
    if prep.n_rays == 0:
        return (*outputs, torch.zeros((), dtype=torch.int64, device=device))
    offsets, total, n_segments = _offsets(prep)
    if max_samples:
        _launch(prep, n_segments, offsets, offsets, *outputs, capacity=max_samples, write=True)
    return (*outputs, total)
