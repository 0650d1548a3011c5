"""Render a training batch with fixed shapes and no read back to the host (the CUDA training step).

``render_rays`` sizes every tensor from what the march found, so each step waits on the GPU a few
times and no two steps have the same shapes. ``render_rays_fixed`` renders the same thing into
capacities fixed up front, with every count kept on the device, so that a whole training step can
be captured once as a CUDA graph and replayed (``neus2cli.train.trainer``):

1. Rays ``>= n_active`` (a 0-d device tensor: the ray count adapts without a host read) get an
   empty window; the march (``march_rays_capped``) fills ``march_capacity`` slots.
2. The early-stop pre-pass evaluates the SDF at every slot (``prepass_alpha``), the transmittance
   comes from ``transmittance_sorted``; samples with ``T >= early_stop_eps`` are kept.
3. The kept samples are compacted, in order, into ``sample_capacity`` slots (a prefix sum and a
   scatter) and shaded with gradients, as in ``render_rays``.

Where a capacity cuts a batch, every ray from the first one that lost a sample on is dropped (the
rays are in random order, so this drops a random subset, as ``render_rays(max_samples=...)`` does);
``ray_valid`` marks the rays rendered in full. Padding samples carry ``ray_indices = n_rays`` and
zero alpha; their points repeat the valid samples' (the cube's centre in the pre-pass), so the
networks see ordinary inputs and the hash grid's backward no atomic hot spot.

Frames as in ``neus2cli.render.renderer``: normalized unit cube, unit directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from neus2cli.model.fields import NeuSModel
from neus2cli.render.composite import Impl as KernelImpl
from neus2cli.render.composite import composite_neus
from neus2cli.render.march import Impl as MarchImpl
from neus2cli.render.march import march_rays_capped, march_window
from neus2cli.render.renderer import NORMALIZED_CUBE, behind_object, prepass_alpha
from neus2cli.render.volrend import transmittance_sorted


@dataclass(frozen=True)
class FixedRenderOutput:
    """A fixed-shape batch: R rays, S sample slots; counts are 0-d int64 device tensors.

    Attributes:
        rgb: (R, 3) colour composited over the background (background alone for rays not rendered).
        opacity: (R,) accumulated weight.
        ray_valid: (R,) bool, the ray was active and rendered in full (the losses' rays).
        sdf_grad: (S, 3) SDF gradient at every slot (for the eikonal loss).
        sample_valid: (S,) bool, the slot holds a sample of a valid ray.
        n_samples: samples shaded (valid slots).
        n_marched: samples the full march of the active rays has (may exceed ``march_capacity``).
        n_rendered: number of valid rays (they are the leading ones).
        n_kept: samples the pre-pass kept among the marched ones that fit (may exceed ``sample_capacity``).
    """

    rgb: Tensor
    opacity: Tensor
    ray_valid: Tensor
    sdf_grad: Tensor
    sample_valid: Tensor
    n_samples: Tensor
    n_marched: Tensor
    n_rendered: Tensor
    n_kept: Tensor


def _first_cut_ray(ray_indices: Tensor, count: Tensor, capacity: int, n_rays: int) -> Tensor:
    """The first ray that may have lost samples to ``capacity`` (``n_rays`` when nothing was cut)."""
    if capacity == 0:
        return torch.zeros((), dtype=torch.int64, device=ray_indices.device)
    return torch.where(count > capacity, ray_indices[capacity - 1], n_rays)


def render_rays_fixed(
    model: NeuSModel,
    binaries: Tensor,
    rays_o: Tensor,
    rays_d: Tensor,
    n_active: Tensor,
    *,
    step_size: float,
    bg_color: Tensor,
    march_capacity: int,
    sample_capacity: int,
    aabb: Tensor,
    early_stop_eps: float = 1e-4,
    cos_anneal_ratio: Tensor | float = 1.0,
    jitter: Tensor | None = None,
    bg_jitter: Tensor | None = None,
    march_impl: MarchImpl = "torch",
    kernel_impl: KernelImpl = "torch",
    create_graph: bool = True,
) -> FixedRenderOutput:
    """Render R rays into fixed capacities (module docstring), for training.

    Args:
        model: the NeuS networks.
        binaries: (rx, ry, rz) bool occupancy over ``NORMALIZED_CUBE`` (read in place: a captured
            step sees updates copied into it).
        rays_o: (R, 3) origins, normalized frame.
        rays_d: (R, 3) unit directions.
        n_active: 0-d int64 device tensor, how many of the leading rays to render.
        step_size: marching step in normalized units.
        bg_color: (R, 3) background colour in [0, 1] (unused where the model has a background field:
            its fixed ``background_samples`` per ray keep the shapes fixed, see ``behind_object``).
        march_capacity: slots for marched samples (M).
        sample_capacity: slots for shaded samples (S).
        aabb: (6,) ``NORMALIZED_CUBE`` as a float32 tensor on the rays' device (so the ray-box test
            copies nothing from the host).
        early_stop_eps: keep samples whose pre-pass transmittance is at least this.
        cos_anneal_ratio: NeuS cosine annealing ratio, a float or a 0-d device tensor.
        jitter: (R,) U[0, 1) stratified offsets of the step grid, or None.
        bg_jitter: (R,) U[0, 1) offsets of the background field's samples, or None (midpoints).
        march_impl: ``Compute.march_impl``; only ``"triton"`` is free of host reads.
        kernel_impl: ``Compute.batch_composite_impl``, the compositing after the networks
            (``render.composite.composite_neus``): ``"triton"`` fuses it into two kernels.
        create_graph: keep the gradient's graph for the eikonal double backward.
    """
    n_rays = rays_o.shape[0]
    device = rays_o.device
    if bg_color.shape != (n_rays, 3):
        raise ValueError(f"bg_color must have shape ({n_rays}, 3), got {tuple(bg_color.shape)}")
    if march_capacity < 1 or sample_capacity < 1:
        raise ValueError(f"capacities must be >= 1, got march {march_capacity}, samples {sample_capacity}")
    inv_s = model.inv_s
    ray_ids = torch.arange(n_rays, device=device)

    with torch.no_grad():
        t_start, t_lo, t_hi = march_window(rays_o, rays_d, aabb, step_size, jitter=jitter)
        t_hi = torch.where(ray_ids < n_active, t_hi, t_lo)  # inactive rays: empty window
        ray_indices, t_starts, t_ends, n_marched = march_rays_capped(
            rays_o, rays_d, t_start, t_lo, t_hi, binaries, NORMALIZED_CUBE, step_size, march_capacity, impl=march_impl
        )
        cut_march = _first_cut_ray(ray_indices, n_marched, march_capacity, n_rays)
        marched = ray_indices < cut_march
        ray_indices = torch.where(marched, ray_indices, n_rays)

        # Pre-pass: alpha from the SDF at section starts, transmittance, early stop.
        safe = ray_indices.clamp_max(n_rays - 1)
        starts = torch.where(marched[:, None], rays_o[safe] + rays_d[safe] * t_starts[:, None], 0.5)
        alpha = prepass_alpha(model.sdf(starts), ray_indices, t_starts, t_ends, inv_s)
        alpha = torch.where(marched, alpha, 0.0)
        keep = marched & (transmittance_sorted(alpha, ray_indices) >= early_stop_eps)

        # Compaction, order kept: slot = number of kept samples before; overflow goes to a trash slot.
        position = torch.cumsum(keep, 0) - 1
        n_kept = position[-1] + 1
        slot = torch.where(keep & (position < sample_capacity), position, sample_capacity)
        source = torch.full((sample_capacity + 1,), march_capacity, dtype=torch.int64, device=device)
        source.scatter_(0, slot, torch.arange(march_capacity, device=device))
        source = source[:sample_capacity]
        pad = ray_indices.new_full((1,), n_rays)
        ray_indices = torch.cat([ray_indices, pad])[source]
        zero = t_starts.new_zeros(1)
        t_starts, t_ends = torch.cat([t_starts, zero])[source], torch.cat([t_ends, zero])[source]
        cut_kept = _first_cut_ray(ray_indices, n_kept, sample_capacity, n_rays)
        sample_valid = ray_indices < cut_kept
        ray_indices = torch.where(sample_valid, ray_indices, n_rays)
        n_rendered = torch.minimum(torch.minimum(cut_march, cut_kept), n_active)
        ray_valid = ray_ids < n_rendered
        n_samples = sample_valid.sum()

    safe = ray_indices.clamp_max(n_rays - 1)
    dirs = rays_d[safe]
    t_mid = (t_starts + t_ends) * 0.5
    x = rays_o[safe] + dirs * t_mid[:, None]
    # Padding slots repeat the valid samples' points (the valid slots lead): the hash grid's backward
    # adds a zero for each at scattered cells, where one shared point would serialise its atomics.
    x = torch.where(sample_valid[:, None], x, x[torch.arange(sample_capacity, device=device) % n_samples.clamp_min(1)])
    sdf, grad, outputs = model.sdf_and_gradient(x, create_graph=create_graph)
    # A view of grad made before the colour network: autograd then adds grad's incoming gradients in
    # the order it did when alpha was computed here, before composite_neus (same CPU gradients, bit for bit).
    grad_alpha = grad.view_as(grad)
    rgb = model.color(outputs, dirs, x, grad)
    background = behind_object(model, rays_o, rays_d, bg_color, bg_jitter)
    color, opacity = composite_neus(
        sdf, grad_alpha, dirs, t_ends - t_starts, rgb, sample_valid, ray_indices, n_rays, inv_s, cos_anneal_ratio,
        background, impl=kernel_impl,
    )  # fmt: skip
    return FixedRenderOutput(
        rgb=color,
        opacity=opacity,
        ray_valid=ray_valid,
        sdf_grad=grad,
        sample_valid=sample_valid,
        n_samples=n_samples,
        n_marched=n_marched,
        n_rendered=n_rendered,
        n_kept=n_kept,
    )
