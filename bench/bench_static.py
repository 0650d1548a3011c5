"""Static benchmark: a DTU-sized synthetic scene from a mesh, trained, meshed and scored.

    python bench/bench_static.py --mesh ../shared/data/meshes/spot/spot.obj \
        [--views 49 --size 1600x1200 --steps 15000 --config dtu] --out /tmp/bench_static

Reports steps/s, samples/s, peak GPU memory, wall time to mesh, PSNR on held-out views,
and Chamfer distance to the true mesh as a fraction of the bounding-sphere radius.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import chamfer_fraction, record_header, write_json  # noqa: E402


def run_static(
    mesh: Path,
    out: Path,
    *,
    views: int,
    test_views: int,
    width: int,
    height: int,
    steps: int,
    config: str,
    overrides: list[str],
    mesh_resolution: int | None,
    seed: int = 0,
    eval_points: int = 200_000,
) -> dict:
    from data_tools.generate import generate_static_scene
    from data_tools.render_mesh import Shading
    from neus2cli.config import resolve_config
    from neus2cli.train.static import train_static

    scene_dir = out / "scene"
    t0 = time.perf_counter()
    if not (scene_dir / "scene_info.json").exists():
        generate_static_scene(
            mesh,
            scene_dir,
            n_views=views,
            n_test=test_views,
            width=width,
            height=height,
            seed=seed,
            shading=Shading(supersample=1),
            progress=False,
            overwrite=True,
        )
    gen_seconds = time.perf_counter() - t0
    info = json.loads((scene_dir / "scene_info.json").read_text())
    radius = float(info["bounding_sphere"]["radius"])

    extra = list(overrides)
    if mesh_resolution:
        extra.append(f"output.mesh_resolution={mesh_resolution}")
    cfg = resolve_config(config, extra, **{"train.steps": steps})
    run_dir, metrics = train_static(scene_dir, cfg, out / "run", force=True, progress=False)
    quality = chamfer_fraction(run_dir / "mesh.ply", scene_dir / "gt_mesh.ply", radius, eval_points)
    return {
        **record_header(),
        "benchmark": "static",
        "scene": {"mesh": str(mesh), "views": views, "test_views": test_views, "size": f"{width}x{height}"},
        "config": config,
        "overrides": extra,
        "generate_seconds": gen_seconds,
        "steps": metrics["steps"],
        "train_seconds": metrics["train_seconds"],
        "steps_per_second": metrics["steps_per_second"],
        "samples_per_second": metrics["samples_per_second"],
        "batches_cut": metrics.get("batches_cut"),
        "peak_gpu_memory_gib": (metrics["peak_gpu_memory_bytes"] or 0) / 2**30,
        "mesh_seconds": metrics["mesh_seconds"],
        "wall_seconds_to_mesh": metrics["wall_seconds_to_mesh"],
        "psnr_test": metrics.get("psnr_test"),
        "backend": metrics["backend"],
        **quality,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mesh", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--views", type=int, default=49)
    ap.add_argument("--test-views", type=int, default=8)
    ap.add_argument("--size", default="1600x1200")
    ap.add_argument("--steps", type=int, default=15000)
    ap.add_argument("--config", default="dtu")
    ap.add_argument("--mesh-resolution", type=int, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    result = run_static(
        args.mesh,
        args.out,
        views=args.views,
        test_views=args.test_views,
        width=w,
        height=h,
        steps=args.steps,
        config=args.config,
        overrides=args.overrides,
        mesh_resolution=args.mesh_resolution,
    )
    print(json.dumps(result, indent=2))
    write_json(args.json or args.out / "result.json", result)


if __name__ == "__main__":
    main()
