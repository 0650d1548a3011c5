"""The SDF field alone on CUDA: the fused Triton kernels against tinycudann's grid + the MLP kernels.

    python bench/bench_sdf_field.py [--n 262144] [--repeats 50] [--configs 64x4x4,32x4x4] [--json OUT]

Times, at NeuS2's grid (14 levels x 2 features, 2^19 entries) and a 64-wide SDF MLP with 16 outputs:

* ``value``: the no-gradient forward (the early-stop pre-pass, occupancy updates, meshing);
* ``train``: forward with the gradient, then the backward of out . a + eikonal(grad), as in a step.

``tcnn``: tinycudann's encoding, the MLP's Triton kernels and autograd for the grid's Jacobian (the
path before the fused field); ``fused BxWfxWb``: the fused kernels with BLOCK rows, Wf forward warps and
Wb backward warps. Points: ray segments through the cube (16 points a ray, as a batch's samples are),
CUDA events, median of ``--repeats`` after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from neus2cli.model.encoding import HashGridConfig, make_hash_grid
from neus2cli.model.sdf_field import sdf_field_value, sdf_field_with_gradient


def _points(n: int, gen: torch.Generator) -> torch.Tensor:
    n_rays = n // 16
    o = torch.rand(n_rays, 1, 3, generator=gen) * 0.6 + 0.2
    d = torch.nn.functional.normalize(torch.randn(n_rays, 1, 3, generator=gen), dim=-1)
    t = torch.linspace(0, 0.15, 16).view(1, 16, 1)
    return (o + d * t).reshape(-1, 3).clamp(0, 1)[:n]


def _time(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=262_144)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--configs", default="64x4x4,32x4x4,32x2x4,128x4x4")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import neus2cli.model.sdf_field_triton as kernels

    gen = torch.Generator().manual_seed(0)
    grid = make_hash_grid(HashGridConfig(), "tcnn")
    with torch.no_grad():
        grid.params.copy_(torch.rand(grid.params.shape, generator=gen).cuda() * 2e-2 - 1e-2)
    x = _points(args.n, gen).cuda()
    lm = torch.ones(grid.n_output_dims, device="cuda")
    w1 = (torch.randn(64, 3 + grid.n_output_dims, generator=gen) / 6).cuda().requires_grad_(True)
    w2 = (torch.randn(16, 64, generator=gen) / 8).cuda().requires_grad_(True)
    a = torch.randn(args.n, 16, device="cuda")
    params = [grid.params, w1, w2]

    def step(impl: str, mlp_impl: str):
        out, grad = sdf_field_with_gradient(grid, x, lm, w1, w2, create_graph=True, impl=impl, mlp_impl=mlp_impl)
        loss = (out * a).sum() + ((grad.norm(dim=-1) - 1) ** 2).sum()
        torch.autograd.grad(loss, params)

    def value(impl: str, mlp_impl: str):
        with torch.no_grad():
            sdf_field_value(grid, x, lm, w1, w2, impl=impl, mlp_impl=mlp_impl)

    rows = {"tcnn": {"value": _time(lambda: value("torch", "triton"), args.repeats),
                     "train": _time(lambda: step("torch", "triton"), args.repeats)}}  # fmt: skip
    for cfg in args.configs.split(","):
        block, fwd_warps, bwd_warps = (int(v) for v in cfg.split("x"))
        kernels.BLOCK, kernels.FORWARD_WARPS, kernels.BACKWARD_WARPS = block, fwd_warps, bwd_warps
        rows[f"fused {cfg}"] = {
            "value": _time(lambda: value("triton", "triton"), args.repeats),
            "train": _time(lambda: step("triton", "triton"), args.repeats),
        }
    print(f"{torch.cuda.get_device_name()}, N = {args.n}")
    for name, r in rows.items():
        print(f"  {name:18s} value {r['value']:.3f} ms   train (fwd + bwd) {r['train']:.3f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "n": args.n, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
