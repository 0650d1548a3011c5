"""Spherical-harmonics encoding: closed forms, orthonormality, gradients, tcnn parity."""

from __future__ import annotations

import math

import pytest
import torch

from neus2cli.errors import DependencyError
from neus2cli.model.sh import MAX_SH_DEGREE, TcnnSHEncoding, TorchSHEncoding, make_sh_encoding, sh_encode
from tests.conftest import requires_cuda

SQRT_PI = math.sqrt(math.pi)
GPU = "cuda"  # device of the parity test (a constant so a CPU dry run can redirect it)


def fibonacci_sphere(n: int) -> torch.Tensor:
    """(n, 3) float64 near-uniform unit vectors (equal-area latitude bands, golden-angle longitudes)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    r = torch.sqrt(1.0 - z * z)
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=1)


def reference_bands_0_to_3(d: torch.Tensor) -> torch.Tensor:
    """Real SH with the Condon-Shortley phase, index l*l + l + m, written from their closed forms."""
    x, y, z = d.unbind(dim=1)
    c0 = 1 / (2 * SQRT_PI)
    c1 = math.sqrt(3) / (2 * SQRT_PI)
    c2a, c2b = math.sqrt(15) / (2 * SQRT_PI), math.sqrt(5) / (4 * SQRT_PI)
    c2c = math.sqrt(15) / (4 * SQRT_PI)
    c3 = [
        math.sqrt(70) / (8 * SQRT_PI),
        math.sqrt(105) / (2 * SQRT_PI),
        math.sqrt(42) / (8 * SQRT_PI),
        math.sqrt(7) / (4 * SQRT_PI),
        math.sqrt(105) / (4 * SQRT_PI),
    ]
    return torch.stack(
        [
            torch.full_like(x, c0),
            -c1 * y,
            c1 * z,
            -c1 * x,
            c2a * x * y,
            -c2a * y * z,
            c2b * (3 * z * z - 1),
            -c2a * x * z,
            c2c * (x * x - y * y),
            c3[0] * y * (y * y - 3 * x * x),
            c3[1] * x * y * z,
            c3[2] * y * (1 - 5 * z * z),
            c3[3] * z * (5 * z * z - 3),
            c3[2] * x * (1 - 5 * z * z),
            c3[4] * z * (x * x - y * y),
            c3[0] * x * (3 * y * y - x * x),
        ],
        dim=1,
    )


def test_axes_closed_forms_degree_2():
    d = torch.eye(3, dtype=torch.float64)  # +x, +y, +z
    out = torch.cat([sh_encode(d, 3), sh_encode(-d, 3)])
    c0, c1 = 1 / (2 * SQRT_PI), math.sqrt(3) / (2 * SQRT_PI)
    c20, c22 = math.sqrt(5) / (4 * SQRT_PI), math.sqrt(15) / (4 * SQRT_PI)
    # At an axis all products of two different coordinates vanish; Y_2^0 = c20 (3 z^2 - 1) is
    # -c20 on the x and y axes and 2 c20 on the z axis; Y_2^2 = c22 (x^2 - y^2) is +-c22 on x / y.
    expected = torch.tensor(
        [
            [c0, 0, 0, -c1, 0, 0, -c20, 0, c22],  # +x
            [c0, -c1, 0, 0, 0, 0, -c20, 0, -c22],  # +y
            [c0, 0, c1, 0, 0, 0, 2 * c20, 0, 0],  # +z
            [c0, 0, 0, c1, 0, 0, -c20, 0, c22],  # -x
            [c0, c1, 0, 0, 0, 0, -c20, 0, -c22],  # -y
            [c0, 0, -c1, 0, 0, 0, 2 * c20, 0, 0],  # -z
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-15)  # float64 rounding only


def test_bands_0_to_3_match_closed_forms():
    d = torch.nn.functional.normalize(torch.randn(200, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    d = d.double()
    # Different but equal float64 expressions of polynomials with O(1) coefficients: ~1e-15.
    torch.testing.assert_close(sh_encode(d, 4), reference_bands_0_to_3(d), rtol=0, atol=1e-13)
    # Lower degrees are prefixes; float32 input gives float32 output within float32 rounding.
    torch.testing.assert_close(sh_encode(d, 2), sh_encode(d, 4)[:, :4])
    out32 = sh_encode(d.float(), 4)
    assert out32.dtype == torch.float32 and out32.shape == (200, 16)
    torch.testing.assert_close(out32.double(), reference_bands_0_to_3(d), rtol=0, atol=1e-6)


@pytest.mark.parametrize("degree", [4, MAX_SH_DEGREE])
def test_orthonormal_on_the_sphere(degree):
    """(4 pi / n) sum_i Y_a(d_i) Y_b(d_i) = delta_ab over a 20000-point Fibonacci sphere."""
    d = fibonacci_sphere(20_000)
    y = sh_encode(d, degree)
    gram = y.T @ y * (4 * math.pi / d.shape[0])
    # The Fibonacci lattice integrates these polynomials (degree <= 2 * (degree - 1)) with an
    # error ~1/n: measured 4e-6 (degree 4) and 2e-5 (degree 8); 1e-4 leaves a 5x margin, while a
    # wrong normalisation constant (e.g. a missing sqrt 2) is off by >= 0.4.
    torch.testing.assert_close(gram, torch.eye(degree * degree, dtype=torch.float64), rtol=0, atol=1e-4)


def test_gradcheck_float64():
    d = torch.nn.functional.normalize(torch.randn(5, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    d = d.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: sh_encode(v, 5), (d,))


def test_module_and_errors():
    enc = make_sh_encoding(4, "torch")
    assert isinstance(enc, TorchSHEncoding) and enc.n_output_dims == 16 and enc.degree == 4
    assert enc(torch.zeros(0, 3)).shape == (0, 16)
    for bad in (0, 9, 2.5):
        with pytest.raises(ValueError, match="degree"):
            sh_encode(torch.zeros(1, 3), bad)
    with pytest.raises(ValueError, match="dirs"):
        sh_encode(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="backend"):
        make_sh_encoding(4, "jax")  # type: ignore[arg-type]


def test_tcnn_backend_without_tinycudann_raises_dependency_error():
    backends = pytest.importorskip("neus2cli.backends")
    try:
        backends.import_tcnn()
    except DependencyError:
        with pytest.raises(DependencyError):
            make_sh_encoding(4, "tcnn")
    else:
        pytest.skip("tinycudann is installed here")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(None, id="tcnn-default")])
@pytest.mark.parametrize("degree", [4, MAX_SH_DEGREE])
def test_tcnn_matches_torch(degree, dtype):
    pytest.importorskip("neus2cli.backends")
    try:
        tc = TcnnSHEncoding(degree, dtype=dtype)
    except DependencyError as err:
        pytest.skip(f"tinycudann unavailable: {err}")
    half = tc.encoding.dtype == torch.half
    gen = torch.Generator().manual_seed(2)
    d = torch.nn.functional.normalize(torch.randn(1 << 14, 3, generator=gen), dim=1).to(GPU)
    ref = sh_encode(d, degree)
    out = tc(d)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    # tcnn evaluates in float32 from 2 (d/2 + 1/2) - 1 (input rounding ~1e-7) and stores T:
    # fp16 rounds each value (|Y| <= 1.1 up to degree 8) to 2^-11 relative; in fp32 both sides
    # differ from the float64 values by float32 evaluation error (measured <= 4e-6 here).
    tol = dict(rtol=2e-3, atol=2e-3) if half else dict(rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(out, ref, **tol)

    # Input gradients with a random cotangent (tcnn multiplies by 2 for its [0, 1] input map).
    cot = torch.randn(ref.shape, generator=gen).to(GPU)
    d_ref, d_tc = d.clone().requires_grad_(True), d.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(sh_encode(d_ref, degree), d_ref, cot)
    (g_tc,) = torch.autograd.grad(tc(d_tc), d_tc, cot)
    # Per point, |grad| <= sum_k |cot_k| |dY_k/dd_j| with |dY_k/dd_j| <= 31 on the sphere up to
    # degree 8 (measured): fp16 rounds the cotangent to 2^-11 relative, so compare against 2e-3
    # of that bound (fp32: 1e-5, float32 evaluation order).
    bound = 31 * cot.abs().sum(dim=1, keepdim=True)
    diff = (g_tc - g_ref).abs()
    assert (diff <= (2e-3 if half else 1e-5) * bound).all(), f"max |d grad| {diff.max().item():.3g}"
