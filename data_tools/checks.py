"""Argument checks shared by the generator's settings (``CameraRig``, ``Shading``, the motion)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def finite_number(value: object, name: str) -> float:
    """``value`` (an int or float, not a bool) as a finite float; else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def vector3(value: Sequence[float] | np.ndarray, name: str) -> tuple[float, float, float]:
    """A finite non-zero 3-vector (any sequence or array of 3 numbers) as a tuple of floats,
    not normalized; else a ValueError naming ``name``."""
    try:
        a = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        a = np.zeros(0)
    if a.shape != (3,) or not np.all(np.isfinite(a)) or np.linalg.norm(a) == 0:
        raise ValueError(f"{name} must be a finite non-zero 3-vector, got {value!r}")
    return float(a[0]), float(a[1]), float(a[2])
