"""Compositing of packed samples (neus2cli.render.volrend) and ray/box intersection (render.aabb)."""

from __future__ import annotations

import math

import pytest
import torch

from neus2cli.render.aabb import ray_aabb_intersect
from neus2cli.render.volrend import (
    accumulate_along_rays,
    composite,
    exclusive_prod,
    pack_info,
    render_transmittance_from_alpha,
    render_transmittance_from_density,
    render_visibility_from_alpha,
    render_weight_from_alpha,
)
from tests.conftest import requires_cuda

# Double-precision closed forms: only rounding of a few products differs.
F64 = {"rtol": 1e-12, "atol": 1e-14}


def _packed(counts: list[int], dtype=torch.float64, seed: int = 0, device="cpu"):
    """Random alphas in [0, 1) for rays with the given sample counts, packed by ray."""
    g = torch.Generator().manual_seed(seed)
    ray_indices = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    alphas = torch.rand(int(sum(counts)), generator=g, dtype=dtype)
    return alphas.to(device), ray_indices.to(device)


def _dense_reference(alphas: torch.Tensor, ray_indices: torch.Tensor, n_rays: int):
    """Weights and transmittance by an explicit per-ray product loop (obviously right, slow)."""
    trans, weights = [], []
    for r in range(n_rays):
        a = alphas[ray_indices == r]
        for i in range(a.shape[0]):
            t = torch.prod(1.0 - a[:i]) if i > 0 else torch.ones((), dtype=a.dtype)
            trans.append(t)
            weights.append(t * a[i])
    if not trans:
        return alphas[:0], alphas[:0]
    return torch.stack(weights), torch.stack(trans)


# --------------------------------------------------------------------------- closed forms


def test_constant_alpha_closed_form():
    # k samples of constant alpha a: T_i = (1-a)^i, w_i = a (1-a)^i, sum w = 1 - (1-a)^k.
    a = 0.3
    counts = [1, 3, 0, 7, 12]
    ray_indices = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    alphas = torch.full((sum(counts),), a, dtype=torch.float64)
    weights, trans = render_weight_from_alpha(alphas, ray_indices=ray_indices, n_rays=len(counts))
    position = torch.cat([torch.arange(c) for c in counts]).double()
    torch.testing.assert_close(trans, (1 - a) ** position, **F64)
    torch.testing.assert_close(weights, a * (1 - a) ** position, **F64)
    opacity = accumulate_along_rays(weights, None, ray_indices, len(counts))
    expected = torch.tensor([1 - (1 - a) ** c for c in counts], dtype=torch.float64)
    torch.testing.assert_close(opacity[:, 0], expected, **F64)


def test_nerfacc_docstring_example():
    # The worked example of nerfacc's render_weight_from_alpha docstring.
    alphas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
    ray_indices = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    weights, trans = render_weight_from_alpha(alphas, ray_indices=ray_indices)
    # float32 products of at most 3 factors: 1e-6 covers their rounding.
    torch.testing.assert_close(weights, torch.tensor([0.4, 0.48, 0.012, 0.8, 0.02, 0.0, 0.9]), atol=1e-6, rtol=0)
    torch.testing.assert_close(trans, torch.tensor([1.0, 0.6, 0.12, 1.0, 0.2, 1.0, 1.0]), atol=1e-6, rtol=0)


def test_alpha_one_blocks_the_rest_without_nan():
    alphas, ray_indices = _packed([6, 4])
    alphas = alphas.clone()
    alphas[2] = 1.0  # ray 0, sample 2
    alphas.requires_grad_(True)
    weights, trans = render_weight_from_alpha(alphas, ray_indices=ray_indices, n_rays=2)
    assert torch.isfinite(weights).all() and torch.isfinite(trans).all()
    assert (weights[3:6] == 0).all() and (trans[3:6] == 0).all()
    assert weights[2] == trans[2] > 0
    assert (trans[6:] > 0).all()  # ray 1 is untouched
    cot = torch.randn_like(weights)
    (grad,) = torch.autograd.grad(weights, alphas, cot)
    ref_w, _ = _dense_reference(alphas, ray_indices, 2)
    (ref_grad,) = torch.autograd.grad(ref_w, alphas, cot)
    assert torch.isfinite(grad).all()
    # Exact arithmetic on both sides up to float64 rounding of short products.
    torch.testing.assert_close(grad, ref_grad, **F64)
    # The gradient through later samples is not lost at alpha = 1 (nerfacc's CUDA backward drops it).
    assert grad[2] != 0


# --------------------------------------------------------------------------- layouts


def test_packed_batched_and_packed_info_agree():
    n_rays, n_samples = 5, 9
    alphas = torch.rand(n_rays, n_samples, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ray_indices = torch.arange(n_rays).repeat_interleave(n_samples)
    w_batched, t_batched = render_weight_from_alpha(alphas)
    w_packed, t_packed = render_weight_from_alpha(alphas.reshape(-1), ray_indices=ray_indices, n_rays=n_rays)
    info = pack_info(ray_indices, n_rays)
    w_info, t_info = render_weight_from_alpha(alphas.reshape(-1), packed_info=info)
    # Same factors multiplied in the same order: bitwise equal.
    assert torch.equal(w_batched.reshape(-1), w_packed) and torch.equal(t_batched.reshape(-1), t_packed)
    assert torch.equal(w_info, w_packed) and torch.equal(t_info, t_packed)
    acc_b = accumulate_along_rays(w_batched, alphas[..., None])
    acc_p = accumulate_along_rays(w_packed, alphas.reshape(-1, 1), ray_indices, n_rays)
    torch.testing.assert_close(acc_b, acc_p, **F64)


def test_pack_info_counts_and_empty_rays():
    ray_indices = torch.tensor([0, 0, 2, 2, 2, 4])
    info = pack_info(ray_indices, n_rays=6)
    assert info.tolist() == [[0, 2], [2, 0], [2, 3], [5, 0], [5, 1], [6, 0]]
    assert pack_info(ray_indices).shape == (5, 2)


def test_empty_inputs():
    empty = torch.zeros(0)
    weights, trans = render_weight_from_alpha(empty, ray_indices=torch.zeros(0, dtype=torch.int64), n_rays=3)
    assert weights.shape == trans.shape == (0,)
    out = accumulate_along_rays(weights, None, torch.zeros(0, dtype=torch.int64), 3)
    assert torch.equal(out, torch.zeros(3, 1))


# --------------------------------------------------------------------------- gradients


def test_gradients_match_dense_reference():
    alphas, ray_indices = _packed([5, 1, 0, 8, 3], seed=3)
    alphas = alphas.clone()
    alphas[[0, 9]] = torch.tensor([0.0, 1.0], dtype=alphas.dtype)  # the awkward values
    alphas.requires_grad_(True)
    values = torch.randn(alphas.shape[0], 3, dtype=torch.float64, requires_grad=True)
    weights, composited, opacity = composite(alphas, values, ray_indices, 5)
    ref_w, _ = _dense_reference(alphas, ray_indices, 5)
    ref_c = torch.zeros(5, 3, dtype=torch.float64).index_add(0, ray_indices, ref_w[:, None] * values)
    cot_w, cot_c, cot_o = torch.randn_like(weights), torch.randn_like(composited), torch.randn_like(opacity)
    grads = torch.autograd.grad((weights, composited, opacity), (alphas, values), (cot_w, cot_c, cot_o))
    ref_o = torch.zeros(5, 1, dtype=torch.float64).index_add(0, ray_indices, ref_w[:, None])
    ref_grads = torch.autograd.grad((ref_w, ref_c, ref_o), (alphas, values), (cot_w, cot_c, cot_o))
    torch.testing.assert_close(weights, ref_w, **F64)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, **F64)


def test_gradcheck_float64():
    alphas, ray_indices = _packed([3, 0, 4, 2], seed=5)
    alphas = (alphas * 0.9 + 0.05).requires_grad_(True)  # away from 0/1 for finite differences

    def fn(a):
        return render_weight_from_alpha(a, ray_indices=ray_indices, n_rays=4)

    assert torch.autograd.gradcheck(fn, (alphas,))
    assert torch.autograd.gradgradcheck(fn, (alphas,))


def test_exclusive_prod_batched_zero_gradient():
    # d/dx_i of prod_{j<k} x_j with a zero factor elsewhere: torch.cumprod handles zeros exactly.
    x = torch.tensor([[0.5, 0.0, 0.25, 2.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(exclusive_prod, (x,))


# --------------------------------------------------------------------------- visibility & density


def test_visibility_rule():
    alphas, ray_indices = _packed([10, 6], seed=7)
    trans = render_transmittance_from_alpha(alphas, ray_indices=ray_indices, n_rays=2)
    vis = render_visibility_from_alpha(alphas, ray_indices=ray_indices, n_rays=2, early_stop_eps=0.05)
    assert torch.equal(vis, trans >= 0.05)
    vis = render_visibility_from_alpha(alphas, ray_indices=ray_indices, n_rays=2, early_stop_eps=0.05, alpha_thre=0.3)
    assert torch.equal(vis, (trans >= 0.05) & (alphas >= 0.3))


def test_transmittance_from_density_closed_form():
    # sigma constant s over k unit intervals: T_i = exp(-s i), alpha = 1 - exp(-s).
    s, k = 0.7, 6
    t_starts = torch.arange(k, dtype=torch.float64)
    trans, alphas = render_transmittance_from_density(
        t_starts,
        t_starts + 1,
        torch.full((k,), s, dtype=torch.float64),
        ray_indices=torch.zeros(k, dtype=torch.int64),
    )
    torch.testing.assert_close(trans, torch.exp(-s * t_starts), **F64)
    torch.testing.assert_close(alphas, torch.full((k,), 1 - math.exp(-s), dtype=torch.float64), **F64)


# --------------------------------------------------------------------------- errors


def test_errors_name_the_argument():
    alphas = torch.rand(4)
    with pytest.raises(ValueError, match="sorted"):
        render_weight_from_alpha(alphas, ray_indices=torch.tensor([0, 1, 0, 1]), n_rays=2)
    with pytest.raises(ValueError, match="n_rays"):
        render_weight_from_alpha(alphas, ray_indices=torch.tensor([0, 1, 2, 3]), n_rays=2)
    with pytest.raises(ValueError, match="ray_indices"):
        render_weight_from_alpha(alphas, ray_indices=torch.tensor([0, 1]), n_rays=2)
    with pytest.raises(ValueError, match="packed_info"):
        render_weight_from_alpha(alphas, packed_info=torch.tensor([[0, 2], [1, 2]]))
    with pytest.raises(ValueError, match="values"):
        accumulate_along_rays(alphas, torch.rand(3, 2), torch.zeros(4, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="n_rays"):
        accumulate_along_rays(alphas, None, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="impl"):
        render_weight_from_alpha(alphas[None], impl="cuda")
    with pytest.raises(ValueError, match="CUDA"):
        render_weight_from_alpha(alphas[None], impl="nerfacc")


# --------------------------------------------------------------------------- ray / box


def test_ray_aabb_intersect_cases():
    box = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    rays_o = torch.tensor(
        [
            [-1.0, 0.5, 0.5],  # hits the x = 0 face head-on
            [0.5, 0.5, 0.5],  # starts inside: t_min negative, not 0
            [-1.0, 2.0, 0.5],  # passes above the box
            [2.0, 0.5, 0.5],  # box behind the ray
            [-1.0, 1.0, 0.5],  # grazes the y = 1 face: a hit with t_min < t_max
            [0.25, 0.5, -2.0],  # axis-aligned along +z
        ]
    )
    rays_d = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [0.0, 0, 1.0]])
    t_min, t_max, hit = ray_aabb_intersect(rays_o, rays_d, box)
    assert hit.tolist() == [True, True, False, False, True, True]
    assert t_min[[0, 1, 4, 5]].tolist() == [1.0, -0.5, 1.0, 2.0]
    assert t_max[[0, 1, 4, 5]].tolist() == [2.0, 0.5, 2.0, 3.0]
    assert torch.isinf(t_min[[2, 3]]).all() and torch.isinf(t_max[[2, 3]]).all()
    # Planes clip after the hit test; (m, 6) boxes give (n_rays, m).
    t_min, t_max, hit = ray_aabb_intersect(rays_o, rays_d, box[None].repeat(2, 1), near_plane=0.0, far_plane=1.5)
    assert t_min.shape == (6, 2) and t_min[1, 0] == 0.0 and t_max[0, 1] == 1.5


def test_ray_aabb_intersect_matches_slab_points():
    # Points at t_min / t_max lie on the box surface, midpoints inside (float32: 1e-5 slack).
    g = torch.Generator().manual_seed(0)
    rays_o = torch.rand(500, 3, generator=g) * 4 - 1.5
    rays_d = torch.nn.functional.normalize(torch.randn(500, 3, generator=g), dim=-1)
    box = torch.tensor([0.1, 0.2, 0.3, 0.9, 0.7, 1.0])
    t_min, t_max, hit = ray_aabb_intersect(rays_o, rays_d, box)
    assert hit.any() and (~hit).any()
    mid = rays_o + rays_d * ((t_min + t_max) / 2)[:, None]
    inside = ((mid >= box[:3] - 1e-5) & (mid <= box[3:] + 1e-5)).all(-1)
    assert torch.equal(inside[hit], torch.ones(int(hit.sum()), dtype=torch.bool))
    # A miss has no point of the ray's forward half inside the box (dense check along t).
    t = torch.linspace(0, 6, 2000)
    pts = rays_o[~hit][:, None] + rays_d[~hit][:, None] * t[None, :, None]
    assert not ((pts > box[:3]) & (pts < box[3:])).all(-1).any()


# --------------------------------------------------------------------------- GPU parity


@pytest.mark.gpu
@requires_cuda
def test_parity_with_nerfacc_forward_backward():
    nerfacc = pytest.importorskip("nerfacc")
    torch.manual_seed(0)
    counts = torch.randint(0, 64, (256,))
    ray_indices = torch.repeat_interleave(torch.arange(256), counts).cuda()
    # alpha < 0.9 keeps nerfacc's division-based backward (1 / (1 - alpha) <= 10) well conditioned.
    alphas = (torch.rand(int(counts.sum()), device="cuda") * 0.9).requires_grad_(True)
    ours_w, ours_t = render_weight_from_alpha(alphas, ray_indices=ray_indices, n_rays=256, impl="torch")
    ref_w, ref_t = nerfacc.render_weight_from_alpha(alphas, ray_indices=ray_indices, n_rays=256)
    auto_w, _ = render_weight_from_alpha(alphas, ray_indices=ray_indices, n_rays=256, impl="auto")
    # float32 products of <= 64 factors: relative error <= 64 * 6e-8 ~ 4e-6.
    torch.testing.assert_close(ours_w, ref_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_t, ref_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(auto_w, ref_w, rtol=0, atol=0)  # "auto" on CUDA is nerfacc itself
    cot = torch.randn_like(ours_w)
    (g_ours,) = torch.autograd.grad(ours_w, alphas, cot)
    (g_ref,) = torch.autograd.grad(ref_w, alphas, cot)
    # nerfacc divides by (1 - alpha) <= 10x amplification of the float32 scan error above.
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-5)
    values = torch.rand(alphas.shape[0], 3, device="cuda")
    torch.testing.assert_close(
        accumulate_along_rays(ours_w, values, ray_indices, 256),
        nerfacc.accumulate_along_rays(ref_w, values, ray_indices, 256),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.gpu
@requires_cuda
def test_ray_aabb_parity_with_nerfacc():
    nerfacc = pytest.importorskip("nerfacc")
    torch.manual_seed(0)
    rays_o = torch.rand(4096, 3, device="cuda") * 3 - 1
    rays_d = torch.nn.functional.normalize(torch.randn(4096, 3, device="cuda"), dim=-1)
    boxes = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0], [-0.5, -0.5, -0.5, 1.5, 1.5, 1.5]], device="cuda")
    ours = ray_aabb_intersect(rays_o, rays_d, boxes)
    ref = nerfacc.ray_aabb_intersect(rays_o, rays_d, boxes)
    assert torch.equal(ours[2], ref[2])
    # Same float32 formula; FMA contraction in the kernel may differ by an ulp or two.
    for a, b in zip(ours[:2], ref[:2], strict=True):
        torch.testing.assert_close(a[ours[2]], b[ours[2]], rtol=1e-6, atol=1e-6)
