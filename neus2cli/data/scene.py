"""Typed scenes: what every loader returns and everything downstream consumes.

Conventions (fixed here, for the whole package):

* ``c2w`` is a (4, 4) float64 **camera-to-world** matrix in the **OpenCV** camera
  convention: x right, y down, z forward (the camera looks along +z).
* ``K`` is a (3, 3) float64 pinhole matrix in **pixels**, with **pixel centres at
  +0.5**: pixel (row v, column u) covers [u, u+1) x [v, v+1) and its centre is
  (u + 0.5, v + 0.5). A loader whose source puts centres at integers (OpenCV,
  NeuS/IDR projection matrices) adds 0.5 to cx and cy.
* ``distortion`` is OpenCV's (k1, k2, p1, p2) or ``None``.
* The **world** frame is the dataset's own (DTU millimetres, Blender units, ...).
  The **normalized** frame is the unit cube [0, 1]^3 that the networks see:
  ``x_norm = x_world * scale + offset`` (see ``Normalization``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Normalization:
    """Similarity world -> normalized unit cube: ``x_norm = x_world * scale + offset``.

    Attributes:
        scale: world units -> normalized units (positive scalar).
        offset: (3,) normalized-frame position of the world origin.
        aabb: (2, 3) [min, max] of the region to reconstruct, in the normalized
            frame; usually the unit cube [[0, 0, 0], [1, 1, 1]].
    """

    scale: float = 0.33
    offset: np.ndarray = field(default_factory=lambda: np.full(3, 0.5))
    aabb: np.ndarray = field(default_factory=lambda: np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))

    def __post_init__(self) -> None:
        self.scale = float(self.scale)
        self.offset = np.asarray(self.offset, dtype=np.float64).reshape(3)
        self.aabb = np.asarray(self.aabb, dtype=np.float64).reshape(2, 3)
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"Normalization.scale must be a positive finite number, got {self.scale}")

    def world_to_normalized(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) world points -> (..., 3) normalized-cube points."""
        return np.asarray(points) * self.scale + self.offset

    def normalized_to_world(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) normalized-cube points -> (..., 3) world points."""
        return (np.asarray(points) - self.offset) / self.scale

    def c2w_to_normalized(self, c2w: np.ndarray) -> np.ndarray:
        """(..., 4, 4) world camera-to-world -> normalized camera-to-world (rotation kept)."""
        out = np.array(c2w, dtype=np.float64, copy=True)
        out[..., :3, 3] = self.world_to_normalized(out[..., :3, 3])
        return out

    def matrix(self) -> np.ndarray:
        """(4, 4) homogeneous world -> normalized matrix."""
        m = np.eye(4)
        m[:3, :3] *= self.scale
        m[:3, 3] = self.offset
        return m

    def to_dict(self) -> dict:
        return {"scale": self.scale, "offset": self.offset.tolist(), "aabb": self.aabb.tolist()}

    @classmethod
    def fitting_box(cls, box_world: np.ndarray) -> Normalization:
        """The normalization that maps the world box (2, 3) [min, max] into the unit cube: its centre to the
        cube's centre and its longest side onto the cube's side (the other sides fit inside)."""
        box = np.asarray(box_world, dtype=np.float64).reshape(2, 3)
        extent = float((box[1] - box[0]).max())
        if not (np.isfinite(box).all() and extent > 0):
            raise ValueError(f"box_world must be finite with a positive extent, got {box.tolist()}")
        scale = 1.0 / extent
        return cls(scale=scale, offset=np.full(3, 0.5) - box.mean(axis=0) * scale)

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(scale=d["scale"], offset=np.asarray(d["offset"]), aabb=np.asarray(d["aabb"]))


@dataclass
class View:
    """One calibrated image.

    Attributes:
        name: a stable identifier (usually the image file stem).
        image_path: the image file (RGB or RGBA).
        width, height: image size in pixels.
        K: (3, 3) intrinsics in pixels, pixel centres at +0.5.
        c2w: (4, 4) OpenCV camera-to-world in the world frame.
        distortion: (4,) OpenCV (k1, k2, p1, p2), or None for a pinhole.
        mask_path: a separate mask file (any channel > 127 is foreground), or
            None when the mask is the image's alpha (or there is no mask).
        loader: optional override that returns the (H, W, 4) uint8 RGBA image;
            used by in-memory and generated scenes.
    """

    name: str
    image_path: Path | None
    width: int
    height: int
    K: np.ndarray
    c2w: np.ndarray
    distortion: np.ndarray | None = None
    mask_path: Path | None = None
    loader: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    @property
    def camera_center(self) -> np.ndarray:
        """(3,) camera centre in world coordinates."""
        return self.c2w[:3, 3]

    def load_rgba(self) -> np.ndarray:
        """(H, W, 4) uint8 RGBA: mask in alpha (255 everywhere when there is no mask)."""
        from neus2cli.data.images import load_view_rgba

        return load_view_rgba(self)


@dataclass
class Scene:
    """A static multi-view scene.

    Attributes:
        name: short scene name (used for ``outputs/<name>/...``).
        root: the file or folder it was loaded from.
        format: ``"blender"``, ``"neus2"``, ``"neus"`` or ``"colmap"``.
        views: every view, in file order.
        split: ``{"train": [...], "test": [...]}`` indices into ``views``.
        normalization: world -> unit cube.
        warnings: non-fatal problems found while loading, for ``inspect`` and logs.
    """

    name: str
    root: Path
    format: str
    views: list[View]
    split: dict[str, list[int]]
    normalization: Normalization
    warnings: list[str] = field(default_factory=list)

    @property
    def train_views(self) -> list[View]:
        return [self.views[i] for i in self.split.get("train", range(len(self.views)))]

    @property
    def test_views(self) -> list[View]:
        return [self.views[i] for i in self.split.get("test", [])]


@dataclass
class DynamicScene:
    """A multi-view video: one static ``Scene`` per time step, in file-name order.

    Cameras may change between frames. ``frame_names`` are the per-frame JSON stems.
    """

    name: str
    root: Path
    frames: list[Scene]
    frame_names: list[str]
    warnings: list[str] = field(default_factory=list)
