"""``composite_neus``: the twin against the composition the training step ran before, float64 gradcheck,
and the Triton kernels against the twin (Triton's CPU interpreter in a child process; CUDA with the
``gpu`` marker), forward and every first-order gradient.

The cases hold what a training batch holds and the walk must get right: rays of ragged lengths,
rays with no sample, padding slots (index ``n_rays``) at the end, invalid slots inside rays, a ray
with an opaque sample (alpha = 1 exactly) followed by more samples, and several programs' worth of
rays.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neus2cli.render.composite import composite_neus
from neus2cli.render.neus import neus_alpha
from neus2cli.render.volrend import transmittance_sorted

REPO_ROOT = Path(__file__).resolve().parents[1]
# Inputs that take a gradient, in composite_neus's order.
GRAD_NAMES = ("sdf", "grad", "dirs", "dists", "rgb", "inv_s", "bg_color")


def make_case(n_rays: int, max_len: int, pad: int, seed: int, *, dtype=torch.float32, opaque=True, active=None):
    """A packed batch as ``render_rays_fixed`` builds it (see the module docstring), on the CPU; rays from
    ``active`` on have no samples (``render_rays_fixed``'s inactive rays)."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_len + 1, (n_rays,), generator=gen)
    if n_rays > 1:
        counts[::5] = 0  # rays without samples
    counts[min(1, n_rays - 1)] = max_len  # the longest ray sets the block's walk length
    if active is not None:
        counts[active:] = 0
    ray_indices = torch.cat([torch.repeat_interleave(torch.arange(n_rays), counts), torch.full((pad,), n_rays)])
    n = ray_indices.shape[0]
    sdf = torch.rand(n, generator=gen, dtype=dtype) * 0.4 - 0.15
    # Gradients with |cos| away from the ReLUs' kinks (cos = 0 and cos = 1), both signs.
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=dtype), dim=-1)
    cos = torch.rand(n, generator=gen, dtype=dtype) * 0.8 + 0.1
    cos = cos * torch.where(torch.rand(n, generator=gen) < 0.7, -1, 1)
    other = torch.randn(n, 3, generator=gen, dtype=dtype)
    side = torch.nn.functional.normalize(torch.linalg.cross(dirs, other), dim=-1)
    norm = 0.8 + 0.6 * torch.rand(n, 1, generator=gen, dtype=dtype)
    grad = norm * (cos[:, None] * dirs + (1 - cos[:, None] ** 2).sqrt() * side)
    dists = 0.02 + 0.06 * torch.rand(n, generator=gen, dtype=dtype)
    rgb = torch.rand(n, 3, generator=gen, dtype=dtype)
    sample_valid = ray_indices < n_rays
    sample_valid[torch.rand(n, generator=gen) < 0.05] = False  # invalid slots inside rays too
    if opaque and n_rays > 1 and max_len >= 3:
        # Ray 1's third sample: sdf * s ~ -1000, so sigmoid(s prev) = sigmoid(s next) = 0 in float32 and
        # alpha = (0 - 0 + eps) / (0 + eps) = 1 exactly; the samples after it see T = 1e-30.
        first = int(counts[:1].sum())
        sdf[first + 2] = -20.0
        sample_valid[first + 2] = True
    inv_s = torch.tensor(50.0, dtype=dtype)  # alphas from ~1e-5 to ~0.99
    bg_color = torch.rand(n_rays, 3, generator=gen, dtype=dtype)
    return dict(
        sdf=sdf, grad=grad, dirs=dirs, dists=dists, rgb=rgb, sample_valid=sample_valid, ray_indices=ray_indices,
        n_rays=n_rays, inv_s=inv_s, bg_color=bg_color,
    )  # fmt: skip


def _leaves(case: dict, device: str) -> dict:
    out = {}
    for key, value in case.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if key in GRAD_NAMES:
                value = value.detach().clone().requires_grad_(True)
        out[key] = value
    return out


def _call(c: dict, ratio, impl: str):
    return composite_neus(
        c["sdf"], c["grad"], c["dirs"], c["dists"], c["rgb"], c["sample_valid"], c["ray_indices"], c["n_rays"],
        c["inv_s"], ratio, c["bg_color"], impl=impl,
    )  # fmt: skip


def _old_composition(c: dict, ratio):
    """``render_rays_fixed``'s lines before ``composite_neus`` existed, verbatim."""
    n_rays, ray_indices, rgb = c["n_rays"], c["ray_indices"], c["rgb"]
    alpha = neus_alpha(c["sdf"], c["grad"], c["dirs"], c["dists"], c["inv_s"], ratio)
    alpha = torch.where(c["sample_valid"], alpha, 0.0)
    weights = transmittance_sorted(alpha, ray_indices) * alpha
    color = rgb.new_zeros(n_rays + 1, 3).index_add(0, ray_indices, weights[:, None] * rgb)[:n_rays]
    opacity = weights.new_zeros(n_rays + 1).index_add(0, ray_indices, weights)[:n_rays]
    color = color + (1.0 - opacity[:, None]) * c["bg_color"]
    return color, opacity


def _cotangents(n_rays: int, seed: int, device: str):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n_rays, 3, generator=gen).to(device), torch.randn(n_rays, generator=gen).to(device)


def _value_and_grads(c: dict, ratio, fn, cot, use_opacity: bool = True):
    color, opacity = fn(c, ratio)
    loss = (color * cot[0]).sum() + ((opacity * cot[1]).sum() if use_opacity else 0.0)
    grads = torch.autograd.grad(loss, [c[k] for k in GRAD_NAMES])
    return color.detach(), opacity.detach(), grads


@pytest.mark.parametrize("ratio", [1.0, 0.3, "tensor"])
def test_twin_is_bit_identical_to_the_old_composition(ratio):
    case = make_case(30, 12, 5, seed=0)
    ratio = torch.tensor(0.6) if ratio == "tensor" else ratio
    cot = _cotangents(30, 1, "cpu")
    a = _value_and_grads(_leaves(case, "cpu"), ratio, _old_composition, cot)
    b = _value_and_grads(_leaves(case, "cpu"), ratio, lambda c, r: _call(c, r, "torch"), cot)
    # The same operations in the same order: exactly equal.
    for x, y in zip([a[0], a[1], *a[2]], [b[0], b[1], *b[2]], strict=True):
        torch.testing.assert_close(y, x, rtol=0, atol=0)


def test_twin_closed_form_one_ray():
    # w_i = alpha_i prod_{j<i} (1 - alpha_j) by hand (a dense cumprod), colour = sum w rgb + (1 - sum w) bg.
    case = make_case(1, 6, 2, seed=3, dtype=torch.float64, opaque=False)
    c = _leaves(case, "cpu")
    color, opacity = _call(c, 1.0, "torch")
    alpha = torch.where(c["sample_valid"], neus_alpha(c["sdf"], c["grad"], c["dirs"], c["dists"], c["inv_s"]), 0.0)
    alpha = alpha[c["ray_indices"] == 0]
    assert alpha.shape[0] == 6 and float(alpha.detach().sum()) > 0.1
    trans = torch.cat([alpha.new_ones(1), torch.cumprod(1 - alpha, 0)[:-1]])
    w = trans * alpha
    expect = (w[:, None] * c["rgb"][:6]).sum(0) + (1 - w.sum()) * c["bg_color"][0]
    # float64 log-space scan against a float64 product of 6 factors: ~1e-16 apart.
    torch.testing.assert_close(opacity[0], w.sum(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(color[0], expect, rtol=1e-12, atol=1e-14)


def test_twin_gradcheck_float64():
    case = make_case(5, 5, 2, seed=2, dtype=torch.float64, opaque=False)  # alpha < 1: the clamp is a kink
    c = _leaves(case, "cpu")

    def fn(*xs):
        d = {**c, **dict(zip(GRAD_NAMES, xs, strict=True))}
        return _call(d, 0.4, "torch")

    assert torch.autograd.gradcheck(fn, tuple(c[k] for k in GRAD_NAMES))


def test_bad_inputs_are_refused():
    c = make_case(4, 3, 1, seed=4)
    with pytest.raises(ValueError, match="grad"):
        composite_neus(**{**c, "grad": c["grad"][:, :2]}, cos_anneal_ratio=1.0)
    with pytest.raises(ValueError, match="bg_color"):
        composite_neus(**{**c, "bg_color": c["bg_color"][:-1]}, cos_anneal_ratio=1.0)
    with pytest.raises(ValueError, match="sample_valid"):
        composite_neus(**{**c, "sample_valid": c["sample_valid"].float()}, cos_anneal_ratio=1.0)
    with pytest.raises(ValueError, match="inv_s"):
        composite_neus(**{**c, "inv_s": c["inv_s"][None]}, cos_anneal_ratio=1.0)
    with pytest.raises(ValueError, match="impl"):
        composite_neus(**c, cos_anneal_ratio=1.0, impl="cuda")
    if os.environ.get("TRITON_INTERPRET") != "1":  # not silently the twin on a CPU without the interpreter
        with pytest.raises(ValueError, match="CUDA"):
            composite_neus(**c, cos_anneal_ratio=1.0, impl="triton")


# --------------------------------------------------------------------------- the kernels against the twin


def assert_triton_matches_twin(
    device: str, n_rays: int, max_len: int, pad: int, seed: int, active: int | None = None
) -> None:
    """Forward and all seven gradients of impl="triton" against the twin, for three annealing inputs
    and with and without an opacity term in the loss (``d_opacity`` None inside the backward)."""
    case = make_case(n_rays, max_len, pad, seed, active=active)
    cot = _cotangents(n_rays, seed + 100, device)
    for ratio, use_opacity in ((1.0, True), (0.3, False), (torch.tensor(0.7, device=device), True)):
        ref = _value_and_grads(_leaves(case, device), ratio, lambda c, r: _call(c, r, "torch"), cot, use_opacity)
        got = _value_and_grads(_leaves(case, device), ratio, lambda c, r: _call(c, r, "triton"), cot, use_opacity)
        # Forward: the same float32 operations except sigmoid's exp (a few ulp apart between numpy,
        # CUDA and ATen) and T (a float64 product vs the twin's float64 log-space scan, then rounded):
        # alpha agrees to ~1e-7, colours and opacities (sums of <= 40 terms) to ~1e-6.
        torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=2e-6)
        torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=2e-6)
        for name, a, b in zip(GRAD_NAMES, ref[2], got[2], strict=True):
            assert b.shape == a.shape and b.dtype == a.dtype, name
            # Per-sample gradients go through d alpha / d p = 1 / (p + eps) and (1 - p) p, where
            # ulp-level differences of p are amplified (up to ~1e2 here, p >= 0.1), and through the
            # suffix sums of up to 40 terms: 1e-4 of the largest entry. inv_s's gradient is a sum
            # over all samples in another order (per program, then across programs): 1e-4 relative.
            scale = a.abs().max().item()
            err = (b - a).abs().max().item()
            assert err <= 1e-4 * scale + 1e-6, f"d/d{name}: max error {err:.3g} at scale {scale:.3g}"
        # Padding slots receive exactly zero (the kernel writes them; nothing is pre-zeroed).
        pad_rows = case["ray_indices"].to(device) >= n_rays
        for name, g in zip(GRAD_NAMES[:5], got[2][:5], strict=True):
            assert bool((g[pad_rows] == 0).all()), name
    # The opaque sample: alpha = 1 there, so every later sample of ray 1 has weight ~1e-30 and its
    # gradient through T is zero in both (transmittance_sorted's clamp).
    c = _leaves(case, device)
    with torch.no_grad():
        _, opacity = _call(c, 1.0, "triton")
    assert abs(float(opacity[1]) - 1.0) < 1e-6


def assert_fixed_render_matches(device: str) -> None:
    """``render_rays_fixed`` with the kernels against the twin: outputs and every parameter's gradient."""
    from neus2cli.render.fixed import render_rays_fixed
    from neus2cli.render.renderer import NORMALIZED_CUBE
    from tests.test_fixed_step import _setup

    cfg, model, grid, rays_o, rays_d, bg, jitter = _setup(n_rays=96)
    model.to(device)
    results = []
    for impl in ("torch", "triton"):
        out = render_rays_fixed(
            model, grid.binaries[0].to(device), rays_o.to(device), rays_d.to(device),
            torch.tensor(96, device=device), step_size=cfg.sampling.step_size, bg_color=bg.to(device),
            march_capacity=1 << 14, sample_capacity=1 << 13, aabb=torch.tensor(NORMALIZED_CUBE, device=device),
            early_stop_eps=cfg.sampling.early_stop_eps, jitter=jitter.to(device), cos_anneal_ratio=0.5,
            kernel_impl=impl,
        )  # fmt: skip
        w = out.sample_valid.float()
        eik = (((out.sdf_grad.norm(dim=-1) - 1) ** 2) * w).sum() / w.sum()
        loss = out.rgb.square().sum() + out.opacity.square().sum() + eik
        results.append((out.rgb.detach(), out.opacity.detach(), torch.autograd.grad(loss, list(model.parameters()))))
    (rgb_a, op_a, g_a), (rgb_b, op_b, g_b) = results
    # Colours sum ~100 samples per ray in another order, and on CUDA Triton's exp is the 2-ulp ex2.approx:
    # one colour of 288 differed by 4.6e-6 (2e-5 relative) on an H200, so 1e-4 relative / 1e-5 absolute.
    # Parameter gradients sum ~1e4 samples: 1e-4 of the largest entry.
    torch.testing.assert_close(rgb_b, rgb_a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(op_b, op_a, rtol=1e-4, atol=1e-5)
    for (name, _), a, b in zip(model.named_parameters(), g_a, g_b, strict=True):
        scale = a.abs().max().item()
        # A one-entry parameter (the sharpness) is one sum of every sample's terms, of both signs, so
        # cancellation can lift its relative error above the rounding of its terms: 1e-3 there.
        rtol = 1e-3 if a.numel() == 1 else 1e-4
        err = (b - a).abs().max().item()
        assert err <= rtol * scale + 1e-12, f"d/d{name}: max error {err:.3g} at scale {scale:.3g}"


def test_triton_interpreter_matches_twin():
    # A child process: TRITON_INTERPRET must be set before triton is first imported. Small blocks,
    # so that a few dozen rays span several programs (and several zero-fill chunks).
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO_ROOT), "CUDA_VISIBLE_DEVICES": ""}
    code = (
        "import torch\n"
        "import neus2cli.render.composite_triton as kernels\n"
        "from tests.test_composite import assert_triton_matches_twin, assert_fixed_render_matches\n"
        "kernels.BLOCK_RAYS, kernels.ZERO_BLOCK = 16, 8\n"
        "assert_triton_matches_twin('cpu', 50, 40, 23, 0)\n"
        "assert_triton_matches_twin('cpu', 7, 3, 0, 1)  # one program, no padding\n"
        "assert_triton_matches_twin('cpu', 64, 30, 40, 2, active=10)  # programs with no sample at all\n"
        "kernels.BLOCK_RAYS, kernels.ZERO_BLOCK = 128, 1024\n"
        "assert_fixed_render_matches('cpu')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- on CUDA (the integrator runs these)

requires_cuda_triton = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@requires_cuda_triton
def test_triton_matches_twin_on_cuda():
    pytest.importorskip("triton")
    assert_triton_matches_twin("cuda", 50, 40, 23, 0)
    # Training sizes: 2^14 rays of up to 300 samples (~2.5e6 slots), padding, several thousand programs.
    assert_triton_matches_twin("cuda", 1 << 14, 300, 4099, 1)
    # As a training step passes them: 2^16 rays, the leading 5000 active.
    assert_triton_matches_twin("cuda", 1 << 16, 120, 30_011, 2, active=5000)
    assert_fixed_render_matches("cuda")


@pytest.mark.gpu
@requires_cuda_triton
def test_triton_forward_and_backward_replay_in_a_cuda_graph():
    # Captured once, replayed on new inputs copied into the same buffers: the results equal an eager
    # call on those inputs bit for bit (the kernels read nothing back to the host and sizes are fixed).
    pytest.importorskip("triton")
    case = _leaves(make_case(3000, 64, 517, 5), "cuda")
    # Other values and other ray lengths in buffers of the same sizes.
    gen = torch.Generator(device="cuda").manual_seed(6)
    other = {k: v.detach().clone() for k, v in case.items() if isinstance(v, torch.Tensor)}
    n = other["sdf"].shape[0]
    other["sdf"] += 0.05 * torch.randn(n, device="cuda", generator=gen)
    other["rgb"] = torch.rand(n, 3, device="cuda", generator=gen)
    other["ray_indices"] = torch.sort(torch.randint(0, 3001, (n,), device="cuda", generator=gen)).values
    other["sample_valid"] = other["ray_indices"] < 3000
    other = {**case, **{k: v.requires_grad_(True) if k in GRAD_NAMES else v for k, v in other.items()}}
    ratio = torch.tensor(0.8, device="cuda")
    cot = _cotangents(3000, 7, "cuda")
    eager = _value_and_grads(other, ratio, lambda c, r: _call(c, r, "triton"), cot)
    _value_and_grads(case, ratio, lambda c, r: _call(c, r, "triton"), cot)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = _value_and_grads(case, ratio, lambda c, r: _call(c, r, "triton"), cot)
    with torch.no_grad():
        for key, value in other.items():
            if isinstance(value, torch.Tensor):
                case[key].copy_(value)
    # (inv_s and bg_color are copied too: other holds clones of them.)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip([eager[0], eager[1], *eager[2]], [static[0], static[1], *static[2]], strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
