"""The fixed-shape training step (``render.fixed``, ``train.fixed_step``) against the eager one.

On the CPU: the sync-free transmittance against the twin (and float64 gradcheck), the fixed-shape
render against ``render_rays`` on the same rays, what a capacity cut keeps, and one whole training
step's gradients against the eager step's. On the GPU (``gpu`` marker): a captured step equals an
eager fixed-shape step on the same batch, with both backends.
"""

from __future__ import annotations

import pytest
import torch

from neus2cli.compute import Compute
from neus2cli.config import resolve_config
from neus2cli.model.fields import NeuSModel
from neus2cli.render.fixed import render_rays_fixed
from neus2cli.render.occupancy import make_occupancy_grid
from neus2cli.render.renderer import NORMALIZED_CUBE, render_rays
from neus2cli.render.volrend import render_transmittance_from_alpha, transmittance_sorted

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _packed(gen: torch.Generator, n_rays: int = 40, pad: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.randint(0, 30, (n_rays,), generator=gen)
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    ray_indices = torch.cat([ray_indices, torch.full((pad,), n_rays)])  # padding: one ray past the last
    alphas = torch.rand(ray_indices.shape[0], generator=gen, dtype=torch.float64) * 0.3
    alphas[::17] = 1.0  # opaque samples: the transmittance after them is 0
    return alphas, ray_indices


def test_transmittance_sorted_equals_the_twin():
    alphas, ray_indices = _packed(torch.Generator().manual_seed(0))
    ours = transmittance_sorted(alphas, ray_indices)
    ref = render_transmittance_from_alpha(alphas, ray_indices=ray_indices, n_rays=41, impl="torch")
    # float64 log-space sums of ~1e3 terms: ~1e-13 absolute; the clamp at 1e-30 shows as 1e-30.
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-25)


def test_transmittance_sorted_gradcheck():
    alphas, ray_indices = _packed(torch.Generator().manual_seed(1), n_rays=6, pad=2)
    alphas = alphas.clamp_max(0.9).requires_grad_(True)  # away from the clamp, where it is smooth
    assert torch.autograd.gradcheck(lambda a: transmittance_sorted(a, ray_indices), (alphas,))


def _setup(seed: int = 0, n_rays: int = 192):
    """A torch model with lumpy features, a grid with a band of occupied cells, rays into the cube."""
    cfg = resolve_config("fast", ["backend=torch"])
    compute = Compute.cpu()
    torch.manual_seed(seed)
    model = NeuSModel(cfg.model, compute)
    with torch.no_grad():
        model.sdf_net.hidden.weight[:, 3:].normal_(0.0, 0.5)
        model.sdf_net.encoding.params.normal_(0.0, 0.05)
        model.variance.fill_(0.8)  # s = e^8: sharp enough that the early stop drops samples
    grid = make_occupancy_grid(compute, NORMALIZED_CUBE, 32)
    centres = (torch.stack(torch.meshgrid(*[torch.arange(32)] * 3, indexing="ij"), -1).float() + 0.5) / 32
    radius = (centres - 0.5).norm(dim=-1)
    grid.binaries[0] = (radius > 0.15) & (radius < 0.35)
    gen = torch.Generator().manual_seed(seed + 1)
    target = 0.5 + 0.1 * (torch.rand(n_rays, 3, generator=gen) - 0.5)
    rays_o = target + 1.5 * torch.nn.functional.normalize(torch.randn(n_rays, 3, generator=gen), dim=-1)
    rays_d = torch.nn.functional.normalize(target - rays_o, dim=-1)
    bg = torch.rand(n_rays, 3, generator=gen)
    jitter = torch.rand(n_rays, generator=gen)
    return cfg, model, grid, rays_o, rays_d, bg, jitter


def _fixed(model, grid, rays_o, rays_d, bg, jitter, cfg, *, n_active=None, march=1 << 16, samples=1 << 15):
    n = rays_o.shape[0] if n_active is None else n_active
    return render_rays_fixed(
        model,
        grid.binaries[0],
        rays_o,
        rays_d,
        torch.tensor(n),
        step_size=cfg.sampling.step_size,
        bg_color=bg,
        march_capacity=march,
        sample_capacity=samples,
        aabb=torch.tensor(NORMALIZED_CUBE),
        early_stop_eps=cfg.sampling.early_stop_eps,
        jitter=jitter,
    )


def test_fixed_render_equals_render_rays():
    cfg, model, grid, rays_o, rays_d, bg, jitter = _setup()
    ref = render_rays(
        model, grid, rays_o, rays_d, step_size=cfg.sampling.step_size, bg_color=bg, impl="torch",
        early_stop_eps=cfg.sampling.early_stop_eps, train=True, jitter=jitter,
    )  # fmt: skip
    out = _fixed(model, grid, rays_o, rays_d, bg, jitter, cfg)
    assert bool(out.ray_valid.all()) and int(out.n_samples) == ref.n_samples > 2000
    # Early stop kept fewer samples than marched (the pre-pass matters in this setup).
    assert int(out.n_kept) < int(out.n_marched)
    # float32 sums in another order (cumprod vs log-space cumsum): ~1e-6.
    torch.testing.assert_close(out.rgb, ref.rgb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.opacity, ref.opacity, rtol=1e-5, atol=1e-5)
    # Gradients of a colour + eikonal loss through both.
    g_ref = torch.autograd.grad(
        ref.rgb.square().sum() + ((ref.sdf_grad.norm(dim=-1) - 1) ** 2).mean(), list(model.parameters())
    )
    w = out.sample_valid.float()
    eik = (((out.sdf_grad.norm(dim=-1) - 1) ** 2) * w).sum() / w.sum()
    g_out = torch.autograd.grad(out.rgb.square().sum() + eik, list(model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), g_ref, g_out, strict=True):
        scale = a.abs().max().item()
        # Same terms summed in another order over ~1e4 samples: well under 1e-4 of the largest entry.
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * scale + 1e-12, msg=name)


def test_fixed_render_inactive_rays_get_background_only():
    cfg, model, grid, rays_o, rays_d, bg, jitter = _setup()
    out = _fixed(model, grid, rays_o, rays_d, bg, jitter, cfg, n_active=100)
    assert int(out.n_rendered) == 100 and bool(out.ray_valid[:100].all()) and not bool(out.ray_valid[100:].any())
    torch.testing.assert_close(out.rgb[100:], bg[100:])  # no sample: exactly the background
    full = _fixed(model, grid, rays_o, rays_d, bg, jitter, cfg)
    torch.testing.assert_close(out.rgb[:100], full.rgb[:100], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("which", ["march", "samples"])
def test_capacity_cut_drops_whole_rays_from_the_first_cut_one(which):
    cfg, model, grid, rays_o, rays_d, bg, jitter = _setup()
    full = _fixed(model, grid, rays_o, rays_d, bg, jitter, cfg)
    limit = int(full.n_marched if which == "march" else full.n_samples) // 2
    kwargs = {"march": limit} if which == "march" else {"samples": limit}
    cut = _fixed(model, grid, rays_o, rays_d, bg, jitter, cfg, **kwargs)
    k = int(cut.n_rendered)
    assert 0 < k < rays_o.shape[0]
    assert bool(cut.ray_valid[:k].all()) and not bool(cut.ray_valid[k:].any())  # a prefix of the rays
    assert int(cut.n_samples) <= limit
    # The rays kept are rendered exactly as without the cut.
    torch.testing.assert_close(cut.rgb[:k], full.rgb[:k], rtol=1e-6, atol=1e-6)


def _trainer(scene, fixed_shapes: bool):
    from neus2cli.data.images import load_images
    from neus2cli.data.loader import load_scene
    from neus2cli.train.pixels import PixelBank
    from neus2cli.train.trainer import NeuSTrainer

    # Every ray active from the first step (initial = max rays) and budgets that cut nothing, so
    # both steps see the same batch: the generator's draws are the same in both.
    overrides = ["backend=torch", "sampling.grid_resolution=32", "sampling.initial_rays=256", "sampling.max_rays=256"]
    cfg = resolve_config("fast", overrides + ["sampling.target_samples=65536"])
    loaded = load_scene(scene)
    torch.manual_seed(0)
    bank = PixelBank(loaded.train_views, load_images(loaded.train_views, progress=False), loaded.normalization, "cpu")
    trainer = NeuSTrainer(cfg, Compute.cpu(), bank, fixed_shapes=fixed_shapes)
    with torch.no_grad():
        trainer.model.sdf_net.hidden.weight[:, 3:].normal_(0.0, 0.5)
        trainer.model.sdf_net.encoding.params.normal_(0.0, 0.05)
    return trainer


def test_fixed_step_gradients_equal_the_eager_step(tmp_path):
    from tests.scenes import static_scene

    scene = static_scene(tmp_path / "lumpy", views=4, size=32)
    grads, losses = [], []
    for fixed in (False, True):
        trainer = _trainer(scene, fixed)
        torch.manual_seed(1)  # the same occupancy update for both
        stats = trainer.train_step()
        assert int(stats.n_samples) > 1000
        losses.append(float(stats.loss))
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)  # float32 sums in another order
    assert grads[0].keys() == grads[1].keys() and "sdf_net.encoding.params" in grads[0]
    for name, a in grads[0].items():
        scale = a.abs().max().item()
        # As in test_sdf_closed_form: the same terms in another order keep well under 1e-4 of the max.
        torch.testing.assert_close(grads[1][name], a, rtol=1e-4, atol=1e-4 * scale, msg=name)


def test_fixed_step_trains_and_adapts_the_ray_count(tmp_path):
    from tests.scenes import static_scene

    scene = static_scene(tmp_path / "lumpy", views=4, size=32)
    trainer = _trainer(scene, True)
    first = trainer.train_step()
    for _ in range(5):
        last = trainer.train_step()
    assert float(last.loss) < float(first.loss)
    # 256 rays at most; the ray count is read back only for the checkpoint.
    assert 64 <= trainer.state_dict()["n_rays"] <= 256


@pytest.mark.gpu
@requires_cuda
def test_captured_step_equals_eager_fixed_step(tmp_path):
    """A replay of the captured step and an eager step, from the same state on the same batch, give
    the same loss, counts and gradients (the graph runs the very kernels of the eager body)."""
    pytest.importorskip("tinycudann")
    from neus2cli.compute import resolve_compute
    from neus2cli.data.images import load_images
    from neus2cli.data.loader import load_scene
    from neus2cli.train.pixels import PixelBank
    from neus2cli.train.trainer import NeuSTrainer
    from tests.scenes import static_scene

    scene = static_scene(tmp_path / "lumpy", views=8, size=64)
    loaded = load_scene(scene)
    images = load_images(loaded.train_views, progress=False)

    def trainer(graph: bool) -> NeuSTrainer:
        cfg = resolve_config("fast", ["backend=tcnn", f"train.cuda_graph={str(graph).lower()}"])
        compute = resolve_compute("tcnn")
        torch.manual_seed(0)
        return NeuSTrainer(cfg, compute, PixelBank(loaded.train_views, images, loaded.normalization, compute.device))

    captured = trainer(True)
    for _ in range(5):  # 3 warm-up steps, the capture and its first replay, one more replay
        torch.manual_seed(captured.step)  # the grid update's draws
        captured.train_step()
    assert captured.fixed_step._graph is not None
    eager = trainer(False)
    eager.load_state_dict(captured.state_dict())
    results = []
    for t in (captured, eager):
        torch.manual_seed(1000)
        stats = t.train_step()
        grads = {n: p.grad.detach().float().clone() for n, p in t.model.named_parameters() if p.grad is not None}
        results.append((float(stats.loss), int(stats.n_samples), int(stats.n_rays), grads))
    (loss_c, samples_c, rays_c, grads_c), (loss_e, samples_e, rays_e, grads_e) = results
    assert eager.fixed_step._graph is None
    assert (samples_c, rays_c) == (samples_e, rays_e) and samples_c > 5_000, (results[0][:3], results[1][:3])
    # The hash grid's backward adds in fp16 with atomics, in a varying order: ~1e-4 relative.
    assert loss_c == pytest.approx(loss_e, rel=1e-4)
    assert grads_c.keys() == grads_e.keys() and "sdf_net.encoding.params" in grads_c
    for name, a in grads_e.items():
        # fp16 atomics over ~1e5 samples: a few 1e-4 of the largest entry; 1e-2 still fails a stale
        # buffer or a missing term (each is O(1) of it).
        scale = a.abs().max().item()
        torch.testing.assert_close(grads_c[name], a, rtol=1e-2, atol=1e-2 * scale + 1e-7, msg=name)
