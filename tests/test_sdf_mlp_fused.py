"""The split-input SDF MLP (``sdf_mlp_fused``): the twin against closed forms, the Triton kernels against the twin.

The twin is ``torch.cat`` + the closed-form Function, already checked against PyTorch's generic double
backward (test_sdf_closed_form.py); here it is checked once more through the split interface, and the
Triton kernels are compared with it, forward and every first-order gradient, on CUDA (gpu marker) and,
where triton is installed, through Triton's CPU interpreter in a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neus2cli.model.sdf_mlp import sdf_mlp_fused, sdf_mlp_value, sdf_mlp_with_gradient

REPO_ROOT = Path(__file__).resolve().parents[1]


def _case(n: int, n_features: int, hidden: int, n_out: int, device: str, dtype, feature_dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=gen, dtype=dtype)
    features = (torch.randn(n, n_features, generator=gen, dtype=dtype) * 0.5).to(feature_dtype)
    level_mask = torch.ones(n_features, dtype=dtype)
    level_mask[-n_features // 4 :] = 0.0  # masked levels, as early in progressive training
    w1 = torch.randn(hidden, 3 + n_features, generator=gen, dtype=dtype) / (3 + n_features) ** 0.5
    w2 = torch.randn(n_out, hidden, generator=gen, dtype=dtype) / hidden**0.5
    tensors = [t.to(device) for t in (x, features, level_mask, w1, w2)]
    for t in (tensors[0], tensors[1], tensors[3], tensors[4]):
        t.requires_grad_(True)
    return tensors


def _loss(out, g_x, g_f, seed: int):
    # Every output and every column of g matters, with weights that no symmetry cancels.
    gen = torch.Generator().manual_seed(seed)
    a, b, c = (torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device, t.dtype) for t in (out, g_x, g_f))
    return (out * a).sum() + (g_x * b).sum() + (g_f * c).sum() + (g_x.square().sum(-1)).sum()


def test_twin_matches_the_concatenated_closed_form_float64():
    x, features, level_mask, w1, w2 = _case(64, 8, 16, 4, "cpu", torch.float64, torch.float64, seed=0)
    out, g_x, g_f = sdf_mlp_fused(x, features, level_mask, w1, w2)
    ref_out, ref_g = sdf_mlp_with_gradient(torch.cat([x - 0.5, features * level_mask], -1), w1, w2)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)  # the same ops in the same order
    torch.testing.assert_close(g_x, ref_g[:, :3], rtol=0, atol=0)
    # d out0 / d features includes the mask: masked features have zero gradient.
    torch.testing.assert_close(g_f, ref_g[:, 3:] * level_mask, rtol=0, atol=0)
    assert (g_f[:, level_mask == 0] == 0).all() and g_f.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(sdf_mlp_value(x, features, level_mask, w1, w2), out, rtol=0, atol=0)


def test_twin_gradients_are_exact_float64():
    # float64 gradcheck of every first and second derivative through the split interface.
    x, features, level_mask, w1, w2 = _case(12, 4, 16, 3, "cpu", torch.float64, torch.float64, seed=1)

    def fn(x_, f_, w1_, w2_):
        return sdf_mlp_fused(x_, f_, level_mask, w1_, w2_)

    assert torch.autograd.gradcheck(fn, (x, features, w1, w2))
    assert torch.autograd.gradgradcheck(fn, (x, features, w1, w2))


def test_bad_shapes_and_impl_are_refused():
    x, features, level_mask, w1, w2 = _case(4, 4, 16, 2, "cpu", torch.float32, torch.float32, seed=2)
    with pytest.raises(ValueError, match="level_mask"):
        sdf_mlp_fused(x, features, level_mask[:-1], w1, w2)
    with pytest.raises(ValueError, match="w1"):
        sdf_mlp_fused(x, features, level_mask, w1[:, :-1], w2)
    with pytest.raises(ValueError, match="impl"):
        sdf_mlp_fused(x, features, level_mask, w1, w2, impl="cuda")
    with pytest.raises(ValueError, match="CUDA"):  # not silently the twin on a CPU without the interpreter
        if os.environ.get("TRITON_INTERPRET") != "1":
            sdf_mlp_fused(x, features, level_mask, w1, w2, impl="triton")
        else:
            raise ValueError("CUDA (interpreter set: nothing to check)")


def assert_triton_matches_twin(device: str, feature_dtype: torch.dtype, n: int, seed: int) -> None:
    """Forward values and first-order gradients of impl="triton" against the twin.

    Shapes as in training (35 inputs, 64 hidden, 16 outputs), ``n`` not a multiple of the block.
    """
    tensors = _case(n, 32, 64, 16, device, torch.float32, feature_dtype, seed)
    results = []
    for impl in ("torch", "triton"):
        leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]
        x, features, level_mask, w1, w2 = leaves
        out, g_x, g_f = sdf_mlp_fused(x, features, level_mask, w1, w2, impl=impl)
        grads = torch.autograd.grad(_loss(out, g_x, g_f, seed), [x, features, w1, w2])
        with torch.no_grad():
            value = sdf_mlp_value(x, features, level_mask, w1, w2, impl=impl)
        results.append((out, g_x, g_f, value, grads))
    (out_a, gx_a, gf_a, val_a, grads_a), (out_b, gx_b, gf_b, val_b, grads_b) = results
    # The kernels sum in another order (and on CUDA through tf32x3 dots, ~float32 accuracy): values
    # of size ~1 agree to ~1e-6; a ReLU unit whose pre-activation is within rounding of 0 may flip
    # its mask, which moves g by one unit's weight (~0.1) in a handful of rows at most, hence the
    # row-wise allowance below. Weight gradients sum N rows: 1e-4 relative.
    tol = dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_b, out_a, **tol)
    torch.testing.assert_close(val_b, val_a, **tol)
    for a, b in ((gx_a, gx_b), (gf_a, gf_b)):
        bad_rows = ((a - b).abs() > 1e-4 + 1e-4 * a.abs()).any(-1)
        assert bad_rows.float().mean() < 1e-3, f"{int(bad_rows.sum())} rows of {n} differ"
    assert (gf_b[:, -8:] == 0).all()  # masked levels
    names = ("x", "features", "w1", "w2")
    for name, a, b in zip(names, grads_a, grads_b, strict=True):
        assert b.dtype == a.dtype, name
        if name in ("x", "features"):  # per row: a flipped mask moves that row only
            a, b = a.float(), b.float()
            bad_rows = ((a - b).abs() > 1e-3 * a.abs().max() + 1e-5).any(-1)
            assert bad_rows.float().mean() < 1e-3, f"d/d{name}: {int(bad_rows.sum())} rows of {n} differ"
            continue
        scale = a.abs().max().item()
        err = (b.float() - a.float()).abs().max().item()
        assert err <= 1e-3 * scale + 1e-5, f"d/d{name}: max error {err:.3g} at scale {scale:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("feature_dtype", [torch.float16, torch.float32])
def test_triton_matches_twin_on_cuda(feature_dtype, monkeypatch):
    # The maths at float32 accuracy: tf32x3 dots, the default (set here in case it changes).
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("triton")
    import neus2cli.model.sdf_mlp_triton as kernels

    monkeypatch.setattr(kernels, "DOT_PRECISION", "tf32x3")
    for seed, n in ((0, 1000), (1, 262_147)):
        assert_triton_matches_twin("cuda", feature_dtype, n, seed)


@pytest.mark.gpu
def test_triton_tf32_is_close_to_twin(monkeypatch):
    # The faster option measured in BENCHMARKS.md. TF32 keeps 10 mantissa bits (fp16's; NeuS2 runs
    # its MLPs in fp16): outputs of size ~1 within ~1e-3, and the weight gradients (sums over all
    # rows) within 1% of their scale.
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("triton")
    import neus2cli.model.sdf_mlp_triton as kernels

    monkeypatch.setattr(kernels, "DOT_PRECISION", "tf32")
    tensors = _case(50_000, 32, 64, 16, "cuda", torch.float32, torch.float16, seed=5)
    results = []
    for impl in ("torch", "triton"):
        x, features, level_mask, w1, w2 = [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]
        out, g_x, g_f = sdf_mlp_fused(x, features, level_mask, w1, w2, impl=impl)
        results.append((out, torch.autograd.grad(_loss(out, g_x, g_f, 5), [w1, w2])))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=1e-2, atol=5e-3)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert (b - a).abs().max() <= 1e-2 * a.abs().max()


def test_triton_interpreter_matches_twin():
    # A child process: TRITON_INTERPRET must be set before triton is first imported. Few rows (the
    # interpreter runs the kernel in numpy).
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO_ROOT), "CUDA_VISIBLE_DEVICES": ""}
    code = (
        "import torch\n"
        "import neus2cli.model.sdf_mlp_triton as kernels\n"
        "from tests.test_sdf_mlp_fused import assert_triton_matches_twin\n"
        "kernels.BACKWARD_PROGRAMS = 2  # each backward program loops over several row blocks\n"
        "assert_triton_matches_twin('cpu', torch.float32, 150, 3)\n"
        "assert_triton_matches_twin('cpu', torch.float16, 70, 4)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
