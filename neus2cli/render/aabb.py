"""Ray / axis-aligned box intersection, the pure-PyTorch twin of ``nerfacc.ray_aabb_intersect``.

Semantics follow nerfacc 0.5.x's CUDA kernel (``nerfacc/cuda/csrc/include/utils_grid.cuh``,
``ray_aabb_intersect``), which is what ``nerfacc.ray_aabb_intersect`` and the occupancy-grid
sampler call, not its slower Python fallback ``nerfacc.grid._ray_aabb_intersect``:

* slabs are intersected with closed intervals (a ray grazing an edge or a face hits, with
  ``t_min == t_max``), and a ray hits only if the box is not entirely behind it (``t_max > 0``);
* ``t_min`` is **not** clamped to 0: a ray starting inside the box gets the negative distance to
  where its line entered the box. The sampler clamps with its near plane instead;
* the near and far planes clip ``t_min``/``t_max`` after the hit test, so a hit can come back
  with ``t_min > t_max`` when the planes exclude the box (callers test ``t_min < t_max``);
* misses get ``miss_value`` for both distances.

The only intended difference: an axis along which the direction is exactly 0 while the origin
lies exactly on that slab's plane (0 * inf = NaN in the kernel) is ignored here, as if the ray
were strictly inside the slab; the kernel's answer then depends on the axis order.
"""

from __future__ import annotations

import torch
from torch import Tensor


def ray_aabb_intersect(
    rays_o: Tensor,
    rays_d: Tensor,
    aabbs: Tensor,
    near_plane: float = -float("inf"),
    far_plane: float = float("inf"),
    miss_value: float = float("inf"),
) -> tuple[Tensor, Tensor, Tensor]:
    """Distances along each ray to where it enters and leaves each box.

    Any frame works as long as rays and boxes share it (in neus2cli: the normalized unit cube).
    Distances are in units of ``|rays_d|`` (nerfacc expects unit directions; nothing here
    requires it).

    Args:
        rays_o: (n_rays, 3) origins.
        rays_d: (n_rays, 3) directions.
        aabbs: (6,) one box or (m, 6) boxes, each [xmin, ymin, zmin, xmax, ymax, zmax].
        near_plane: lower clip of the returned ``t_min``/``t_max`` (after the hit test).
        far_plane: upper clip of the returned ``t_min``/``t_max`` (after the hit test).
        miss_value: distance written for both ends of a missed box.

    Returns:
        ``t_min``, ``t_max`` (float, dtype of ``rays_o``) and ``hit`` (bool), each of shape
        (n_rays,) for a (6,) box or (n_rays, m) for (m, 6) boxes.
    """
    if rays_o.ndim != 2 or rays_o.shape[-1] != 3:
        raise ValueError(f"rays_o must have shape (n_rays, 3), got {tuple(rays_o.shape)}")
    if rays_d.shape != rays_o.shape:
        raise ValueError(f"rays_d must have the shape of rays_o {tuple(rays_o.shape)}, got {tuple(rays_d.shape)}")
    single = aabbs.ndim == 1
    boxes = aabbs.reshape(1, -1) if single else aabbs
    if boxes.ndim != 2 or boxes.shape[-1] != 6:
        raise ValueError(f"aabbs must have shape (6,) or (m, 6), got {tuple(aabbs.shape)}")
    boxes = boxes.to(device=rays_o.device, dtype=rays_o.dtype)

    inv_d = 1.0 / rays_d  # +-inf for zero components, as in the kernel
    o = rays_o[:, None, :]
    inv = inv_d[:, None, :]
    t_a = (boxes[None, :, :3] - o) * inv  # (n_rays, m, 3)
    t_b = (boxes[None, :, 3:] - o) * inv
    # The kernel picks the near slab plane by the sign of 1/d (so -0.0 counts as negative).
    positive = inv >= 0
    t_lo = torch.where(positive, t_a, t_b)
    t_hi = torch.where(positive, t_b, t_a)
    # 0 * inf = NaN only for a zero direction with the origin on the plane: ignore that axis.
    t_lo = torch.nan_to_num(t_lo, nan=-float("inf"))
    t_hi = torch.nan_to_num(t_hi, nan=float("inf"))
    t_min = t_lo.amax(dim=-1)
    t_max = t_hi.amin(dim=-1)
    hit = (t_min <= t_max) & (t_max > 0)
    t_min = torch.clamp(t_min, min=near_plane)
    t_max = torch.clamp(t_max, max=far_plane)
    miss = torch.full_like(t_min, miss_value)
    t_min = torch.where(hit, t_min, miss)
    t_max = torch.where(hit, t_max, miss)
    if single:
        return t_min[:, 0], t_max[:, 0], hit[:, 0]
    return t_min, t_max, hit
