"""Render rays through a NeuS model: occupancy-grid sampling, NeuS alpha, compositing.

Rays, samples and SDF values are all in the **normalized** unit-cube frame; ``t`` is
in normalized units along unit directions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from neus2cli.model.fields import NeuSModel
from neus2cli.render.march import Impl as MarchImpl
from neus2cli.render.march import march_rays, march_window
from neus2cli.render.neus import neus_alpha, neus_alpha_from_sdf_pair
from neus2cli.render.volrend import (
    Impl,
    accumulate_along_rays,
    render_transmittance_from_alpha,
    render_visibility_from_alpha,
    render_weight_from_alpha,
)

RayTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# The box every occupancy grid of neus2cli covers: the normalized unit cube (grids are built on it).
NORMALIZED_CUBE = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0)

# Points per SDF call in the no-gradient pre-pass: a batch whose marched samples explode (a grid
# update that suddenly occupies many cells) must not exhaust GPU memory there.
PREPASS_CHUNK = 1 << 21


@dataclass
class RenderOutput:
    """Per-ray results (n_rays, ...) and per-sample values used by the losses.

    ``n_rays`` is the number of rays rendered: all of them, or the leading ones when
    ``max_samples`` cut the batch.

    Attributes:
        rgb: (n_rays, 3) colour composited over ``bg_color``.
        opacity: (n_rays,) accumulated weight.
        depth: (n_rays,) expected t (normalized units; 0 where nothing was hit).
        normal: (n_rays, 3) accumulated unit normal (zero where nothing was hit).
        sdf_grad: (n_samples, 3) SDF gradients at every sample (for the eikonal loss).
        n_samples: number of samples marched.
    """

    rgb: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    normal: torch.Tensor
    sdf_grad: torch.Tensor
    n_samples: int


@torch.no_grad()
def prepass_alpha(
    start_sdf: torch.Tensor,
    ray_indices: torch.Tensor,
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    inv_s: torch.Tensor,
) -> torch.Tensor:
    """The early-stop pre-pass's alpha of packed sections from the SDF at their starts only.

    One SDF evaluation per marched point: a section that ends where the next one of its ray begins
    (the usual case) takes that SDF as its end; a ray's last section (or one before a jump over empty
    cells) extrapolates its start with the previous section's slope. Written without boolean
    indexing, so nothing waits on the GPU.

    Args: ``start_sdf``, ``t_starts``, ``t_ends`` (n,) float, ``ray_indices`` (n,) int64 sorted, ``inv_s``
    scalar. Returns alpha (n,) in [0, 1].
    """
    if t_starts.shape[0] == 0:
        return t_starts.clone()
    continues = torch.zeros_like(t_starts, dtype=torch.bool)
    continues[:-1] = (ray_indices[1:] == ray_indices[:-1]) & ((t_starts[1:] - t_ends[:-1]).abs() <= 1e-6)
    continued = torch.zeros_like(continues)
    continued[1:] = continues[:-1]
    next_sdf = torch.cat([start_sdf[1:], start_sdf[-1:]])
    prev_sdf = torch.cat([start_sdf[:1], start_sdf[:-1]])
    slope = torch.where(continued, start_sdf - prev_sdf, torch.zeros_like(start_sdf))
    end_sdf = torch.where(continues, next_sdf, start_sdf + slope)
    return neus_alpha_from_sdf_pair(start_sdf, end_sdf, inv_s)


@torch.no_grad()
def sample_along_rays(
    estimator,
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    alpha_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    step_size: float,
    early_stop_eps: float,
    alpha_thre: float,
    stratified: bool,
    impl: Impl,
    march_impl: MarchImpl,
    jitter: torch.Tensor | None = None,
    in_order_block: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed-step samples in the occupied cells of ``estimator`` (first level, over ``NORMALIZED_CUBE``),
    early-stopped by ``alpha_fn``.

    One (ray, step)-parallel march (``render.march``) instead of the estimator's own sampling (nerfacc's
    marches one thread per ray, twice), then the pre-pass alpha and the visibility rule of
    ``OccGridEstimator.sampling``: keep ``T_i >= early_stop_eps`` and, with ``alpha_thre > 0``,
    ``alpha_i >= min(alpha_thre, mean(occs))``. Rays (n_rays, 3) in the grid's (normalized) frame.

    ``jitter`` (n_rays,) U[0, 1) gives the stratified offsets; without it ``stratified`` draws them
    from the global generator (nerfacc's draw). ``in_order_block`` > 0 evaluates the pre-pass that many
    samples per ray at a time, front to back, and stops at rays whose transmittance is spent
    (``_visible_in_order``: the same samples, far fewer SDF evaluations); 0 evaluates every marched sample
    at once. Returns ``ray_indices`` (n,) int64 sorted, ``t_starts``, ``t_ends`` (n,) float32.
    """
    aabb = NORMALIZED_CUBE  # host floats: reading the grid's box from the device would wait on the GPU
    if stratified and jitter is None:
        jitter = torch.rand_like(rays_o[:, 0])
    elif not stratified:
        jitter = None
    t_start, t_lo, t_hi = march_window(rays_o, rays_d, aabb, step_size, jitter=jitter)
    ray_indices, t_starts, t_ends = march_rays(
        rays_o, rays_d, t_start, t_lo, t_hi, estimator.binaries[0], aabb, step_size, impl=march_impl
    )
    if t_starts.shape[0] == 0 or (early_stop_eps <= 0 and alpha_thre <= 0):
        return ray_indices, t_starts, t_ends
    if alpha_thre > 0:
        alpha_thre = min(alpha_thre, estimator.occs.mean().item())
    if in_order_block > 0:
        keep = _visible_in_order(
            alpha_fn, ray_indices, t_starts, t_ends, rays_o.shape[0], early_stop_eps, alpha_thre, impl, in_order_block
        )
        return ray_indices[keep], t_starts[keep], t_ends[keep]
    alphas = alpha_fn(t_starts, t_ends, ray_indices)
    keep = render_visibility_from_alpha(
        alphas, ray_indices=ray_indices, n_rays=rays_o.shape[0], early_stop_eps=early_stop_eps,
        alpha_thre=alpha_thre, impl=impl,
    )  # fmt: skip
    return ray_indices[keep], t_starts[keep], t_ends[keep]


# Samples per ray per round of the in-order pre-pass of renders on the CPU (``_visible_in_order``).
IN_ORDER_BLOCK = 16


@torch.no_grad()
def _visible_in_order(
    alpha_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ray_indices: torch.Tensor,
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    n_rays: int,
    early_stop_eps: float,
    alpha_thre: float,
    impl: Impl,
    block: int,
) -> torch.Tensor:
    """``render_visibility_from_alpha`` of the pre-pass alphas, evaluated ``block`` samples per ray at a
    time, front to back, skipping rays whose transmittance has fallen below ``early_stop_eps``.

    Transmittance only decreases along a ray, so every sample after the one where it falls below
    ``early_stop_eps`` is dropped by the full pass too: those samples need no SDF. A round takes the
    samples of rank [r B, (r + 1) B) of the live rays, plus one sample on each side, so that
    ``prepass_alpha`` sees the neighbours it reads (the next start, or the previous one to extrapolate):
    the alphas are those of the full pass. The result is the full pass's mask, up to the rounding of
    the transmittance products (a product over rounds instead of one scan; a sample on the threshold
    itself may flip, changing a pixel by at most ``early_stop_eps``). Packed inputs (n,) sorted by ray
    and t, as ``sample_along_rays`` has them; returns the (n,) bool mask.
    """
    n = ray_indices.shape[0]
    counts = torch.bincount(ray_indices, minlength=n_rays)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=ray_indices.device) - first[ray_indices]
    trans = torch.ones(n_rays, dtype=t_starts.dtype, device=t_starts.device)  # before the round's samples
    keep = torch.zeros(n, dtype=torch.bool, device=ray_indices.device)
    max_rank = int(counts.max()) if n_rays else 0
    for lo in range(0, max_rank, block):
        live = trans[ray_indices] >= early_stop_eps
        window = torch.nonzero(live & (rank >= lo - 1) & (rank <= lo + block)).squeeze(1)
        if window.numel() == 0:
            break
        ri, ts, te = ray_indices[window], t_starts[window], t_ends[window]
        alphas = alpha_fn(ts, te, ri)
        core = rank[window] >= lo
        core &= rank[window] < lo + block
        ri, alphas, window = ri[core], alphas[core], window[core]
        within = render_transmittance_from_alpha(alphas, ray_indices=ri, n_rays=n_rays, impl=impl)
        sample_trans = trans[ri] * within
        vis = sample_trans >= early_stop_eps
        if alpha_thre > 0:
            vis &= alphas >= alpha_thre
        keep[window] = vis
        # The transmittance after each ray's last sample of the round: one product per ray.
        factor = torch.ones_like(trans).scatter_reduce_(0, ri, 1.0 - alphas, reduce="prod")
        trans = trans * factor
    return keep


def behind_object(
    model: NeuSModel,
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    bg_color: torch.Tensor,
    jitter: torch.Tensor | None,
) -> torch.Tensor:
    """(n_rays, 3) colour seen where the object lets light through: the model's background field where it
    has one (``neus2cli.model.background``; ``bg_color`` is then not used, the field is opaque), else
    ``bg_color`` (3,) or (n_rays, 3) expanded. Rays (n_rays, 3) normalized frame; ``jitter`` (n_rays,)
    stratifies the field's samples (None: midpoints)."""
    if model.background is not None:
        return model.background(rays_o, rays_d, jitter)
    return bg_color.expand(rays_o.shape[0], 3) if bg_color.dim() == 1 else bg_color


def render_rays(
    model: NeuSModel,
    estimator,
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    *,
    step_size: float,
    bg_color: torch.Tensor,
    impl: Impl,
    march_impl: MarchImpl = "torch",
    early_stop_eps: float = 1e-4,
    train: bool = False,
    cos_anneal_ratio: float = 1.0,
    alpha_thre: float = 0.0,
    max_samples: int | None = None,
    jitter: torch.Tensor | None = None,
    bg_jitter: torch.Tensor | None = None,
) -> RenderOutput:
    """Render packed rays.

    Args:
        model: the NeuS networks.
        estimator: an occupancy grid with nerfacc's ``OccGridEstimator.sampling`` API
            (nerfacc's own on the GPU path, ``TorchOccupancyGrid`` on the CPU path).
        rays_o: (n_rays, 3) origins, normalized frame.
        rays_d: (n_rays, 3) unit directions.
        step_size: marching step in normalized units.
        bg_color: (3,) or (n_rays, 3) background colour in [0, 1] (unused where the model has a
            background field, see ``behind_object``).
        impl: the compositing implementation, ``Compute.composite_impl`` ("nerfacc" or "torch").
        march_impl: the marcher, ``Compute.march_impl``: ``"triton"`` (one (ray, step)-parallel kernel)
            or ``"torch"`` (its bit-identical twin); see ``neus2cli.render.march``.
        early_stop_eps: stop a ray once its transmittance is below this.
        train: jitter samples (stratified) and keep the graph for the eikonal double backward.
        cos_anneal_ratio: NeuS cosine annealing ratio (1 = off).
        alpha_thre: drop samples whose pre-pass alpha is below this (nerfacc semantics); 0 keeps all.
        max_samples: render only the leading rays whose samples fit in this many (the rays are in
            random order, so this drops a random subset); None renders every ray.
        jitter: (n_rays,) U[0, 1) stratified offsets for ``train=True`` (default: drawn from the
            global generator).
        bg_jitter: (n_rays,) U[0, 1) offsets of the background field's samples for ``train=True``
            (default: drawn from the global generator; unused without a background field).
    """
    n_rays = rays_o.shape[0]
    inv_s = model.inv_s

    def alpha_fn(t_starts: torch.Tensor, t_ends: torch.Tensor, ray_indices: torch.Tensor) -> torch.Tensor:
        if t_starts.shape[0] == 0:
            return t_starts.clone()
        points = (
            rays_o[ri] + rays_d[ri] * ts[:, None]
            for ri, ts in zip(ray_indices.split(PREPASS_CHUNK), t_starts.split(PREPASS_CHUNK), strict=True)
        )
        sdf_parts = [model.sdf(x) for x in points]
        start_sdf = sdf_parts[0] if len(sdf_parts) == 1 else torch.cat(sdf_parts)
        return prepass_alpha(start_sdf, ray_indices, t_starts, t_ends, inv_s)

    with torch.no_grad():
        ray_indices, t_starts, t_ends = sample_along_rays(
            estimator,
            rays_o,
            rays_d,
            alpha_fn,
            step_size=step_size,
            early_stop_eps=early_stop_eps,
            alpha_thre=alpha_thre,
            stratified=train,
            impl=impl,
            march_impl=march_impl,
            jitter=jitter,
            # Renders on the CPU stop evaluating a ray once it is opaque (the same samples, fewer SDF
            # calls); training, and every CUDA path, keep the one-pass pre-pass.
            in_order_block=IN_ORDER_BLOCK if not train and rays_o.device.type == "cpu" else 0,
        )
    n_samples = int(ray_indices.shape[0])
    if max_samples is not None and n_samples > max_samples:
        # Rays are sorted: keep those before the ray holding sample number ``max_samples``.
        n_rays = int(ray_indices[max_samples])
        n_samples = int(torch.searchsorted(ray_indices, n_rays))
        ray_indices, t_starts, t_ends = ray_indices[:n_samples], t_starts[:n_samples], t_ends[:n_samples]
        rays_o, rays_d = rays_o[:n_rays], rays_d[:n_rays]
        bg_color = bg_color if bg_color.dim() == 1 else bg_color[:n_rays]
    if model.background is not None and train and bg_jitter is None:
        bg_jitter = torch.rand_like(rays_o[:, 0])
    elif not train:
        bg_jitter = None
    bg = behind_object(model, rays_o, rays_d, bg_color, None if bg_jitter is None else bg_jitter[:n_rays])
    if n_samples == 0:
        zeros = rays_o.new_zeros(n_rays)
        return RenderOutput(bg.clone(), zeros, zeros, rays_o.new_zeros(n_rays, 3), rays_o.new_zeros(0, 3), 0)

    dirs = rays_d[ray_indices]
    t_mid = (t_starts + t_ends) * 0.5
    x = rays_o[ray_indices] + dirs * t_mid[:, None]
    sdf, grad, outputs = model.sdf_and_gradient(x, create_graph=train)
    alpha = neus_alpha(sdf, grad, dirs, t_ends - t_starts, inv_s, cos_anneal_ratio)
    rgb = model.color(outputs, dirs, x, grad)

    weights, _ = render_weight_from_alpha(alpha, ray_indices=ray_indices, n_rays=n_rays, impl=impl)
    color = accumulate_along_rays(weights, rgb, ray_indices=ray_indices, n_rays=n_rays)
    opacity = accumulate_along_rays(weights, None, ray_indices=ray_indices, n_rays=n_rays).squeeze(-1)
    depth = accumulate_along_rays(weights, t_mid[:, None], ray_indices=ray_indices, n_rays=n_rays).squeeze(-1)
    unit_normal = torch.nn.functional.normalize(grad.detach() if not train else grad, dim=-1)
    normal = accumulate_along_rays(weights, unit_normal, ray_indices=ray_indices, n_rays=n_rays)
    color = color + (1.0 - opacity[:, None]) * bg
    return RenderOutput(color, opacity, depth, normal, grad, n_samples)


def render_image_rays(
    model: NeuSModel,
    estimator,
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    *,
    step_size: float,
    bg_color: torch.Tensor,
    impl: Impl,
    march_impl: MarchImpl = "torch",
    chunk: int = 4096,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 1e-4,
    on_chunk: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Render many rays in chunks without keeping graphs; ``on_chunk(rays_done, n_rays)`` after each chunk.

    Samples with alpha below ``alpha_thre`` are skipped (each would add less than that to a pixel),
    which keeps the shell of low-opacity samples around a young surface from dominating the cost.

    ``impl`` and ``march_impl`` as in ``render_rays``. Returns ``rgb`` (n, 3), ``opacity`` (n,), ``depth`` (n,),
    ``normal``
    (n, 3), detached.
    """
    parts: dict[str, list[torch.Tensor]] = {"rgb": [], "opacity": [], "depth": [], "normal": []}
    for start in range(0, rays_o.shape[0], chunk):
        out = render_rays(
            model,
            estimator,
            rays_o[start : start + chunk],
            rays_d[start : start + chunk],
            step_size=step_size,
            bg_color=bg_color,
            impl=impl,
            march_impl=march_impl,
            early_stop_eps=early_stop_eps,
            train=False,
            alpha_thre=alpha_thre,
        )
        for key in parts:
            parts[key].append(getattr(out, key).detach())
        if on_chunk is not None:
            on_chunk(min(start + chunk, rays_o.shape[0]), rays_o.shape[0])
    return {k: torch.cat(v) for k, v in parts.items()}
