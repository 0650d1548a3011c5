"""The training engine: one NeuS2 optimisation of a model and its occupancy grid against a pixel bank.

``NeuSTrainer`` is complete when constructed (config, compute path, pixels, optionally a field to
start from) and knows nothing about runs, files or a sequence's pose phase: the static and dynamic
runs (``train.static``, ``train.dynamic``) drive it through its methods. Everything it touches lives
in the **normalized** frame.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from neus2cli.compute import Compute
from neus2cli.config import Config
from neus2cli.model.fields import NeuSModel
from neus2cli.render.neus import logistic_density
from neus2cli.render.occupancy import make_occupancy_grid
from neus2cli.render.renderer import NORMALIZED_CUBE, render_rays
from neus2cli.train.ema import WeightEMA
from neus2cli.train.fixed_step import FixedShapeStep
from neus2cli.train.losses import color_target, eikonal_loss, huber_loss, mask_bce, psnr_from_mse
from neus2cli.train.pixels import PixelBank
from neus2cli.train.progress import TrainProgress
from neus2cli.train.schedules import active_levels, lr_factor


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C (or SIGTERM, see ``neus2cli.signals``) once the run is resumable.

    Args:
        checkpoint_path: the resumable checkpoint written, or None where the interruption came before
            the first one (the run then resumes from its start).
        run_dir: the run folder to resume (default: the checkpoint's folder).
    """

    def __init__(self, checkpoint_path: Path | None, run_dir: Path | None = None):
        where = f"checkpoint saved to {checkpoint_path}" if checkpoint_path is not None else "no checkpoint yet"
        super().__init__(f"interrupted; {where}")
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        if run_dir is None and self.checkpoint_path is not None:
            run_dir = self.checkpoint_path.parent
        self.run_dir = Path(run_dir) if run_dir is not None else None


class DivergenceError(RuntimeError):
    """The loss or the parameters became non-finite, or the occupancy grid emptied."""


@dataclass
class StepStats:
    """One step's figures. ``loss`` and ``mse`` stay on the device (reading them would wait for the GPU);
    so do the counts of the fixed-shape step (0-d tensors there, ints in the eager step)."""

    loss: torch.Tensor
    mse: torch.Tensor
    n_rays: int | torch.Tensor
    n_samples: int | torch.Tensor
    n_marched: int | torch.Tensor | None = None  # fixed-shape step: samples marched, kept by the pre-pass
    n_kept: int | torch.Tensor | None = None


class NeuSTrainer:
    """Optimises a ``NeuSModel`` against a ``PixelBank``.

    Args:
        cfg: the resolved run config; ``cfg.train.steps`` is the length of the schedules.
        compute: the backend, device and compositing implementation (``neus2cli.compute``).
        bank: the training pixels, on ``compute.device``.
        init_field: a model ``state_dict`` to start from (a previous frame's field) instead of the
            geometric initialisation; the occupancy grid is then rebuilt from it before any sampling.
        learn_sharpness: False keeps the sharpness ``variance`` fixed (Adam skips it).
        ray_transform: optional module mapping (rays_o, rays_d) of the pixels' frame into the model's
            frame (a dynamic frame's rigid transform). Its gradients are left for its owner, who
            steps its optimiser (``run(..., after_step=...)``).
        fixed_shapes: step through ``FixedShapeStep`` (fixed shapes, counts on the device, a CUDA
            graph where ``cfg.train.cuda_graph``) instead of the eager step. Default: on CUDA with the
            Triton marcher (the tinycudann backend).
    """

    def __init__(
        self,
        cfg: Config,
        compute: Compute,
        bank: PixelBank,
        *,
        init_field: dict[str, torch.Tensor] | None = None,
        learn_sharpness: bool = True,
        ray_transform: nn.Module | None = None,
        fixed_shapes: bool | None = None,
    ):
        self.cfg = cfg
        self.compute = compute
        self.device = compute.device
        self.bank = bank
        self.ray_transform = ray_transform
        self.model = NeuSModel(cfg.model, compute)
        self.grid = make_occupancy_grid(compute, NORMALIZED_CUBE, cfg.sampling.grid_resolution)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(cfg.train.seed)
        if init_field is not None:
            self.model.load_state_dict(init_field)
        self.model.variance.requires_grad_(learn_sharpness)  # Adam skips parameters without grads
        self.step = 0
        self.total_steps = cfg.train.steps
        self.n_rays = cfg.sampling.initial_rays
        self.freeze_field = False  # set only by field_frozen()
        self._batches_cut = 0  # the eager step's count (see ``batches_cut``)
        self._prior_batches_cut = 0  # counted by the segments before a resume
        # Totals over every ``run`` of this engine and the segments before a resume (``state_dict``), so
        # that a resumed run reports its whole training, not only its last segment.
        self.train_seconds = 0.0
        self.samples_seen = 0
        self.train_psnr = math.nan  # mean training PSNR over the last log window
        self._active_levels = -1
        self._trained_leaves: list[torch.Tensor] | None = None  # see _backward_inputs
        t = cfg.train
        groups = [
            {"params": self.model.encoding_params(), "weight_decay": 0.0},
            {"params": self.model.mlp_weights(), "weight_decay": t.weight_decay},
            {"params": [self.model.variance], "weight_decay": 0.0},
        ]
        on_cuda = self.device.type == "cuda"
        # The fixed shapes pay off where the step can be captured: CUDA with the Triton marcher (the
        # torch twin marches every ray slot densely and reads counts back anyway).
        fixed_shapes = (on_cuda and compute.march_impl == "triton") if fixed_shapes is None else fixed_shapes
        capture = fixed_shapes and on_cuda and t.cuda_graph and compute.march_impl == "triton"
        # A captured step reads the learning rate from one device tensor that every group shares.
        self._lr = torch.tensor(t.lr, dtype=torch.float32, device=self.device) if capture else None
        # Fused on CUDA: one kernel for every parameter instead of a handful per tensor.
        self.optimizer = torch.optim.Adam(
            groups,
            lr=self._lr if capture else t.lr,
            betas=(t.adam_beta1, t.adam_beta2),
            eps=t.adam_eps,
            fused=on_cuda,
            capturable=capture,
        )
        self.ema = WeightEMA(self.model, t.ema_decay)
        self.fixed_step = (
            FixedShapeStep(
                cfg,
                self.model,
                bank,
                self.optimizer,
                self.ema,
                self.generator,
                lr=self._lr,
                grid_binaries=self.grid.binaries[0],
                n_rays=self.n_rays,
                march_impl=compute.march_impl,
                kernel_impl=compute.batch_composite_impl,
                ray_transform=ray_transform,
                capture=capture,
            )
            if fixed_shapes
            else None
        )
        if init_field is not None:
            self.update_grid(0, force_full=True)

    @contextlib.contextmanager
    def field_frozen(self) -> Iterator[None]:
        """Steps inside train only what ``ray_transform`` exposes: no field update, no grid update, all
        levels on, colour loss only. They do not count: ``step`` is back to its entry value afterwards,
        so the field's schedules start where they were."""
        entry_step = self.step
        self.freeze_field = True
        try:
            yield
        finally:
            self.freeze_field = False
            self.step = entry_step

    # ----------------------------------------------------------------- one step
    @torch.no_grad()
    def occupancy_fn(self, x: torch.Tensor) -> torch.Tensor:
        """(M, 3) normalized points -> (M,) logistic density of the SDF."""
        return logistic_density(self.model.sdf(x), self.model.inv_s)

    def update_grid(self, step: int, force_full: bool = False) -> None:
        s = self.cfg.sampling
        warmup = 10**9 if force_full else s.grid_warmup_steps
        self.grid.update_every_n_steps(
            step=step,
            occ_eval_fn=self.occupancy_fn,
            occ_thre=s.grid_threshold,
            ema_decay=s.grid_ema_decay,
            warmup_steps=warmup,
            n=1 if force_full else s.grid_update_every,
        )

    def _apply_schedules(self) -> None:
        t = self.cfg.train
        if self.freeze_field:
            levels = self.cfg.model.n_levels
        else:
            levels = active_levels(
                self.step,
                self.cfg.model.n_levels,
                t.progressive_start_levels,
                t.progressive_start_step,
                t.progressive_every,
            )
        if levels != self._active_levels:  # the mask lives on the device: touch it only on change
            self.model.sdf_net.set_active_levels(levels)
            self._active_levels = levels
        factor = lr_factor(self.step, self.total_steps, t.lr_decay_start, t.lr_final_factor)
        if self._lr is not None:
            self._lr.fill_(t.lr * factor)  # in place: the captured step reads this tensor
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = t.lr * factor

    def _cos_anneal_ratio(self) -> float:
        t = self.cfg.train
        return min(1.0, self.step / t.cos_anneal_steps) if t.cos_anneal_steps > 0 else 1.0

    @property
    def batches_cut(self) -> int:
        """Batches a sample budget cut (see ``SamplingConfig.max_samples_factor``, ``render.fixed``)."""
        if self.fixed_step is not None:
            return self._prior_batches_cut + int(self.fixed_step.batches_cut)
        return self._prior_batches_cut + self._batches_cut

    def train_step(self) -> StepStats:
        self._apply_schedules()
        self.model.train()
        if not self.freeze_field:
            self.update_grid(self.step)
        if self.fixed_step is None:
            stats = self._eager_step()
        else:
            self.fixed_step.binaries.copy_(self.grid.binaries[0])
            out = self.fixed_step.step(freeze_field=self.freeze_field, cos_anneal_ratio=self._cos_anneal_ratio())
            stats = StepStats(out.loss, out.mse, out.n_rays, out.n_samples, out.n_marched, out.n_kept)
        self.step += 1
        return stats

    def _eager_step(self) -> StepStats:
        """The step with shapes sized from each batch (the CPU path, and the reference of the fixed one)."""
        t, s = self.cfg.train, self.cfg.sampling
        rays_o, rays_d, rgba = self.bank.sample(self.n_rays, self.generator)
        if self.ray_transform is not None:
            rays_o, rays_d = self.ray_transform(rays_o, rays_d)
        n = rays_o.shape[0]
        if t.random_background:
            bg = torch.rand(n, 3, device=self.device, generator=self.generator)
        else:
            bg = torch.ones(n, 3, device=self.device)
        jitter = torch.rand(n, device=self.device, generator=self.generator)  # as FixedShapeStep draws it
        bg_jitter = None
        if self.model.background is not None:  # drawn only with one, so runs without keep their draws
            bg_jitter = torch.rand(n, device=self.device, generator=self.generator)
        mask = rgba[:, 3:4]
        target = color_target(rgba, bg, self.model.background is not None)
        cos_ratio = self._cos_anneal_ratio()
        out = render_rays(
            self.model,
            self.grid,
            rays_o,
            rays_d,
            step_size=s.step_size,
            bg_color=bg,
            impl=self.compute.composite_impl,
            march_impl=self.compute.march_impl,
            early_stop_eps=s.early_stop_eps,
            train=True,
            cos_anneal_ratio=cos_ratio,
            max_samples=s.max_samples_factor * s.target_samples,
            jitter=jitter,
            bg_jitter=bg_jitter,
        )
        if out.rgb.shape[0] < n:  # the sample budget cut the batch
            n = out.rgb.shape[0]
            target, mask = target[:n], mask[:n]
            self._batches_cut += 1
        rgb_loss = huber_loss(out.rgb, target, t.huber_delta)
        loss = rgb_loss
        if not self.freeze_field:
            loss = loss + t.eikonal_weight * eikonal_loss(out.sdf_grad)
            if t.mask_weight > 0 and self.bank.has_masks:
                loss = loss + t.mask_weight * mask_bce(out.opacity, mask[:, 0])
        if loss.requires_grad:
            self.optimizer.zero_grad(set_to_none=True)
            # Only into what is trained (the field and ray_transform's parameters): a plain backward()
            # would also fill the gradient of every leaf on the way, such as the sample positions the
            # SDF gradient was taken at (a second-order pass through the hash grid, thrown away).
            loss.backward(inputs=self._backward_inputs(loss))
            if not self.freeze_field:
                self.optimizer.step()
                self.ema.update()
        mse = ((out.rgb.detach() - target) ** 2).mean()
        if out.n_samples > 0:
            self.n_rays = int(min(s.max_rays, max(64, n * s.target_samples / out.n_samples)))
        else:
            self.n_rays = min(s.max_rays, self.n_rays * 2)
        return StepStats(loss.detach(), mse, n, out.n_samples)

    def _backward_inputs(self, loss: torch.Tensor) -> list[torch.Tensor]:
        """The leaves the eager step's backward fills: the optimiser's parameters and ray_transform's."""
        if self._trained_leaves is None:
            leaves = [p for group in self.optimizer.param_groups for p in group["params"]]
            if self.ray_transform is not None:
                leaves += list(self.ray_transform.parameters())
            self._trained_leaves = leaves
        # backward(inputs=...) refuses leaves the loss does not reach: the frozen sharpness, or the field
        # during a pose-only phase, has requires_grad False (or no path) and is left out.
        return [p for p in self._trained_leaves if p.requires_grad]

    # ----------------------------------------------------------------- loops
    def run(
        self,
        until_step: int,
        *,
        description: str = "training",
        progress: bool = True,
        on_checkpoint: Callable[[NeuSTrainer], object] | None = None,
        after_step: Callable[[NeuSTrainer], None] | None = None,
    ) -> dict:
        """Train until ``self.step == until_step``; returns timing figures.

        ``after_step(trainer)`` runs after every step (the gradients of ``ray_transform`` are then
        fresh). ``on_checkpoint(trainer)`` is called every ``checkpoint_every`` steps and on Ctrl-C
        (then ``TrainingInterrupted`` is raised with its return value). ``train_seconds``,
        ``samples_seen`` and ``train_psnr`` are brought up to date before every ``on_checkpoint``.
        """
        t = self.cfg.train
        start_step = self.step
        samples = 0
        t0 = time.perf_counter()
        seconds_before, samples_before = self.train_seconds, self.samples_seen

        def account() -> None:
            self.train_seconds = seconds_before + (time.perf_counter() - t0)
            self.samples_seen = samples_before + int(samples)

        window_t, window_samples = t0, 0
        loss_sum = mse_sum = None
        window_steps = 0
        loss_avg = psnr_avg = math.nan
        with TrainProgress(until_step, description, enabled=progress) as bar:
            bar.advance_to(self.step)
            try:
                while self.step < until_step:
                    stats = self.train_step()
                    if after_step is not None:
                        after_step(self)
                    samples += stats.n_samples
                    window_samples += stats.n_samples
                    # Summed on the device; read (one sync) only when the bar is refreshed.
                    loss_sum = stats.loss if loss_sum is None else loss_sum + stats.loss
                    mse_sum = stats.mse if mse_sum is None else mse_sum + stats.mse
                    window_steps += 1
                    # Every log_every steps, and whenever the figures on show are a few seconds old
                    # (slow steps: the bar must not sit at an old count for minutes).
                    if self.step % t.log_every == 0 or self.step == until_step or bar.due():
                        loss_avg = float(loss_sum) / window_steps
                        psnr_avg = psnr_from_mse(float(mse_sum) / window_steps)
                        now = time.perf_counter()
                        rate = float(window_samples) / max(now - window_t, 1e-9)
                        window_t, window_samples, window_steps = now, 0, 0
                        loss_sum = mse_sum = None
                        bar.update(self.step, loss=loss_avg, psnr=psnr_avg, samples_per_s=rate)
                        self.train_psnr = psnr_avg
                        if not math.isfinite(loss_avg):
                            raise DivergenceError(f"non-finite loss before step {self.step}")
                        self.check_health()
                    else:
                        bar.update(self.step)  # the count only (cheap)
                    if on_checkpoint is not None and t.checkpoint_every > 0 and self.step % t.checkpoint_every == 0:
                        account()
                        on_checkpoint(self)
            except KeyboardInterrupt:
                account()
                path = on_checkpoint(self) if on_checkpoint is not None else None
                raise TrainingInterrupted(path) from None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        account()
        seconds = time.perf_counter() - t0
        steps = self.step - start_step
        return {
            "steps": steps,
            "seconds": seconds,
            "steps_per_second": steps / max(seconds, 1e-9),
            "samples_per_second": float(samples) / max(seconds, 1e-9),
            "final_loss": loss_avg,
            "final_train_psnr": psnr_avg,
            "batches_cut": self.batches_cut,
        }

    def check_health(self) -> None:
        """Raise ``DivergenceError`` on NaN parameters or an empty occupancy grid."""
        for name, p in self.model.named_parameters():
            if not torch.isfinite(p).all():
                raise DivergenceError(f"parameter {name} became non-finite at step {self.step}")
        if self.step > self.cfg.sampling.grid_warmup_steps and not bool(self.grid.binaries.any()):
            raise DivergenceError(f"the occupancy grid is empty at step {self.step}")

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "n_rays": self.n_rays if self.fixed_step is None else int(self.fixed_step.n_active),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "grid": self.grid.state_dict(),
            "generator": self.generator.get_state(),
            "train_seconds": self.train_seconds,
            "samples_seen": self.samples_seen,
            "train_psnr": self.train_psnr,
            "batches_cut": self.batches_cut,
        }

    def load_state_dict(self, state: dict, *, optimizer: bool = True) -> None:
        self.model.load_state_dict(state["model"])
        self.grid.load_state_dict(state["grid"])
        self.step = int(state["step"])
        self.n_rays = int(state.get("n_rays", self.n_rays))
        # Checkpoints written before these totals existed count from zero.
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.samples_seen = int(state.get("samples_seen", 0))
        self.train_psnr = float(state.get("train_psnr", math.nan))
        self._prior_batches_cut = int(state.get("batches_cut", 0))
        if self.fixed_step is not None:
            self.fixed_step.n_active.fill_(min(max(self.n_rays, 64), self.cfg.sampling.max_rays))
        if optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.fixed_step is not None:  # the optimiser's state tensors are new: capture again
                self.fixed_step.reset_graph()
            if self._lr is not None:  # the loaded groups carry their own lr: point them back at ours
                for group in self.optimizer.param_groups:
                    group["lr"] = self._lr
            self.ema.load_state_dict(state["ema"])
            if "generator" in state:
                self.generator.set_state(state["generator"].cpu())
