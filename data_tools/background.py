"""A textured environment around a generated object, for unmasked scenes.

``EnvironmentSphere`` is a sphere centred on the world origin (the object's bounding-sphere centre)
with a procedural texture on its inside; the cameras sit inside it. A view rendered with it has no
alpha: each pixel is the object's colour over its coverage and the sphere's colour (seen along the
pixel's centre ray) elsewhere, ``rgb = a rgb_object + (1 - a) rgb_sphere``, as a photo of an object in
a room would be. The texture is a function of the direction from the centre only, smooth bands plus
a soft checker, so every part of it is distinct from its neighbours (something to match across views)
and nothing of it is near the object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_tools.render_mesh import pixel_rays

#: Phases of the three colour channels' bands (radians): unequal, so the bands are coloured.
_PHASES = np.array([0.0, 2.1, 4.2])


@dataclass(frozen=True)
class EnvironmentSphere:
    """A textured sphere of ``radius`` object radii around the object (module docstring).

    Attributes:
        radius: in object radii (bounding-sphere radii); it must hold every camera (checked by the
            generator against the rig's distance).
    """

    radius: float = 8.0

    def __post_init__(self) -> None:
        if not (isinstance(self.radius, int | float) and math.isfinite(self.radius) and self.radius > 1):
            raise ValueError(f"the environment sphere's radius must be > 1 object radius, got {self.radius!r}")

    @staticmethod
    def texture(directions: np.ndarray) -> np.ndarray:
        """(n, 3) unit directions from the centre (world frame) -> (n, 3) float RGB in [0, 1]."""
        d = np.asarray(directions, dtype=np.float64)
        lon = np.arctan2(d[:, 2], d[:, 0])
        lat = np.arcsin(np.clip(d[:, 1], -1.0, 1.0))
        bands = 0.22 * np.sin(3.0 * lon[:, None] + 2.0 * lat[:, None] + _PHASES) * np.cos(lat)[:, None]
        checker = 0.18 * np.tanh(3.0 * np.sin(6.0 * lon) * np.sin(6.0 * lat))[:, None] * np.array([1.0, 0.8, 0.6])
        return np.clip(0.5 + bands + checker, 0.0, 1.0)

    def colors(self, origins: np.ndarray, directions: np.ndarray, object_radius: float) -> np.ndarray:
        """(n, 3) world ray origins inside the sphere, (n, 3) unit directions -> (n, 3) RGB where they meet it."""
        big_r = self.radius * object_radius
        b = np.einsum("nc,nc->n", origins, directions)
        c = np.einsum("nc,nc->n", origins, origins) - big_r * big_r  # < 0 inside the sphere
        t = -b + np.sqrt(np.maximum(b * b - c, 0.0))
        hit = origins + t[:, None] * directions
        return self.texture(hit / np.linalg.norm(hit, axis=1, keepdims=True))

    def composite(self, rgba: np.ndarray, K: np.ndarray, c2w: np.ndarray, object_radius: float) -> np.ndarray:
        """(H, W, 4) uint8 object render (alpha = coverage) -> (H, W, 3) uint8 over the sphere.

        ``K`` (3, 3) pixels, centres at +0.5; ``c2w`` (4, 4) OpenCV camera-to-world, world units.
        """
        h, w = rgba.shape[:2]
        origins, dirs = pixel_rays(K, c2w, w, h, 1)
        env = self.colors(origins.reshape(-1, 3), dirs.reshape(-1, 3), object_radius).reshape(h, w, 3)
        a = rgba[..., 3:4].astype(np.float64) / 255.0
        rgb = rgba[..., :3].astype(np.float64) / 255.0 * a + env * (1.0 - a)
        return np.round(rgb * 255.0).astype(np.uint8)

    def to_dict(self) -> dict:
        """The background entry of ``scene_info.json`` "settings"."""
        return {"kind": "sphere", "radius_object_radii": float(self.radius)}
