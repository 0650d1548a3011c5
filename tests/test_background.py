"""The background field of unmasked scenes (``model.background``): its samples in closed form, its
compositing, the fixed-shape render and training step with it, masks made optional, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from neus2cli.compute import Compute
from neus2cli.config import resolve_config
from neus2cli.model.background import (
    FOREGROUND_RADIUS,
    BackgroundField,
    background_weights,
    inverted_sphere_samples,
)
from neus2cli.model.fields import NeuSModel
from neus2cli.render.fixed import render_rays_fixed
from neus2cli.render.occupancy import make_occupancy_grid
from neus2cli.render.renderer import NORMALIZED_CUBE, render_rays

CENTER = torch.full((3,), 0.5, dtype=torch.float64)


def test_samples_through_the_sphere_lie_on_the_ray_at_their_radius():
    """A ray from 2 units before the centre along +x meets radius r at x = +r (the far root): every
    sample is (x̂, u) = ((1, 0, 0), R / r), and u falls evenly from 1 to 0 (midpoints (S - k - 1/2) / S)."""
    o = (CENTER + torch.tensor([-2.0, 0.0, 0.0], dtype=torch.float64))[None]
    d = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    coords, delta_u = inverted_sphere_samples(o, d, 8)
    s = torch.arange(8, dtype=torch.float64)
    torch.testing.assert_close(coords[0, :, 3], (8 - s - 0.5) / 8)
    torch.testing.assert_close(coords[0, :, :3], torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64).expand(8, 3))
    assert float(delta_u) == pytest.approx(1 / 8)


def test_samples_of_oblique_rays_and_of_rays_that_miss():
    """Random rays (float64): each sample is on its ray ahead of the origin, at radius R / u from the
    centre; a ray that misses the sphere starts at its closest approach, u_max = R / distance."""
    gen = torch.Generator().manual_seed(0)
    o = CENTER + 3.0 * torch.nn.functional.normalize(torch.randn(64, 3, generator=gen, dtype=torch.float64), dim=-1)
    aim = CENTER + 1.5 * (torch.rand(64, 3, generator=gen, dtype=torch.float64) - 0.5)  # some miss the sphere
    d = torch.nn.functional.normalize(aim - o, dim=-1)
    jitter = torch.rand(64, generator=gen, dtype=torch.float64)
    coords, delta_u = inverted_sphere_samples(o, d, 16, jitter)
    u = coords[..., 3]
    points = coords[..., :3] * (FOREGROUND_RADIUS / u)[..., None]  # centred on the cube centre
    rel = points - (o - CENTER)[:, None, :]
    t = (rel * d[:, None, :]).sum(-1)
    # On the ray (the offset from the origin is parallel to d) and ahead of it; float64 rounding ~1e-12.
    torch.testing.assert_close(rel, t[..., None] * d[:, None, :], atol=1e-9, rtol=0)
    assert bool((t >= 0).all())
    closest = ((o - CENTER) - ((o - CENTER) * d).sum(-1, keepdim=True) * d).norm(dim=-1)
    u_max = (FOREGROUND_RADIUS / closest).clamp_max(1.0)
    misses = closest > FOREGROUND_RADIUS
    assert 0 < int(misses.sum()) < 64  # both kinds of rays are tested
    torch.testing.assert_close(delta_u[:, 0], u_max / 16)
    # Stratified: sample k in [(S - k - 1) / S, (S - k) / S) * u_max, front to back.
    k = torch.arange(16, dtype=torch.float64)
    torch.testing.assert_close(u, u_max[:, None] * (1 - (k + jitter[:, None]) / 16))


def test_weights_sum_to_one_and_a_constant_field_renders_its_colour():
    """The last sample is opaque, so a field of constant colour c renders c on every ray, whatever its
    density: c = sigmoid(b) with the colour head's last layer zeroed and bias b."""
    field = BackgroundField(hidden=16, n_frequencies=4, n_samples=12)
    with torch.no_grad():
        field.rgb[-1].weight.zero_()
        field.rgb[-1].bias.copy_(torch.tensor([-1.0, 0.0, 2.0]))
    gen = torch.Generator().manual_seed(1)
    o = 0.5 + 2.0 * torch.nn.functional.normalize(torch.randn(50, 3, generator=gen), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(50, 3, generator=gen), dim=-1)
    rgb = field(o, d, torch.rand(50, generator=gen))
    # float32 sums of 12 weights that add up to 1: a few ulps.
    torch.testing.assert_close(rgb, torch.sigmoid(torch.tensor([-1.0, 0.0, 2.0])).expand(50, 3), atol=1e-6, rtol=0)


def test_weights_closed_form():
    """Densities 1, 2, 0, 5 over du = 0.25: w = (1 - e^-0.25, e^-0.25 (1 - e^-0.5), 0, e^-0.75), the
    last sample opaque (it takes what is left, whatever its density), summing to 1."""
    sigma = torch.tensor([[1.0, 2.0, 0.0, 5.0]], dtype=torch.float64)
    weights = background_weights(sigma, torch.tensor([[0.25]], dtype=torch.float64))
    e = math.exp
    expected = torch.tensor([[1 - e(-0.25), e(-0.25) * (1 - e(-0.5)), 0.0, e(-0.75)]], dtype=torch.float64)
    torch.testing.assert_close(weights, expected, rtol=1e-14, atol=1e-15)  # float64 of four exponentials
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-15)


def test_field_gradcheck():
    """float64 gradcheck of the rendered colour with respect to the ray origins (smooth in them)."""
    field = BackgroundField(hidden=8, n_frequencies=2, n_samples=5).double()
    gen = torch.Generator().manual_seed(2)
    o = 0.5 + 2.0 * torch.nn.functional.normalize(torch.randn(4, 3, generator=gen, dtype=torch.float64), dim=-1)
    d = torch.nn.functional.normalize(0.5 - o, dim=-1)
    assert torch.autograd.gradcheck(lambda x: field(x, d, None), (o.requires_grad_(True),))


def _setup(background: bool, n_rays: int = 96):
    """A lumpy torch model (as tests/test_fixed_step.py) with or without a background, and rays."""
    sets = ["backend=torch"] + (["model.background=nerfpp", "model.background_samples=8"] if background else [])
    cfg = resolve_config("fast", sets)
    compute = Compute.cpu()
    torch.manual_seed(0)
    model = NeuSModel(cfg.model, compute)
    with torch.no_grad():
        model.sdf_net.hidden.weight[:, 3:].normal_(0.0, 0.5)
        model.sdf_net.encoding.params.normal_(0.0, 0.05)
        model.variance.fill_(0.8)
    grid = make_occupancy_grid(compute, NORMALIZED_CUBE, 32)
    centres = (torch.stack(torch.meshgrid(*[torch.arange(32)] * 3, indexing="ij"), -1).float() + 0.5) / 32
    radius = (centres - 0.5).norm(dim=-1)
    grid.binaries[0] = (radius > 0.15) & (radius < 0.35)
    gen = torch.Generator().manual_seed(1)
    target = 0.5 + 0.6 * (torch.rand(n_rays, 3, generator=gen) - 0.5)  # some rays miss the shell
    rays_o = 0.5 + 1.5 * torch.nn.functional.normalize(torch.randn(n_rays, 3, generator=gen), dim=-1)
    rays_d = torch.nn.functional.normalize(target - rays_o, dim=-1)
    draws = [torch.rand(n_rays, 3, generator=gen), torch.rand(n_rays, generator=gen), torch.rand(n_rays, generator=gen)]
    return cfg, model, grid, rays_o, rays_d, *draws


def test_render_composites_the_background_behind_the_object():
    cfg, model, grid, rays_o, rays_d, bg, jitter, bg_jitter = _setup(True)
    out = render_rays(
        model, grid, rays_o, rays_d, step_size=cfg.sampling.step_size, bg_color=bg, impl="torch",
        train=True, jitter=jitter, bg_jitter=bg_jitter,
    )  # fmt: skip
    behind = model.background(rays_o, rays_d, bg_jitter)
    opacity = out.opacity.detach()
    assert float(opacity.min()) < 0.1 and float(opacity.max()) > 0.5  # rays through the shell and beside it
    # The object alone (no background, black behind it) plus the background through what it leaves.
    field, model.background = model.background, None
    alone = render_rays(
        model, grid, rays_o, rays_d, step_size=cfg.sampling.step_size, bg_color=torch.zeros(3), impl="torch",
        train=True, jitter=jitter,
    )  # fmt: skip
    model.background = field
    torch.testing.assert_close(alone.opacity, out.opacity, rtol=0, atol=0)
    # One product and sum more than the render's own: float32 rounding, ~1e-7.
    torch.testing.assert_close(out.rgb, alone.rgb + (1 - alone.opacity[:, None]) * behind, rtol=0, atol=1e-6)
    # An empty grid: the background alone, exactly (bg_color is not used).
    grid.binaries.zero_()
    empty = render_rays(
        model, grid, rays_o, rays_d, step_size=cfg.sampling.step_size, bg_color=bg, impl="torch",
        train=True, jitter=jitter, bg_jitter=bg_jitter,
    )  # fmt: skip
    torch.testing.assert_close(empty.rgb, behind, rtol=0, atol=0)


def test_fixed_render_with_background_equals_render_rays():
    cfg, model, grid, rays_o, rays_d, bg, jitter, bg_jitter = _setup(True)
    ref = render_rays(
        model, grid, rays_o, rays_d, step_size=cfg.sampling.step_size, bg_color=bg, impl="torch",
        early_stop_eps=cfg.sampling.early_stop_eps, train=True, jitter=jitter, bg_jitter=bg_jitter,
    )  # fmt: skip
    out = render_rays_fixed(
        model, grid.binaries[0], rays_o, rays_d, torch.tensor(rays_o.shape[0]), step_size=cfg.sampling.step_size,
        bg_color=bg, march_capacity=1 << 16, sample_capacity=1 << 15, aabb=torch.tensor(NORMALIZED_CUBE),
        early_stop_eps=cfg.sampling.early_stop_eps, jitter=jitter, bg_jitter=bg_jitter,
    )  # fmt: skip
    assert bool(out.ray_valid.all())
    # As in test_fixed_step: float32 sums in another order, ~1e-6.
    torch.testing.assert_close(out.rgb, ref.rgb, rtol=1e-5, atol=1e-5)
    params = [p for n, p in model.named_parameters() if n.startswith("background.")]
    g_ref = torch.autograd.grad(ref.rgb.square().sum(), params)
    g_out = torch.autograd.grad(out.rgb.square().sum(), params)
    for a, b in zip(g_ref, g_out, strict=True):
        # The same terms summed in another order: well under 1e-4 of the largest entry.
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item() + 1e-12)


def _scene_and_bank(tmp_path, masked: bool):
    from data_tools.background import EnvironmentSphere
    from data_tools.generate import generate_static_scene
    from data_tools.render_mesh import Shading
    from neus2cli.data.images import load_images
    from neus2cli.data.loader import load_scene
    from neus2cli.train.pixels import PixelBank
    from tests.scenes import lumpy_ellipsoid

    root = generate_static_scene(
        lumpy_ellipsoid(), tmp_path / ("masked" if masked else "unmasked"), n_views=4, n_test=0, width=32,
        height=32, shading=Shading(supersample=1), progress=False,
        background=None if masked else EnvironmentSphere(8.0),
    )  # fmt: skip
    scene = load_scene(root)
    return PixelBank(scene.train_views, load_images(scene.train_views, progress=False), scene.normalization, "cpu")


def _trainer(bank, sets, fixed: bool):
    from neus2cli.train.trainer import NeuSTrainer

    base = ["backend=torch", "sampling.grid_resolution=32", "sampling.initial_rays=128", "sampling.max_rays=128"]
    cfg = resolve_config("fast", base + ["sampling.target_samples=65536", *sets])
    torch.manual_seed(0)
    return NeuSTrainer(cfg, Compute.cpu(), bank, fixed_shapes=fixed)


def test_unmasked_images_have_no_masks_and_the_mask_loss_is_off(tmp_path):
    assert _scene_and_bank(tmp_path, masked=True).has_masks
    bank = _scene_and_bank(tmp_path, masked=False)
    assert not bank.has_masks  # RGB images without alpha
    bg = ["model.background=nerfpp", "model.background_samples=8"]
    losses = []
    for weight in (0.0, 1.0):
        trainer = _trainer(bank, [*bg, f"train.mask_weight={weight}"], fixed=False)
        torch.manual_seed(1)
        losses.append(float(trainer.train_step().loss))
    # The same draws, and the BCE (>= 0.69 at the initial opacity, far from 0) not added: equal.
    assert losses[1] == losses[0]


def test_fixed_step_with_background_equals_the_eager_step(tmp_path):
    """One whole training step on an unmasked scene: the eager and the fixed-shape step draw the same
    batch and give the same loss and gradients, the background's included."""
    bank = _scene_and_bank(tmp_path, masked=False)
    grads, losses = [], []
    for fixed in (False, True):
        trainer = _trainer(bank, ["model.background=nerfpp", "model.background_samples=8"], fixed)
        torch.manual_seed(1)
        losses.append(float(trainer.train_step().loss))
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)  # float32 sums in another order
    assert "background.density.weight" in grads[0] and grads[0].keys() == grads[1].keys()
    for name, a in grads[0].items():
        # As in test_fixed_step: the same terms in another order keep well under 1e-4 of the max.
        torch.testing.assert_close(grads[1][name], a, rtol=1e-4, atol=1e-4 * a.abs().max().item(), msg=name)


def test_checkpoints_without_a_background_still_load(tmp_path):
    """A checkpoint written before ``model.background`` existed (its config lacks the keys) loads into a
    model without a background; one with a background keeps its weights through the round trip."""
    from neus2cli.train.checkpoint import field_from_checkpoint, load_checkpoint, save_checkpoint

    for sets in ([], ["model.background=nerfpp"]):
        cfg = resolve_config("fast", ["backend=torch", *sets])
        model = NeuSModel(cfg.model, Compute.cpu())
        grid = make_occupancy_grid(Compute.cpu(), NORMALIZED_CUBE, cfg.sampling.grid_resolution)
        config = cfg.to_dict()
        if not sets:
            for key in ("background", "background_samples", "background_hidden", "background_frequencies"):
                del config["model"][key]
        state = {"model": model.state_dict(), "grid": grid.state_dict(), "ema": {"decay": 0.0, "shadow": {}}}
        path = save_checkpoint(tmp_path / "checkpoint.pt", {"kind": "static", "config": config, "trainer": state})
        field = field_from_checkpoint(load_checkpoint(path), Compute.cpu())
        assert (field.model.background is None) == (not sets)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(field.model.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_unmasked_preset_and_config_checks():
    from neus2cli.errors import UserError

    cfg = resolve_config("unmasked")
    assert cfg.model.background == "nerfpp" and cfg.train.lr == resolve_config("dtu").train.lr
    with pytest.raises(UserError, match="model.background"):
        resolve_config("fast", ["model.background=room"])
    with pytest.raises(UserError, match="model.background_samples"):
        resolve_config("fast", ["model.background_samples=0"])


def test_dynamic_runs_refuse_a_background(tmp_path):
    """A frame's rigid transform would move the background with the object: refused before any work."""
    from neus2cli.errors import UserError
    from neus2cli.train.dynamic import train_dynamic

    cfg = resolve_config("fast", ["backend=torch", "model.background=nerfpp"])
    with pytest.raises(UserError, match="model.background=nerfpp is for static scenes"):
        train_dynamic(tmp_path / "no_such_sequence", cfg, tmp_path / "run", progress=False)
