"""NeuS alpha against closed forms on a plane SDF."""

from __future__ import annotations

import torch

from neus2cli.render.neus import ALPHA_EPS, logistic_density, neus_alpha, neus_alpha_from_sdf_pair


def test_alpha_of_linear_sdf_matches_section_ends():
    # A ray hitting the plane z = 0.3 head on: f(t) = 0.3 - t, grad = (0, 0, -1), dir = (0, 0, 1).
    # The SDF is linear, so the midpoint extrapolation f_mid -+ cos*dt/2 gives the exact section ends.
    t = torch.linspace(0, 0.6, 61, dtype=torch.float64)
    dt = t[1] - t[0]
    mid = t[:-1] + dt / 2
    inv_s = torch.tensor(64.0, dtype=torch.float64)
    grad = torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64).expand(60, 3)
    dirs = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64).expand(60, 3)
    alpha = neus_alpha(0.3 - mid, grad, dirs, torch.full_like(mid, dt), inv_s)
    exact = neus_alpha_from_sdf_pair(0.3 - t[:-1], 0.3 - t[1:], inv_s)
    torch.testing.assert_close(alpha, exact, rtol=0, atol=1e-12)


def test_transmittance_telescopes():
    # Without the eps stabiliser, 1 - alpha_i = Phi(s f_{i+1}) / Phi(s f_i) for a decreasing SDF, so the
    # product over sections telescopes to Phi(s f_end) / Phi(s f_start). With eps, factor i becomes
    # (Phi_{i+1}) / (Phi_i + eps): a relative change of at most eps / Phi_i, so after k sections the
    # relative error is bounded by sum_{i<k} eps / Phi_i (to first order), which the test computes.
    t = torch.linspace(0, 0.6, 61, dtype=torch.float64)
    f = 0.3 - t
    inv_s = torch.tensor(64.0, dtype=torch.float64)
    alpha = neus_alpha_from_sdf_pair(f[:-1], f[1:], inv_s)
    trans = torch.cumprod(1 - alpha, 0)
    expected = torch.sigmoid(inv_s * f[1:]) / torch.sigmoid(inv_s * f[0])
    bound = torch.cumsum(ALPHA_EPS / torch.sigmoid(inv_s * f[:-1]), 0) * 1.01
    relevant = bound < 0.5  # beyond that the first-order bound says nothing
    assert relevant.sum() > 30
    rel_err = (trans - expected).abs() / expected
    assert torch.all(rel_err[relevant] <= bound[relevant])
    assert trans[-1] < 1e-4  # the plane is opaque


def test_alpha_zero_when_moving_away_from_surface():
    # Leaving the surface (f increasing): Phi(s prev) < Phi(s next) -> alpha clamps to ~eps / Phi.
    prev = torch.tensor([0.0, 0.1])
    nxt = torch.tensor([0.05, 0.2])
    alpha = neus_alpha_from_sdf_pair(prev, nxt, torch.tensor(50.0))
    assert torch.all(alpha <= 2 * ALPHA_EPS / torch.sigmoid(prev * 50.0))


def test_logistic_density_is_derivative_of_sigmoid():
    f = torch.linspace(-0.2, 0.2, 101, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(30.0, dtype=torch.float64)
    (d,) = torch.autograd.grad(torch.sigmoid(s * f).sum(), f)
    torch.testing.assert_close(logistic_density(f.detach(), s), d)
