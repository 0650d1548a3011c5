"""The background of an unmasked capture: NeRF++'s inverted-sphere field outside the foreground sphere.

Without masks every pixel must be explained by something. The SDF models the object inside the
normalized cube; this field models everything farther than the **foreground sphere**, the sphere of
radius ``FOREGROUND_RADIUS`` = sqrt(3)/2 around the cube centre (0.5, 0.5, 0.5), which circumscribes
the cube, so the two regions never overlap and the SDF has no reason to build walls for the room.

Parameterization (NeRF++, Zhang et al. 2020): a point at distance r > R from the centre, along the
unit direction x̂, is (x̂, u) with u = R / r in (0, 1]: the unbounded outside maps to a bounded
4D domain, and equal steps in u put most samples close to the sphere, where detail is resolved,
and few towards infinity. Each ray gets exactly ``n_samples`` samples, equally spaced in u from the
ray's first point outside the sphere (u_max, 1 where the ray crosses the sphere) to 0, so every
tensor has the shape (n_rays, n_samples): the fixed-shape CUDA-graph step takes it as it is.
Densities are per unit of u, alpha_k = 1 - exp(-sigma_k Δu), and the last sample is opaque (it
stands for everything beyond it), so the background's weights sum to one: the background is
always a full colour, composited behind the object as ``rgb = rgb_fg + (1 - opacity_fg) rgb_bg``.

A ray that misses the sphere (or starts outside it, looking away) has its background start at
its closest point to the centre, or at its origin; its samples use the far root of |o + t d| = r,
so the part of such a ray before its closest approach is not sampled (NeRF++ does the same).

Pure PyTorch (frequency encodings and ``nn.Linear``): the far region is smooth and low in detail,
a small MLP resolves it, and the same module runs on the CPU and on CUDA under either backend.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from neus2cli.config import ModelConfig

#: Centre of the foreground sphere (the normalized cube's centre), normalized frame.
CUBE_CENTER = 0.5
#: Radius of the foreground sphere: the normalized cube's circumradius, so the background never
#: covers any part of the cube the occupancy grid marches.
FOREGROUND_RADIUS = math.sqrt(3.0) / 2.0
#: Frequencies of the view-direction encoding (the background's colour depends little on it).
DIR_FREQUENCIES = 2


def frequency_encoding(x: torch.Tensor, n_frequencies: int) -> torch.Tensor:
    """(N, D) -> (N, D (1 + 2 L)): [x, sin(2^k pi x), cos(2^k pi x) for k < L] (NeRF's encoding)."""
    parts = [x]
    for k in range(n_frequencies):
        scaled = x * (math.pi * 2.0**k)
        parts += [torch.sin(scaled), torch.cos(scaled)]
    return torch.cat(parts, dim=-1)


def inverted_sphere_samples(
    rays_o: torch.Tensor, rays_d: torch.Tensor, n_samples: int, jitter: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The background samples of each ray in the inverted-sphere parameterization (module docstring).

    Args:
        rays_o: (R, 3) origins, normalized frame.
        rays_d: (R, 3) unit directions.
        n_samples: S, samples per ray.
        jitter: (R,) offsets in [0, 1) of each ray's samples within their intervals (stratified
            training), or None for the interval midpoints (renders).

    Returns:
        coords: (R, S, 4) (x̂, u): unit direction from the cube centre and inverse radius
            u = FOREGROUND_RADIUS / r in (0, 1], front (u near u_max) to back (u near 0).
        delta_u: (R, 1) the interval width in u of every sample of the ray (u_max / S).
    """
    if rays_o.shape != rays_d.shape or rays_o.dim() != 2 or rays_o.shape[1] != 3:
        raise ValueError(f"rays_o and rays_d must both be (R, 3), got {tuple(rays_o.shape)}, {tuple(rays_d.shape)}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    p = rays_o - CUBE_CENTER
    b = (p * rays_d).sum(-1, keepdim=True)  # (R, 1): t of the closest approach is -b
    p2 = (p * p).sum(-1, keepdim=True)
    # The ray's nearest point at t >= 0: its closest approach ahead of it, else its origin.
    # Clamped before the square root, whose derivative at 0 (a ray through the centre) is infinite.
    r_min2 = torch.where(b < 0, p2 - b * b, p2).clamp_min(FOREGROUND_RADIUS**2)
    u_max = FOREGROUND_RADIUS / r_min2.sqrt()  # (R, 1), in (0, 1]
    offset = 0.5 if jitter is None else jitter[:, None]
    k = torch.arange(n_samples, dtype=rays_o.dtype, device=rays_o.device)[None, :]
    u = u_max * (1.0 - (k + offset) / n_samples)  # (R, S), in (0, u_max]
    r = FOREGROUND_RADIUS / u.clamp_min(1e-6)
    # Far root of |p + t d| = r; the clamp guards rounding (and the square root's slope) where r is the
    # ray's r_min (a first sample with jitter 0 on a ray that misses the sphere).
    t = -b + (b * b - p2 + r * r).clamp_min(1e-12).sqrt()
    x = p[:, None, :] + t[..., None] * rays_d[:, None, :]  # (R, S, 3), centred on the cube centre
    x_hat = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.cat([x_hat, u[..., None]], dim=-1), u_max / n_samples


class BackgroundField(nn.Module):
    """NeRF++'s background network: (x̂, u) and the view direction -> density and colour.

    Trunk: frequency-encoded (x̂, u) -> ``hidden`` ReLU -> ``hidden`` ReLU -> [density, feature];
    colour head: [feature, encoded view direction] -> hidden/2 ReLU -> 3, sigmoid.

    Args:
        hidden: width of the trunk.
        n_frequencies: frequencies of the (x̂, u) encoding.
        n_samples: samples per ray (``inverted_sphere_samples``).
    """

    def __init__(self, hidden: int, n_frequencies: int, n_samples: int):
        super().__init__()
        if hidden < 2 or n_frequencies < 0 or n_samples < 1:
            raise ValueError(
                f"need hidden >= 2, n_frequencies >= 0, n_samples >= 1, got {hidden}, {n_frequencies}, {n_samples}"
            )
        self.n_frequencies = n_frequencies
        self.n_samples = n_samples
        n_in = 4 * (1 + 2 * n_frequencies)
        n_dir = 3 * (1 + 2 * DIR_FREQUENCIES)
        self.trunk = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.density = nn.Linear(hidden, 1)
        self.rgb = nn.Sequential(nn.Linear(hidden + n_dir, hidden // 2), nn.ReLU(), nn.Linear(hidden // 2, 3))

    def forward(self, rays_o: torch.Tensor, rays_d: torch.Tensor, jitter: torch.Tensor | None = None) -> torch.Tensor:
        """(R, 3) origins and (R, 3) unit directions, normalized frame -> (R, 3) background colour in [0, 1].

        ``jitter`` (R,) in [0, 1) stratifies the samples (training); None takes the midpoints.
        """
        n_rays, n_samples = rays_o.shape[0], self.n_samples
        coords, delta_u = inverted_sphere_samples(rays_o, rays_d, n_samples, jitter)
        h = self.trunk(frequency_encoding(coords.reshape(-1, 4), self.n_frequencies))
        sigma = nn.functional.softplus(self.density(h)).reshape(n_rays, n_samples)
        dirs = frequency_encoding(rays_d, DIR_FREQUENCIES)[:, None, :].expand(n_rays, n_samples, -1)
        rgb = torch.sigmoid(self.rgb(torch.cat([h, dirs.reshape(n_rays * n_samples, -1)], dim=-1)))
        weights = background_weights(sigma, delta_u)
        return (weights[..., None] * rgb.reshape(n_rays, n_samples, 3)).sum(dim=1)


def background_weights(sigma: torch.Tensor, delta_u: torch.Tensor) -> torch.Tensor:
    """Compositing weights (R, S) of densities ``sigma`` (R, S) >= 0 per unit of u over intervals
    ``delta_u`` (R, 1), front to back: w_k = exp(-sum_{j<k} sigma_j du) alpha_k with
    alpha_k = 1 - exp(-sigma_k du), except the last sample, which is opaque (alpha 1): every row sums to 1.
    """
    tau = sigma * delta_u
    before = torch.cumsum(tau, dim=1) - tau  # optical depth in front of each sample
    alpha = torch.cat([1.0 - torch.exp(-tau[:, :-1]), torch.ones_like(tau[:, -1:])], dim=1)
    return torch.exp(-before) * alpha


def make_background(cfg: ModelConfig) -> BackgroundField | None:
    """The background field ``cfg.background`` asks for, or None (``"none"``: the object fills the images' masks)."""
    if cfg.background == "none":
        return None
    if cfg.background == "nerfpp":
        return BackgroundField(cfg.background_hidden, cfg.background_frequencies, cfg.background_samples)
    raise ValueError(f"model.background must be 'none' or 'nerfpp', got {cfg.background!r}")
