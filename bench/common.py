"""Shared benchmark plumbing: machine facts, Chamfer against ground truth, result records."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def card_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def git_commit() -> str:
    if os.environ.get("NEUS2_COMMIT"):  # machines that get the tree without .git (the GPU runner)
        return os.environ["NEUS2_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def record_header() -> dict:
    return {
        "card": card_name(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "command": command_line(),
        "torch": torch.__version__,
    }


def chamfer_fraction(pred_mesh: Path, gt_mesh: Path, radius: float, n_points: int = 200_000) -> dict:
    """Chamfer-L1, accuracy, completeness and F-score (1% of the radius) as fractions of ``radius``."""
    from neus2cli.eval.geometry import GeometryOptions, evaluate_geometry

    tau = 0.01 * radius
    metrics = evaluate_geometry(pred_mesh, gt_mesh, GeometryOptions(n_points=n_points, thresholds=[tau], clip=radius))
    d = metrics.to_dict()
    return {
        "chamfer": d["chamfer"],
        "chamfer_fraction_of_radius": d["chamfer"] / radius,
        "accuracy_fraction_of_radius": d["accuracy"] / radius,
        "completeness_fraction_of_radius": d["completeness"] / radius,
        "fscore_1pct_radius": next(iter(d["fscore"].values())),
    }


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


STATIC_ROWS = [
    ("steps", "steps"),
    ("train_seconds", "train time (s)"),
    ("steps_per_second", "steps/s"),
    ("samples_per_second", "samples/s"),
    ("peak_gpu_memory_gib", "peak GPU memory (GiB)"),
    ("mesh_seconds", "mesh extraction (s)"),
    ("wall_seconds_to_mesh", "wall time to mesh (s)"),
    ("psnr_test", "PSNR, test views (dB)"),
    ("chamfer_fraction_of_radius", "Chamfer / bounding-sphere radius"),
    ("fscore_1pct_radius", "F-score at 1% of the radius"),
]
DYNAMIC_ROWS = [
    ("first_frame_seconds", "first frame (s)"),
    ("mean_seconds_after_first", "seconds per later frame"),
    ("mean_stored_bytes_after_first", "bytes stored per later frame"),
    ("mean_chamfer_fraction_of_radius", "mean Chamfer / radius"),
    ("max_chamfer_fraction_of_radius", "worst-frame Chamfer / radius"),
    ("max_rotation_error_deg", "worst rotation error (deg)"),
    ("max_translation_error_fraction", "worst translation error / object size"),
]


def markdown_section(result: dict) -> str:
    """One BENCHMARKS.md section for a benchmark result record."""
    kind = result["benchmark"]
    rows = STATIC_ROWS if kind == "static" else DYNAMIC_ROWS
    scene = ", ".join(f"{k}={v}" for k, v in result["scene"].items())
    title = f"{kind}" + (f" ({result['mode']})" if kind == "dynamic" else "")
    lines = [
        f"### {title}: {result['card']}, {result['date']}, commit {result['commit']}",
        "",
        f"Scene: {scene}; config `{result['config']}` {' '.join('--set ' + o for o in result['overrides'])}; "
        f"backend {result['backend']}.",
        "",
        f"Command: `{result['command']}`",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {label} | {_fmt(result.get(key))} |" for key, label in rows]
    phases = result.get("mean_phase_seconds_after_first") or {}
    if phases:
        split = ", ".join(f"{name} {_fmt(sec)}" for name, sec in phases.items())
        lines += [f"| later frame, seconds by phase | {split} |"]
    if kind == "dynamic":
        motion = {m["frame"]: m for m in result.get("motion_errors") or []}
        lines += [
            "",
            "| frame | seconds | stored bytes | Chamfer / radius | rotation error (deg) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {f['index']} | {_fmt(f['seconds'])} | {f['stored_bytes']} | {_fmt(f['chamfer_fraction_of_radius'])} "
            f"| {_fmt(motion.get(f['index'], {}).get('rotation_error_deg'))} |"
            for f in result["frames"]
        ]
    return "\n".join(lines) + "\n"
