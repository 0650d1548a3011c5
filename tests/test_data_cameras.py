"""Camera algebra (numpy) and pixel <-> ray maps (torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from neus2cli.data.cameras import (
    decompose_projection,
    intrinsics_from_fov,
    is_rigid,
    look_at,
    opencv_to_opengl,
    opengl_to_opencv,
    rigidity_error,
)
from neus2cli.data.rays import camera_rays, distort_points, pixel_centers, project_points, undistort_points

# A moderate real-lens distortion (barrel with tangential terms), monotonic over the image.
DISTORTION = (-0.2, 0.05, 1e-3, -2e-3)


def random_pose(rng: np.random.Generator) -> np.ndarray:
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
    c2w[:3, 3] = rng.normal(size=3) * 3
    return c2w


# ------------------------------------------------------------------------------------------
# cameras.py


def test_opengl_opencv_roundtrip_and_axes():
    rng = np.random.default_rng(0)
    c2w = np.stack([random_pose(rng) for _ in range(5)])
    cv = opengl_to_opencv(c2w)
    np.testing.assert_allclose(opencv_to_opengl(cv), c2w, atol=1e-15)
    # Same centre; OpenCV's forward (+z) is OpenGL's -z, its down (+y) is OpenGL's -y.
    np.testing.assert_array_equal(cv[:, :3, 3], c2w[:, :3, 3])
    np.testing.assert_array_equal(cv[:, :3, 2], -c2w[:, :3, 2])
    np.testing.assert_array_equal(cv[:, :3, 1], -c2w[:, :3, 1])
    assert np.all(is_rigid(cv))


@pytest.mark.parametrize("factor", [1.0, 2.5, -0.01])
def test_decompose_projection_recovers_K_and_pose(factor):
    rng = np.random.default_rng(1)
    K = np.array([[700.0, 1.5, 320.0], [0.0, 690.0, 240.0], [0.0, 0.0, 1.0]])
    c2w = random_pose(rng)
    P = K @ np.linalg.inv(c2w)[:3] * factor  # any non-zero scale, either sign
    K2, c2w2 = decompose_projection(P)
    # float64 RQ of a well-conditioned 3x3: ~1e-13 relative.
    np.testing.assert_allclose(K2, K, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(c2w2, c2w, atol=1e-10)
    assert np.linalg.det(c2w2[:3, :3]) == pytest.approx(1.0)
    assert K2[2, 2] == 1.0 and np.all(np.diag(K2) > 0)


def test_decompose_projection_rejects_bad_input():
    with pytest.raises(ValueError, match="P"):
        decompose_projection(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="singular"):
        decompose_projection(np.zeros((3, 4)))


def test_intrinsics_from_fov_closed_form():
    # 90 degrees horizontal: tan(45 deg) = 1, so fx = W / 2.
    K = intrinsics_from_fov(200, 100, np.pi / 2)
    np.testing.assert_allclose(K, [[100, 0, 100], [0, 100, 50], [0, 0, 1]], atol=1e-12)
    K = intrinsics_from_fov(200, 100, np.pi / 2, fov_y=2 * np.arctan(0.25))
    assert K[1, 1] == pytest.approx(200.0)  # 0.5 * 100 / 0.25
    with pytest.raises(ValueError, match="fov_x"):
        intrinsics_from_fov(10, 10, 4.0)


def test_is_rigid_flags_scale_shear_reflection_and_nan():
    good = random_pose(np.random.default_rng(2))
    assert is_rigid(good)
    scaled = good.copy()
    scaled[:3, :3] *= 1.01
    reflected = good @ np.diag([1.0, 1.0, -1.0, 1.0])
    nan = good.copy()
    nan[0, 3] = np.nan
    bad_row = good.copy()
    bad_row[3, 0] = 0.5
    # Batched: one bad pose does not taint the others.
    np.testing.assert_array_equal(
        is_rigid(np.stack([scaled, good, reflected, nan, bad_row])), [False, True, False, False, False]
    )
    assert rigidity_error(reflected) == pytest.approx(2.0)
    # float32 round-off is far inside the tolerance.
    assert is_rigid(good.astype(np.float32).astype(np.float64), tol=1e-6)


def test_look_at_points_camera_at_target():
    c2w = look_at([3.0, 0.0, 0.0], [0.0, 0.0, 0.0], up=(0, 0, 1))
    np.testing.assert_allclose(c2w[:3, 2], [-1, 0, 0], atol=1e-15)  # forward
    np.testing.assert_allclose(c2w[:3, 1], [0, 0, -1], atol=1e-15)  # image down = world down
    assert is_rigid(c2w)


# ------------------------------------------------------------------------------------------
# rays.py


def _random_setup(n: int, dtype: torch.dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    W, H = 640, 480
    K = torch.tensor([[500.0, 0.8, 322.0], [0.0, 505.0, 241.0], [0.0, 0.0, 1.0]], dtype=dtype)
    c2w = torch.as_tensor(np.stack([random_pose(rng) for _ in range(n)]), dtype=dtype)
    uv = torch.as_tensor(rng.uniform([0, 0], [W, H], size=(n, 2)), dtype=dtype)
    depth = torch.as_tensor(rng.uniform(0.5, 20.0, size=n), dtype=dtype)
    return uv, K, c2w, depth


@pytest.mark.parametrize("distortion", [None, DISTORTION], ids=["pinhole", "distorted"])
def test_project_inverts_camera_rays_float64(distortion):
    uv, K, c2w, depth = _random_setup(2000, torch.float64)
    dist = None if distortion is None else torch.tensor(distortion, dtype=torch.float64)
    o, d = camera_rays(uv, K, c2w, dist)
    torch.testing.assert_close(torch.linalg.norm(d, dim=-1), torch.ones(len(d), dtype=torch.float64))
    # A point at camera depth z lies at distance z / cos(angle to the optical axis) along the ray.
    cos = (d * c2w[:, :3, 2]).sum(-1)
    points = o + d * (depth / cos)[:, None]
    uv2, depth2 = project_points(points, K, c2w, dist)
    # 1e-5 px: the brief's target; float64 Newton converges to ~1e-12 px.
    assert (uv2 - uv).abs().max() < 1e-5
    torch.testing.assert_close(depth2, depth, rtol=1e-10, atol=0)


def test_project_inverts_camera_rays_float32():
    uv, K, c2w, depth = _random_setup(2000, torch.float32)
    dist = torch.tensor(DISTORTION)
    o, d = camera_rays(uv, K, c2w, dist)
    cos = (d * c2w[:, :3, 2]).sum(-1)
    uv2, _ = project_points(o + d * (depth / cos)[:, None], K, c2w, dist)
    # float32: eps 6e-8 relative on coordinates up to ~20 world units and ~640 px, through
    # a rotation and a division: errors of ~1e-4 px; 1e-2 px is a generous bound.
    assert (uv2 - uv).abs().max() < 1e-2


def test_undistort_inverts_distort():
    rng = np.random.default_rng(3)
    xy = torch.as_tensor(rng.uniform(-0.7, 0.7, size=(1000, 2)))
    dist = torch.tensor(DISTORTION, dtype=torch.float64)
    back = undistort_points(distort_points(xy, dist), dist)
    torch.testing.assert_close(back, xy, rtol=0, atol=1e-12)  # Newton to machine precision
    # Zero distortion is the identity.
    torch.testing.assert_close(distort_points(xy, torch.zeros(4, dtype=torch.float64)), xy)


def test_principal_point_ray_is_optical_axis_and_shapes_broadcast():
    K = torch.tensor([[100.0, 0.0, 50.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    c2w = torch.as_tensor(look_at([0.0, -5.0, 1.0], [0.0, 0.0, 0.0]))
    o, d = camera_rays(torch.tensor([[50.0, 40.0]], dtype=torch.float64), K, c2w)
    torch.testing.assert_close(d[0], c2w[:3, 2])
    torch.testing.assert_close(o[0], c2w[:3, 3])
    # (3, 3)/(4, 4) and per-ray (N, 3, 3)/(N, 4, 4) give the same rays.
    uv = pixel_centers(4, 5, dtype=torch.float64)
    assert uv.shape == (20, 2) and uv[0].tolist() == [0.5, 0.5] and uv[-1].tolist() == [4.5, 3.5]
    o1, d1 = camera_rays(uv, K, c2w)
    o2, d2 = camera_rays(uv, K.expand(20, 3, 3), c2w.expand(20, 4, 4))
    torch.testing.assert_close(d1, d2)
    torch.testing.assert_close(o1, o2)


def test_rays_validate_shapes():
    K = torch.eye(3)
    with pytest.raises(ValueError, match="uv"):
        camera_rays(torch.zeros(3), K, torch.eye(4))
    with pytest.raises(ValueError, match="c2w"):
        camera_rays(torch.zeros(3, 2), K, torch.eye(4).expand(2, 4, 4))
    with pytest.raises(ValueError, match="points"):
        project_points(torch.zeros(3, 2), K, torch.eye(4))
