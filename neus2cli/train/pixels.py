"""Training pixels resident on the device as uint8, and ray batches drawn from them."""

from __future__ import annotations

import numpy as np
import torch

from neus2cli.data.rays import camera_rays, pixel_centers
from neus2cli.data.scene import Normalization, View


class PixelBank:
    """Every training pixel of a set of views, packed flat on ``device`` as uint8 RGBA.

    Views may differ in size. Cameras are kept in the **normalized** frame, so rays
    come out ready for the networks. ``has_masks``: some pixel has alpha below 255 (the views carry
    masks; without them the mask loss is off).
    """

    def __init__(self, views: list[View], images: list[np.ndarray], normalization: Normalization, device):
        if len(views) == 0:
            raise ValueError("PixelBank needs at least one view")
        self.device = torch.device(device)
        sizes = [(img.shape[0], img.shape[1]) for img in images]
        self.heights = torch.tensor([h for h, _ in sizes], device=self.device)
        self.widths = torch.tensor([w for _, w in sizes], device=self.device)
        counts = self.heights * self.widths
        self.offsets = torch.cumsum(counts, 0) - counts
        self.pixels = torch.cat([torch.from_numpy(np.ascontiguousarray(img)).reshape(-1, 4) for img in images]).to(
            self.device
        )
        self.K = torch.tensor(np.stack([v.K for v in views]), dtype=torch.float32, device=self.device)
        c2w = np.stack([normalization.c2w_to_normalized(v.c2w) for v in views])
        self.c2w = torch.tensor(c2w, dtype=torch.float32, device=self.device)
        has_dist = any(v.distortion is not None and np.any(v.distortion) for v in views)
        self.distortion = (
            torch.tensor(
                np.stack([v.distortion if v.distortion is not None else np.zeros(4) for v in views]),
                dtype=torch.float32,
                device=self.device,
            )
            if has_dist
            else None
        )
        self.n_views = len(views)
        # Whether any pixel is outside a mask: images without masks read as alpha 255 everywhere, and
        # then the mask loss has nothing to say (it would only push every ray to be opaque).
        self.has_masks = bool((self.pixels[:, 3] < 255).any())

    def _rays(self, view_ids: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        uv = torch.stack([u.float() + 0.5, v.float() + 0.5], dim=-1)
        dist = self.distortion[view_ids] if self.distortion is not None else None
        return camera_rays(uv, self.K[view_ids], self.c2w[view_ids], dist)

    def sample(self, n_rays: int, generator: torch.Generator | None = None):
        """Random rays spread evenly over the views.

        Returns rays_o (n, 3), rays_d (n, 3) in the normalized frame, rgba (n, 4) float in [0, 1].
        """
        dev = self.device
        start = torch.randint(self.n_views, (1,), generator=generator, device=dev)
        view_ids = (torch.arange(n_rays, device=dev) + start) % self.n_views
        r = torch.rand(n_rays, 2, generator=generator, device=dev)
        u = (r[:, 0] * self.widths[view_ids]).long().clamp_max(self.widths[view_ids] - 1)
        v = (r[:, 1] * self.heights[view_ids]).long().clamp_max(self.heights[view_ids] - 1)
        idx = self.offsets[view_ids] + v * self.widths[view_ids] + u
        rgba = self.pixels[idx].float() / 255.0
        rays_o, rays_d = self._rays(view_ids, u, v)
        return rays_o, rays_d, rgba


def view_rays(view: View, normalization: Normalization, device) -> tuple[torch.Tensor, torch.Tensor]:
    """All rays of one view, row-major: rays_o, rays_d (H*W, 3) in the normalized frame."""
    dev = torch.device(device)
    uv = pixel_centers(view.height, view.width, device=dev)
    K = torch.tensor(view.K, dtype=torch.float32, device=dev)
    c2w = torch.tensor(normalization.c2w_to_normalized(view.c2w), dtype=torch.float32, device=dev)
    dist = None
    if view.distortion is not None and np.any(view.distortion):
        dist = torch.tensor(view.distortion, dtype=torch.float32, device=dev).expand(uv.shape[0], 4)
    return camera_rays(uv, K.expand(uv.shape[0], 3, 3), c2w.expand(uv.shape[0], 4, 4), dist)
