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


def speckled_blob(seed: int = 0, n_lat: int = 48, n_lon: int = 96, texture: int = 1024) -> trimesh.Trimesh:
    """``lumpy_ellipsoid``'s shape as a latitude-longitude mesh with a speckled texture, for SfM.

    Structure from motion needs many distinct image features on a surface that is not planar
    (a textured cube fails: each view is dominated by one plane, and COLMAP's two-view
    geometries come out planar). The texture is grey noise smoothed at 1.5, 4 and 10 texels,
    summed, with a warm tint; UVs are longitude/latitude (seam vertices duplicated, so no
    triangle spans the seam).
    """
    from PIL import Image
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    theta, phi = np.meshgrid(np.linspace(0, np.pi, n_lat + 1), np.linspace(0, 2 * np.pi, n_lon + 1), indexing="ij")
    v = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1).reshape(-1, 3)
    uv = np.stack([phi / (2 * np.pi), 1 - theta / np.pi], -1).reshape(-1, 2)
    idx = np.arange(len(v)).reshape(n_lat + 1, n_lon + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    faces = np.concatenate([np.stack([a, d, c], -1).reshape(-1, 3), np.stack([a, c, b], -1).reshape(-1, 3)])
    v = v * np.array([1.0, 0.75, 0.6])
    v[:, 2] += 0.35 * np.exp(-((v[:, 0] - 0.45) ** 2 + v[:, 1] ** 2) / 0.06) * (v[:, 2] > 0)
    noise = np.zeros((texture // 2, texture))
    for sigma in (1.5, 4.0, 10.0):
        n = ndimage.gaussian_filter(rng.standard_normal(noise.shape), sigma, mode="wrap")
        noise += n / n.std()
    rgb = np.clip(0.5 + 0.15 * noise, 0, 1)[..., None] * np.array([1.0, 0.85, 0.7])
    mesh = trimesh.Trimesh(v, faces, process=False)
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray((255 * rgb).astype(np.uint8)))
    return mesh
