"""NeuS/IDR folder -> NeuS2 JSON scene (``neus2 convert-neus``).

Output layout (what NeuS2's own DTU scenes look like, plus two explicit keys):

    DST/images/<stem>.png        RGBA, the mask in alpha
    DST/transform_train.json     train views
    DST/transform_test.json      test views (only with split=True and some test view)

Each JSON has ``from_na: true`` (OpenCV poses), ``integer_pixel_centers: true``
(K is copied from the NeuS projection, pixel centres at integers), ``scale`` 0.5 and
``offset`` [0.5, 0.5, 0.5] (the NeuS unit sphere -> radius 0.5 at the cube centre),
``aabb_scale`` 1, ``w``, ``h``, and ``scale_mat`` (the NeuS scale_mat, for mapping
meshes back to the original world frame: x_orig = scale_mat @ x). The **world frame
of the output is the NeuS unit-sphere frame**: X_s = inv(scale_mat) X_w.

With ``split=False`` (or when none of ``test_views`` exists) every view goes to
transform_train.json and no test file is written: a JSON with an empty frame list
is not a scene, for NeuS2 or for us.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from neus2cli.data.cameras import decompose_projection
from neus2cli.data.formats_neus import CAMERAS_FILE, DTU_TEST_VIEWS, read_neus_cameras
from neus2cli.data.images import load_view_rgba, map_views
from neus2cli.data.loader import load_scene
from neus2cli.data.scene import View
from neus2cli.errors import UserError
from neus2cli.io import atomic_write


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""

    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    atomic_write(path, write)


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """Write an (H, W, C) uint8 image as PNG to ``path`` atomically."""
    import imageio.v3 as iio

    atomic_write(path, lambda tmp: iio.imwrite(tmp, image, extension=".png"))


def neus_cameras_sphere_frame(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cameras of a NeuS folder in its unit-sphere frame, as NeuS itself computes them.

    Returns:
        K: (n, 3, 3) intrinsics from P = world_mat @ scale_mat, **integer pixel centres**.
        c2w: (n, 4, 4) OpenCV camera-to-world in the unit-sphere frame.
        scale_mats: (n, 4, 4) the scale_mats (sphere frame -> world frame).
    """
    world_mats, scale_mats = read_neus_cameras(root)
    Ks, c2ws = [], []
    for i, (P, S) in enumerate(zip(world_mats, scale_mats, strict=True)):
        try:
            K, c2w = decompose_projection((P @ S)[:3])
        except ValueError as err:
            raise UserError(
                f"world_mat_{i} @ scale_mat_{i} is not a valid projection ({err}).", path=root / CAMERAS_FILE
            ) from None
        Ks.append(K)
        c2ws.append(c2w)
    return np.stack(Ks), np.stack(c2ws), scale_mats


def _check_destination(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not dst.is_dir():
        raise UserError("the destination exists and is not a folder.", path=dst)
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise UserError(
            "the destination folder is not empty.",
            path=dst,
            hint="Choose a new folder, or pass --force (overwrite=True) to replace the files in it.",
        )


def convert_neus(
    src: str | Path,
    dst: str | Path,
    test_views: tuple[int, ...] | list[int] = DTU_TEST_VIEWS,
    split: bool = True,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Convert a NeuS/IDR folder into a NeuS2 JSON scene.

    Args:
        src: NeuS folder (``cameras_sphere.npz``, ``image/``, ``mask/``); without
            ``mask/`` the output alpha is 255 everywhere.
        dst: output folder; must be absent or empty unless ``overwrite``.
        test_views: view indices written to transform_test.json (those that exist).
        split: False writes every view to transform_train.json and no test file.
        overwrite: allow a non-empty ``dst``; the JSONs are replaced and the PNGs in
            ``dst/images`` are deleted first; other files are left alone.
        workers, progress: image-writing threads and progress bar.

    Returns:
        Paths written: the JSON files, then the images.
    """
    src, dst = Path(src), Path(dst)
    scene = load_scene(src, test_views=tuple(test_views) if split else ())
    if scene.format != "neus":
        raise UserError(
            f"not a NeuS/IDR folder (found a {scene.format} scene).",
            path=src,
            hint=f"convert-neus reads folders with {CAMERAS_FILE}, image/ and mask/.",
        )
    if dst.resolve() == src.resolve():
        raise UserError("source and destination are the same folder.", path=dst)
    _check_destination(dst, overwrite)
    K_int, c2w_sphere, scale_mats = neus_cameras_sphere_frame(src)

    image_dir = dst / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for stale in image_dir.glob("*.png"):
            stale.unlink()

    def write_one(view: View) -> Path:
        out = image_dir / f"{view.name}.png"
        write_png_atomic(out, load_view_rgba(view))
        return out

    image_paths = map_views(write_one, scene.views, workers=workers, progress=progress, desc="writing images")

    def frame(i: int) -> dict:
        K4 = np.eye(4)
        K4[:3, :3] = K_int[i]
        return {
            "file_path": f"images/{image_paths[i].name}",
            "transform_matrix": c2w_sphere[i].tolist(),
            "intrinsic_matrix": K4.tolist(),
        }

    sizes = {(v.width, v.height) for v in scene.views}
    header = {
        "from_na": True,
        "integer_pixel_centers": True,
        "scale": 0.5,
        "offset": [0.5, 0.5, 0.5],
        "aabb_scale": 1,
    }
    if len(sizes) == 1:  # per-frame sizes are read from the image headers otherwise
        (w, h) = sizes.pop()
        header.update(w=w, h=h)
    header["scale_mat"] = scale_mats[0].tolist()
    outputs = []
    parts = {"train": scene.split["train"], "test": scene.split["test"]}
    if not split or not parts["test"]:
        parts = {"train": list(range(len(scene.views)))}
    for name, indices in parts.items():
        path = dst / f"transform_{name}.json"
        write_json_atomic(path, {**header, "frames": [frame(i) for i in indices]})
        outputs.append(path)
    if "test" not in parts:
        (dst / "transform_test.json").unlink(missing_ok=True)  # a stale one from an earlier run
    return outputs + list(image_paths)
