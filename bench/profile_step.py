"""Where does a training step's time go? Times NeuS2 steps on a scene.

    python bench/profile_step.py SCENE [--config dtu] [--backend auto] [--steps 300] [--warmup 300] [--trace 20]

Reports the median step (each step waited for), the mean step issued back to back (as the training
loop issues them), the host syncs per step (PyTorch's sync debug mode; CUDA), and each stage's
median time from CUDA events between the stages: ray batch, march, pre-pass + compaction, SDF +
gradient, colour + compositing, loss, backward, optimiser + EMA, occupancy update. The stage marks
need the step's Python, so on CUDA they time the eager body of the fixed-shape step (the kernels
the captured graph replays, plus their launch gaps). ``--trace N`` also runs N steps under
``torch.profiler`` and prints the top operators by device and by host time, the kernel launches per
step and how busy the device was (kernel time / profiled wall time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from neus2cli.compute import resolve_compute
from neus2cli.config import resolve_config
from neus2cli.data.images import load_images
from neus2cli.data.loader import load_scene
from neus2cli.train.pixels import PixelBank
from neus2cli.train.trainer import NeuSTrainer


class StageTimer:
    def __init__(self, device: torch.device):
        self.device = device
        self.times: dict[str, list[float]] = {}
        self._marks: list[tuple[str, object]] = []

    def mark(self, name: str) -> None:
        if self.device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._marks.append((name, ev))
        else:
            self._marks.append((name, time.perf_counter()))

    def flush(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        for (_, a), (name, b) in zip(self._marks, self._marks[1:], strict=False):
            ms = a.elapsed_time(b) if self.device.type == "cuda" else (b - a) * 1e3
            self.times.setdefault(name, []).append(ms)
        self._marks = []


def trace_steps(trainer: NeuSTrainer, n_steps: int, top: int = 25) -> dict:
    """Run ``n_steps`` under torch.profiler; print operator tables, return the device-busy figures."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(n_steps):
            trainer.train_step()
        if cuda:
            torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) * 1e3 / n_steps
    events = prof.key_averages()
    device_key = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(events.table(sort_by=device_key, row_limit=top, max_name_column_width=60))
    print(events.table(sort_by="cpu_time_total", row_limit=top, max_name_column_width=60))
    # Device-side rows only (kineto also reports device time on the host operators that launched them).
    kernels = [e for e in events if cuda and e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    kernel_us = sum(e.self_device_time_total for e in kernels)
    n_kernels = sum(e.count for e in kernels)
    by_time = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:40]
    return {
        "steps": n_steps,
        "top_kernels": [
            {
                "name": e.key[:120],
                "per_step": e.count / n_steps,
                "ms_per_step": e.self_device_time_total / 1e3 / n_steps,
            }
            for e in by_time
        ],
        "wall_ms_per_step": wall_ms,
        "kernel_ms_per_step": kernel_us / 1e3 / n_steps,
        "device_busy_fraction": (kernel_us / 1e3 / n_steps) / wall_ms if cuda else None,
        "kernels_per_step": n_kernels / n_steps,
    }


def timed_steps(trainer: NeuSTrainer, n_steps: int) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """Per-step wall time (ms, each step waited for), samples shaded, and the fixed step's counts."""
    cuda = trainer.device.type == "cuda"
    step_ms, samples, counts = [], [], {"rays": [], "marched": [], "kept": []}
    for _ in range(n_steps):
        if cuda:
            torch.cuda.synchronize()
        s0 = time.perf_counter()
        stats = trainer.train_step()
        if cuda:
            torch.cuda.synchronize()
        step_ms.append((time.perf_counter() - s0) * 1e3)
        samples.append(float(stats.n_samples))
        if stats.n_marched is not None:
            for key, value in (("rays", stats.n_rays), ("marched", stats.n_marched), ("kept", stats.n_kept)):
                counts[key].append(float(value))
    return step_ms, samples, counts


def back_to_back_step_ms(trainer: NeuSTrainer, n_steps: int) -> float:
    """Mean ms per step over steps issued back to back, as the training loop issues them."""
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    s0 = time.perf_counter()
    for _ in range(n_steps):
        trainer.train_step()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - s0) * 1e3 / n_steps


def count_host_syncs(trainer: NeuSTrainer, n_steps: int) -> float:
    """Waits on the GPU per step, as PyTorch's sync debug mode reports them (grid updates included)."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(n_steps):
                trainer.train_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught) / n_steps


class _Patched:
    """Replace attributes for a while (the stage marks), restoring them on exit."""

    def __init__(self, *patches: tuple[object, str, object]):
        self.patches = patches
        self.saved: list[tuple[object, str, object]] = []

    def __enter__(self):
        for obj, name, value in self.patches:
            self.saved.append((obj, name, getattr(obj, name)))
            setattr(obj, name, value)

    def __exit__(self, *exc):
        for obj, name, value in reversed(self.saved):
            setattr(obj, name, value)


def stage_times(trainer: NeuSTrainer, n_steps: int) -> dict[str, float]:
    """Median ms of each stage of the step, timed with events between the stages.

    The marks need the step's Python to run, so a captured step is timed through its eager body
    (``FixedShapeStep.body``, the very kernels the graph replays, plus their launch gaps).
    """
    import neus2cli.render.fixed as fixed_mod
    import neus2cli.train.fixed_step as fixed_step_mod
    import neus2cli.train.trainer as trainer_mod

    timer = StageTimer(trainer.device)
    model = trainer.model

    def wrap(fn, before: str | None, after: str | None):
        def timed(*a, **k):
            if before:
                timer.mark(before)
            out = fn(*a, **k)
            if after:
                timer.mark(after)
            return out

        return timed

    orig_backward = torch.Tensor.backward

    def timed_backward(self, *a, **k):
        timer.mark("loss")
        orig_backward(self, *a, **k)
        timer.mark("backward")

    if trainer.fixed_step is not None:
        patches = [
            (fixed_mod, "march_window", wrap(fixed_mod.march_window, "ray batch", None)),
            (fixed_mod, "march_rays_capped", wrap(fixed_mod.march_rays_capped, None, "march")),
            (model, "sdf_and_gradient", wrap(model.sdf_and_gradient, "pre-pass + compaction", "sdf + gradient")),
            (fixed_step_mod, "render_rays_fixed", wrap(fixed_step_mod.render_rays_fixed, None, "colour + compositing")),
        ]
        capture = trainer.fixed_step.capture
        trainer.fixed_step.capture = False  # the eager body, on the same state
    else:
        import neus2cli.render.renderer as renderer_mod

        patches = [
            (renderer_mod, "sample_along_rays", wrap(renderer_mod.sample_along_rays, "ray batch", "sampling")),
            (model, "sdf_and_gradient", wrap(model.sdf_and_gradient, None, "sdf + gradient")),
            (trainer_mod, "render_rays", wrap(trainer_mod.render_rays, None, "colour + compositing")),
        ]
        capture = None
    patches.append((trainer, "update_grid", wrap(trainer.update_grid, None, "occupancy update")))
    patches.append((torch.Tensor, "backward", timed_backward))
    try:
        with _Patched(*patches):
            for _ in range(n_steps):
                if trainer.device.type == "cuda":
                    torch.cuda.synchronize()
                timer.mark("start")
                trainer.train_step()
                timer.mark("optimiser + EMA")
                timer.flush()
    finally:
        if capture is not None:
            trainer.fixed_step.capture = capture
    return {k: statistics.median(v) for k, v in timer.times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scene", type=Path)
    ap.add_argument("--config", default="dtu")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--trace", type=int, default=0, help="profile this many steps with torch.profiler")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    cfg = resolve_config(args.config, args.overrides, backend=args.backend)
    compute = resolve_compute(cfg.backend)
    backend, device = compute.backend, compute.device
    scene = load_scene(args.scene)
    images = load_images(scene.train_views, progress=False)
    trainer = NeuSTrainer(cfg, compute, PixelBank(scene.train_views, images, scene.normalization, device))

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        trainer.train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0

    trace = trace_steps(trainer, args.trace) if args.trace > 0 else None

    syncs = count_host_syncs(trainer, 20) if device.type == "cuda" else None
    step_ms, samples, counts = timed_steps(trainer, args.steps)
    back_to_back_ms = back_to_back_step_ms(trainer, args.steps)
    stages = stage_times(trainer, min(args.steps, 100))

    result = {
        "scene": str(args.scene),
        "backend": backend,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "cuda_graph": trainer.fixed_step is not None and trainer.fixed_step._graph is not None,
        "warmup_steps": args.warmup,
        "warmup_seconds": warm_s,
        "median_step_ms": statistics.median(step_ms),
        "back_to_back_step_ms": back_to_back_ms,
        "median_samples": statistics.median(samples),
        "samples_per_second": statistics.median(samples) / (statistics.median(step_ms) / 1e3),
        "host_syncs_per_step": syncs,
        "median_counts": {k: statistics.median(v) for k, v in counts.items() if v},
        "stages_ms": stages,
        "trace": trace,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
