"""Camera matrix algebra in numpy float64: conventions, projection matrices, intrinsics.

Conventions are those of ``neus2cli.data.scene``: ``c2w`` is (4, 4) camera-to-world,
OpenCV axes (x right, y down, z forward) unless a function says otherwise; ``K`` is
(3, 3) in pixels.
"""

from __future__ import annotations

import numpy as np

# Flipping the camera's y and z axes maps OpenGL (x right, y up, z back) to OpenCV
# (x right, y down, z forward) and back: the map is its own inverse.
_GL_CV_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


def _as_c2w(c2w: np.ndarray, name: str = "c2w") -> np.ndarray:
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape[-2:] != (4, 4):
        raise ValueError(f"{name}: expected (..., 4, 4), got shape {c2w.shape}")
    return c2w


def opengl_to_opencv(c2w: np.ndarray) -> np.ndarray:
    """(..., 4, 4) OpenGL camera-to-world -> (..., 4, 4) OpenCV camera-to-world (same camera)."""
    return _as_c2w(c2w) @ _GL_CV_FLIP


def opencv_to_opengl(c2w: np.ndarray) -> np.ndarray:
    """(..., 4, 4) OpenCV camera-to-world -> (..., 4, 4) OpenGL camera-to-world (same camera)."""
    return _as_c2w(c2w) @ _GL_CV_FLIP


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a projection matrix ``P ~ K [R | t]`` into intrinsics and a camera pose.

    Args:
        P: (3, 4) or (4, 4) (last row ignored) world -> homogeneous pixel matrix,
            defined up to a non-zero scale of either sign.

    Returns:
        K: (3, 3) upper-triangular intrinsics with positive diagonal and K[2, 2] = 1,
            in the pixel convention of ``P`` (no +0.5 shift is applied here).
        c2w: (4, 4) OpenCV camera-to-world in the world frame of ``P``;
            its rotation has det = +1.
    """
    from scipy.linalg import rq

    P = np.asarray(P, dtype=np.float64)
    if P.shape not in ((3, 4), (4, 4)):
        raise ValueError(f"P: expected (3, 4) or (4, 4), got shape {P.shape}")
    P = P[:3, :4].copy()
    if not np.all(np.isfinite(P)):
        raise ValueError("P: contains non-finite values")
    M = P[:, :3]
    det = np.linalg.det(M)
    if abs(det) < 1e-12 * max(1.0, np.abs(M).max() ** 3):
        raise ValueError("P: the left 3x3 block is singular (not a pinhole projection)")
    # K has positive diagonal so det(K) > 0, and det(R) = +1: the sign of det(M) is the
    # sign of P's arbitrary overall scale. Flip P so that R comes out a proper rotation.
    if det < 0:
        P = -P
        M = P[:, :3]
    K, R = rq(M)
    signs = np.sign(np.diag(K))
    D = np.diag(signs)  # D @ D = I, so K R = (K D)(D R)
    K = K @ D
    R = D @ R
    # P = K [R | t] with this (unnormalized) K, so t needs no rescaling; K does.
    t = np.linalg.solve(K, P[:, 3])
    K = K / K[2, 2]
    # Exact zeros below the diagonal (RQ leaves ~1e-16 residue).
    K[1, 0] = K[2, 0] = K[2, 1] = 0.0
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ t
    return K, c2w


def intrinsics_from_fov(
    width: int,
    height: int,
    fov_x: float,
    fov_y: float | None = None,
    cx: float | None = None,
    cy: float | None = None,
) -> np.ndarray:
    """(3, 3) K from horizontal (and optionally vertical) field of view in radians.

    fx = 0.5 * width / tan(fov_x / 2); fy likewise from ``fov_y``, else fy = fx.
    The principal point defaults to the image centre (width / 2, height / 2), which
    is the centre in the +0.5 pixel-centre convention.
    """
    if not (0 < fov_x < np.pi):
        raise ValueError(f"fov_x must be in (0, pi) radians, got {fov_x}")
    if fov_y is not None and not (0 < fov_y < np.pi):
        raise ValueError(f"fov_y must be in (0, pi) radians, got {fov_y}")
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    fx = 0.5 * width / np.tan(0.5 * fov_x)
    fy = fx if fov_y is None else 0.5 * height / np.tan(0.5 * fov_y)
    return np.array(
        [
            [fx, 0.0, width / 2.0 if cx is None else cx],
            [0.0, fy, height / 2.0 if cy is None else cy],
            [0.0, 0.0, 1.0],
        ]
    )


def rigidity_error(c2w: np.ndarray) -> np.ndarray:
    """(...,) largest deviation of a (..., 4, 4) pose from a rigid transform.

    The maximum of |R^T R - I|, |det R - 1| and |last row - [0, 0, 0, 1]|; inf for
    non-finite matrices. A reflection (det = -1) scores 2.
    """
    c2w = _as_c2w(c2w)
    R = c2w[..., :3, :3]
    with np.errstate(invalid="ignore"):
        ortho = np.abs(np.swapaxes(R, -1, -2) @ R - np.eye(3)).max(axis=(-1, -2))
        # det of non-finite matrices is replaced below; zeros keep LAPACK quiet meanwhile.
        det = np.abs(np.linalg.det(np.where(np.isfinite(R), R, 0.0)) - 1.0)
        last = np.abs(c2w[..., 3, :] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=-1)
        err = np.maximum(np.maximum(ortho, det), last)
    finite = np.all(np.isfinite(c2w), axis=(-1, -2))
    return np.where(finite, err, np.inf)


def is_rigid(c2w: np.ndarray, tol: float = 1e-3) -> np.ndarray:
    """(...,) bool: is each (..., 4, 4) pose a finite rotation + translation within ``tol``?

    ``tol`` bounds every entry of R^T R - I, det R - 1 and the last row's deviation from
    [0, 0, 0, 1]. Poses exported in float32 are rigid to ~1e-6, so 1e-3 only rejects
    real scale, shear or reflection.
    """
    return rigidity_error(c2w) <= tol


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0)) -> np.ndarray:
    """(4, 4) OpenCV camera-to-world at ``eye`` looking at ``target`` (world (3,) points).

    The image's "up" (-y) points as close to ``up`` as possible; ``up`` must not be
    parallel to the viewing direction.
    """
    eye = np.asarray(eye, dtype=np.float64).reshape(3)
    target = np.asarray(target, dtype=np.float64).reshape(3)
    z = target - eye
    if np.linalg.norm(z) == 0:
        raise ValueError("look_at: eye and target coincide")
    z /= np.linalg.norm(z)
    x = np.cross(-np.asarray(up, dtype=np.float64), z)  # right = down x forward
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("look_at: up is parallel to the viewing direction")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w
