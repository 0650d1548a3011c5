"""Time a million-point geometry evaluation on the CPU (prints seconds per stage).

    .venv/bin/python bench/bench_eval.py [--points 1000000] [--downsample 0.002]

Two concentric icospheres (radii 1 and 1.01) are sampled with ``--points`` points
each; then KD-tree nearest neighbours both ways (``compare_samples``), and the
voxel and greedy-radius downsampling of the prediction sample. Not a test: the
numbers depend on the machine (cKDTree uses every core).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import trimesh

from neus2cli.eval.geometry import Geometry, compare_samples, downsample, sample_surface


def _timed(label: str, fn):
    t0 = time.perf_counter()
    out = fn()
    print(f"{label:<40s} {time.perf_counter() - t0:8.3f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--downsample", type=float, default=0.004, help="spacing for the downsampling timings")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, points per side: {args.points:,}")

    def sphere(radius: float) -> Geometry:
        m = trimesh.creation.icosphere(subdivisions=6, radius=radius)
        return Geometry(points=np.asarray(m.vertices), faces=np.asarray(m.faces))

    pred_mesh, gt_mesh = sphere(1.0), sphere(1.01)
    pred = _timed("sample pred (area-uniform)", lambda: sample_surface(pred_mesh, n_points=args.points, seed=0))
    gt = _timed("sample GT (area-uniform)", lambda: sample_surface(gt_mesh, n_points=args.points, seed=1))
    metrics = _timed("metrics (2 KD-trees, 2 queries)", lambda: compare_samples(pred, gt, [0.005, 0.02]))
    print(f"  accuracy {metrics.accuracy:.5f}, completeness {metrics.completeness:.5f} (expected ~0.01)")
    v = _timed(f"voxel downsample at {args.downsample}", lambda: downsample(pred, args.downsample, method="voxel"))
    r = _timed(f"radius downsample at {args.downsample}", lambda: downsample(pred, args.downsample, method="radius"))
    print(f"  kept: voxel {len(v):,}, radius {len(r):,} of {len(pred):,}")


if __name__ == "__main__":
    main()
