"""SDF/colour networks: geometric init, progressive level masks, shapes."""

from __future__ import annotations

import math

import torch

from neus2cli.compute import Compute
from neus2cli.config import ModelConfig
from neus2cli.model.fields import NeuSModel

SMALL = ModelConfig(n_levels=6, log2_hashmap_size=12, finest_resolution=128)


def _fibonacci_dirs(n: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    phi = torch.acos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    return torch.stack([torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)], -1)


def test_geometric_init_is_a_sphere_of_radius_0_1():
    # With first-layer xyz weights w_j ~ N(0, sigma^2 I), sigma = sqrt(2)/8, and the constant output weight
    # c = sqrt(pi)/8, the direction-averaged SDF at radius r is c * r * sum_j |w_j| * E_u[relu(cos)] - 0.1
    # = c * r * sum_j |w_j| / 4 - 0.1, whose expectation is exactly r - 0.1 (E|w| = sigma * 2 sqrt(2/pi)).
    # The sum over 64 chi_3 variables has a relative std of 0.42 / 1.596 / sqrt(64) = 0.053; 4 sigma = 0.21.
    torch.manual_seed(0)
    model = NeuSModel(SMALL, Compute.cpu())
    dirs = _fibonacci_dirs(4000).float()
    for r in (0.05, 0.1, 0.2, 0.35):
        sdf = model.sdf(0.5 + r * dirs)
        assert abs(sdf.mean().item() - (r - 0.1)) <= 0.21 * r + 1e-3, r
    # The surface sits near radius 0.1 along (almost) every direction: sign changes between 0.05 and 0.2.
    inside = model.sdf(0.5 + 0.05 * dirs) < 0
    outside = model.sdf(0.5 + 0.2 * dirs) > 0
    assert (inside & outside).float().mean() > 0.95


def test_hash_features_start_with_no_influence():
    # Feature columns of the first layer are zero at init, so the grid does not perturb the sphere.
    torch.manual_seed(0)
    model = NeuSModel(SMALL, Compute.cpu())
    x = torch.rand(256, 3)
    before = model.sdf(x)
    with torch.no_grad():
        model.sdf_net.encoding.params.normal_(0, 1.0)
    torch.testing.assert_close(model.sdf(x), before)


def test_level_mask_hides_fine_levels():
    torch.manual_seed(0)
    model = NeuSModel(SMALL, Compute.cpu())
    with torch.no_grad():
        model.sdf_net.hidden.weight.normal_(0, 0.5)
    x = torch.rand(128, 3)
    model.sdf_net.set_active_levels(2)
    assert model.sdf_net.active_levels == 2
    before = model.sdf(x)
    n_feat = SMALL.n_features_per_level
    with torch.no_grad():  # perturb only the finest level's features via its hidden-layer columns
        model.sdf_net.hidden.weight[:, 3 + 5 * n_feat :] += 1.0
    torch.testing.assert_close(model.sdf(x), before)
    model.sdf_net.set_active_levels(6)
    assert not torch.allclose(model.sdf(x), before)


def test_gradient_and_double_backward():
    torch.manual_seed(0)
    model = NeuSModel(SMALL, Compute.cpu())
    x = torch.rand(64, 3)
    sdf, grad, outputs = model.sdf_and_gradient(x, create_graph=True)
    assert sdf.shape == (64,) and grad.shape == (64, 3) and outputs.shape == (64, SMALL.sdf_outputs)
    eik = ((grad.norm(dim=-1) - 1) ** 2).mean()
    eik.backward()
    assert model.sdf_net.hidden.weight.grad.abs().sum() > 0
    assert model.sdf_net.encoding.params.grad is not None
    # At init the SDF is ~ |x - 0.5| - 0.1, whose gradient has unit norm: the eikonal term starts small.
    assert eik.item() < 0.2
    rgb = model.color(outputs, torch.nn.functional.normalize(torch.randn(64, 3), dim=-1), x, grad)
    assert rgb.shape == (64, 3) and bool(((rgb > 0) & (rgb < 1)).all())


def test_inv_s_starts_at_exp_3():
    model = NeuSModel(SMALL, Compute.cpu())
    assert math.isclose(model.inv_s.item(), math.exp(3.0), rel_tol=1e-6)


def test_sample_budget_renders_the_leading_rays_unchanged():
    # A batch over its sample budget keeps its first rays, rendered exactly as without the budget.
    from neus2cli.render.occupancy import make_occupancy_grid
    from neus2cli.render.renderer import render_rays

    torch.manual_seed(0)
    model = NeuSModel(SMALL, Compute.cpu())
    grid = make_occupancy_grid(Compute.cpu(), [0.0, 0.0, 0.0, 1.0, 1.0, 1.0], 16)
    grid.binaries.fill_(True)
    n = 32
    rays_o = torch.tensor([0.5, 0.5, -0.5]).expand(n, 3) + 0.05 * torch.randn(n, 3) * torch.tensor([1.0, 1.0, 0.0])
    rays_d = torch.tensor([0.0, 0.0, 1.0]).expand(n, 3)
    bg = torch.rand(n, 3)
    kw = dict(step_size=0.01, bg_color=bg, impl="torch", train=False)
    full = render_rays(model, grid, rays_o, rays_d, **kw)
    cut = render_rays(model, grid, rays_o, rays_d, max_samples=full.n_samples // 3, **kw)
    assert 0 < cut.rgb.shape[0] < n and cut.n_samples <= full.n_samples // 3
    torch.testing.assert_close(cut.rgb, full.rgb[: cut.rgb.shape[0]])
    torch.testing.assert_close(cut.depth, full.depth[: cut.rgb.shape[0]])
