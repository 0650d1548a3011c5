"""Pixels <-> rays for pinhole cameras with OpenCV (k1, k2, p1, p2) distortion, in torch.

Tensors in, tensors out; everything follows the input dtype and device.

Conventions (see ``neus2cli.data.scene``): ``uv`` are continuous pixel coordinates
with pixel centres at +0.5 (pixel column u, row v has centre (u + 0.5, v + 0.5));
``K`` is (3, 3) in the same pixel units; ``c2w`` is OpenCV camera-to-world (x right,
y down, z forward) in whatever frame the caller works in (world or normalized): rays
come out in that frame. "Normalized image coordinates" are (x / z, y / z) in the
camera frame, before distortion is applied.

The distortion model is OpenCV's with k3 = 0::

    r2 = x^2 + y^2
    x_d = x (1 + k1 r2 + k2 r2^2) + 2 p1 x y + p2 (r2 + 2 x^2)
    y_d = y (1 + k1 r2 + k2 r2^2) + p1 (r2 + 2 y^2) + 2 p2 x y
"""

from __future__ import annotations

import torch


def _check_points(x: torch.Tensor, name: str, dim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{name}: expected shape (N, {dim}), got {tuple(x.shape)}")


def _batch(x: torch.Tensor | None, name: str, n: int, shape: tuple[int, ...], like: torch.Tensor):
    """(*shape) or (N, *shape) -> (N or 1, *shape) on ``like``'s dtype/device; None passes through."""
    if x is None:
        return None
    x = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    if tuple(x.shape) == shape:
        return x.unsqueeze(0)
    if x.ndim == len(shape) + 1 and tuple(x.shape[1:]) == shape and x.shape[0] in (1, n):
        return x
    raise ValueError(f"{name}: expected shape {shape} or (N={n}, *{shape}), got {tuple(x.shape)}")


def _rotate(R: torch.Tensor, v: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """(N, 3) rows ``R @ v`` (or ``R^T @ v``) for R (1, 3, 3) shared or (N, 3, 3) per row."""
    if R.shape[0] == 1:  # one camera: a single (N, 3) x (3, 3) matmul, not N tiny ones
        return v @ (R[0] if transpose else R[0].T)
    return torch.bmm(R.transpose(1, 2) if transpose else R, v.unsqueeze(-1)).squeeze(-1)


def distort_points(xy: torch.Tensor, distortion: torch.Tensor) -> torch.Tensor:
    """Apply OpenCV distortion to normalized image coordinates.

    Args:
        xy: (N, 2) undistorted normalized image coordinates (x / z, y / z).
        distortion: (4,) or (N, 4) (k1, k2, p1, p2).

    Returns:
        (N, 2) distorted normalized image coordinates.
    """
    _check_points(xy, "xy", 2)
    d = _batch(distortion, "distortion", xy.shape[0], (4,), xy)
    k1, k2, p1, p2 = d.unbind(-1)
    x, y = xy.unbind(-1)
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + k2 * r2)
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return torch.stack([xd, yd], dim=-1)


def undistort_points(uv_norm: torch.Tensor, distortion: torch.Tensor, iters: int = 10) -> torch.Tensor:
    """Invert ``distort_points`` by Newton's method.

    Args:
        uv_norm: (N, 2) distorted normalized image coordinates (K^-1 applied to pixels).
        distortion: (4,) or (N, 4) (k1, k2, p1, p2).
        iters: Newton steps. Convergence is quadratic from the distorted point as the
            start, so 10 steps reach machine precision for any distortion a real lens
            has inside its image (|correction| well below the radius).

    Returns:
        (N, 2) undistorted normalized image coordinates.
    """
    _check_points(uv_norm, "uv_norm", 2)
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    d = _batch(distortion, "distortion", uv_norm.shape[0], (4,), uv_norm)
    k1, k2, p1, p2 = d.unbind(-1)
    target_x, target_y = uv_norm.unbind(-1)
    x, y = target_x.clone(), target_y.clone()
    for _ in range(iters):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + k2 * r2)
        fx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - target_x
        fy = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - target_y
        # d radial / dx = (2 k1 + 4 k2 r2) x, likewise for y.
        dradial = 2 * k1 + 4 * k2 * r2
        j00 = radial + x * x * dradial + 2 * p1 * y + 6 * p2 * x
        j01 = x * y * dradial + 2 * p1 * x + 2 * p2 * y
        j10 = x * y * dradial + 2 * p1 * x + 2 * p2 * y
        j11 = radial + y * y * dradial + 6 * p1 * y + 2 * p2 * x
        det = j00 * j11 - j01 * j10
        # A singular Jacobian only happens far outside any real lens' image; stop moving there.
        safe = det.abs() > 1e-12
        det = torch.where(safe, det, torch.ones_like(det))
        dx = torch.where(safe, (j11 * fx - j01 * fy) / det, torch.zeros_like(det))
        dy = torch.where(safe, (-j10 * fx + j00 * fy) / det, torch.zeros_like(det))
        x = x - dx
        y = y - dy
    return torch.stack([x, y], dim=-1)


def camera_rays(
    uv: torch.Tensor,
    K: torch.Tensor,
    c2w: torch.Tensor,
    distortion: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through continuous pixel positions.

    Args:
        uv: (N, 2) pixel coordinates (u right, v down), pixel centres at +0.5.
        K: (3, 3) or (N, 3, 3) intrinsics in pixels (skew allowed).
        c2w: (4, 4) or (N, 4, 4) OpenCV camera-to-world; rays are in its target frame.
        distortion: None, (4,) or (N, 4) OpenCV (k1, k2, p1, p2).

    Returns:
        rays_o: (N, 3) ray origins (the camera centres).
        rays_d: (N, 3) unit directions. A point at camera depth z along the ray is
            ``rays_o + rays_d * z / cos``, with cos = rays_d . optical axis.
    """
    _check_points(uv, "uv", 2)
    n = uv.shape[0]
    K = _batch(K, "K", n, (3, 3), uv)
    c2w = _batch(c2w, "c2w", n, (4, 4), uv)
    fx, fy = K[:, 0, 0], K[:, 1, 1]
    skew, cx, cy = K[:, 0, 1], K[:, 0, 2], K[:, 1, 2]
    y = (uv[:, 1] - cy) / fy
    x = (uv[:, 0] - cx - skew * y) / fx
    xy = torch.stack([x, y], dim=-1)
    if distortion is not None:
        xy = undistort_points(xy, distortion)
    dirs_cam = torch.cat([xy, torch.ones_like(xy[:, :1])], dim=-1)
    dirs = _rotate(c2w[:, :3, :3], dirs_cam)
    dirs = dirs / torch.linalg.norm(dirs, dim=-1, keepdim=True)
    origins = c2w[:, :3, 3].expand(n, 3)
    return origins.contiguous(), dirs


def project_points(
    points: torch.Tensor,
    K: torch.Tensor,
    c2w: torch.Tensor,
    distortion: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project points into pixels: the inverse of ``camera_rays``.

    Args:
        points: (N, 3) points in the frame of ``c2w``.
        K: (3, 3) or (N, 3, 3) intrinsics in pixels.
        c2w: (4, 4) or (N, 4, 4) OpenCV camera-to-world (must be rigid).
        distortion: None, (4,) or (N, 4) OpenCV (k1, k2, p1, p2).

    Returns:
        uv: (N, 2) pixel coordinates, pixel centres at +0.5. Meaningless where
            depth <= 0 (behind the camera).
        depth: (N,) z in the camera frame (distance along the optical axis, not
            along the ray), in the units of ``points``.
    """
    _check_points(points, "points", 3)
    n = points.shape[0]
    K = _batch(K, "K", n, (3, 3), points)
    c2w = _batch(c2w, "c2w", n, (4, 4), points)
    R = c2w[:, :3, :3]
    # World -> camera with R^T (rigid pose), avoiding a 4x4 inverse per point.
    local = _rotate(R, points - c2w[:, :3, 3], transpose=True)
    depth = local[:, 2]
    xy = local[:, :2] / depth.unsqueeze(-1)
    if distortion is not None:
        xy = distort_points(xy, distortion)
    u = K[:, 0, 0] * xy[:, 0] + K[:, 0, 1] * xy[:, 1] + K[:, 0, 2]
    v = K[:, 1, 1] * xy[:, 1] + K[:, 1, 2]
    return torch.stack([u, v], dim=-1), depth


def pixel_centers(
    height: int, width: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(height * width, 2) centres (u + 0.5, v + 0.5) of every pixel, row-major (v outer)."""
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1) + 0.5
