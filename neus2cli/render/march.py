"""Fixed-step ray marching through one occupancy grid, parallel over (ray, step).

``march_rays`` (and its fixed-capacity form ``march_rays_capped``) turns rays into packed
samples, like ``OccGridEstimator.sampling`` without the early-stop pass; ``march_window``
computes the per-ray inputs (where the step grid starts, the window it may emit samples in)
from the near/far planes, the stratified jitter and the box. Two implementations agree bit for
bit: ``impl="torch"``, a dense vectorised twin (any device; the CPU path), and
``impl="triton"``, a Triton kernel (``neus2cli.render.march_triton``, imported only when asked
for, so ``import neus2cli`` never needs triton).

Frames: rays, box and cells in the grid's frame (in neus2cli the normalized unit cube
``aabb = [0, 0, 0, 1, 1, 1]``); ``t`` in units of ``|rays_d|``, and ``rays_d`` is unit.

Rules (the same in both implementations, all arithmetic float32, each operation rounded on its
own: no fused multiply-add anywhere; the Triton kernel is compiled with fp fusion off):

* **Step grid.** Ray r's k-th sample boundary is ``t_k = t_start[r] + float32(k) * step``
  (one rounded product, then one rounded sum; ``step`` rounded to float32 first). Unlike
  nerfacc, which accumulates ``t_{k+1} = fl32(t_k + step)`` and so drifts by up to half an
  ulp of t per step (~1e-4 after ~1000 steps at t ~ 3), this grid has no drift: t_k is within
  one ulp of the exact ``t_start + k * step``.
* **Which samples.** Sample k (k >= 0) spans [t_k, t_k + step] (``t_end = fl32(t_k + step)``)
  and is kept iff its midpoint ``m = fl32(t_k + step / 2)`` lies in ``[t_lo, t_hi)`` and in an
  occupied cell. The cell of m is ``floor(g0 + gd * m)`` per axis, clamped to [0, res - 1],
  with ``g0 = (rays_o - aabb_min) * s`` and ``gd = rays_d * s``, ``s = res / (aabb_max -
  aabb_min)`` (float32, computed once per ray by ``_grid_frame``); the flat index is
  ``(i * ry + j) * rz + k``, the C order of ``binaries``.
* **Candidates.** Midpoints increase with k, so only k in ``[k_begin, k_begin + n_steps)`` can
  pass the window test, with ``k_begin = max(0, floor((t_lo - t_start) / step) - 1)`` and
  ``n_steps = ceil((t_hi - t_start) / step) + 1 - k_begin`` (float64; one step of margin on
  each side, far more than the float32 rounding of t). Both implementations test exactly these
  candidates, so they also agree on the (never expected) edge of that range.
* **Output.** ``ray_indices`` (n_samples,) int64 sorted, samples of a ray contiguous and in
  increasing t: the packed layout of ``neus2cli.render.volrend``.

Limits: ``n_steps`` is capped at ``max_march_steps(aabb, step)`` = ceil(diagonal / step) + 4,
enough for any unit-direction ray (the window of a unit ray is at most the box diagonal long);
``march_rays`` raises if a ray needs more (a non-unit ``rays_d``), ``march_rays_capped``
(which never waits on the GPU) cuts such rays there. float32(k) is exact only for k < 2^24,
i.e. ``t_hi - t_start < 2^24 * step`` (~2.8e4 for neus2cli's step sqrt(3)/1024).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import torch
from torch import Tensor

from neus2cli.backends import import_triton_kernels
from neus2cli.render.aabb import ray_aabb_intersect

Impl = Literal["torch", "triton"]

__all__ = ["Impl", "march_rays", "march_rays_capped", "march_window", "max_march_steps"]

# Candidate (ray, step) entries per block of the dense twin (bounds its memory: ~100 MiB of
# temporaries at 2^22 entries).
_DENSE_ENTRIES = 1 << 22
# Slack on the box diagonal in ``max_march_steps``: a float32-normalised direction has
# |d| = 1 within ~1e-7, so its window can exceed the diagonal by that relative amount.
_DIAGONAL_SLACK = 1e-5


def _aabb_floats(aabb: Sequence[float] | Tensor) -> list[float]:
    values = aabb.detach().reshape(-1).tolist() if isinstance(aabb, Tensor) else [float(v) for v in aabb]
    if len(values) != 6 or not all(hi > lo for lo, hi in zip(values[:3], values[3:], strict=True)):
        raise ValueError(f"aabb must be [xmin, ymin, zmin, xmax, ymax, zmax] with max > min, got {values!r}")
    return values


def max_march_steps(aabb: Sequence[float] | Tensor, step: float) -> int:
    """The most candidate steps a unit-direction ray can need in the box: ceil(diagonal / step) + 4.

    The + 4 covers the one-step margins on both ends of the candidate range and the rounding
    of the ceil/floor (see the module docstring). 1028 for the unit cube and step sqrt(3)/1024.
    """
    lo_hi = _aabb_floats(aabb)
    diagonal = math.sqrt(sum((hi - lo) ** 2 for lo, hi in zip(lo_hi[:3], lo_hi[3:], strict=True)))
    return math.ceil(diagonal * (1.0 + _DIAGONAL_SLACK) / float(_step32(step))) + 4


def _step32(step: float) -> Tensor:
    if not step > 0 or not math.isfinite(step):
        raise ValueError(f"step must be a positive finite number, got {step}")
    return torch.tensor(step, dtype=torch.float32)


@torch.no_grad()
def march_window(
    rays_o: Tensor,
    rays_d: Tensor,
    aabb: Sequence[float] | Tensor,
    step: float,
    near_plane: float | Tensor = 0.0,
    far_plane: float | Tensor = 1e10,
    jitter: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-ray start of the step grid and the window samples may be emitted in.

    Mirrors what ``OccGridEstimator.sampling`` feeds its marcher: the grid starts at the near
    plane plus the stratified jitter (not at the box entry), the window is the box's
    [entry, exit) clamped by that start and the far plane.

    Args:
        rays_o: (n_rays, 3) float32 origins, grid frame.
        rays_d: (n_rays, 3) float32 unit directions.
        aabb: (6,) the grid's box [xmin, ymin, zmin, xmax, ymax, zmax] (a tensor may be on the
            rays' device; then nothing here waits on the GPU).
        step: the marching step (> 0).
        near_plane: where each step grid starts, a float >= 0 or an (n_rays,) tensor.
        far_plane: where each window ends at the latest, a float or an (n_rays,) tensor.
        jitter: optional (n_rays,) U[0, 1) draws; the grid then starts at
            ``near + jitter * step``. ``torch.rand_like(rays_o[:, 0])`` is nerfacc's draw
            (same generator, shape and dtype), so seeded runs start where nerfacc's would.

    Returns:
        ``t_start``, ``t_lo``, ``t_hi``, each (n_rays,) float32: ``t_lo = max(box entry,
        t_start)``, ``t_hi = min(box exit, far)``; a ray that misses the box gets the empty
        window ``t_lo = t_hi = t_start``.
    """
    if rays_o.ndim != 2 or rays_o.shape[-1] != 3:
        raise ValueError(f"rays_o must have shape (n_rays, 3), got {tuple(rays_o.shape)}")
    if rays_d.shape != rays_o.shape:
        raise ValueError(f"rays_d must have shape {tuple(rays_o.shape)}, got {tuple(rays_d.shape)}")
    _step32(step)
    if isinstance(near_plane, (int, float)) and not near_plane >= 0:
        raise ValueError(f"near_plane must be >= 0, got {near_plane}")
    n_rays = rays_o.shape[0]
    for name, value in (("near_plane", near_plane), ("far_plane", far_plane), ("jitter", jitter)):
        if isinstance(value, Tensor) and value.shape != (n_rays,):
            raise ValueError(f"{name} must be a float or have shape ({n_rays},), got {tuple(value.shape)}")
    rays_o = rays_o.to(torch.float32)
    rays_d = rays_d.to(torch.float32)
    box = aabb if isinstance(aabb, Tensor) else torch.tensor(_aabb_floats(aabb))
    t_in, t_out, hit = ray_aabb_intersect(rays_o, rays_d, box.to(device=rays_o.device, dtype=torch.float32))
    zeros = torch.zeros_like(rays_o[:, 0])
    t_start = zeros + near_plane
    if jitter is not None:
        t_start = t_start + jitter.to(t_start) * step  # nerfacc's expression, so seeded runs match
    t_lo = torch.where(hit, torch.maximum(t_in, t_start), t_start)
    t_hi = torch.where(hit, torch.minimum(t_out, zeros + far_plane), t_start)
    return t_start, t_lo, t_hi


def march_rays(
    rays_o: Tensor,
    rays_d: Tensor,
    t_start: Tensor,
    t_lo: Tensor,
    t_hi: Tensor,
    binaries: Tensor,
    aabb: Sequence[float] | Tensor,
    step: float,
    impl: Impl = "torch",
) -> tuple[Tensor, Tensor, Tensor]:
    """Fixed-step samples of each ray in its window and in occupied cells (rules: module docstring).

    Waits on the GPU once, to size the outputs.

    Args:
        rays_o: (n_rays, 3) float32 origins, grid frame.
        rays_d: (n_rays, 3) float32 unit directions.
        t_start, t_lo, t_hi: (n_rays,) float32 from ``march_window``: the step grid's start
            (t_start <= t_lo) and the window [t_lo, t_hi) midpoints must lie in.
        binaries: (rx, ry, rz) bool occupancy over ``aabb`` (for a nerfacc-style estimator with
            one level: ``estimator.binaries[0]``).
        aabb: (6,) the grid's box; pass Python floats in a hot loop (a CUDA tensor is read
            back to the host, one more wait).
        step: the marching step (> 0).
        impl: ``"torch"`` (the dense twin, any device) or ``"triton"`` (CUDA tensors, or CPU
            tensors under ``TRITON_INTERPRET=1``); the results are identical.

    Returns:
        ``ray_indices`` (n_samples,) int64 sorted, ``t_starts`` (n_samples,) float32 increasing
        along each ray, ``t_ends`` = ``fl32(t_starts + step)``.

    Raises:
        ValueError: bad shapes, or a ray needing more than ``max_march_steps`` candidate steps.
    """
    prep = _prepare(rays_o, rays_d, t_start, t_lo, t_hi, binaries, aabb, step)
    module = _impl_module(impl, rays_o)
    if module is None:
        ray_indices, t_starts, t_ends = _march_dense(prep)
        overflow = bool(prep.overflow.any())
    else:
        ray_indices, t_starts, t_ends, overflow = module.march_full(prep)
    if overflow:
        raise ValueError(
            f"a ray's window is longer than max_march_steps = {prep.max_steps} steps of {step}: "
            "rays_d must be unit vectors and each window inside the box (as march_window gives it)"
        )
    return ray_indices, t_starts, t_ends


def march_rays_capped(
    rays_o: Tensor,
    rays_d: Tensor,
    t_start: Tensor,
    t_lo: Tensor,
    t_hi: Tensor,
    binaries: Tensor,
    aabb: Sequence[float] | Tensor,
    step: float,
    max_samples: int,
    impl: Impl = "torch",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``march_rays`` into outputs of fixed size ``max_samples``; with ``impl="triton"`` nothing
    waits on the GPU (so it can be captured in a CUDA graph, given a float ``aabb``); the twin
    computes the full result and copies its prefix (it waits, like ``march_rays``).

    Args: as ``march_rays``, plus ``max_samples`` (>= 0), the capacity of the outputs.

    Returns:
        ``ray_indices`` (max_samples,) int64, ``t_starts``, ``t_ends`` (max_samples,) float32,
        and ``count``, a 0-d int64 tensor on the rays' device: the number of samples the full
        march has (may exceed ``max_samples``). Entries ``[:min(count, max_samples)]`` are the
        first samples of ``march_rays``'s result, unchanged; the rest is padding with
        ``ray_indices = n_rays`` (one past the last ray, so the array stays sorted) and
        ``t_starts = t_ends = 0`` (zero-length samples). Rays needing more than
        ``max_march_steps`` steps (non-unit ``rays_d``) are cut there, without an error.
    """
    if not isinstance(max_samples, int) or max_samples < 0:
        raise ValueError(f"max_samples must be an int >= 0, got {max_samples!r}")
    prep = _prepare(rays_o, rays_d, t_start, t_lo, t_hi, binaries, aabb, step)
    module = _impl_module(impl, rays_o)
    if module is not None:
        return module.march_capped(prep, max_samples)
    ray_indices, t_starts, t_ends = _march_dense(prep)
    n = ray_indices.shape[0]
    count = torch.tensor(n, dtype=torch.int64, device=ray_indices.device)
    kept = min(n, max_samples)
    out_rays = torch.full((max_samples,), prep.n_rays, dtype=torch.int64, device=ray_indices.device)
    out_t0 = torch.zeros(max_samples, dtype=torch.float32, device=ray_indices.device)
    out_t1 = torch.zeros_like(out_t0)
    out_rays[:kept], out_t0[:kept], out_t1[:kept] = ray_indices[:kept], t_starts[:kept], t_ends[:kept]
    return out_rays, out_t0, out_t1, count


# --------------------------------------------------------------------------- shared preparation


@dataclass(frozen=True)
class MarchInputs:
    """Per-ray march inputs shared by both implementations (built by ``_prepare``).

    Attributes:
        n_rays: number of rays.
        g0, gd: (n_rays, 3) float32 contiguous, a point's grid coordinate is g0 + gd * t.
        t_start, t_lo, t_hi: (n_rays,) float32 contiguous.
        k_begin: (n_rays,) int32 first candidate step index.
        n_steps: (n_rays,) int32 number of candidate steps (capped at ``max_steps``).
        overflow: (n_rays,) bool, the ray needed more than ``max_steps`` candidates.
        binaries: (rx, ry, rz) bool contiguous; ``res`` = (rx, ry, rz) ints.
        step, half_step: the float32 step and step / 2, as Python floats (exact).
        max_steps: the static cap on ``n_steps``.
    """

    n_rays: int
    g0: Tensor
    gd: Tensor
    t_start: Tensor
    t_lo: Tensor
    t_hi: Tensor
    k_begin: Tensor
    n_steps: Tensor
    overflow: Tensor
    binaries: Tensor
    res: tuple[int, int, int]
    step: float
    half_step: float
    max_steps: int


def _prepare(rays_o, rays_d, t_start, t_lo, t_hi, binaries, aabb, step) -> MarchInputs:
    if rays_o.ndim != 2 or rays_o.shape[-1] != 3:
        raise ValueError(f"rays_o must have shape (n_rays, 3), got {tuple(rays_o.shape)}")
    if rays_d.shape != rays_o.shape:
        raise ValueError(f"rays_d must have shape {tuple(rays_o.shape)}, got {tuple(rays_d.shape)}")
    n_rays = rays_o.shape[0]
    for name, value in (("t_start", t_start), ("t_lo", t_lo), ("t_hi", t_hi)):
        if value.shape != (n_rays,):
            raise ValueError(f"{name} must have shape ({n_rays},), got {tuple(value.shape)}")
    if binaries.ndim != 3 or binaries.dtype != torch.bool:
        raise ValueError(f"binaries must be a (rx, ry, rz) bool tensor, got {binaries.dtype} {tuple(binaries.shape)}")
    device = rays_o.device
    step32 = _step32(step)
    max_steps = max_march_steps(aabb, step)
    g0, gd = _grid_frame(rays_o, rays_d, aabb, binaries.shape)
    t_start, t_lo, t_hi = (t.to(device=device, dtype=torch.float32).contiguous() for t in (t_start, t_lo, t_hi))

    # Candidate step range (module docstring), in float64 so that it is exact enough anywhere.
    step64 = float(step32)
    valid = t_lo < t_hi  # False for NaN too
    rel_lo = torch.where(valid, (t_lo.double() - t_start.double()) / step64, 0.0)
    rel_hi = torch.where(valid, (t_hi.double() - t_start.double()) / step64, 0.0)
    k_begin = (torch.floor(rel_lo) - 1).clamp(0, 2**24)
    needed = torch.where(valid, torch.ceil(rel_hi) + 1 - k_begin, 0.0)
    return MarchInputs(
        n_rays=n_rays,
        g0=g0,
        gd=gd,
        t_start=t_start,
        t_lo=t_lo,
        t_hi=t_hi,
        k_begin=k_begin.to(torch.int32),
        n_steps=needed.clamp(0, max_steps).to(torch.int32),
        overflow=needed > max_steps,
        binaries=binaries.to(device).contiguous(),
        res=tuple(int(r) for r in binaries.shape),
        step=float(step32),
        half_step=float(step32 * 0.5),
        max_steps=max_steps,
    )


def _grid_frame(rays_o: Tensor, rays_d: Tensor, aabb, res: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(n_rays, 3) float32 ``g0 = (rays_o - aabb_min) * s``, ``gd = rays_d * s``, s = res / extent.

    The box and scale are float32 values held as Python floats, so that the three per-axis
    operations take them as kernel arguments (no host-to-device copy: capturable in a CUDA graph).
    """
    box = torch.tensor(_aabb_floats(aabb), dtype=torch.float32)
    scale = torch.tensor(list(res), dtype=torch.float32) / (box[3:] - box[:3])
    lows, scales = box[:3].tolist(), scale.tolist()  # float32 values, exact as Python floats
    o, d = rays_o.to(torch.float32), rays_d.to(torch.float32)
    g0 = torch.stack([(o[:, a] - lows[a]) * scales[a] for a in range(3)], dim=1)
    gd = torch.stack([d[:, a] * scales[a] for a in range(3)], dim=1)
    return g0.contiguous(), gd.contiguous()


def _impl_module(impl: str, rays_o: Tensor) -> ModuleType | None:
    """None for the twin, else the Triton module (imported here, the first time it is asked for)."""
    if impl == "torch":
        return None
    if impl != "triton":
        raise ValueError(f"impl must be 'torch' or 'triton', got {impl!r}")
    return import_triton_kernels("neus2cli.render.march_triton", rays_o.device)


# --------------------------------------------------------------------------- the dense twin


def _march_dense(prep: MarchInputs) -> tuple[Tensor, Tensor, Tensor]:
    """The twin: every candidate (ray, step) of a block of rays at once, then the keep mask."""
    device = prep.g0.device
    step32 = torch.tensor(prep.step, dtype=torch.float32, device=device)
    half32 = torch.tensor(prep.half_step, dtype=torch.float32, device=device)
    occupied = prep.binaries.reshape(-1)
    n_cols = int(prep.n_steps.max()) if prep.n_rays else 0
    rows_per_block = max(1, _DENSE_ENTRIES // max(n_cols, 1))
    parts = []
    for a in range(0, prep.n_rays if n_cols else 0, rows_per_block):
        b = min(a + rows_per_block, prep.n_rays)
        cols = torch.arange(n_cols, dtype=torch.int32, device=device)
        k = prep.k_begin[a:b, None] + cols
        t_k = prep.t_start[a:b, None] + k.to(torch.float32) * step32
        mid = t_k + half32
        keep = (cols < prep.n_steps[a:b, None]) & (mid >= prep.t_lo[a:b, None]) & (mid < prep.t_hi[a:b, None])
        cell = torch.zeros_like(k, dtype=torch.int64)
        for axis, r in enumerate(prep.res):
            g = prep.g0[a:b, axis, None] + prep.gd[a:b, axis, None] * mid
            cell = cell * r + torch.floor(g).clamp(0, r - 1).to(torch.int64)
        keep &= occupied[torch.where(keep, cell, 0)]
        rows, where = torch.nonzero(keep, as_tuple=True)  # row-major: sorted by ray, then k
        parts.append((rows + a, t_k[rows, where]))
    if not parts:
        empty = torch.zeros(0, dtype=torch.float32, device=device)
        return torch.zeros(0, dtype=torch.int64, device=device), empty, empty.clone()
    ray_indices = torch.cat([r for r, _ in parts])
    t_starts = torch.cat([t for _, t in parts])
    return ray_indices, t_starts, t_starts + step32
