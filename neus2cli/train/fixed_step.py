"""The training step on fixed shapes, replayed as a CUDA graph: what the CUDA path runs.

The eager step (``NeuSTrainer._eager_step``) sizes its tensors from each batch and reads counts
back to choose the next ray count: a handful of waits on the GPU per step, and no two steps alike.
On a fast GPU that leaves the device idle most of the step while Python issues ~500 launches.
``FixedShapeStep`` renders through ``render_rays_fixed`` instead, keeps every count (the active ray
count, the samples, the batches cut) on the device and adapts the ray count there, so the whole
step (sampling, render, losses, backward, Adam, EMA) can be captured once and replayed as one
CUDA graph.

What stays outside the graph, between replays: the occupancy-grid update (every
``grid_update_every`` steps; its result is copied into ``binaries``, the buffer the graph reads),
the progressive level mask and the learning rate and annealing factors (device tensors updated in
place). The first ``WARMUP_STEPS`` steps run eagerly on a side stream (lazy initialisations, the
optimiser's state and the kernels' compilation happen there, as the CUDA-graph recipe of PyTorch's
documentation asks), then the step is captured. Where capture is off (``train.cuda_graph = false``,
a ray transform whose owner steps its own optimiser, the dynamic pose phase) the same body runs
eagerly every step; on the CPU it is the reference the tests compare with the eager step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from neus2cli.config import Config
from neus2cli.log import warn
from neus2cli.model.fields import NeuSModel
from neus2cli.render.fixed import render_rays_fixed
from neus2cli.render.renderer import NORMALIZED_CUBE
from neus2cli.train.ema import WeightEMA
from neus2cli.train.losses import color_target
from neus2cli.train.pixels import PixelBank

# Steps run eagerly before capture (PyTorch's recipe warms up on a side stream; the third step is
# the first whose optimiser state and autograd buffers all exist already).
WARMUP_STEPS = 3
# Shaded-sample slots over ``target_samples``: the ray count adapts one step late, so a batch may
# overshoot the target a little; a larger overshoot drops the last rays (see render.fixed).
SAMPLE_HEADROOM = 1.125
# Marched-sample slots as a multiple of ``target_samples``: the early-stop pre-pass keeps a fraction
# of the marched samples (all of them at the start, ~70% on DTU at step 300 on the H200: 375k
# marched for 262k kept); the ray count also adapts so that the march fills at most ``MARCH_FILL``
# of its slots. Every slot costs an SDF evaluation in the pre-pass, so the factor stays small.
MARCH_FACTOR = 2
MARCH_FILL = 0.9
# The fewest rays a batch adapts down to.
MIN_RAYS = 64


@dataclass(frozen=True)
class FixedStepStats:
    """One step's figures, all 0-d device tensors (read them only when reporting)."""

    loss: Tensor
    mse: Tensor
    n_samples: Tensor
    n_rays: Tensor
    n_marched: Tensor
    n_kept: Tensor


class FixedShapeStep:
    """One training step's body on fixed shapes, and its CUDA graph.

    Args:
        cfg: the resolved run config (sampling capacities, losses).
        model, bank, optimizer, ema, generator: the trainer's, used in place. On CUDA with capture,
            ``optimizer`` must be capturable and take its learning rate from ``lr`` (the trainer
            builds it so).
        lr: 0-d float32 device tensor, the learning rate every parameter group reads.
        grid_binaries: the occupancy grid's (rx, ry, rz) bool cells, copied into ``binaries``.
        n_rays: the first batch's active ray count.
        march_impl: ``Compute.march_impl``.
        kernel_impl: ``Compute.batch_composite_impl``: the compositing's ``impl`` (``render.composite``).
        ray_transform: as in ``NeuSTrainer``; the step is then never captured (its owner steps its
            own optimiser between steps).
        capture: replay the step as a CUDA graph after the warm-up (CUDA with the Triton marcher only).
    """

    def __init__(
        self,
        cfg: Config,
        model: NeuSModel,
        bank: PixelBank,
        optimizer: torch.optim.Optimizer,
        ema: WeightEMA,
        generator: torch.Generator,
        *,
        lr: Tensor,
        grid_binaries: Tensor,
        n_rays: int,
        march_impl: str,
        kernel_impl: str,
        ray_transform: nn.Module | None,
        capture: bool,
    ):
        s = cfg.sampling
        self.cfg = cfg
        self.model, self.bank, self.optimizer, self.ema, self.generator = model, bank, optimizer, ema, generator
        self.ray_transform = ray_transform
        self.march_impl = march_impl
        self.kernel_impl = kernel_impl
        self.device = bank.pixels.device
        self.lr = lr
        self.max_rays = s.max_rays
        self.sample_capacity = math.ceil(s.target_samples * SAMPLE_HEADROOM)
        self.march_capacity = s.target_samples * MARCH_FACTOR
        self.binaries = grid_binaries.clone()
        self.aabb = torch.tensor(NORMALIZED_CUBE, dtype=torch.float32, device=self.device)
        self.cos_anneal_ratio = torch.ones((), device=self.device)
        self.n_active = torch.tensor(min(max(n_rays, MIN_RAYS), s.max_rays), device=self.device)
        self.batches_cut = torch.zeros((), dtype=torch.int64, device=self.device)
        # Only the Triton marcher is free of host reads; tinycudann keeps one memory arena per stream
        # and grows it with a device-wide sync, so warm-up and capture share one side stream.
        self.capture = capture and self.device.type == "cuda" and ray_transform is None and march_impl == "triton"
        self._side_stream = torch.cuda.Stream(self.device) if self.capture else None
        self._eager_steps = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: FixedStepStats | None = None

    # ----------------------------------------------------------------- the body
    def body(self, *, freeze_field: bool) -> FixedStepStats:
        """Sample, render, backward and (unless ``freeze_field``) step Adam and the EMA."""
        t, s = self.cfg.train, self.cfg.sampling
        n = self.max_rays
        rays_o, rays_d, rgba = self.bank.sample(n, self.generator)
        if self.ray_transform is not None:
            rays_o, rays_d = self.ray_transform(rays_o, rays_d)
        if t.random_background:
            bg = torch.rand(n, 3, device=self.device, generator=self.generator)
        else:
            bg = torch.ones(n, 3, device=self.device)
        jitter = torch.rand(n, device=self.device, generator=self.generator)
        bg_jitter = None
        if self.model.background is not None:  # as the eager step draws it
            bg_jitter = torch.rand(n, device=self.device, generator=self.generator)
        mask = rgba[:, 3:4]
        target = color_target(rgba, bg, self.model.background is not None)
        out = render_rays_fixed(
            self.model,
            self.binaries,
            rays_o,
            rays_d,
            self.n_active,
            step_size=s.step_size,
            bg_color=bg,
            march_capacity=self.march_capacity,
            sample_capacity=self.sample_capacity,
            aabb=self.aabb,
            early_stop_eps=s.early_stop_eps,
            cos_anneal_ratio=self.cos_anneal_ratio,
            jitter=jitter,
            bg_jitter=bg_jitter,
            march_impl=self.march_impl,
            kernel_impl=self.kernel_impl,
        )
        ray_w = out.ray_valid.to(out.rgb.dtype)
        n_valid = ray_w.sum().clamp_min(1.0)
        huber = torch.nn.functional.huber_loss(out.rgb, target, delta=t.huber_delta, reduction="none")
        loss = (huber.sum(-1) * ray_w).sum() / (3.0 * n_valid)
        if not freeze_field:
            sample_w = out.sample_valid.to(out.sdf_grad.dtype)
            eikonal = ((out.sdf_grad.norm(dim=-1) - 1.0) ** 2 * sample_w).sum() / sample_w.sum().clamp_min(1.0)
            loss = loss + t.eikonal_weight * eikonal
            if t.mask_weight > 0 and self.bank.has_masks:
                bce = torch.nn.functional.binary_cross_entropy(
                    out.opacity.clamp(1e-4, 1 - 1e-4), mask[:, 0], reduction="none"
                )
                loss = loss + t.mask_weight * (bce * ray_w).sum() / n_valid
        if loss.requires_grad:
            loss.backward()
            if not freeze_field:
                self.optimizer.step()
                self.ema.update()
        with torch.no_grad():
            mse = (((out.rgb - target) ** 2).mean(-1) * ray_w).sum() / n_valid
            self._adapt_rays(out)
        return FixedStepStats(loss.detach(), mse, out.n_samples, out.n_rendered, out.n_marched, out.n_kept)

    @torch.no_grad()
    def _adapt_rays(self, out) -> None:
        """Next batch's ray count, on the device: hold ``target_samples`` shaded samples and keep
        the march within ``MARCH_FILL`` of its slots (the eager step's rule, plus the second bound)."""
        target = float(self.cfg.sampling.target_samples)
        rendered = out.n_rendered.double()
        by_samples = rendered * target / out.n_samples.clamp_min(1).double()
        by_march = self.n_active.double() * (MARCH_FILL * self.march_capacity) / out.n_marched.clamp_min(1).double()
        grow = torch.where(out.n_samples > 0, by_samples, self.n_active.double() * 2.0)
        nxt = torch.minimum(grow, by_march).clamp(MIN_RAYS, self.max_rays)
        cut = (out.n_rendered < self.n_active) | (out.n_kept > self.sample_capacity)
        self.batches_cut.add_(cut.to(torch.int64))
        self.n_active.copy_(nxt.floor().to(torch.int64))

    # ----------------------------------------------------------------- running it
    def step(self, *, freeze_field: bool, cos_anneal_ratio: float) -> FixedStepStats:
        """One training step: eager (warm-up, or capture off) or a replay of the captured graph."""
        self.cos_anneal_ratio.fill_(cos_anneal_ratio)
        if freeze_field or not self.capture:
            self.optimizer.zero_grad(set_to_none=True)
            return self.body(freeze_field=freeze_field)
        if self._graph is None and self._eager_steps >= WARMUP_STEPS:
            self._capture()
        if self._graph is None:
            self._eager_steps += 1
            return self._on_side_stream()
        self._graph.replay()
        # Copies: the next replay overwrites the graph's outputs in place.
        return FixedStepStats(*(t.clone() for t in dataclasses.astuple(self._static)))

    def reset_graph(self) -> None:
        """Forget the captured graph (the optimiser's state was replaced); warm up and capture again."""
        self._graph = None
        self._static = None
        self._eager_steps = 0

    def _on_side_stream(self) -> FixedStepStats:
        side = self._side_stream
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.optimizer.zero_grad(set_to_none=True)
            stats = self.body(freeze_field=False)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return stats

    def _capture(self) -> None:
        """Record the body once (recording runs nothing); on failure keep stepping eagerly."""
        graph = torch.cuda.CUDAGraph()
        if not hasattr(graph, "register_generator_state"):  # torch < 2.5: the batch's draws would repeat
            warn("this PyTorch cannot capture a step that draws from its own generator; the step runs eagerly.")
            self.capture = False
            return
        graph.register_generator_state(self.generator)
        self.optimizer.zero_grad(set_to_none=True)  # the graph allocates the gradients in its pool
        side = self._side_stream
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            # "relaxed": tinycudann may grow its memory arena while the step is recorded.
            with torch.cuda.graph(graph, stream=side, capture_error_mode="relaxed"):
                self._static = self.body(freeze_field=False)
        except RuntimeError as exc:
            warn(f"the training step could not be captured as a CUDA graph ({exc}); it runs eagerly.")
            self.capture = False
            self._static = None
            torch.cuda.synchronize(self.device)
            return
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._graph = graph
