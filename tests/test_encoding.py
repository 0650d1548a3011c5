"""Hash-grid encoding: tcnn's layout and hashing, interpolation, gradients, backend parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

from neus2cli.errors import DependencyError
from neus2cli.model.encoding import (
    HashGridConfig,
    TcnnHashGrid,
    TorchHashGrid,
    grid_layout,
    level_feature_mask,
    make_hash_grid,
)
from tests.conftest import requires_cuda

NEUS2 = HashGridConfig()  # 14 levels x 2 features, 2^19 entries, 16 -> 2048

# A tiny grid for float64 gradient checks: level 0 has scale 3, resolution 4, 4^3 = 64
# entries (dense, exactly fills the 2^6 table); levels 1 and 2 (resolutions 8, 16) are hashed.
TINY = HashGridConfig(n_levels=3, n_features_per_level=2, log2_hashmap_size=6, base_resolution=4, per_level_scale=2.0)


def _random_params(grid: torch.nn.Module, seed: int = 0, scale: float = 1.0) -> None:
    """Fill params with uniform(-scale, scale): O(1) values make every test sensitive."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        values = (torch.rand(grid.params.numel(), generator=gen, dtype=torch.float64) * 2 - 1) * scale
        grid.params.copy_(values.to(grid.params))


def _points_off_faces(cfg: HashGridConfig, n: int, margin: float, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Seeded points in [0, 1]^3 whose vertex-space position is >= margin from every cell face."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.tensor(grid_layout(cfg).scales, dtype=torch.float64)
    x = torch.rand(8 * n, 3, generator=gen, dtype=torch.float64)
    frac = torch.frac(x[:, None, :] * scales[None, :, None] + 0.5)
    keep = ((frac > margin) & (frac < 1 - margin)).all(dim=2).all(dim=1)
    x = x[keep][:n]
    assert x.shape[0] == n
    return x.to(dtype)


# ----------------------------------------------------------------------------- layout


def test_neus2_layout_matches_tcnn_formulas():
    lay = grid_layout(NEUS2)
    # per_level_scale = exp(ln(2048/16)/13) = 2^(7/13) ~ 1.4524; scale_l = 16 * 2^(7l/13) - 1 in
    # float32, resolution = ceil(scale) + 1:
    #   l=0: 16-1 = 15 -> 16;  l=1: 22.24 -> 24;  l=2: 32.75 -> 34;  l=3: 48.02 -> 50;
    #   l=4: 70.20 -> 72;  l=5: 102.4 -> 104;  ...;  l=13: 16*128-1 = 2047 (+1 float32 ulp
    #   from exp2f/log2f rounding: 2047.0007) -> 2049.
    assert lay.resolutions == (16, 24, 34, 50, 72, 104, 151, 219, 317, 461, 669, 971, 1411, 2049)
    assert NEUS2.resolved_per_level_scale == pytest.approx(1.4524228561, rel=1e-9)
    # Entries: dense levels store next_multiple(res^3, 8) <= 2^19:
    #   16^3 = 4096, 24^3 = 13824, 34^3 = 39304, 50^3 = 125000, 72^3 = 373248 (all multiples of 8);
    #   104^3 = 1124864 > 2^19 = 524288, so levels 5..13 are hashed with 524288 entries each.
    dense = [4096, 13824, 39304, 125000, 373248]
    assert lay.sizes == tuple(dense + [524288] * 9)
    assert lay.hashed == (False,) * 5 + (True,) * 9
    # Total: 4096 + 13824 + 39304 + 125000 + 373248 = 555472 dense entries, + 9 * 524288 =
    # 4718592 hashed -> 5274064 entries x 2 features = 10548128 params.
    assert lay.n_entries == 5_274_064
    assert lay.n_params == 10_548_128
    assert lay.offsets[:6] == (0, 4096, 17920, 57224, 182224, 555472)
    assert lay.offsets[-1] == 5_274_064
    # tcnn's device exp2f (fast math, <= 2 ulp) must not move a dense level's resolution:
    # every dense scale except the exact level 0 is >= 0.02 from an integer, vs ulps ~ 1e-5.
    for scale, hashed in zip(lay.scales, lay.hashed, strict=True):
        if not hashed and scale != 15.0:
            assert abs(scale - round(scale)) > 0.02
    grid = TorchHashGrid(NEUS2)
    assert grid.params.shape == (10_548_128,)
    assert grid.n_output_dims == 28 and grid.n_levels == 14 and grid.n_features_per_level == 2


def test_dense_sizes_round_up_to_multiples_of_8():
    cfg = HashGridConfig(n_levels=3, base_resolution=5, per_level_scale=2.0, log2_hashmap_size=10)
    lay = grid_layout(cfg)
    # scale_l = 5 * 2^l - 1 = 4, 9, 19 -> resolutions 5, 10, 20.
    #   l=0: 5^3 = 125 -> next multiple of 8 = 128, dense;  l=1: 10^3 = 1000 (already), dense;
    #   l=2: 20^3 = 8000 > 2^10 -> 1024 entries, hashed.
    assert lay.resolutions == (5, 10, 20)
    assert lay.sizes == (128, 1000, 1024) and lay.hashed == (False, False, True)
    assert lay.offsets == (0, 128, 1128, 2152) and lay.n_params == 2 * 2152
    # The dense index wraps modulo the padded size: (5, 4, 4) -> 5 + 4*5 + 4*25 = 125 -> % 128 = 125.
    grid = TorchHashGrid(cfg)
    assert grid.vertex_index(0, torch.tensor([[5, 4, 4], [4, 4, 4]])).tolist() == [125, 124]


def test_to_tcnn_dict():
    d = NEUS2.to_tcnn_dict()
    assert d["otype"] == "HashGrid"
    assert (d["n_levels"], d["n_features_per_level"], d["log2_hashmap_size"], d["base_resolution"]) == (
        14,
        2,
        19,
        16,
    )
    assert d["per_level_scale"] == pytest.approx(2 ** (7 / 13), rel=1e-12)
    assert d["interpolation"] == "Linear"
    assert HashGridConfig(per_level_scale=1.5).to_tcnn_dict()["per_level_scale"] == 1.5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_levels": 0},
        {"n_features_per_level": 3},
        {"log2_hashmap_size": 0},
        {"base_resolution": 1},
        {"finest_resolution": 8},
        {"per_level_scale": 0.5},
    ],
)
def test_config_rejects_bad_values(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        HashGridConfig(**kwargs)


def test_init_and_seed():
    a, b, c = TorchHashGrid(TINY, seed=3), TorchHashGrid(TINY, seed=3), TorchHashGrid(TINY, seed=4)
    assert a.params.dtype == torch.float32
    assert a.params.abs().max() <= 1e-4 and a.params.abs().max() > 5e-5  # tcnn's uniform(-1e-4, 1e-4)
    assert torch.equal(a.params, b.params) and not torch.equal(a.params, c.params)
    assert list(a.state_dict()) == ["params"]


# ----------------------------------------------------------------------------- indexing


def test_vertex_index_closed_forms():
    grid = TorchHashGrid(NEUS2)
    v = torch.tensor
    # Level 0 is dense with res 16: i + 16 j + 256 k.
    #   (3, 5, 7) -> 3 + 80 + 1792 = 1875.
    #   (16, 15, 15) -> 16 + 240 + 3840 = 4096 -> % 4096 = 0 (tcnn's wraparound at x ~ 1).
    #   (-1, 0, 0) -> uint32 0xFFFFFFFF = 4294967295 -> % 4096 = 4095.
    assert grid.vertex_index(0, v([[3, 5, 7], [16, 15, 15], [-1, 0, 0]])).tolist() == [1875, 0, 4095]
    # Level 3 is dense with res 50: (10, 20, 30) -> 10 + 20*50 + 30*2500 = 76010.
    assert grid.vertex_index(3, v([[10, 20, 30]])).tolist() == [76010]
    # Level 5 is hashed (2^19 entries): coherent prime hash, uint32 arithmetic.
    #   (1, 2, 3): 1*1 = 1; 2*2654435761 = 5308871522 -> - 2^32 = 1013904226;
    #   3*805459861 = 2416379583. Low 19 bits: 1, 455522, 460479;
    #   1 ^ 455522 ^ 460479 = 128476.
    assert grid.vertex_index(5, v([[1, 2, 3]])).tolist() == [128476]
    # Level 13 (res 2049, hashed): (100, 37, 2048): 37*2654435761 = 98214123157 -> mod 2^32
    #   3724842645, low 19 bits 300693; 2048*805459861 = 1649581795328 -> mod 2^32 314353664,
    #   low 19 bits 305152; 100 ^ 300693 ^ 305152 = 16113.  (0, 0, 0) -> 0.
    assert grid.vertex_index(13, v([[100, 37, 2048], [0, 0, 0]])).tolist() == [16113, 0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_reads_the_hand_computed_entries(dtype):
    """One-hot tables: the feature read at a point is weight * value of the derived entry."""
    grid = TorchHashGrid(NEUS2)
    lay = grid.layout
    with torch.no_grad():
        grid.params.zero_()
        table = grid.params.view(-1, 2)
        # Level 0, vertex (3, 5, 7) -> entry 1875 (offset 0); features (1, 2).
        table[0 + 1875] = torch.tensor([1.0, 2.0])
        # Level 5, vertex (1, 2, 3) -> entry 128476 after offset 555472; features (3, -4).
        table[555472 + 128476] = torch.tensor([3.0, -4.0])
    # Points at vertex-space position g + 0.25: the lower corner g gets weight 0.75^3.
    g0 = torch.tensor([3.0, 5.0, 7.0], dtype=torch.float64)
    g5 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    x = torch.stack([(g0 - 0.25) / lay.scales[0], (g5 - 0.25) / lay.scales[5]]).to(dtype)
    out = grid(x)
    assert out.dtype == dtype and out.shape == (2, 28)
    w = 0.75**3
    expected = torch.zeros(2, 28, dtype=torch.float64)
    expected[0, 0:2] = torch.tensor([1.0, 2.0]) * w
    expected[1, 10:12] = torch.tensor([3.0, -4.0]) * w
    # float64: exact up to rounding of x (1e-15); float32: x carries a 2^-24 relative error, which
    # moves pos by <= 2^-24 * 103 ~ 6e-6 and the weight by <= 3 * 0.75^2 * 6e-6 ~ 1e-5 (x4 for value 4).
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=tol)


def test_output_is_level_major_and_feature_contiguous():
    """Level l's entries all hold (c_l0, c_l1): the output is c_lf at column l*F + f."""
    grid = TorchHashGrid(NEUS2)
    lay = grid.layout
    consts = torch.arange(28, dtype=torch.float32).reshape(14, 2) + 1
    with torch.no_grad():
        table = grid.params.view(-1, 2)
        for level in range(14):
            table[lay.offsets[level] : lay.offsets[level + 1]] = consts[level]
    x = torch.rand(100, 3, generator=torch.Generator().manual_seed(1))
    # Trilinear weights sum to 1 (partition of unity); float32 sum of 8 weights ~ 1e-7 relative.
    torch.testing.assert_close(grid(x), consts.reshape(1, 28).expand(100, 28), rtol=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------- interpolation


def test_linear_table_is_interpolated_exactly():
    """Level 0 (dense, res 16) storing an affine function of the vertex coords reproduces it."""
    cfg = HashGridConfig(n_levels=2, base_resolution=16, log2_hashmap_size=12, per_level_scale=2.0)
    grid = TorchHashGrid(cfg).double()
    a = torch.tensor([[0.3, -1.2, 2.0], [1.5, 0.25, -0.7]], dtype=torch.float64)  # (F, 3)
    d = torch.tensor([0.1, -2.0], dtype=torch.float64)
    ijk = torch.stack(torch.meshgrid(*[torch.arange(16)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)
    entry = ijk[:, 0] + 16 * ijk[:, 1] + 256 * ijk[:, 2]  # dense index, level offset 0
    with torch.no_grad():
        grid.params.view(-1, 2)[entry] = ijk.double() @ a.T + d
    # pos = 15 x + 0.5 < 15 keeps all corners inside [0, 15] (no wraparound vertex 16).
    x = torch.rand(500, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.96
    x.requires_grad_(True)
    out = grid(x)[:, :2]
    pos = 15.0 * x + 0.5
    # Trilinear interpolation is exact for affine functions; float64 rounding ~ 1e-14 * 60.
    torch.testing.assert_close(out, pos @ a.T + d, rtol=0, atol=1e-11)
    # d feature_f / dx = 15 a_f, exactly, inside every cell.
    for f in range(2):
        (gx,) = torch.autograd.grad(out[:, f].sum(), x, retain_graph=True)
        torch.testing.assert_close(gx, (15.0 * a[f]).expand(500, 3), rtol=0, atol=1e-10)


def test_continuous_across_cell_faces():
    """Points on a face of level l's grid, nudged by +-delta, give features within the Lipschitz bound."""
    grid = TorchHashGrid(NEUS2).double()
    _random_params(grid, seed=5)  # |p| <= 1
    lay = grid.layout
    gen = torch.Generator().manual_seed(6)
    delta = 1e-9
    for level in (0, 4, 5, 13):
        scale = lay.scales[level]
        x = torch.rand(16, 3, generator=gen, dtype=torch.float64) * 0.9 + 0.05
        axis = level % 3
        k = torch.floor(x[:, axis] * scale + 0.5)
        x[:, axis] = (k - 0.5) / scale  # pos = k exactly: a cell face
        lo, hi = x.clone(), x.clone()
        lo[:, axis] -= delta
        hi[:, axis] += delta
        jump = (grid(hi) - grid(lo)).abs().reshape(16, 14, 2)
        # |d f_l / dx| <= scale_l * max |p_right - p_left| <= 2 scale_l, so |jump_l| <= 2 delta * 2 scale_l
        # (+1e-12 for float64 rounding of O(1) features); a wrong corner would jump by O(1).
        bound = 4 * delta * torch.tensor(lay.scales, dtype=torch.float64)[None, :, None] + 1e-12
        assert (jump <= bound).all(), f"level {level}: max jump {jump.max().item():.3g}"


def test_float32_path_matches_float64():
    grid64 = TorchHashGrid(NEUS2).double()
    _random_params(grid64, seed=7)
    grid32 = TorchHashGrid(NEUS2)
    grid32.load_state_dict({"params": grid64.params.detach().float()})
    x = torch.rand(2000, 3, generator=torch.Generator().manual_seed(8))
    out32 = grid32(x)
    out64 = grid64(x.double())
    assert out32.dtype == torch.float32
    # float32 rounds pos = fma(scale, x, 0.5) to <= 1 ulp(2 * scale_l) and each param to 2^-24; a
    # feature's slope is <= 2 * max|p| = 2 per unit of pos, so per level |err| <= 2 * ulp + 1e-6.
    ulp = torch.tensor([float(np.spacing(np.float32(2 * s))) for s in grid64.layout.scales])
    tol = (2 * ulp + 1e-6).repeat_interleave(2)
    assert ((out32.double() - out64).abs() <= tol).all()


def test_batched_equals_chunked():
    grid = TorchHashGrid(NEUS2)
    _random_params(grid, seed=9)
    x = torch.rand(300, 3, generator=torch.Generator().manual_seed(10))
    full = grid(x)
    parts = torch.cat([grid(x[:7]), grid(x[7:150]), grid(x[150:])])
    assert torch.equal(full, parts)
    assert grid(x[:0]).shape == (0, 28)


def test_level_feature_mask():
    m = level_feature_mask(NEUS2, 3)
    assert m.shape == (28,) and m[:6].eq(1).all() and m[6:].eq(0).all()
    assert level_feature_mask(NEUS2, 99).eq(1).all()


# ----------------------------------------------------------------------------- gradients


def test_gradcheck_and_gradgradcheck_float64():
    grid = TorchHashGrid(TINY).double()
    _random_params(grid, seed=11)
    assert grid.layout.hashed == (False, True, True)
    # gradcheck perturbs x by 1e-6: keep points 1e-2 (in vertex units, <= 15 per unit x) from faces.
    x = _points_off_faces(TINY, 6, margin=1e-2, seed=12).requires_grad_(True)
    params = grid.params.detach().clone().requires_grad_(True)

    def f(x, params):
        return functional_call(grid, {"params": params}, (x,))

    assert torch.autograd.gradcheck(f, (x, params))
    assert torch.autograd.gradgradcheck(f, (x, params))


def test_eikonal_gradient_wrt_params_gradcheck():
    """d/dparams of the eikonal loss (what NeuS2 trains) against finite differences."""
    grid = TorchHashGrid(TINY).double()
    _random_params(grid, seed=13, scale=0.1)
    x = _points_off_faces(TINY, 8, margin=1e-2, seed=14).requires_grad_(True)
    head = torch.randn(6, generator=torch.Generator().manual_seed(15), dtype=torch.float64)

    def eikonal(params):
        sdf = functional_call(grid, {"params": params}, (x,)) @ head
        (g,) = torch.autograd.grad(sdf.sum(), x, create_graph=True)
        return ((g.norm(dim=-1) - 1.0) ** 2).mean()

    params = grid.params.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(eikonal, (params,))


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_raise_value_error():
    grid = TorchHashGrid(TINY)
    with pytest.raises(ValueError, match="x must be a \\(N, 3\\)"):
        grid(torch.rand(4, 2))
    with pytest.raises(ValueError, match="x must be a floating"):
        grid(torch.zeros(4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="backend"):
        make_hash_grid(TINY, "jax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="level"):
        grid.vertex_index(3, torch.zeros(1, 3, dtype=torch.int64))


def test_make_hash_grid_torch():
    grid = make_hash_grid(TINY, "torch")
    assert isinstance(grid, TorchHashGrid) and grid.n_output_dims == 6


def test_tcnn_backend_without_tinycudann_raises_dependency_error():
    backends = pytest.importorskip("neus2cli.backends")
    try:
        backends.import_tcnn()
    except DependencyError:
        with pytest.raises(DependencyError):
            make_hash_grid(TINY, "tcnn")
    else:
        pytest.skip("tinycudann is installed here")


# ----------------------------------------------------------------------------- GPU parity

# The device of the parity tests (a module constant so a CPU dry run can redirect it).
GPU = "cuda"
N_GPU = 1 << 14


def _tcnn_grid_or_skip(cfg: HashGridConfig, dtype: torch.dtype | None) -> TcnnHashGrid:
    pytest.importorskip("neus2cli.backends")
    try:
        return TcnnHashGrid(cfg, dtype=dtype)
    except DependencyError as err:
        pytest.skip(f"tinycudann unavailable: {err}")


def _gpu_pair(dtype: torch.dtype | None, seed: int = 21) -> tuple[TorchHashGrid, TcnnHashGrid]:
    """The NeuS2 grid on both backends with the same uniform(-1, 1) params, on CUDA."""
    tcnn_grid = _tcnn_grid_or_skip(NEUS2, dtype)
    ref = TorchHashGrid(NEUS2)
    _random_params(ref, seed=seed)
    ref = ref.to(GPU)
    with torch.no_grad():
        tcnn_grid.params.copy_(ref.params)
    return ref, tcnn_grid


# Tolerance model for tcnn vs torch with the same params (|p| <= P):
# * tcnn is built with --use_fast_math, so its exp2f (ex2.approx, <= 2^-22.5 relative error) may
#   put scale_l up to 2 ulp away from ours; both sides round fma(scale, x, 0.5) once, so pos
#   differs by DPOS_l <= 2 ulp(scale_l) * x + ulp(pos) <= 4 ulp(scale_l) (pos < 2 scale_l): 5e-4
#   at the finest level, ~1e-5 at the coarse ones, 0 at level 0 (exactly 15).
# * The encoding is continuous, so points right at a cell face whose cell differs between the
#   backends agree in value; their input gradients may not, so the gradient tests use points
#   >= 2e-3 (vertex units, > 4 DPOS) from every face, and every check allows OUTLIER_FRACTION.
# * fp32 tcnn otherwise differs by float32 rounding and summation order; fp16 tcnn rounds params,
#   cotangents and outputs to 2^-11 relative and accumulates in fp16 (bounds in each test).
OUTLIER_FRACTION = 1e-3
PRECISIONS = [pytest.param(torch.float32, id="fp32"), pytest.param(None, id="fp16")]


def _dpos(grid: TorchHashGrid) -> torch.Tensor:
    """(n_levels,) float64: the bound on |pos_tcnn - pos_torch| above, 4 ulp(scale_l)."""
    ulp = [float(np.spacing(np.float32(s))) for s in grid.layout.scales]
    return 4 * torch.tensor(ulp, dtype=torch.float64, device=GPU)


def _per_feature(grid: TorchHashGrid, per_level: torch.Tensor) -> torch.Tensor:
    return per_level.repeat_interleave(grid.n_features_per_level)


def _scales(grid: TorchHashGrid) -> torch.Tensor:
    return torch.tensor(grid.layout.scales, dtype=torch.float64, device=GPU)


def _input_grad_tol(grid: TorchHashGrid, cot: torch.Tensor, p_max: float, rel: float) -> torch.Tensor:
    """(N, 1) bound on |d/dx tcnn - d/dx torch| for cotangent ``cot`` (N, L*F).

    The (level, feature) term of d/dx_i is cot * scale_l * g_i, with g_i a bilinear blend of the
    cell's differences p_right - p_left (|g_i| <= 2 P) over frac_j, frac_k; its slope in each is
    a mixed difference (<= 4 P), so DPOS in two coordinates moves it by <= 8 P DPOS. Rounding adds
    ``rel`` of the term bound scale_l * 2 P.
    """
    coef = _per_feature(grid, _scales(grid) * p_max * (2 * rel + 8 * _dpos(grid)))
    return cot.abs().double() @ coef[:, None]


def _unweighted_reads(grid: TorchHashGrid, x: torch.Tensor, cot: torch.Tensor) -> torch.Tensor:
    """(n_params,) float64: sum of |cot| over the (point, corner) pairs that read each parameter."""
    lay, n_feat = grid.layout, grid.n_features_per_level
    corners = torch.tensor([[c & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], device=GPU)
    reads = torch.zeros(lay.n_params, dtype=torch.float64, device=GPU)
    for level in range(lay.n_levels):
        cell = torch.floor(x.double() * lay.scales[level] + 0.5).long()  # points are off faces
        vertices = (cell[:, None, :] + corners[None]).reshape(-1, 3)
        entry = grid.vertex_index(level, vertices) + lay.offsets[level]
        for f in range(n_feat):
            weight = cot[:, level * n_feat + f].abs().double().repeat_interleave(8)
            reads.index_add_(0, entry * n_feat + f, weight)
    return reads


def _assert_within(actual, expected, tol, what):
    err = (actual.double() - expected.double()).abs()
    bad = err > tol
    frac = bad.double().mean().item()
    worst = (err / tol.clamp_min(1e-30)).max().item()
    assert frac <= OUTLIER_FRACTION, f"{what}: {frac:.2e} of values outside tolerance (worst {worst:.3g}x)"


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", PRECISIONS)
def test_tcnn_forward_matches_torch(dtype):
    ref, tc = _gpu_pair(dtype)
    assert tc.params.shape == ref.params.shape == (10_548_128,)
    half = tc._tcnn.dtype == torch.half
    x = torch.rand(N_GPU, 3, generator=torch.Generator().manual_seed(22)).to(GPU)
    out_tc, out_ref = tc(x), ref(x)
    assert out_tc.dtype == torch.float32 and out_tc.shape == (N_GPU, 28)
    # DPOS in 3 coordinates moves a feature by <= 3 * 2 P * DPOS (P = 1). fp16: rounding params
    # (2^-12), the 8 weights and the 8-step fp16 fma accumulation (each <= 2^-12 relative of a
    # value <= 1) stays below 18 * 2^-12 ~ 4.4e-3; fp32: float32 rounding, ~1e-6.
    tol = _per_feature(ref, 6 * _dpos(ref) + (5e-3 if half else 1e-5))
    _assert_within(out_tc, out_ref, tol, "forward")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", PRECISIONS)
def test_tcnn_reads_the_hand_computed_entries(dtype):
    """tcnn's own layout: the one-hot entries of test_forward_reads_the_hand_computed_entries."""
    tc = _tcnn_grid_or_skip(NEUS2, dtype)
    lay = tc.layout
    with torch.no_grad():
        tc.params.zero_()
        table = tc.params.view(-1, 2)
        table[1875] = torch.tensor([1.0, 2.0], device=GPU)
        table[555472 + 128476] = torch.tensor([3.0, -4.0], device=GPU)
    g0 = torch.tensor([3.0, 5.0, 7.0], dtype=torch.float64)
    g5 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    x = torch.stack([(g0 - 0.25) / lay.scales[0], (g5 - 0.25) / lay.scales[5]]).float().to(GPU)
    expected = torch.zeros(2, 28, dtype=torch.float64)
    expected[0, 0:2] = torch.tensor([1.0, 2.0]) * 0.75**3
    expected[1, 10:12] = torch.tensor([3.0, -4.0]) * 0.75**3
    # fp16 rounds the weight and the product (<= 3 * 2^-11 relative of values <= 4 * 0.42 = 1.7);
    # DPOS at level 5 (3e-5) moves the 0.75^3 weight by < 1e-4.
    torch.testing.assert_close(tc(x).double().cpu(), expected, rtol=0, atol=5e-3)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", PRECISIONS)
def test_tcnn_backward_matches_torch(dtype):
    ref, tc = _gpu_pair(dtype)
    half = tc._tcnn.dtype == torch.half
    x = _points_off_faces(NEUS2, N_GPU, margin=2e-3, seed=23, dtype=torch.float32).to(GPU)
    cot = torch.randn(N_GPU, 28, generator=torch.Generator().manual_seed(24)).to(GPU)
    x_ref = x.clone().requires_grad_(True)
    x_tc = x.clone().requires_grad_(True)
    gx_ref, gp_ref = torch.autograd.grad(ref(x_ref), (x_ref, ref.params), cot)
    gx_tc, gp_tc = torch.autograd.grad(tc(x_tc), (x_tc, tc.params), cot)

    # fp16 rounds params and the cotangent to 2^-12 relative each: rel 1e-3 with margin.
    _assert_within(gx_tc, gx_ref, _input_grad_tol(ref, cot, 1.0, 1e-3 if half else 1e-5), "d/dx")

    # Param e's gradient sums w * cot over the (point, corner) pairs reading it. DPOS moves each
    # weight by <= 3 DPOS (|dw/dfrac| <= 1 per coordinate): <= 3 DPOS * R_e with R_e the sum of
    # |cot| over those pairs. Rounding: relative to A_e = sum |w cot| (torch with |cot|), fp32
    # atomics ~1e-6; fp16 atomics round each of <= ~60 partial sums (2^14 points * 8 corners over
    # level 0's 4096 entries is 32 on average) to 2^-12: <= 60 * 2^-12 ~ 1.5e-2, so 3e-2, and tiny
    # gradients meet fp16's subnormal spacing 2^-24 / loss scale 128 per rounding: <= 60 * 4.7e-10.
    (a_e,) = torch.autograd.grad(ref(x), (ref.params,), cot.abs())
    level_of_param = torch.repeat_interleave(
        torch.arange(ref.n_levels, device=GPU), torch.tensor(ref.layout.sizes, device=GPU) * 2
    )
    reads = _unweighted_reads(ref, x, cot)
    tol = (3e-2 if half else 1e-5) * a_e.double() + 3 * _dpos(ref)[level_of_param] * reads
    tol = tol + (5e-8 if half else 1e-9)
    _assert_within(gp_tc, gp_ref, tol, "d/dparams")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", PRECISIONS)
def test_tcnn_eikonal_double_backward_matches_torch(dtype):
    ref, tc = _gpu_pair(dtype, seed=25)
    p_max = 1e-2  # keeps |grad sdf| in the range the eikonal loss sees in training
    with torch.no_grad():
        ref.params.mul_(p_max)
        tc.params.copy_(ref.params)
    half = tc._tcnn.dtype == torch.half
    x = _points_off_faces(NEUS2, N_GPU, margin=2e-3, seed=26, dtype=torch.float32).to(GPU)
    head = torch.randn(28, generator=torch.Generator().manual_seed(27)).to(GPU)

    def eikonal_grads(grid):
        xx = x.clone().requires_grad_(True)
        sdf = grid(xx) @ head
        (g,) = torch.autograd.grad(sdf.sum(), xx, create_graph=True)
        loss = ((g.norm(dim=-1) - 1.0) ** 2).mean()
        return torch.autograd.grad(loss, (grid.params,))[0], g.detach()

    gp_ref, g_ref = eikonal_grads(ref)
    gp_tc, g_tc = eikonal_grads(tc)
    cot = head.expand(N_GPU, 28)
    _assert_within(g_tc, g_ref, _input_grad_tol(ref, cot, p_max, 1e-3 if half else 1e-5), "grad sdf")
    # The param gradient is d/dp of sum_i u_i . grad_i (u_i = d loss / d grad_i): per entry a signed
    # sum of scale_l * u_i * head * d w / d frac over the points reading it; compare in norm.
    # DPOS moves d w / d frac by <= 2 DPOS (vs values ~0.5) and grad_i (hence u_i) by
    # _input_grad_tol: measured ~1e-3 relative with scales shifted by 2 ulp in a CPU dry run, so
    # 1e-2. fp16 adds 2^-12 roundings of params, head and grad and fp16 atomics: 4e-2.
    rel = ((gp_tc.double() - gp_ref.double()).norm() / gp_ref.double().norm()).item()
    assert rel <= (4e-2 if half else 1e-2), f"relative error of d eikonal / d params: {rel:.2e}"


@pytest.mark.gpu
@requires_cuda
def test_torch_grid_cuda_matches_cpu():
    grid = TorchHashGrid(NEUS2)
    _random_params(grid, seed=28)
    x = torch.rand(4096, 3, generator=torch.Generator().manual_seed(29))
    out_cpu = grid(x)
    out_gpu = grid.cuda()(x.cuda()).cpu()
    # Same indices, same float32 arithmetic up to summation order (~1e-7 of values <= 1).
    torch.testing.assert_close(out_gpu, out_cpu, rtol=1e-5, atol=1e-6)
