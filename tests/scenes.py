"""Small generated scenes with known geometry, shared by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh


def lumpy_ellipsoid() -> trimesh.Trimesh:
    """A watertight test object without rotational symmetry: an ellipsoid (1, 0.65, 0.45) with a bump.

    Its bounding sphere has radius ~1; the bump fixes every rotation (an ellipsoid alone
    would be symmetric under 180-degree turns, a torus under any turn about its axis).
    """
    sphere = trimesh.creation.icosphere(subdivisions=3)
    v = sphere.vertices * np.array([1.0, 0.65, 0.45])
    v[:, 2] += 0.4 * np.exp(-((v[:, 0] - 0.45) ** 2 + v[:, 1] ** 2) / 0.06) * (v[:, 2] > 0)
    return trimesh.Trimesh(v, sphere.faces)


def static_scene(root: Path, views: int = 24, size: int = 64) -> Path:
    from data_tools.generate import generate_static_scene
    from data_tools.render_mesh import Shading

    return generate_static_scene(
        lumpy_ellipsoid(),
        root,
        n_views=views,
        n_test=2,
        width=size,
        height=size,
        shading=Shading(supersample=1),
        progress=False,
    )


def dynamic_scene(
    root: Path,
    frames: int = 3,
    views: int = 20,
    size: int = 64,
    height: int | None = None,
    rotation_deg: float = 20.0,
    translation: float = 0.2,
) -> Path:
    """Large rigid motion per frame: by default 20 degrees about y and a fifth of the object's size along x.

    Images are ``size`` wide and ``height`` (default ``size``) high.
    """
    from data_tools.dynamic import generate_dynamic_sequence
    from data_tools.render_mesh import Shading

    return generate_dynamic_sequence(
        lumpy_ellipsoid(),
        root,
        n_frames=frames,
        n_views=views,
        width=size,
        height=size if height is None else height,
        rotation_deg_per_frame=rotation_deg,
        translation_per_frame=translation,
        n_test_views=0,
        shading=Shading(supersample=1),
        progress=False,
    )
