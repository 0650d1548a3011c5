"""NeuS opacity: discrete alpha of a ray section from SDF values (Wang et al. 2021, eq. 13).

For a section with SDF ``prev`` at its start and ``next`` at its end and sharpness
``s`` (``inv_s``), alpha = clamp((Phi(s prev) - Phi(s next) + eps) / (Phi(s prev) + eps), 0, 1)
with Phi the logistic sigmoid and eps = 1e-5 (NeuS2's stabiliser).
"""

from __future__ import annotations

import torch

ALPHA_EPS = 1e-5


def neus_alpha_from_sdf_pair(prev_sdf: torch.Tensor, next_sdf: torch.Tensor, inv_s: torch.Tensor) -> torch.Tensor:
    """alpha (n,) from SDF at the section's ends, prev_sdf/next_sdf (n,), inv_s scalar or (n,)."""
    prev_cdf = torch.sigmoid(prev_sdf * inv_s)
    next_cdf = torch.sigmoid(next_sdf * inv_s)
    return ((prev_cdf - next_cdf + ALPHA_EPS) / (prev_cdf + ALPHA_EPS)).clamp(0.0, 1.0)


def neus_alpha(
    sdf: torch.Tensor,
    grad: torch.Tensor,
    dirs: torch.Tensor,
    dists: torch.Tensor,
    inv_s: torch.Tensor,
    cos_anneal_ratio: float = 1.0,
) -> torch.Tensor:
    """NeuS2's alpha from the SDF at the section midpoint and its gradient.

    The SDF at the section ends is extrapolated linearly along the ray with the
    *unnormalized* cosine ``grad . dir`` (as NeuS2 does): prev = sdf - cos dist / 2,
    next = sdf + cos dist / 2.

    Args:
        sdf: (n,) SDF at section midpoints.
        grad: (n, 3) SDF gradient (unnormalized).
        dirs: (n, 3) unit ray directions.
        dists: (n,) section lengths (same units as the SDF).
        inv_s: scalar sharpness s.
        cos_anneal_ratio: NeuS cosine annealing in [0, 1]; 1 = no annealing (NeuS2's default).
    Returns:
        alpha (n,) in [0, 1].
    """
    true_cos = (dirs * grad).sum(-1)
    # Annealing blends a "half-cosine" that lets back-facing sections contribute early in training.
    iter_cos = -(
        torch.relu(-true_cos * 0.5 + 0.5) * (1.0 - cos_anneal_ratio) + torch.relu(-true_cos) * cos_anneal_ratio
    )
    half = iter_cos * dists * 0.5
    return neus_alpha_from_sdf_pair(sdf - half, sdf + half, inv_s)


def logistic_density(sdf: torch.Tensor, inv_s: torch.Tensor) -> torch.Tensor:
    """s * sigma(s f) * (1 - sigma(s f)): the density the occupancy grid is updated with."""
    p = torch.sigmoid(sdf * inv_s)
    return inv_s * p * (1.0 - p)
