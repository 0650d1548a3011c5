"""Occupancy-grid ray marching: a pure-PyTorch twin of nerfacc 0.5.x's ``OccGridEstimator``.

``make_occupancy_grid(compute, ...)`` returns nerfacc's ``OccGridEstimator`` for the ``tcnn`` backend
(the GPU path) and ``TorchOccupancyGrid`` for ``torch``, which has the same
constructor, methods, buffers and ``state_dict`` keys, so callers and checkpoints do not care
which one they hold. Rays, cells and samples are in the grid's roi frame (in neus2cli the
normalized unit cube); distances ``t`` are in units of ``|rays_d|``.

Semantics reproduced from nerfacc 0.5.3 (``nerfacc/estimators/occ_grid.py``,
``nerfacc/grid.py::traverse_grids`` and its kernel ``nerfacc/cuda/csrc/grid.cu``):

* **Step grid.** Each ray marches ``t_{k+1} = t_k + render_step_size`` from ``t_0`` = its near
  plane (``max(near_plane, t_min)``, plus ``U[0,1) * step`` when ``stratified``), *not* from the
  box entry: the grid of sample boundaries is aligned with the near plane. The kernel adds in
  float32, one step at a time; ``_f32_march_table`` reproduces that sequence bit for bit without
  a per-step loop (far from the origin float32 rounding makes the effective step differ from
  ``render_step_size`` by up to half an ulp of ``t`` per step, i.e. ~1e-4 after ~1000 steps).
* **Which samples.** Sample k spans [t_k, t_{k+1}]; it is kept iff its midpoint
  ``t_k + step/2`` (rounded to float32) lies in [t_enter, t_exit) of the ray's box (the box
  entry clamped by the near plane, the exit by the far plane) and in an occupied cell. So the first
  sample may start up to half a step before the box entry, and samples in empty cells are
  skipped without ever being emitted. With ``levels > 1`` the boxes are the roi enlarged 2^l
  times about its centre and a midpoint uses the finest level whose box contains it.
  The kernel finds cells with a float32 DDA; here a midpoint's cell is ``floor`` of its grid
  coordinate. The two agree except for midpoints within float rounding (~1e-5) of a cell face.
* **Early stop.** With ``alpha_fn`` (or ``sigma_fn``), samples are dropped once the
  transmittance before them is below ``early_stop_eps`` (``T_i >= eps`` is kept, so a sample
  with alpha = 1 is kept and everything after it dropped), and, when ``alpha_thre > 0``, where
  alpha < ``min(alpha_thre, mean(occs))``.
* **Update.** ``update_every_n_steps`` updates when ``step % n == 0``: during warm-up
  (``step < warmup_steps``) every cell with ``occs >= 0``; afterwards ``cells // 4`` uniformly
  drawn cells (with repeats; those with ``occs < 0`` dropped) plus as many occupied cells
  (drawn with repeats, or all of them if fewer). Each chosen cell is evaluated at one point
  jittered uniformly inside it; ``occs = max(occs * ema_decay, occ)``; then
  ``binaries = occs > min(occ_thre, mean(occs[occs >= 0]))``. Random draws happen in the same
  order and shapes as nerfacc's, so on one device a seeded update gives the same cells and points.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from neus2cli.backends import import_nerfacc
from neus2cli.compute import Compute
from neus2cli.render.aabb import ray_aabb_intersect
from neus2cli.render.volrend import render_visibility_from_alpha, render_visibility_from_density

__all__ = ["TorchOccupancyGrid", "make_occupancy_grid", "march_through_grids"]

# Rays marched at once by ``march_through_grids`` (bounds the memory of the face crossings).
_RAY_CHUNK = 1 << 12
# Key stride separating rays in sorted (ray, step index) keys; step indices stay far below it.
_RAY_KEY = 1 << 40
# Points per ``occ_eval_fn`` call during an update (bounds the network's activation memory).
_EVAL_CHUNK = 1 << 18
# Safety cap on the float32 march-table loop (a few iterations per binade of t).
_MAX_TABLE_ITERS = 2000


# --------------------------------------------------------------------------- float32 march table


def _f32_march_table(t0: Tensor, step: float, t_stop: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Closed form of the float32 recurrence ``t_{k+1} = fl32(t_k + step)``, per ray.

    Within one binade [2^e, 2^(e+1)) of t the float32 spacing is constant, so every step rounds
    by the same amount and t_k is linear in k, except that (i) a step whose sum leaves the
    binade rounds on the coarser spacing, and (ii) when ``step`` is an odd multiple of half the
    spacing, round-half-to-even can make the first in-binade step differ from the following ones.
    Each iteration therefore takes three explicit float32 steps from the current point, then
    one constant-step run to the end of the binade (only if the last explicit step stayed in
    the binade, which settles the parity of (ii)).

    Args:
        t0: (n,) float32 start of each ray's march, >= 0.
        step: the step size (rounded to float32 like the kernel's argument).
        t_stop: (n,) float32; a ray's table ends at the first t_k > t_stop.

    Returns:
        Segments, each (n, S): ``k0`` int64 first index, ``tk0`` float64 value at ``k0``,
        ``dk`` float64 step, ``length`` int64 number of indices; t_k = tk0 + (k - k0) * dk for
        k in [k0, k0 + length), exact. Segments of a ray are ordered and contiguous in k.
    """
    dt32 = torch.tensor(step, dtype=torch.float32, device=t0.device)
    dt64 = dt32.double()
    t_c = t0.to(torch.float32).clone()
    k_c = torch.zeros_like(t_c, dtype=torch.int64)
    k0s, t0s, dks, lens = [], [], [], []
    for _ in range(_MAX_TABLE_ITERS):
        active = t_c <= t_stop
        if not bool(active.any()):
            break
        t1 = t_c + dt32
        t2 = t1 + dt32
        t3 = t2 + dt32
        t4 = t3 + dt32
        if bool((active & (t1 <= t_c)).any()):
            raise ValueError(
                f"render_step_size={step} is below float32 resolution at t={float(t_c[active].max())}: "
                "the march would never advance"
            )
        e2 = torch.frexp(t2).exponent
        e3 = torch.frexp(t3).exponent
        bound = torch.exp2(e3.to(torch.float64))  # end of t3's binade [2^(e3-1), 2^e3)
        t3d = t3.double()
        dk = t4.double() - t3d
        room = bound - dt64 - t3d  # run index j is valid while j * dk < room (t + step stays in binade)
        ok = active & (e2 == e3) & (room > 0) & (dk > 0)
        safe_dk = torch.where(ok, dk, torch.ones_like(dk))
        run = torch.ceil(torch.where(ok, room, torch.zeros_like(room)) / safe_dk)
        # The division may round across an integer: settle J = #{j >= 0 : j * dk < room} exactly.
        run = torch.where(ok & (run > 0) & ((run - 1) * safe_dk >= room), run - 1, run)
        run = torch.where(ok & (run * safe_dk < room), run + 1, run)
        run = torch.where(ok, run, torch.zeros_like(run)).to(torch.int64)

        one = active.to(torch.int64)
        k0s += [k_c, k_c + 1, k_c + 2, k_c + 3]
        t0s += [t_c.double(), t1.double(), t2.double(), t3d]
        dks += [dt64.expand_as(t3d)] * 3 + [torch.where(ok, dk, dt64)]
        lens += [one, one, one, run * one]
        t_next = (t3d + run.double() * dk).to(torch.float32)
        t_c = torch.where(active, t_next, t_c)
        k_c = torch.where(active, k_c + 3 + run, k_c)
    else:
        raise RuntimeError("float32 march table did not terminate (internal error)")
    # The terminal point, past t_stop.
    k0s.append(k_c)
    t0s.append(t_c.double())
    dks.append(dt64.expand_as(t_c.double()))
    lens.append(torch.ones_like(k_c))
    return (
        torch.stack(k0s, dim=1),
        torch.stack(t0s, dim=1),
        torch.stack(dks, dim=1),
        torch.stack(lens, dim=1),
    )


# --------------------------------------------------------------------------- marching


def _occupied_spans(
    g0: Tensor,
    gd: Tensor,
    binaries: Tensor,
    t_in: Tensor,
    t_out: Tensor,
    hit: Tensor,
    lo: Tensor,
    hi: Tensor,
    slack: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Every occupied cell a ray visits in its window, as (ray, t_enter, t_exit).

    A visited cell is the one at the window start or at a level-box face, or one that the ray
    enters by crossing an interior cell face; so one lookup per face crossing finds them all,
    without walking cells in order. Used only to propose candidates (float32 is plenty: the
    caller pads by whole steps); faces within ``slack`` of the window are included.

    Args:
        g0, gd: (n, levels, 3) float32, grid coordinates (in cells) along the ray: g0 + gd * t.
        binaries: (levels, rx, ry, rz) bool.
        t_in, t_out, hit: (n, levels) ray / level-box intersections.
        lo, hi: (n,) the window; rays with ``lo >= hi`` are skipped.
        slack: extra distance on both sides of the window.
    """
    device = g0.device
    n_rays, levels = g0.shape[:2]
    _, rx, ry, rz = binaries.shape
    top = torch.tensor([rx - 1, ry - 1, rz - 1], device=device)
    flat_binaries = binaries.reshape(-1)
    g0_rows, gd_rows = g0.reshape(-1, 3), gd.reshape(-1, 3)  # row = ray * levels + level

    def occupied_cells(rows: Tensor, coords: Tensor) -> Tensor:
        cell = (coords[:, 0] * ry + coords[:, 1]) * rz + coords[:, 2] + (rows % levels) * (rx * ry * rz)
        return flat_binaries[cell]

    active = lo < hi
    # (a) Face crossings: per (ray, level, axis), the interior faces 1..r-1 with t in the slack
    # window; the cell entered has the face's index (moving +) or index - 1 (moving -).
    ga = g0 + gd * (lo - slack)[:, None, None]
    gb = g0 + gd * (hi + slack)[:, None, None]
    forward = gd > 0
    first = torch.where(forward, torch.ceil(ga), torch.floor(gb) + 1).clamp(min=1)
    last = torch.minimum(torch.where(forward, torch.floor(gb), torch.floor(ga)), top.to(ga.dtype))
    usable = (gd != 0) & torch.isfinite(ga) & torch.isfinite(gb) & active[:, None, None]
    counts = torch.where(usable, last - first + 1, torch.zeros_like(first)).clamp(min=0).to(torch.int64)
    counts = counts.reshape(-1)
    total = int(counts.sum())
    pair = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
    local = torch.arange(total, device=device) - (torch.cumsum(counts, 0) - counts)[pair]
    face = first.reshape(-1)[pair] + local.to(g0.dtype)
    rows_f = pair // 3
    axis_f = pair % 3
    gd_a = gd.reshape(-1)[pair]
    t_f = (face - g0.reshape(-1)[pair]) / gd_a
    coords_f = torch.floor(g0_rows[rows_f] + gd_rows[rows_f] * t_f[:, None])
    coords_f.scatter_(1, axis_f[:, None], (face - (gd_a < 0).to(face.dtype))[:, None])

    # (b) The window start and the level-box faces inside the window: the cell there, per level.
    t_s = [lo]
    for lvl in range(levels - 1):
        for t_face in (t_in[:, lvl], t_out[:, lvl]):
            t_s.append(torch.where(hit[:, lvl] & (t_face > lo) & (t_face < hi), t_face, lo))
    t_s = torch.stack(t_s, dim=1)[:, :, None].expand(-1, -1, levels)  # (n, specials, levels)
    ray_s = torch.arange(n_rays, device=device)[:, None, None].expand_as(t_s)
    lvl_s = torch.arange(levels, device=device)[None, None, :].expand_as(t_s)
    keep_s = active[:, None, None].expand_as(t_s).reshape(-1)
    rows_s = (ray_s * levels + lvl_s).reshape(-1)[keep_s]
    t_s = t_s.reshape(-1)[keep_s]
    coords_s = torch.floor(g0_rows[rows_s] + gd_rows[rows_s] * t_s[:, None])

    rows = torch.cat([rows_f, rows_s])
    t_e = torch.cat([t_f, t_s])
    # Clamped like the kernel's cell indices (a point on the box's far face is in the last cell).
    coords = torch.minimum(torch.cat([coords_f, coords_s]).to(torch.int64).clamp(min=0), top)
    sel = torch.nonzero(occupied_cells(rows, coords))[:, 0]
    rows, t_e, coords = rows[sel], t_e[sel], coords[sel].to(g0.dtype)

    # Exit of each occupied cell: the nearest of its three far faces along the ray.
    g0_e, gd_e = g0_rows[rows], gd_rows[rows]
    far_face = coords + (gd_e > 0).to(coords.dtype)
    t_exit = torch.where(gd_e != 0, (far_face - g0_e) / gd_e, torch.full_like(gd_e, float("inf"))).amin(-1)
    ray_e = rows // levels
    return ray_e, t_e, torch.minimum(t_exit, hi[ray_e])


@torch.no_grad()
def march_through_grids(
    rays_o: Tensor,
    rays_d: Tensor,
    binaries: Tensor,
    aabbs: Tensor,
    near_planes: Tensor,
    far_planes: Tensor,
    step_size: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """March rays through nested occupancy grids with a fixed step; keep samples in occupied cells.

    The twin of ``nerfacc.traverse_grids`` for ``step_size > 0`` and ``cone_angle = 0`` (see the
    module docstring for the rules). Vectorised in three passes: find the occupied cells each
    ray visits (``_occupied_spans``), turn them into runs of candidate step indices (with a
    margin), then apply the exact rule (float32 step grid, midpoint in window and in an
    occupied cell) to every candidate. Work scales with the occupied length, not the ray length.

    Args:
        rays_o: (n_rays, 3) float32 origins, roi frame.
        rays_d: (n_rays, 3) float32 directions (unit in nerfacc's convention).
        binaries: (levels, rx, ry, rz) bool occupancy.
        aabbs: (levels, 6) float32 box of each level, nested (level l+1 contains level l).
        near_planes: (n_rays,) float32 start of each ray's step grid, >= 0.
        far_planes: (n_rays,) float32 where each ray stops.
        step_size: fixed step, > 0.

    Returns:
        ``ray_indices`` (n,) int64 sorted, ``t_starts`` (n,) and ``t_ends`` (n,) float32, with
        ``t_starts`` increasing along each ray and ``t_ends = fl32(t_starts + step_size)``.
    """
    outs = [
        _march_chunk(
            rays_o[i : i + _RAY_CHUNK],
            rays_d[i : i + _RAY_CHUNK],
            binaries,
            aabbs,
            near_planes[i : i + _RAY_CHUNK],
            far_planes[i : i + _RAY_CHUNK],
            step_size,
        )
        for i in range(0, rays_o.shape[0], _RAY_CHUNK)
    ]
    if not outs:
        return _empty_samples(rays_o.device)
    starts = [i for i in range(0, rays_o.shape[0], _RAY_CHUNK)]
    return (
        torch.cat([r + s for (r, _, _), s in zip(outs, starts, strict=True)]),
        torch.cat([t0 for _, t0, _ in outs]),
        torch.cat([t1 for _, _, t1 in outs]),
    )


def _empty_samples(device) -> tuple[Tensor, Tensor, Tensor]:
    return (
        torch.zeros(0, dtype=torch.int64, device=device),
        torch.zeros(0, dtype=torch.float32, device=device),
        torch.zeros(0, dtype=torch.float32, device=device),
    )


def _march_chunk(rays_o, rays_d, binaries, aabbs, near_planes, far_planes, step_size):
    """``march_through_grids`` for one block of rays."""
    device = rays_o.device
    levels = binaries.shape[0]
    res = torch.tensor(binaries.shape[1:], device=device)
    _, rx, ry, rz = binaries.shape
    strides = torch.tensor([ry * rz, rz, 1], device=device)

    t_in, t_out, hit = ray_aabb_intersect(rays_o, rays_d, aabbs)  # (n_rays, levels)
    lo = torch.maximum(t_in[:, -1], near_planes)  # the outermost box holds every level
    hi = torch.minimum(t_out[:, -1], far_planes)
    valid = hit[:, -1] & (lo < hi)
    if not bool(valid.any()):
        return _empty_samples(device)
    dt32 = torch.tensor(step_size, dtype=torch.float32, device=device)
    dt64 = float(dt32)
    if float(torch.where(valid, (hi - lo) / dt32, torch.zeros_like(lo)).max()) > 2**31:
        raise ValueError(
            f"a ray would take more than 2^31 steps of render_step_size={step_size} inside the grid; "
            "check the rays (zero directions?) and the far plane"
        )
    lo = torch.where(valid, lo, torch.zeros_like(lo))
    hi = torch.where(valid, hi, torch.zeros_like(hi))

    # Closed-form float32 step grid of each ray, up to just past its window.
    t_stop = torch.where(valid, hi + dt32, torch.full_like(hi, -1.0))
    k0, tk0, dk, length = _f32_march_table(near_planes, step_size, t_stop)
    k_last = k0[:, -1]  # the table's terminal index, past the window

    # Box-to-grid coordinates per (ray, level): cell = floor(g0 + gd * t), in float32 like the kernel.
    scale = res.to(torch.float32) / (aabbs[:, 3:] - aabbs[:, :3])  # (levels, 3) cells per unit
    g0 = (rays_o[:, None, :] - aabbs[None, :, :3]) * scale[None]  # (n_rays, levels, 3)
    gd = rays_d[:, None, :] * scale[None]
    ray_p, t_a, t_b = _occupied_spans(g0, gd, binaries, t_in, t_out, hit, lo, hi, 2 * dt64)
    if ray_p.numel() == 0:
        return _empty_samples(device)

    # Candidate step indices of each span: k ~ (t - t0) / step, off by the float32 drift of the
    # march (at most half an ulp of t per step) plus rounding; pad by that bound + 2.
    near64 = near_planes.double()
    hi64 = hi.double() + 2 * dt64
    ulp = torch.exp2(torch.frexp(hi64).exponent.double() - 24.0)
    margin = 2 + torch.ceil((hi64 - near64) / dt64 * ulp / (2 * dt64) + 1).to(torch.int64)
    t_a, t_b = t_a.double(), t_b.double()
    k_a = torch.floor((t_a - near64[ray_p]) / dt64).to(torch.int64) - margin[ray_p]
    k_b = torch.ceil((t_b - near64[ray_p]) / dt64).to(torch.int64) + margin[ray_p]
    k_a = k_a.clamp(min=0)
    k_b = torch.minimum(k_b, k_last[ray_p])
    keep = k_a <= k_b
    ray_p, k_a, k_b = ray_p[keep], k_a[keep], k_b[keep]

    # Merge overlapping index runs per ray (sorted by ray, then start).
    key_a = ray_p * _RAY_KEY + k_a
    key_a, order = torch.sort(key_a)
    key_b = (ray_p * _RAY_KEY + k_b)[order]
    reach = torch.cummax(key_b, 0).values  # rays are key-disjoint, so no reset is needed
    new_run = torch.ones_like(key_a, dtype=torch.bool)
    new_run[1:] = key_a[1:] > reach[:-1] + 1
    run_id = torch.cumsum(new_run, 0) - 1
    run_a = key_a[new_run]
    run_b = torch.zeros_like(run_a).scatter_reduce(0, run_id, key_b, "amax", include_self=False)
    lengths = run_b - run_a + 1
    total = int(lengths.sum())
    run = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)
    key = run_a[run] + (torch.arange(total, device=device) - (torch.cumsum(lengths, 0) - lengths)[run])
    ray = key // _RAY_KEY
    k = key - ray * _RAY_KEY

    # Exact t_k from the table (segment = last one starting at or before k).
    seg_ok = length.reshape(-1) > 0
    seg_key = (torch.arange(k0.shape[0], device=device)[:, None] * _RAY_KEY + k0).reshape(-1)[seg_ok]
    seg = torch.searchsorted(seg_key, key, right=True) - 1
    seg_flat = torch.nonzero(seg_ok)[:, 0][seg]
    t_k = (tk0.reshape(-1)[seg_flat] + (k - k0.reshape(-1)[seg_flat]).double() * dk.reshape(-1)[seg_flat]).to(
        torch.float32
    )  # exact: every t_k of the table is a float32

    # The exact rule: float32 midpoint in [lo, hi) and in an occupied cell of the finest level.
    mid = t_k + dt32 * 0.5
    sel = torch.nonzero((mid >= lo[ray]) & (mid < hi[ray]))[:, 0]
    ray, t_k, mid = ray[sel], t_k[sel], mid[sel]
    level = torch.full_like(ray, levels - 1)
    for lvl in range(levels - 2, -1, -1):  # finest containing level wins
        inside = hit[ray, lvl] & (mid >= t_in[ray, lvl]) & (mid < t_out[ray, lvl])
        level = torch.where(inside, torch.full_like(level, lvl), level)
    rows = ray * levels + level
    coords = torch.floor(g0.reshape(-1, 3)[rows] + gd.reshape(-1, 3)[rows] * mid[:, None]).to(torch.int64)
    coords = torch.minimum(coords.clamp(min=0), res - 1)
    cell = (coords * strides).sum(-1) + level * (rx * ry * rz)
    sel = torch.nonzero(binaries.reshape(-1)[cell])[:, 0]
    t_k = t_k[sel]
    return ray[sel], t_k, t_k + dt32


# --------------------------------------------------------------------------- the grid


def _enlarged(aabb: Tensor, factor: float) -> Tensor:
    centre = (aabb[:3] + aabb[3:]) / 2
    half = (aabb[3:] - aabb[:3]) / 2
    return torch.cat([centre - half * factor, centre + half * factor])


class TorchOccupancyGrid(nn.Module):
    """Pure-PyTorch ``nerfacc.OccGridEstimator`` (levels >= 1, cone_angle = 0).

    Args:
        roi_aabb: (6,) [xmin, ymin, zmin, xmax, ymax, zmax] of the region of interest, in the
            frame of the rays (neus2cli: the normalized unit cube [0, 0, 0, 1, 1, 1]).
        resolution: cells per axis, an int or 3 ints.
        levels: nested grids; level l covers the roi enlarged 2^l times about its centre.

    Buffers (the ``state_dict``, identical in names, shapes and dtypes to nerfacc's):
        ``resolution`` (3,) int32, ``aabbs`` (levels, 6) float32, ``occs`` (levels * cells,)
        float32 EMA occupancy (-1 marks a cell never to update), ``binaries``
        (levels, rx, ry, rz) bool, cell (i, j, k) of level l spanning
        ``aabbs[l, :3] + [i, j, k] / resolution * extent`` onwards.
    """

    DIM = 3

    def __init__(
        self,
        roi_aabb: Sequence[float] | Tensor,
        resolution: int | Sequence[int] | Tensor = 128,
        levels: int = 1,
    ) -> None:
        super().__init__()
        res = torch.as_tensor([resolution] * 3 if isinstance(resolution, int) else resolution)
        if res.shape != (3,) or bool((res <= 0).any()):
            raise ValueError(f"resolution must be a positive int or 3 positive ints, got {resolution!r}")
        aabb = torch.as_tensor(roi_aabb, dtype=torch.float32).reshape(-1).cpu()
        if aabb.shape != (6,) or not bool((aabb[3:] > aabb[:3]).all()):
            raise ValueError(f"roi_aabb must be [xmin, ymin, zmin, xmax, ymax, zmax] with max > min, got {roi_aabb!r}")
        if not isinstance(levels, int) or levels < 1:
            raise ValueError(f"levels must be an int >= 1, got {levels!r}")
        self.levels = levels
        self.cells_per_lvl = int(res.prod())
        self.register_buffer("resolution", res.to(torch.int32))
        self.register_buffer("aabbs", torch.stack([_enlarged(aabb, 2.0**i) for i in range(levels)]))
        self.register_buffer("occs", torch.zeros(levels * self.cells_per_lvl))
        self.register_buffer("binaries", torch.zeros([levels, *res.tolist()], dtype=torch.bool))

    @property
    def device(self) -> torch.device:
        return self.occs.device

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sampling(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        sigma_fn: Callable | None = None,
        alpha_fn: Callable | None = None,
        near_plane: float = 0.0,
        far_plane: float = 1e10,
        t_min: Tensor | None = None,
        t_max: Tensor | None = None,
        render_step_size: float = 1e-3,
        early_stop_eps: float = 1e-4,
        alpha_thre: float = 0.0,
        stratified: bool = False,
        cone_angle: float = 0.0,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Fixed-step samples of each ray inside occupied cells, packed by ray.

        Args:
            rays_o: (n_rays, 3) origins, roi frame (marched in float32, like nerfacc).
            rays_d: (n_rays, 3) unit directions.
            sigma_fn: optional (t_starts, t_ends, ray_indices) -> (n,) densities, for early stop.
            alpha_fn: optional (t_starts, t_ends, ray_indices) -> (n,) opacities, for early stop.
                Give at most one of the two.
            near_plane: where every ray's step grid starts (>= 0).
            far_plane: where every ray stops.
            t_min: optional (n_rays,) per-ray start, used where larger than ``near_plane``.
            t_max: optional (n_rays,) per-ray stop, used where smaller than ``far_plane``.
            render_step_size: fixed step along the ray (> 0).
            early_stop_eps: drop samples whose transmittance is below this (with a fn).
            alpha_thre: drop samples with alpha below ``min(alpha_thre, mean(occs))`` (with a fn).
            stratified: shift each ray's step grid by ``U[0, 1) * render_step_size``.
            cone_angle: must be 0 (constant steps).

        Returns:
            ``ray_indices`` (n,) int64 sorted, ``t_starts`` (n,) float32 increasing per ray,
            ``t_ends`` (n,) float32 = ``t_starts + render_step_size`` (float32-rounded).
        """
        if rays_o.ndim != 2 or rays_o.shape[-1] != 3:
            raise ValueError(f"rays_o must have shape (n_rays, 3), got {tuple(rays_o.shape)}")
        if rays_d.shape != rays_o.shape:
            raise ValueError(f"rays_d must have shape {tuple(rays_o.shape)}, got {tuple(rays_d.shape)}")
        if cone_angle != 0.0:
            raise ValueError(f"cone_angle must be 0 (only constant steps are supported), got {cone_angle}")
        if not render_step_size > 0:
            raise ValueError(f"render_step_size must be > 0, got {render_step_size}")
        if not near_plane >= 0:
            raise ValueError(f"near_plane must be >= 0, got {near_plane}")
        if sigma_fn is not None and alpha_fn is not None:
            raise ValueError("give sigma_fn or alpha_fn, not both")
        n_rays = rays_o.shape[0]
        for name, t in (("t_min", t_min), ("t_max", t_max)):
            if t is not None and t.shape != (n_rays,):
                raise ValueError(f"{name} must have shape ({n_rays},), got {tuple(t.shape)}")
        rays_o = rays_o.to(device=self.device, dtype=torch.float32).contiguous()
        rays_d = rays_d.to(device=self.device, dtype=torch.float32).contiguous()

        near_planes = torch.full_like(rays_o[:, 0], fill_value=near_plane)
        far_planes = torch.full_like(rays_o[:, 0], fill_value=far_plane)
        if t_min is not None:
            near_planes = torch.clamp(near_planes, min=t_min.to(near_planes))
        if t_max is not None:
            far_planes = torch.clamp(far_planes, max=t_max.to(far_planes))
        if stratified:
            # Same draw as nerfacc (same generator, shape and dtype): seeded runs match.
            near_planes = near_planes + torch.rand_like(near_planes) * render_step_size

        ray_indices, t_starts, t_ends = march_through_grids(
            rays_o, rays_d, self.binaries, self.aabbs, near_planes, far_planes, render_step_size
        )

        if (alpha_thre > 0.0 or early_stop_eps > 0.0) and (sigma_fn is not None or alpha_fn is not None):
            alpha_thre = min(alpha_thre, self.occs.mean().item())
            fn = sigma_fn if sigma_fn is not None else alpha_fn
            if t_starts.shape[0] != 0:
                values = fn(t_starts, t_ends, ray_indices)
            else:
                values = torch.empty((0,), device=t_starts.device)
            if values.shape != t_starts.shape:
                kind = "sigma_fn" if sigma_fn is not None else "alpha_fn"
                raise ValueError(f"{kind} must return shape {tuple(t_starts.shape)}, got {tuple(values.shape)}")
            if sigma_fn is not None:
                masks = render_visibility_from_density(
                    t_starts, t_ends, values, ray_indices=ray_indices, n_rays=n_rays,
                    early_stop_eps=early_stop_eps, alpha_thre=alpha_thre, impl="torch",
                )  # fmt: skip
            else:
                masks = render_visibility_from_alpha(
                    values, ray_indices=ray_indices, n_rays=n_rays,
                    early_stop_eps=early_stop_eps, alpha_thre=alpha_thre, impl="torch",
                )  # fmt: skip
            ray_indices, t_starts, t_ends = ray_indices[masks], t_starts[masks], t_ends[masks]
        return ray_indices, t_starts, t_ends

    # ------------------------------------------------------------------ updates

    @torch.no_grad()
    def update_every_n_steps(
        self,
        step: int,
        occ_eval_fn: Callable[[Tensor], Tensor],
        occ_thre: float = 1e-2,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        n: int = 16,
    ) -> None:
        """EMA update of the occupancy from ``occ_eval_fn`` when ``step % n == 0`` (training mode only).

        Args:
            step: the training step.
            occ_eval_fn: (M, 3) roi-frame points -> (M,) or (M, 1) occupancy (e.g. density * step).
            occ_thre: a cell is occupied when ``occs > min(occ_thre, mean(occs[occs >= 0]))``.
            ema_decay: ``occs = max(occs * ema_decay, new)`` on the evaluated cells.
            warmup_steps: before this step every cell is evaluated; after it a random quarter
                of the cells plus as many occupied cells.
            n: update period in steps.
        """
        if not self.training:
            raise RuntimeError(
                "update_every_n_steps is for training only (call .train()); use _update() to "
                "update the grid during inference"
            )
        if n <= 0:
            raise ValueError(f"n must be >= 1, got {n}")
        if step % n == 0:
            self._update(step, occ_eval_fn, occ_thre, ema_decay, warmup_steps)

    @torch.no_grad()
    def _update(
        self,
        step: int,
        occ_eval_fn: Callable[[Tensor], Tensor],
        occ_thre: float = 0.01,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
    ) -> None:
        """One EMA update (see the module docstring for which cells)."""
        if step < warmup_steps:
            lvl_indices = self._get_all_cells()
        else:
            lvl_indices = self._sample_uniform_and_occupied_cells(self.cells_per_lvl // 4)
        for lvl, indices in enumerate(lvl_indices):
            coords = self._cell_coords(indices)
            # Same draw as nerfacc's rand_like(grid_coords, dtype=float32).
            x = (coords + torch.rand(coords.shape, dtype=torch.float32, device=self.device)) / self.resolution
            x = self.aabbs[lvl, :3] + x * (self.aabbs[lvl, 3:] - self.aabbs[lvl, :3])
            occ = self._evaluate(occ_eval_fn, x)
            cell_ids = lvl * self.cells_per_lvl + indices
            self.occs[cell_ids] = torch.maximum(self.occs[cell_ids] * ema_decay, occ).to(self.occs.dtype)
        thre = torch.clamp(self.occs[self.occs >= 0].mean(), max=occ_thre)
        self.binaries = (self.occs > thre).view(self.binaries.shape)

    def _get_all_cells(self) -> list[Tensor]:
        """Per level, the (M,) indices of cells that may be updated (``occs >= 0``)."""
        every = torch.arange(self.cells_per_lvl, device=self.device)
        return [every[self.occs[lvl * self.cells_per_lvl + every] >= 0.0] for lvl in range(self.levels)]

    def _sample_uniform_and_occupied_cells(self, n: int) -> list[Tensor]:
        """Per level, n uniform cells (with repeats, minus ``occs < 0``) plus <= n occupied cells."""
        lvl_indices = []
        for lvl in range(self.levels):
            uniform = torch.randint(self.cells_per_lvl, (n,), device=self.device)
            uniform = uniform[self.occs[lvl * self.cells_per_lvl + uniform] >= 0.0]
            occupied = torch.nonzero(self.binaries[lvl].flatten())[:, 0]
            if n < len(occupied):
                occupied = occupied[torch.randint(len(occupied), (n,), device=self.device)]
            lvl_indices.append(torch.cat([uniform, occupied], dim=0))
        return lvl_indices

    def _cell_coords(self, indices: Tensor) -> Tensor:
        """(M,) flat cell indices -> (M, 3) int64 (i, j, k), C order like ``binaries[l]``."""
        ry, rz = int(self.resolution[1]), int(self.resolution[2])
        return torch.stack([indices // (ry * rz), (indices // rz) % ry, indices % rz], dim=-1)

    @staticmethod
    def _evaluate(occ_eval_fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """``occ_eval_fn`` over (M, 3) points in chunks (pointwise, so same result), as (M,)."""
        parts = []
        for i in range(0, x.shape[0], _EVAL_CHUNK):
            chunk = x[i : i + _EVAL_CHUNK]
            occ = occ_eval_fn(chunk)
            if occ.shape not in ((chunk.shape[0],), (chunk.shape[0], 1)):
                raise ValueError(
                    f"occ_eval_fn must return shape (M,) or (M, 1) for M = {chunk.shape[0]} points, "
                    f"got {tuple(occ.shape)}"
                )
            parts.append(occ.reshape(-1))
        return torch.cat(parts) if parts else x.new_zeros(0)


# --------------------------------------------------------------------------- factory


def make_occupancy_grid(
    compute: Compute,
    roi_aabb: Sequence[float] | Tensor,
    resolution: int | Sequence[int] = 128,
    levels: int = 1,
) -> nn.Module:
    """The occupancy grid of ``compute.backend``, on ``compute.device``: nerfacc's ``OccGridEstimator``
    for ``"tcnn"`` (the GPU path), ``TorchOccupancyGrid`` for ``"torch"``. Both expose ``sampling``,
    ``update_every_n_steps``, ``binaries``, ``occs`` and the same ``state_dict`` keys
    (``resolution``, ``aabbs``, ``occs``, ``binaries``), so a checkpoint of one loads into the other.

    Raises:
        DependencyError: ``"tcnn"`` without an importable nerfacc.
    """
    if compute.backend == "torch":
        return TorchOccupancyGrid(roi_aabb, resolution, levels).to(compute.device)
    nerfacc = import_nerfacc()
    aabb = torch.as_tensor(roi_aabb, dtype=torch.float32).reshape(-1)
    return nerfacc.OccGridEstimator(roi_aabb=aabb, resolution=resolution, levels=levels).to(compute.device)
