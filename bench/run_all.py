"""Benchmark suite: runs the static and dynamic benchmarks and appends the results to BENCHMARKS.md.

    python bench/run_all.py --out /tmp/bench [--static-mesh M] [--dynamic-mesh M] [--skip-dynamic]
    python bench/run_all.py --smoke --out /tmp/bench_smoke --markdown /tmp/smoke.md   # CPU, < 1 minute
    python bench/run_all.py --report results/*.json                                   # format saved records

On a GPU machine the defaults are the published benchmarks (49 views at 1600x1200, 15k steps;
20 frames of 12 views at 1024x768). ``--smoke`` runs tiny versions on the CPU to test the harness.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_dynamic import run_dynamic  # noqa: E402
from bench.bench_static import run_static  # noqa: E402
from bench.common import REPO, markdown_section, write_json  # noqa: E402

# Tiny and CPU-only: the smoke run tests the plumbing, not the numbers.
SMOKE_SETTINGS = [
    "backend=torch",
    "sampling.target_samples=2048",
    "sampling.grid_resolution=32",
    "output.render_test_views=1",
]
SHARED_MESHES = REPO.parent / "shared" / "data" / "meshes"


def _smoke_mesh(out: Path) -> Path:
    """A small closed mesh that needs no data files (a torus knot would be harder; a torus has a hole)."""
    import trimesh

    path = out / "torus.ply"
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.creation.torus(major_radius=1.0, minor_radius=0.45, major_sections=48, minor_sections=24).export(path)
    return path


def run_suite(args: argparse.Namespace) -> list[dict]:
    results = []
    if args.smoke:
        mesh = _smoke_mesh(args.out)
        results.append(
            run_static(
                mesh,
                args.out / "static",
                views=8,
                test_views=1,
                width=40,
                height=40,
                steps=20,
                config="fast",
                overrides=SMOKE_SETTINGS,
                mesh_resolution=32,
                eval_points=5000,
            )
        )
        results.append(
            run_dynamic(
                mesh,
                args.out / "dynamic",
                frames=2,
                views=6,
                width=32,
                height=32,
                mode="incremental",
                config="fast",
                overrides=[
                    *SMOKE_SETTINGS,
                    "first_frame_steps=10",
                    "next_frame_steps=6",
                    "global_movement_steps=2",
                    "output.mesh_resolution=32",
                ],
                rotation_deg=10.0,
                translation=0.05,
                deformation=None,
                eval_points=5000,
            )
        )
    else:
        results.append(
            run_static(
                args.static_mesh,
                args.out / "static",
                views=49,
                test_views=8,
                width=1600,
                height=1200,
                steps=15000,
                config="dtu",
                overrides=[],
                mesh_resolution=512,
            )
        )
        if not args.skip_dynamic:
            results.append(
                run_dynamic(
                    args.dynamic_mesh,
                    args.out / "dynamic",
                    frames=args.frames,
                    views=12,
                    width=1024,
                    height=768,
                    mode="incremental",
                    config="base",
                    overrides=[],
                    rotation_deg=10.0,
                    translation=0.05,
                    deformation="twist",
                )
            )
    for r in results:
        write_json(args.out / f"{r['benchmark']}.json", r)
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/neus2_bench"))
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run that tests the harness")
    ap.add_argument("--static-mesh", type=Path, default=SHARED_MESHES / "spot" / "spot.obj")
    ap.add_argument("--dynamic-mesh", type=Path, default=SHARED_MESHES / "bob" / "bob_tri.obj")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--skip-dynamic", action="store_true")
    ap.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md", help="file the sections are appended to")
    ap.add_argument("--report", type=Path, nargs="*", help="format saved JSON records instead of running")
    args = ap.parse_args(argv)
    results = [json.loads(p.read_text()) for p in args.report] if args.report else run_suite(args)
    text = "\n".join(markdown_section(r) for r in results)
    with open(args.markdown, "a") as fh:
        fh.write("\n" + text)
    print(text)


if __name__ == "__main__":
    main()
