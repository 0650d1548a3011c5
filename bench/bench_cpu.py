"""The CPU demo benchmark (issue #12): `neus2 train` on the bundled demo scene, as `make demo` runs it.

    python bench/bench_cpu.py [--out DIR] [--json PATH] [--step-steps 20] [--skip-demo]

Reports, on this machine:

* the demo run (a subprocess, exactly ``neus2 train`` with no scene): training seconds, total seconds
  (command start to exit), samples/s, peak RSS, CPU time (user + sys), test PSNR, and the Chamfer
  distance of ``mesh.ply`` to the bundled ground truth (``neus2 evaluate MESH --gt gt_mesh.ply``, as a
  fraction of the scene's bounding radius; F-score at 1% of it);
* a CPU training step: the median of ``--step-steps`` steps (wall and CPU ms) after 100 warm-up steps,
  at the fixed settings ``STEP_SETTINGS`` (the demo preset of 7fb7a61, so that two commits compare on
  the same work), with its samples per step;
* a CPU 128x128 render: one held-out view of the demo rendered from the demo run's checkpoint (or
  ``--render-checkpoint``), wall and CPU seconds.

The record goes to ``bench/results/<date>_cpu_demo.json`` (or ``--json``) with the machine, date,
commit and command, and the load average before and after: wall times on a shared machine are only
as good as its quiet. Only APIs that exist since 7fb7a61 are used, so that the same script measures
an older tree: ``PYTHONPATH=/tmp/old_tree python bench/bench_cpu.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the bench package beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as neus2cli sets it (older trees did not)

import torch  # noqa: E402

from bench.common import git_commit  # noqa: E402

# The CPU step is measured at these settings whatever the demo preset says (they are 7fb7a61's demo
# preset), so that the step figure of two commits measures the same work.
STEP_SETTINGS = [
    "model.n_levels=10",
    "model.log2_hashmap_size=16",
    "model.finest_resolution=512",
    "sampling.grid_resolution=48",
    "sampling.grid_warmup_steps=64",
    "sampling.grid_update_every=16",
    "sampling.step_size=0.004511",
    "sampling.target_samples=8192",
    "sampling.initial_rays=512",
    "sampling.max_rays=4096",
    "train.lr=0.01",
    "train.progressive_start_levels=4",
    "train.progressive_start_step=50",
    "train.progressive_every=25",
]
WARMUP_STEPS = 100


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine() -> dict:
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def demo_scene() -> Path:
    from data_tools import demo_scene_path

    return demo_scene_path()


def bounding_radius(scene: Path) -> float:
    info = json.loads((scene / "scene_info.json").read_text())
    return float(info["bounding_sphere"]["radius"])


def run_demo(out_dir: Path) -> dict:
    """``neus2 train --out OUT_DIR --force`` (the demo) in a subprocess: wall, CPU, peak RSS, metrics."""
    cmd = [sys.executable, "-m", "neus2cli", "train", "--out", str(out_dir), "--force"]
    before = cpu_seconds(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # ru_maxrss: the largest child so far, in KiB
    metrics = json.loads((out_dir / "metrics.json").read_text())
    return {
        "command": "neus2 train --out DIR --force",
        "total_seconds": wall,
        "cpu_seconds": cpu_seconds(resource.RUSAGE_CHILDREN) - before,
        "peak_rss_bytes": int(usage.ru_maxrss) * 1024,
        "train_seconds": metrics["train_seconds"],
        "steps": metrics["steps"],
        "samples_per_second": metrics["samples_per_second"],
        "mesh_seconds": metrics.get("mesh_seconds"),
        "psnr_test": metrics.get("psnr_test"),
        "psnr_test_masked": metrics.get("psnr_test_masked"),
        "ssim_test": metrics.get("ssim_test"),
        "output_tail": proc.stdout.strip().splitlines()[-3:],
    }


def evaluate_mesh(mesh: Path, scene: Path) -> dict:
    """``neus2 evaluate MESH --gt gt_mesh.ply --threshold 1%-of-radius --json``: Chamfer over the radius."""
    radius = bounding_radius(scene)
    tau = 0.01 * radius
    cmd = [sys.executable, "-m", "neus2cli", "evaluate", str(mesh), "--gt", str(scene / "gt_mesh.ply")]
    cmd += ["--threshold", str(tau), "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    d = json.loads(proc.stdout)
    fscore = d["fscore"][0] if isinstance(d["fscore"], list) else d["fscore"]
    return {
        "evaluate_seconds": time.perf_counter() - t0,
        "chamfer": d["chamfer"],
        "chamfer_fraction_of_radius": d["chamfer"] / radius,
        "fscore_at_1pct_radius": fscore,
        "bounding_radius": radius,
    }


def time_train_step(n_steps: int, warmup: int = WARMUP_STEPS) -> dict:
    """Median wall and CPU ms of ``n_steps`` eager CPU steps on the demo scene after ``warmup`` steps."""
    from neus2cli.compute import resolve_compute
    from neus2cli.config import resolve_config
    from neus2cli.data.images import load_images
    from neus2cli.data.loader import load_scene
    from neus2cli.train.pixels import PixelBank
    from neus2cli.train.trainer import NeuSTrainer

    cfg = resolve_config("base", STEP_SETTINGS + ["backend=torch", f"train.steps={warmup + n_steps}"])
    compute = resolve_compute("torch")
    scene = load_scene(demo_scene())
    bank = PixelBank(scene.train_views, load_images(scene.train_views, progress=False), scene.normalization, "cpu")
    trainer = NeuSTrainer(cfg, compute, bank)
    for _ in range(warmup):
        trainer.train_step()
    walls, cpus, samples = [], [], []
    for _ in range(n_steps):
        t0, c0 = time.perf_counter(), cpu_seconds()
        stats = trainer.train_step()
        walls.append((time.perf_counter() - t0) * 1e3)
        cpus.append((cpu_seconds() - c0) * 1e3)
        samples.append(int(stats.n_samples))
    return {
        "settings": STEP_SETTINGS,
        "warmup_steps": warmup,
        "steps": n_steps,
        "median_ms": statistics.median(walls),
        "median_cpu_ms": statistics.median(cpus),
        "mean_samples": statistics.mean(samples),
    }


def time_render(checkpoint: Path) -> dict:
    """Wall and CPU seconds of one 128x128 held-out view of the demo, rendered from ``checkpoint``."""
    from neus2cli.compute import resolve_compute
    from neus2cli.data.images import load_images
    from neus2cli.data.loader import load_scene
    from neus2cli.eval.images import psnr
    from neus2cli.train.checkpoint import field_from_checkpoint, load_checkpoint
    from neus2cli.train.outputs import render_views

    field = field_from_checkpoint(load_checkpoint(checkpoint), resolve_compute("torch"))
    scene = load_scene(demo_scene())
    views = scene.test_views[:1]
    images = load_images(views, progress=False)
    t0, c0 = time.perf_counter(), cpu_seconds()
    (render,) = render_views(field, views, images, scene.normalization)
    return {
        "checkpoint": str(checkpoint),
        "view": views[0].name,
        "size": [views[0].width, views[0].height],
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": cpu_seconds() - c0,
        "psnr": float(psnr(render["pred"], render["gt"])),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/neus2_bench_cpu"), help="Folder of the demo run.")
    ap.add_argument("--json", type=Path, default=None, help="Record (default bench/results/DATE_cpu_demo.json).")
    ap.add_argument("--step-steps", type=int, default=20, help="Steps timed for the CPU step figure.")
    ap.add_argument(
        "--render-checkpoint", type=Path, default=None, help="Checkpoint to render (default: the demo run's one)."
    )
    ap.add_argument("--skip-demo", action="store_true", help="Step and render figures only.")
    ap.add_argument("--label", default="", help="Free text stored in the record (e.g. 'before').")
    args = ap.parse_args(argv)

    import neus2cli

    record: dict = {
        "benchmark": "cpu_demo",
        "label": args.label,
        "machine": machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": os.environ.get("NEUS2_COMMIT") or git_commit(),
        "neus2cli": str(Path(neus2cli.__file__).resolve().parent),
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "load_average_before": load_average(),
    }
    scene = demo_scene()
    if not args.skip_demo:
        record["demo"] = run_demo(args.out)
        record["demo"].update(evaluate_mesh(args.out / "mesh.ply", scene))
        print(f"demo: {json.dumps(record['demo'], indent=1)}", flush=True)
    record["train_step"] = time_train_step(args.step_steps)
    print(f"train step: {record['train_step']['median_ms']:.1f} ms", flush=True)
    checkpoint = args.render_checkpoint or args.out / "checkpoint.pt"
    record["render_128"] = time_render(checkpoint)
    print(f"render 128x128: {record['render_128']['seconds']:.2f} s", flush=True)
    record["load_average_after"] = load_average()
    path = args.json or Path(__file__).resolve().parent / "results" / f"{record['date'][:10]}_cpu_demo.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"record: {path}")
    return record


if __name__ == "__main__":
    main()
