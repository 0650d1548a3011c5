"""Where the object is before any training: the visual hull of the masks.

A lattice point of the normalized cube belongs to the hull when it projects inside the
foreground mask of every training view that sees it. The hull contains the object, so its
bounding box tells where to centre a run's normalized frame (dynamic sequences, whose
normalization usually spans the whole motion, not the first frame's object).
"""

from __future__ import annotations

import numpy as np
import torch

from neus2cli.data.rays import project_points
from neus2cli.data.scene import Normalization, View

# Below this many foreground pixels in a view its mask says nothing (an image without alpha
# reads as fully foreground, which the check on the hull's size catches instead).
_MIN_FOREGROUND = 16


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
    inside = torch.ones(points.shape[0], dtype=torch.bool)
    used = 0
    for view, image in zip(views, images, strict=True):
        mask = torch.from_numpy(np.ascontiguousarray(image[..., 3] > 127))
        n_fg = int(mask.sum())
        if n_fg < _MIN_FOREGROUND or n_fg == mask.numel():
            continue
        dist = None if view.distortion is None else torch.as_tensor(view.distortion, dtype=torch.float64)
        uv, depth = project_points(
            points, torch.as_tensor(view.K, dtype=torch.float64), torch.as_tensor(view.c2w), dist
        )
        px = torch.floor(uv).long()
        h, w = mask.shape
        seen = (depth > 0) & (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
        fg = torch.zeros_like(inside)
        fg[seen] = mask[px[seen, 1], px[seen, 0]]
        # A view carves only what it sees: points outside its image keep their verdict.
        inside &= fg | ~seen
        used += 1
    if used == 0 or not bool(inside.any()) or float(inside.float().mean()) > 0.5:
        return None
    kept = lattice[inside.numpy()]
    return np.stack([kept.min(axis=0), kept.max(axis=0)])


def centred_normalization(normalization: Normalization, box: np.ndarray) -> Normalization:
    """The same scale, shifted so the centre of ``box`` (2, 3), normalized frame, is the cube centre."""
    centre_of_roi = normalization.aabb.mean(axis=0)
    shift = centre_of_roi - np.asarray(box, dtype=np.float64).mean(axis=0)
    return Normalization(normalization.scale, normalization.offset + shift, normalization.aabb.copy())
