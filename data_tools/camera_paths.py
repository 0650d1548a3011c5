"""Camera layouts around an object: Fibonacci sphere or ring, looking at a centre.

Every camera is a ``CameraPose(K, c2w)``: ``K`` (3, 3) in pixels with pixel centres
at +0.5 (the principal point of a centred camera is (W/2, H/2)), ``c2w`` (4, 4)
OpenCV camera-to-world (x right, y down, z forward) in world units. "Up" is a world
direction (default +y, the usual up axis of OBJ meshes); the image's "up" (-y of
the camera) points along it, so objects appear upright.

Elevation is the angle above the plane orthogonal to ``up``; azimuth is measured in
that plane. Layouts are deterministic: ``seed`` only drives the optional jitter and
the random azimuth offset of ``random_azimuth_offset``.

``CameraRig`` bundles the layout settings the generators share (layout, distance in
object radii, FOV, up, elevations, jitter) and places training and held-out cameras.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from data_tools.checks import finite_number, vector3

GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


class CameraPose(NamedTuple):
    """K: (3, 3) pixels, centres at +0.5; c2w: (4, 4) OpenCV camera-to-world, world units."""

    K: np.ndarray
    c2w: np.ndarray


def _unit(v: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(vector3(v, name))
    return a / np.linalg.norm(a)


def intrinsics_from_fov(width: int, height: int, fov_x_deg: float) -> np.ndarray:
    """(3, 3) K of a centred pinhole: fx = fy = 0.5 W / tan(fov_x / 2), (cx, cy) = (W/2, H/2).

    (W/2, H/2) is the image centre because pixel centres sit at +0.5.
    """
    if not 0.0 < fov_x_deg < 180.0:
        raise ValueError(f"fov_x_deg must be in (0, 180), got {fov_x_deg}")
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be >= 1, got {width}x{height}")
    f = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def fov_to_fit_sphere(distance: float, radius: float, width: int, height: int, margin: float = 1.1) -> float:
    """Horizontal FOV (degrees) at which a sphere of ``radius`` seen from ``distance`` fills the
    shorter image side, enlarged by ``margin`` (1.1 = 10 % border).

    The sphere's silhouette has half-angle asin(r/d); its image radius is f * tan(asin(r/d)).
    """
    if not distance > radius > 0:
        raise ValueError(f"need distance > radius > 0, got distance={distance}, radius={radius}")
    half = math.tan(math.asin(radius / distance)) * margin  # image half-extent / f
    f = 0.5 * min(width, height) / half
    return math.degrees(2.0 * math.atan(0.5 * width / f))


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """(4, 4) OpenCV camera-to-world at ``eye`` looking at ``target``, image up along ``up``.

    Columns: x = right, y = down, z = viewing direction. When the view direction is
    (nearly) parallel to ``up``, another world axis stands in for ``up``.
    """
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    if np.linalg.norm(z) == 0:
        raise ValueError("look_at: eye and target coincide")
    z /= np.linalg.norm(z)
    up = _unit(up, "up")
    if abs(float(z @ up)) > 0.999:
        # Pick the world axis least aligned with the view direction as a stand-in.
        up = np.eye(3)[int(np.argmin(np.abs(z)))]
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def _basis(up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors spanning the plane orthogonal to ``up`` (azimuth 0 and 90 degrees)."""
    ref = np.eye(3)[int(np.argmin(np.abs(up)))]
    a = ref - (ref @ up) * up
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    return a, b


def directions_from_angles(elevation_rad: np.ndarray, azimuth_rad: np.ndarray, up: np.ndarray) -> np.ndarray:
    """(n,) elevation, (n,) azimuth (radians) -> (n, 3) unit directions from the centre."""
    up = _unit(up, "up")
    a, b = _basis(up)
    ce = np.cos(elevation_rad)[:, None]
    return (
        ce * (np.cos(azimuth_rad)[:, None] * a + np.sin(azimuth_rad)[:, None] * b) + np.sin(elevation_rad)[:, None] * up
    )


def fibonacci_directions(
    n: int,
    up: Sequence[float] = (0.0, 1.0, 0.0),
    min_elevation_deg: float = -90.0,
    max_elevation_deg: float = 90.0,
    azimuth_offset_deg: float = 0.0,
) -> np.ndarray:
    """(n, 3) unit directions, evenly spread over the sphere band between two elevations.

    Fibonacci lattice: sin(elevation) uniform over the band (equal area), azimuth
    advancing by the golden angle. Nothing lands exactly on a pole.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not -90.0 <= min_elevation_deg < max_elevation_deg <= 90.0:
        raise ValueError(
            f"need -90 <= min_elevation_deg < max_elevation_deg <= 90, got {min_elevation_deg}, {max_elevation_deg}"
        )
    lo, hi = math.sin(math.radians(min_elevation_deg)), math.sin(math.radians(max_elevation_deg))
    i = np.arange(n, dtype=np.float64)
    # Top to bottom so the first views are the upper ones.
    s = hi - (i + 0.5) / n * (hi - lo)
    elev = np.arcsin(np.clip(s, -1.0, 1.0))
    azim = i * GOLDEN_ANGLE + math.radians(azimuth_offset_deg)
    return directions_from_angles(elev, azim, np.asarray(up, dtype=np.float64))


def ring_directions(
    n: int,
    elevation_deg: float = 20.0,
    up: Sequence[float] = (0.0, 1.0, 0.0),
    azimuth_offset_deg: float = 0.0,
) -> np.ndarray:
    """(n, 3) unit directions at one elevation, azimuths evenly spaced by 360/n degrees."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not -90.0 < elevation_deg < 90.0:
        raise ValueError(f"elevation_deg must be in (-90, 90), got {elevation_deg}")
    azim = np.radians(azimuth_offset_deg + 360.0 * np.arange(n) / n)
    elev = np.full(n, math.radians(elevation_deg))
    return directions_from_angles(elev, azim, np.asarray(up, dtype=np.float64))


def jitter_directions(directions: np.ndarray, jitter_deg: float, rng: np.random.Generator) -> np.ndarray:
    """Tilt each (n, 3) unit direction by a random angle (Gaussian, std ``jitter_deg``) in a random
    tangent direction; returns (n, 3) unit directions. ``jitter_deg = 0`` returns a copy."""
    d = np.array(directions, dtype=np.float64)
    if jitter_deg <= 0:
        return d
    tangent = rng.standard_normal(d.shape)
    tangent -= np.sum(tangent * d, axis=1, keepdims=True) * d
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-12)
    angle = np.radians(jitter_deg) * rng.standard_normal((len(d), 1))
    out = np.cos(angle) * d + np.sin(angle) * tangent
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def random_azimuth_offset(seed: int) -> float:
    """A seed-determined azimuth offset in [0, 360) degrees (so different seeds give other views)."""
    return float(np.random.default_rng([int(seed), 7]).uniform(0.0, 360.0))


def cameras_from_directions(
    directions: np.ndarray,
    distance: float,
    width: int,
    height: int,
    fov_x_deg: float,
    center: Sequence[float] = (0.0, 0.0, 0.0),
    up: Sequence[float] = (0.0, 1.0, 0.0),
) -> list[CameraPose]:
    """One camera per (n, 3) direction at ``center + distance * direction``, looking at ``center``."""
    if not distance > 0:
        raise ValueError(f"distance must be > 0, got {distance}")
    K = intrinsics_from_fov(width, height, fov_x_deg)
    c = np.asarray(center, dtype=np.float64).reshape(3)
    up_v = _unit(up, "up")
    return [CameraPose(K.copy(), look_at(c + distance * d, c, up_v)) for d in np.asarray(directions)]


def sphere_cameras(
    n: int,
    distance: float,
    width: int,
    height: int,
    fov_x_deg: float,
    center: Sequence[float] = (0.0, 0.0, 0.0),
    up: Sequence[float] = (0.0, 1.0, 0.0),
    min_elevation_deg: float = -90.0,
    max_elevation_deg: float = 90.0,
    azimuth_offset_deg: float = 0.0,
    jitter_deg: float = 0.0,
    seed: int = 0,
) -> list[CameraPose]:
    """``n`` cameras on a Fibonacci sphere band (``min_elevation_deg=0``: upper hemisphere).

    Args:
        distance: camera centre to ``center``, world units.
        fov_x_deg: horizontal field of view, degrees.
        jitter_deg: std of a random tilt of each camera position (seeded by ``seed``).
    """
    d = fibonacci_directions(n, up, min_elevation_deg, max_elevation_deg, azimuth_offset_deg)
    d = jitter_directions(d, jitter_deg, np.random.default_rng([int(seed), 1]))
    return cameras_from_directions(d, distance, width, height, fov_x_deg, center, up)


def ring_cameras(
    n: int,
    distance: float,
    width: int,
    height: int,
    fov_x_deg: float,
    elevation_deg: float = 20.0,
    center: Sequence[float] = (0.0, 0.0, 0.0),
    up: Sequence[float] = (0.0, 1.0, 0.0),
    azimuth_offset_deg: float = 0.0,
    jitter_deg: float = 0.0,
    seed: int = 0,
) -> list[CameraPose]:
    """``n`` cameras evenly spaced on a ring at ``elevation_deg``, looking at ``center``."""
    d = ring_directions(n, elevation_deg, up, azimuth_offset_deg)
    d = jitter_directions(d, jitter_deg, np.random.default_rng([int(seed), 1]))
    return cameras_from_directions(d, distance, width, height, fov_x_deg, center, up)


def horizontal_fov_deg(K: np.ndarray, width: int) -> float:
    """Horizontal field of view (degrees) of a centred camera ``K`` (3, 3, pixels), ``width`` px wide."""
    return math.degrees(2 * math.atan(0.5 * width / K[0, 0]))


class RigCameras(NamedTuple):
    """The cameras a ``CameraRig`` places for one scene.

    Attributes:
        train: training cameras (azimuths start at ``azimuth_offset_deg``).
        test: held-out cameras, between the training ones (empty when none were asked for).
        azimuth_offset_deg: the seed-drawn azimuth offset of the training layout, degrees.
    """

    train: list[CameraPose]
    test: list[CameraPose]
    azimuth_offset_deg: float


@dataclass(frozen=True)
class CameraRig:
    """Where a generated scene's cameras sit and how wide they see; shared by the static and
    dynamic generators (``data_tools.generate``, ``data_tools.dynamic``), validated on construction.

    Cameras look at the centre of the object's bounding sphere (world frame, OpenCV c2w).

    Attributes:
        layout: "sphere" (Fibonacci lattice between the elevation limits) or "ring" (one elevation).
        distance: camera distance from the sphere's centre, in sphere radii (> 1).
        fov_x_deg: horizontal field of view, degrees in (0, 180); None fits the sphere into the
            shorter image side with a 10 % border.
        up: world up direction (finite, non-zero; need not be unit): elevations and upright images.
        min_elevation_deg, max_elevation_deg: the sphere layout's band, -90 <= min < max <= 90.
        ring_elevation_deg: the ring layout's elevation, degrees in (-90, 90).
        jitter_deg: std of random tilts of the camera positions, degrees (>= 0; 0: none).
    """

    layout: str = "sphere"
    distance: float = 2.75
    fov_x_deg: float | None = None
    up: tuple[float, float, float] = (0.0, 1.0, 0.0)
    min_elevation_deg: float = -90.0
    max_elevation_deg: float = 90.0
    ring_elevation_deg: float = 20.0
    jitter_deg: float = 0.0

    def __post_init__(self) -> None:
        if self.layout not in ("sphere", "ring"):
            raise ValueError(f"layout must be 'sphere' or 'ring', got {self.layout!r}")
        values = {
            "distance": finite_number(self.distance, "distance"),
            "fov_x_deg": None if self.fov_x_deg is None else finite_number(self.fov_x_deg, "fov_x_deg"),
            "up": vector3(self.up, "up"),
            "min_elevation_deg": finite_number(self.min_elevation_deg, "min_elevation_deg"),
            "max_elevation_deg": finite_number(self.max_elevation_deg, "max_elevation_deg"),
            "ring_elevation_deg": finite_number(self.ring_elevation_deg, "ring_elevation_deg"),
            "jitter_deg": finite_number(self.jitter_deg, "jitter_deg"),
        }
        if not values["distance"] > 1.0:
            raise ValueError(f"distance (in object radii) must be > 1, got {self.distance}")
        if values["fov_x_deg"] is not None and not 0.0 < values["fov_x_deg"] < 180.0:
            raise ValueError(f"fov_x_deg must be in (0, 180) or None, got {self.fov_x_deg}")
        if not -90.0 <= values["min_elevation_deg"] < values["max_elevation_deg"] <= 90.0:
            raise ValueError(
                "need -90 <= min_elevation_deg < max_elevation_deg <= 90, "
                f"got {self.min_elevation_deg}, {self.max_elevation_deg}"
            )
        if not -90.0 < values["ring_elevation_deg"] < 90.0:
            raise ValueError(f"ring_elevation_deg must be in (-90, 90), got {self.ring_elevation_deg}")
        if values["jitter_deg"] < 0:
            raise ValueError(f"jitter_deg must be >= 0, got {self.jitter_deg}")
        for name, value in values.items():  # store plain floats (frozen: set through object)
            object.__setattr__(self, name, value)

    def cameras(
        self,
        n: int,
        width: int,
        height: int,
        center: Sequence[float],
        radius: float,
        azimuth_offset_deg: float,
        seed: int,
    ) -> list[CameraPose]:
        """``n`` cameras of this rig around the sphere (``center`` (3,), ``radius``, world units),
        for ``width`` x ``height`` pixel images; ``seed`` drives the jitter."""
        d = self.distance * radius
        fov = fov_to_fit_sphere(d, radius, width, height) if self.fov_x_deg is None else self.fov_x_deg
        if self.layout == "sphere":
            return sphere_cameras(
                n,
                d,
                width,
                height,
                fov,
                center,
                self.up,
                self.min_elevation_deg,
                self.max_elevation_deg,
                azimuth_offset_deg,
                self.jitter_deg,
                seed,
            )
        return ring_cameras(
            n,
            d,
            width,
            height,
            fov,
            self.ring_elevation_deg,
            center,
            self.up,
            azimuth_offset_deg,
            self.jitter_deg,
            seed,
        )

    def heldout_azimuth_offset(self, n_train: int, train_offset_deg: float) -> float:
        """Azimuth offset (degrees) of held-out cameras, chosen to fall between the training ones:
        half the ring spacing, or half the golden angle for the Fibonacci sphere."""
        if self.layout == "ring":
            return train_offset_deg + 180.0 / max(n_train, 1)
        return train_offset_deg + 0.5 * math.degrees(GOLDEN_ANGLE)

    def split_cameras(
        self, n_train: int, n_test: int, width: int, height: int, center: Sequence[float], radius: float, seed: int
    ) -> RigCameras:
        """Training and held-out cameras around the sphere (``center`` (3,), ``radius``, world units).

        ``seed`` draws the training azimuth offset (``random_azimuth_offset``) and the training
        jitter; the held-out cameras use ``seed + 1`` for theirs. Same arguments, same cameras.
        """
        offset = random_azimuth_offset(seed)
        train = self.cameras(n_train, width, height, center, radius, offset, seed)
        test = []
        if n_test > 0:
            test_offset = self.heldout_azimuth_offset(n_train, offset)
            test = self.cameras(n_test, width, height, center, radius, test_offset, seed + 1)
        return RigCameras(train, test, offset)

    def to_dict(self, azimuth_offset_deg: float, fov_x_deg: float | None = None) -> dict:
        """The rig's entries of ``scene_info.json`` "settings", in file order.

        ``fov_x_deg`` is the FOV the cameras got (``horizontal_fov_deg``), written only when
        given; ``azimuth_offset_deg`` is ``RigCameras.azimuth_offset_deg``. ``layout`` is not in
        here: the generators write it beside the image size, where the files have always had it.
        """
        out: dict = {"distance_radii": self.distance}
        if fov_x_deg is not None:
            out["fov_x_deg"] = float(fov_x_deg)
        out |= {
            "up": list(self.up),
            "min_elevation_deg": self.min_elevation_deg,
            "max_elevation_deg": self.max_elevation_deg,
            "ring_elevation_deg": self.ring_elevation_deg,
            "azimuth_offset_deg": float(azimuth_offset_deg),
            "jitter_deg": self.jitter_deg,
        }
        return out
