"""Dynamic benchmark: a generated multi-view sequence with motion and deformation.

    python bench/bench_dynamic.py --mesh ../shared/data/meshes/bob/bob_tri.obj \
        [--frames 20 --views 12 --size 1024x768 --mode incremental] [--select 0:20:4] --out /tmp/bench_dynamic

Reports seconds per frame (first frame separately), Chamfer per frame against the true
mesh (fraction of the bounding-sphere radius), bytes stored per frame, and the recovered
rigid motion against the generator's. Runs of both modes on one ``--out`` share the generated
sequence; ``--select`` trains a subset of its frames (e.g. per-frame mode on every fourth frame,
for comparison with an incremental run of all of them).

``--ranks N`` trains under ``torchrun --standalone --nproc-per-node N`` (``neus2 train-dynamic`` in N
processes, the sequence cut into chunks, see the README), e.g. 1, 2 and 4 ranks on one GPU::

    for n in 1 2 4; do python bench/bench_dynamic.py --mesh ... --out /tmp/bench_dynamic --ranks $n; done

and records the total wall time of training (``wall_seconds``, process start-up included for N > 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, chamfer_fraction, record_header, write_json  # noqa: E402


def motion_errors(run_dir: Path, scene_dir: Path, object_size: float) -> list[dict]:
    """Rotation (degrees) and translation (fraction of object size) errors of world_to_canonical per frame.

    The truth is the motion from frame k into its chunk's canonical frame r (frame 0 without chunks):
    ``F_r @ F_k^-1``, with ``F`` the generator's canonical -> frame world matrices.
    """
    from neus2cli.train.rigid import rotation_angle_deg

    motion = json.loads((scene_dir / "gt" / "motion.json").read_text())
    world_from_canonical = {int(f["index"]): np.asarray(f["world_from_canonical"]) for f in motion["frames"]}
    out = []
    for item in motion["frames"]:
        k = int(item["index"])
        path = run_dir / "frames" / f"{k:04d}" / "transform.json"
        if not path.exists():
            continue
        transform = json.loads(path.read_text())
        w2c = np.asarray(transform["world_to_canonical"])
        r = transform.get("chunk", {}).get("canonical_frame", 0)
        truth = world_from_canonical[r] @ np.linalg.inv(world_from_canonical[k])
        err = w2c @ np.linalg.inv(truth)
        centre = trimesh.load(scene_dir / "gt" / f"mesh_{k:04d}.ply").vertices.mean(axis=0)
        out.append(
            {
                "frame": k,
                "rotation_error_deg": rotation_angle_deg(err[:3, :3]),
                # Compare where the two transforms send the object's centre in frame k (at a far-away origin a
                # rotation error alone would show up as translation).
                "translation_error_fraction": float(
                    np.linalg.norm((w2c[:3, :3] - truth[:3, :3]) @ centre + w2c[:3, 3] - truth[:3, 3]) / object_size
                ),
            }
        )
    return out


def run_dynamic(
    mesh: Path,
    out: Path,
    *,
    frames: int,
    views: int,
    width: int,
    height: int,
    mode: str,
    config: str,
    overrides: list[str],
    rotation_deg: float,
    translation: float,
    deformation: str | None,
    eval_points: int = 200_000,
    select: str | None = None,
    ranks: int = 1,
) -> dict:
    from data_tools.dynamic import generate_dynamic_sequence
    from data_tools.render_mesh import Shading
    from neus2cli.config import resolve_config
    from neus2cli.train.dynamic import train_dynamic

    scene_dir = out / "scene"
    t0 = time.perf_counter()
    if not (scene_dir / "gt" / "motion.json").exists():
        generate_dynamic_sequence(
            mesh,
            scene_dir,
            n_frames=frames,
            n_views=views,
            width=width,
            height=height,
            rotation_deg_per_frame=rotation_deg,
            translation_per_frame=translation,
            deformation=deformation,
            n_test_views=2,
            shading=Shading(supersample=1),
            progress=False,
            overwrite=True,
        )
    gen_seconds = time.perf_counter() - t0
    motion = json.loads((scene_dir / "gt" / "motion.json").read_text())
    radius = float(motion["object_radius"])

    t_train = time.perf_counter()
    if ranks == 1:
        cfg = resolve_config(config, overrides)
        run_dir, metrics = train_dynamic(
            scene_dir, cfg, out / f"run_{mode}", mode=mode, frames=select, force=True, progress=False
        )
    else:
        run_dir = out / f"run_{mode}_{ranks}ranks"
        metrics = train_under_torchrun(scene_dir, run_dir, ranks, mode, config, overrides, select)
    wall_seconds = time.perf_counter() - t_train
    per_frame = []
    for rec in metrics["frames"]:
        k = rec["index"]
        q = chamfer_fraction(
            run_dir / "frames" / f"{k:04d}" / "mesh.ply", scene_dir / "gt" / f"mesh_{k:04d}.ply", radius, eval_points
        )
        keys = ("index", "seconds", "train_seconds", "phase_seconds", "stored_bytes", "psnr_test")
        per_frame.append({**{key: rec[key] for key in keys if key in rec}, **q})
    # Frames after each chunk's first (a run without chunks: after frame 0), as metrics.json counts them.
    chunk_of = [rec.get("chunk", 0) for rec in metrics["frames"]]
    later = [f["phase_seconds"] for i, f in enumerate(per_frame) if i > 0 and chunk_of[i] == chunk_of[i - 1]]
    phases = {name: float(np.mean([p[name] for p in later])) for name in later[0]} if later else {}
    chamfers = [f["chamfer_fraction_of_radius"] for f in per_frame]
    motion_err = motion_errors(run_dir, scene_dir, 2 * radius) if mode == "incremental" else []
    return {
        **record_header(),
        "benchmark": "dynamic",
        "mode": mode,
        "scene": {
            "mesh": str(mesh),
            "frames": frames,
            "views": views,
            "size": f"{width}x{height}",
            "rotation_deg_per_frame": rotation_deg,
            "translation_per_frame": translation,
            "deformation": deformation,
        },
        "config": config,
        "overrides": overrides,
        "select": select,
        "generate_seconds": gen_seconds,
        "ranks": ranks,
        "wall_seconds": wall_seconds,
        "n_chunks": metrics.get("n_chunks"),
        "backend": metrics["backend"],
        "first_frame_seconds": metrics["first_frame_seconds"],
        "mean_seconds_after_first": metrics["mean_seconds_after_first"],
        "mean_phase_seconds_after_first": phases,
        "mean_stored_bytes_after_first": metrics["mean_stored_bytes_after_first"],
        "mean_chamfer_fraction_of_radius": float(np.mean(chamfers)),
        "max_chamfer_fraction_of_radius": float(np.max(chamfers)),
        "max_rotation_error_deg": max((m["rotation_error_deg"] for m in motion_err), default=None),
        "max_translation_error_fraction": max((m["translation_error_fraction"] for m in motion_err), default=None),
        "frames": per_frame,
        "motion_errors": motion_err,
    }


def train_under_torchrun(
    scene_dir: Path, run_dir: Path, ranks: int, mode: str, config: str, overrides: list[str], select: str | None
) -> dict:
    """``neus2 train-dynamic`` as ``ranks`` processes of one ``torchrun --standalone`` launch; its metrics.json."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    command += ["-m", "neus2cli", "train-dynamic", str(scene_dir), "--out", str(run_dir), "--config", config]
    command += ["--mode", mode, "--force", "--no-progress", *(f"--set={kv}" for kv in overrides)]
    if select is not None:
        command += ["--frames", select]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    subprocess.run(command, check=True, env=env)
    return json.loads((run_dir / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mesh", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--size", default="1024x768")
    ap.add_argument("--mode", default="incremental", choices=["incremental", "per-frame"])
    ap.add_argument("--config", default="base")
    ap.add_argument("--rotation", type=float, default=10.0, help="degrees per frame")
    ap.add_argument("--translation", type=float, default=0.05, help="object diameters per frame")
    ap.add_argument("--deformation", default="twist", choices=["none", "bend", "twist"])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--eval-points", type=int, default=200_000)
    ap.add_argument("--select", default=None, help="train only these frames, a:b[:step]")
    ap.add_argument("--ranks", type=int, default=1, help="train as this many torchrun processes (chunks)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    result = run_dynamic(
        args.mesh,
        args.out,
        frames=args.frames,
        views=args.views,
        width=w,
        height=h,
        mode=args.mode,
        config=args.config,
        overrides=args.overrides,
        rotation_deg=args.rotation,
        translation=args.translation,
        deformation=None if args.deformation == "none" else args.deformation,
        eval_points=args.eval_points,
        select=args.select,
        ranks=args.ranks,
    )
    print(json.dumps({k: v for k, v in result.items() if k not in ("frames", "motion_errors")}, indent=2))
    suffix = "" if args.ranks == 1 else f"_{args.ranks}ranks"
    write_json(args.json or args.out / f"result_{args.mode}{suffix}.json", result)


if __name__ == "__main__":
    main()
