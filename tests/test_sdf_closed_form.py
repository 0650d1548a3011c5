"""The SDF MLP's closed-form input gradient and second-order derivatives against autograd.

Three levels: the autograd Function alone (float64 gradcheck/gradgradcheck, and equality with
PyTorch's generic double backward), ``NeuSModel.sdf_and_gradient`` (float64 torch model), and a
whole ``NeuSTrainer`` step (float32). The GPU test compares the two paths on tinycudann.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from neus2cli.compute import Compute
from neus2cli.config import ModelConfig, resolve_config
from neus2cli.model.fields import NeuSModel
from neus2cli.model.sdf_mlp import sdf_mlp_with_gradient
from neus2cli.render.neus import neus_alpha
from neus2cli.train.losses import eikonal_loss
from tests.conftest import requires_cuda

SMALL = ModelConfig(n_levels=6, log2_hashmap_size=12, finest_resolution=128)


def _away_from_kinks(n: int, d: int, h: int, margin: float, gen: torch.Generator):
    """float64 inp (n, d), w1 (h, d): rows whose pre-activations all satisfy |W1 u| > margin.

    Finite differences (eps 1e-6) that straddle a kink W1 u = 0 would see the jump of the
    piecewise-constant gradient; a margin of 0.05 against perturbations of |u| * 1e-6 rules that out.
    """
    w1 = torch.randn(h, d, dtype=torch.float64, generator=gen)
    inp = torch.randn(4 * n, d, dtype=torch.float64, generator=gen)
    pre = inp @ w1.t()
    keep = (pre.abs() > margin).all(dim=1)
    inp, pre = inp[keep][:n], pre[keep][:n]
    assert inp.shape[0] == n
    # Both mask signs, in every hidden unit: the active set really varies over the batch.
    assert bool(((pre > 0).any(0) & (pre < 0).any(0)).all())
    return inp, w1


def _loss(out: torch.Tensor, g: torch.Tensor, c_out: torch.Tensor, c_g: torch.Tensor) -> torch.Tensor:
    """A scalar using both outputs the way training does: linear terms and an eikonal-like |g| term."""
    return (c_out * out).sum() + (c_g * g).sum() + ((g.norm(dim=-1) - 1.0) ** 2).mean() + (out[:, 0] ** 2).mean()


def test_function_gradcheck_and_gradgradcheck():
    gen = torch.Generator().manual_seed(0)
    inp, w1 = _away_from_kinks(12, 5, 7, 0.05, gen)
    w2 = torch.randn(3, 7, dtype=torch.float64, generator=gen)
    args = tuple(t.clone().requires_grad_(True) for t in (inp, w1, w2))
    assert torch.autograd.gradcheck(sdf_mlp_with_gradient, args)
    assert torch.autograd.gradgradcheck(sdf_mlp_with_gradient, args)
    # Only one output's cotangent (e.g. the pre-pass of a loss that ignores g) is handled too.
    assert torch.autograd.gradcheck(lambda *a: sdf_mlp_with_gradient(*a)[1], args)
    assert torch.autograd.gradcheck(lambda *a: sdf_mlp_with_gradient(*a)[0], args)


def test_function_matches_generic_double_backward():
    gen = torch.Generator().manual_seed(1)
    n, d, h, o = 200, 19, 16, 4
    inp = torch.randn(n, d, dtype=torch.float64, generator=gen, requires_grad=True)
    w1 = torch.randn(h, d, dtype=torch.float64, generator=gen, requires_grad=True)
    w2 = torch.randn(o, h, dtype=torch.float64, generator=gen, requires_grad=True)
    c_out = torch.randn(n, o, dtype=torch.float64, generator=gen)
    c_g = torch.randn(n, d, dtype=torch.float64, generator=gen)

    out, g = sdf_mlp_with_gradient(inp, w1, w2)
    ours = torch.autograd.grad(_loss(out, g, c_out, c_g), (inp, w1, w2))

    out_ref = F.linear(torch.relu(F.linear(inp, w1)), w2)
    (g_ref,) = torch.autograd.grad(out_ref[:, 0].sum(), inp, create_graph=True)
    ref = torch.autograd.grad(_loss(out_ref, g_ref, c_out, c_g), (inp, w1, w2))

    # Same maths, different summation order: float64 rounding of sums over <= 200 terms of O(10)
    # values is ~1e-13 relative; 1e-11 leaves room and still catches any missing term.
    torch.testing.assert_close(out, out_ref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(g, g_ref, rtol=1e-11, atol=1e-11)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def _float64_models(active_levels: int) -> tuple[NeuSModel, NeuSModel]:
    torch.manual_seed(0)
    ref = NeuSModel(dataclasses.replace(SMALL, sdf_gradient="autograd"), Compute.cpu())
    with torch.no_grad():
        # Away from the init (feature columns zero, a 1e-4 grid), so the hash grid's path matters.
        ref.sdf_net.hidden.weight.normal_(0.0, 0.5)
        ref.sdf_net.encoding.params.normal_(0.0, 0.3)
    ours = NeuSModel(SMALL, Compute.cpu())
    assert ours.sdf_net.sdf_gradient == "closed_form" and ref.sdf_net.sdf_gradient == "autograd"
    ours.load_state_dict(ref.state_dict())
    for m in (ref, ours):
        m.double()
        m.sdf_net.set_active_levels(active_levels)
    return ref, ours


def _model_loss(model: NeuSModel, x: torch.Tensor, dirs: torch.Tensor):
    sdf, grad, outputs = model.sdf_and_gradient(x, create_graph=True)
    rgb = model.color(outputs, dirs, x, grad)
    alpha = neus_alpha(sdf, grad, dirs, torch.full_like(sdf, 0.01), model.inv_s)
    loss = eikonal_loss(grad) + (rgb * alpha[:, None]).mean() + (sdf**2).mean()
    return sdf, grad, outputs, loss


def test_model_closed_form_equals_autograd_float64():
    ref, ours = _float64_models(active_levels=4)  # two masked levels: their params must get zero gradient
    gen = torch.Generator().manual_seed(2)
    # x with its own graph, as in the dynamic run where a learned transform produces the points.
    shift = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    base = torch.rand(300, 3, dtype=torch.float64, generator=gen) * 0.8 + 0.1
    dirs = F.normalize(torch.randn(300, 3, dtype=torch.float64, generator=gen), dim=-1)
    results = []
    for model in (ref, ours):
        x = base + shift
        sdf, grad, outputs, loss = _model_loss(model, x, dirs)
        params = [p for p in model.parameters()]
        grads = torch.autograd.grad(loss, params + [shift])
        results.append((sdf, grad, outputs, grads))
        features = model.sdf_net.encoding(x).to(torch.float64) * model.sdf_net.level_mask
        h = model.sdf_net.hidden(torch.cat([x - 0.5, features], -1))
        assert 0.2 < (h > 0).double().mean() < 0.8  # both ReLU signs present
    (sdf_a, grad_a, out_a, grads_a), (sdf_b, grad_b, out_b, grads_b) = results
    # Same float64 maths in a different order: relative differences are ~1e-15; grads of params
    # sum over 300 samples and 8 grid corners, 1e-10 still fails any wrong or missing term.
    tol = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sdf_b, sdf_a, **tol)
    torch.testing.assert_close(grad_b, grad_a, **tol)
    torch.testing.assert_close(out_b, out_a, **tol)
    for (name, _), a, b in zip(ref.named_parameters(), grads_a, grads_b, strict=False):
        torch.testing.assert_close(b, a, **tol, msg=name)
    torch.testing.assert_close(grads_b[-1], grads_a[-1], **tol, msg="x's own graph")
    assert grads_b[-1].abs().max() > 0
    # Masked levels (4 and 5 of 6): their table entries get exactly zero gradient.
    params_grad = grads_b[[n for n, _ in ours.named_parameters()].index("sdf_net.encoding.params")]
    lay = ours.sdf_net.encoding.layout
    masked = params_grad[lay.offsets[4] * lay.n_features_per_level :]
    assert params_grad.abs().max() > 0 and bool((masked == 0).all())


def test_model_without_create_graph_gives_the_same_detached_gradient():
    ref, ours = _float64_models(active_levels=6)
    x = torch.rand(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    _, grad_a, _ = ref.sdf_and_gradient(x, create_graph=False)
    sdf_b, grad_b, _ = ours.sdf_and_gradient(x, create_graph=False)
    assert grad_b.grad_fn is None and not x.requires_grad
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-10, atol=1e-12)  # float64 rounding, as above
    torch.testing.assert_close(sdf_b, ours.sdf(x), rtol=1e-12, atol=1e-12)  # same forward (pre-pass path)


def _trainer_gradients(scene, sdf_gradient: str) -> dict[str, torch.Tensor]:
    from neus2cli.data.images import load_images
    from neus2cli.data.loader import load_scene
    from neus2cli.train.pixels import PixelBank
    from neus2cli.train.trainer import NeuSTrainer

    cfg = resolve_config("fast", ["backend=torch", "sampling.grid_resolution=32", f"model.sdf_gradient={sdf_gradient}"])
    loaded = load_scene(scene)
    torch.manual_seed(0)
    bank = PixelBank(loaded.train_views, load_images(loaded.train_views, progress=False), loaded.normalization, "cpu")
    trainer = NeuSTrainer(cfg, Compute.cpu(), bank)
    with torch.no_grad():  # features that matter (at init their first-layer columns are zero)
        trainer.model.sdf_net.hidden.weight[:, 3:].normal_(0.0, 0.5)
        trainer.model.sdf_net.encoding.params.normal_(0.0, 0.05)
    torch.manual_seed(1)  # the same occupancy update and stratified jitter for both
    stats = trainer.train_step()
    assert stats.n_samples > 1000
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def test_training_step_gradients_match(tmp_path):
    from tests.scenes import static_scene

    scene = static_scene(tmp_path / "lumpy", views=4, size=32)
    ref = _trainer_gradients(scene, "autograd")
    ours = _trainer_gradients(scene, "closed_form")
    assert ref.keys() == ours.keys() and "sdf_net.encoding.params" in ref and "sdf_net.out.weight" in ref
    for name, a in ref.items():
        # float32: the same sums in another order differ by ~1e-7 relative per term, and a gradient
        # summed over thousands of samples with cancellations can keep ~1e-5 of its largest entry
        # (measured: at most 8e-8 of the max, in sdf_net.out.weight). 1e-4 of the tensor's max still
        # fails a wrong or missing term (each is O(1) of it).
        scale = a.abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(ours[name], a, rtol=1e-4, atol=1e-4 * scale, msg=name)


@pytest.mark.gpu
@requires_cuda
def test_tcnn_closed_form_equals_autograd():
    from neus2cli import backends
    from neus2cli.errors import DependencyError

    try:
        backend = backends.resolve_backend("tcnn")
    except DependencyError as exc:  # a GPU machine without tinycudann or nerfacc
        pytest.skip(f"tcnn backend unavailable: {exc}")
    torch.manual_seed(0)
    ref = NeuSModel(dataclasses.replace(SMALL, sdf_gradient="autograd"), Compute(backend, "cuda"))
    with torch.no_grad():
        ref.sdf_net.hidden.weight.normal_(0.0, 0.5)
        ref.sdf_net.encoding.params.normal_(0.0, 0.3)
    ours = NeuSModel(SMALL, Compute(backend, "cuda"))
    ours.load_state_dict(ref.state_dict())
    gen = torch.Generator(device="cuda").manual_seed(4)
    x = torch.rand(4096, 3, device="cuda", generator=gen) * 0.8 + 0.1
    dirs = F.normalize(torch.randn(4096, 3, device="cuda", generator=gen), dim=-1)
    results = []
    for model in (ref, ours):
        model.sdf_net.set_active_levels(4)
        sdf, grad, outputs, loss = _model_loss(model, x, dirs)
        results.append((sdf, grad, torch.autograd.grad(loss, list(model.parameters()))))
    (sdf_a, grad_a, grads_a), (sdf_b, grad_b, grads_b) = results
    # The forward is the same code (same tcnn features, same F.linear): equal up to float32 rounding.
    torch.testing.assert_close(sdf_b, sdf_a, rtol=1e-5, atol=1e-6)

    # tcnn runs the encoding's backward (and backward-of-backward) in fp16 (eps 2^-10 ~ 1e-3) on a
    # cotangent that differs between the paths by float32 rounding, which can flip fp16 roundings:
    # compare relative norms at 1e-2, ten fp16 ulps, far below the O(1) error of a wrong term.
    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()

    assert rel(grad_b, grad_a) < 1e-2
    for (name, _), a, b in zip(ref.named_parameters(), grads_a, grads_b, strict=True):
        assert a.norm() > 0, name
        assert rel(b, a) < 1e-2, name
