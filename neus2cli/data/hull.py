"""Where the object is before any training: the visual hull of the masks.

One rule (``carve_hull``), used by the dynamic run's centring and by scene validation: a point
belongs to the hull when every masked view that sees it (in front of the camera, inside the
image) has it on foreground, and at least ``MIN_SEEN_FRACTION`` of those views see it. A view that
does not see a point does not carve it: an object partly outside some images keeps its parts.
A point that few views see is unknown rather than content: with cameras on one side (DTU, a
turntable from above) letting those through would swell the hull towards the cameras.
The hull contains the object, so its bounding box tells where to centre a run's normalized
frame (dynamic sequences, whose normalization usually spans the whole motion, not the first
frame's object) and whether the object fits the cube.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from neus2cli.data.rays import project_points
from neus2cli.data.scene import Normalization, View

# Below this many foreground pixels in a view its mask says nothing (an image without alpha
# reads as fully foreground, which the check on the hull's size catches instead).
_MIN_FOREGROUND = 16
#: Fraction of the masked views that must see a point for it to be content (module docstring). On DTU
#: scan 24 (49 views on a cap) 0.5 let the hull swell past the cube towards the cameras (x from -0.50
#: instead of 0.10 in the normalized frame); 0.9 gives 0.02, inside the cube, and lego is the same at
#: every value from 0.5 to 1.
MIN_SEEN_FRACTION = 0.9

#: (n, 2) float64 pixel coordinates (OpenCV, pixel centres at +0.5) inside the image -> (n,) bool foreground.
ForegroundFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def carve_hull(
    points: torch.Tensor,
    views: Sequence[View],
    foreground: Sequence[ForegroundFn],
    min_seen_fraction: float = MIN_SEEN_FRACTION,
) -> torch.Tensor:
    """(P,) bool: the points of ``points`` (P, 3) float64, **world** frame, inside the masks' visual hull.

    Args:
        points: (P, 3) world-frame points.
        views: the masked views (OpenCV cameras, world frame).
        foreground: one lookup per view, called with the pixel coordinates of the points it sees.
        min_seen_fraction: a point must be seen by at least this fraction of ``views``.
    """
    carved = torch.zeros(points.shape[0], dtype=torch.bool)
    n_seen = torch.zeros(points.shape[0], dtype=torch.int64)
    for view, is_foreground in zip(views, foreground, strict=True):
        dist = None if view.distortion is None else torch.as_tensor(view.distortion, dtype=torch.float64)
        uv, depth = project_points(
            points,
            torch.as_tensor(view.K, dtype=torch.float64),
            torch.as_tensor(view.c2w, dtype=torch.float64),
            dist,
        )
        seen = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < view.width) & (uv[:, 1] >= 0) & (uv[:, 1] < view.height)
        fg = torch.zeros_like(seen)
        fg[seen] = is_foreground(uv[seen])
        carved |= seen & ~fg
        n_seen += seen
    need = max(1, math.ceil(min_seen_fraction * len(views) - 1e-9))
    return ~carved & (n_seen >= need)


@torch.no_grad()
def visual_hull_box(
    views: list[View], images: list[np.ndarray], normalization: Normalization, resolution: int = 64
) -> np.ndarray | None:
    """Bounding box (2, 3) of the masks' visual hull in the **normalized** frame, or None.

    Args:
        views: training views (OpenCV cameras in the world frame).
        images: their (H, W, 4) uint8 RGBA images; alpha > 127 is foreground.
        normalization: world -> normalized mapping of the scene.
        resolution: lattice points per axis over the normalization's aabb.

    Returns None when the masks cannot locate the object: no view has a usable mask, the hull
    is empty, or it fills most of the box (images without masks).
    """
    aabb = normalization.aabb
    axes = [np.linspace(aabb[0, d], aabb[1, d], resolution) for d in range(3)]
    lattice = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    points = torch.as_tensor(normalization.normalized_to_world(lattice), dtype=torch.float64)
    masked_views, lookups = [], []
    for view, image in zip(views, images, strict=True):
        mask = torch.from_numpy(np.ascontiguousarray(image[..., 3] > 127))
        n_fg = int(mask.sum())
        if n_fg >= _MIN_FOREGROUND and n_fg < mask.numel():
            masked_views.append(view)
            lookups.append(pixel_lookup(mask, 1))
    if not masked_views:
        return None
    inside = carve_hull(points, masked_views, lookups)
    if not bool(inside.any()) or float(inside.float().mean()) > 0.5:
        return None
    kept = lattice[inside.numpy()]
    return np.stack([kept.min(axis=0), kept.max(axis=0)])


def pixel_lookup(mask: torch.Tensor, factor: int) -> ForegroundFn:
    """A ``ForegroundFn`` over an (h, w) bool mask of the image downsampled by ``factor`` (1: full size)."""

    def is_foreground(uv: torch.Tensor) -> torch.Tensor:
        # The pixel holding continuous coordinate uv (centres at +0.5) is floor(uv).
        row = torch.floor(uv[:, 1] / factor).long().clamp(0, mask.shape[0] - 1)
        col = torch.floor(uv[:, 0] / factor).long().clamp(0, mask.shape[1] - 1)
        return mask[row, col]

    return is_foreground


def centred_normalization(normalization: Normalization, box: np.ndarray) -> Normalization:
    """The same scale, shifted so the centre of ``box`` (2, 3), normalized frame, is the cube centre."""
    centre_of_roi = normalization.aabb.mean(axis=0)
    shift = centre_of_roi - np.asarray(box, dtype=np.float64).mean(axis=0)
    return Normalization(normalization.scale, normalization.offset + shift, normalization.aabb.copy())
