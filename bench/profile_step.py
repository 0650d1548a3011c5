"""Where does a training step's time go? Times each stage of NeuS2 steps on a scene.

    python bench/profile_step.py SCENE [--config dtu] [--backend auto] [--steps 300] [--warmup 200] [--trace 20]

Stages: ray batch, occupancy update, sampling (incl. the alpha pre-pass), SDF + gradient,
colour + compositing + loss, backward, optimiser + EMA. GPU stages are timed with CUDA
events after a synchronising warm-up; numbers are medians over the timed steps.
``--trace N`` also runs N steps under ``torch.profiler`` and prints the top operators by
device and by host time, and how busy the device was (kernel time / wall time; the wall time
is the profiled one, which the profiler inflates, so compare kernel time with the untraced step
time too): a device idle much of the time means a step bound by Python and launches, not by maths.
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
    return {
        "steps": n_steps,
        "wall_ms_per_step": wall_ms,
        "kernel_ms_per_step": kernel_us / 1e3 / n_steps,
        "device_busy_fraction": (kernel_us / 1e3 / n_steps) / wall_ms if cuda else None,
        "kernels_per_step": n_kernels / n_steps,
    }


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

    # Monkey-patched stage marks: wrap the pieces train_step calls.
    import neus2cli.render.renderer as renderer_mod
    import neus2cli.train.trainer as trainer_mod

    timer = StageTimer(device)
    orig_render, orig_update = trainer_mod.render_rays, trainer.update_grid
    orig_sdf_grad = trainer.model.sdf_and_gradient
    orig_sampling = renderer_mod.sample_along_rays

    def timed_update(step, force_full=False):
        orig_update(step, force_full)
        timer.mark("occupancy update")

    def timed_sampling(*a, **k):
        timer.mark("ray batch")
        out = orig_sampling(*a, **k)
        timer.mark("sampling + alpha pre-pass")
        return out

    def timed_sdf_grad(x, create_graph):
        out = orig_sdf_grad(x, create_graph)
        timer.mark("sdf + gradient")
        return out

    def timed_render(*a, **k):
        out = orig_render(*a, **k)
        timer.mark("colour + compositing")
        return out

    trainer.update_grid = timed_update
    renderer_mod.sample_along_rays = timed_sampling
    trainer.model.sdf_and_gradient = timed_sdf_grad
    trainer_mod.render_rays = timed_render
    orig_backward = torch.Tensor.backward

    def timed_backward(self, *a, **k):
        timer.mark("loss")
        orig_backward(self, *a, **k)
        timer.mark("backward")

    torch.Tensor.backward = timed_backward
    samples, step_ms = [], []
    try:
        for _ in range(args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            s0 = time.perf_counter()
            timer.mark("start")
            stats = trainer.train_step()
            timer.mark("optimiser + EMA")
            timer.flush()
            step_ms.append((time.perf_counter() - s0) * 1e3)
            samples.append(stats.n_samples)
    finally:
        torch.Tensor.backward = orig_backward
        trainer_mod.render_rays = orig_render
        renderer_mod.sample_along_rays = orig_sampling
        del renderer_mod

    result = {
        "scene": str(args.scene),
        "backend": backend,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "warmup_steps": args.warmup,
        "warmup_seconds": warm_s,
        "median_step_ms": statistics.median(step_ms),
        "median_samples": statistics.median(samples),
        "samples_per_second": statistics.median(samples) / (statistics.median(step_ms) / 1e3),
        "stages_ms": {k: statistics.median(v) for k, v in timer.times.items()},
        "n_rays_last": trainer.n_rays,
        "trace": trace,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
