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

With ``split=False`` (or when none of the default test views exists) every view goes
to transform_train.json and no test file is written: a JSON with an empty frame list
is not a scene, for NeuS2 or for us.

The output is built in a hidden temporary folder beside DST and moved into place at
the end, so a conversion that fails midway (a corrupt image, Ctrl-C) leaves DST as it
was.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from neus2cli.data.cameras import decompose_projection
from neus2cli.data.formats_neus import CAMERAS_FILE, DTU_TEST_VIEWS, read_neus_cameras
from neus2cli.data.images import decode_view, map_views
from neus2cli.data.loader import load_scene
from neus2cli.data.scene import Scene, View
from neus2cli.data.validate import check_masks
from neus2cli.errors import UserError
from neus2cli.io import atomic_write, check_writable


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


def _check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    """``UserError`` unless ``dst`` may receive the output (cheap: nothing is written)."""
    if dst.exists() and not dst.is_dir():
        raise UserError(
            "the destination exists and is not a folder.", path=dst, hint="Give a new or empty folder for DST."
        )
    if dst.resolve() == src.resolve():
        raise UserError("source and destination are the same folder.", path=dst, hint="Give a new folder for DST.")
    if dst.is_dir() and any(dst.iterdir()):
        if not overwrite:
            raise UserError(
                "the destination folder is not empty.",
                path=dst,
                hint="Choose a new folder, or pass --force (overwrite=True) to replace the files in it.",
            )
        images = dst / "images"
        if images.exists() and not images.is_dir():
            raise UserError("is not a folder, so the converted images cannot go there.", path=images)
    check_writable(dst, "DST")


def _check_test_views(test_views: tuple[int, ...], n_views: int, src: Path) -> None:
    """``UserError`` for explicitly chosen test views that do not exist or leave nothing to train on."""
    wrong = sorted(i for i in set(test_views) if not 0 <= i < n_views)
    if wrong:
        shown = ", ".join(str(i) for i in wrong[:8]) + (" ..." if len(wrong) > 8 else "")
        raise UserError(
            f"--test-views names view(s) {shown}, but the scene has {n_views} views (indices 0..{n_views - 1}).",
            path=src,
            hint="Indices count the images of image/ in sorted name order, from 0.",
        )
    if set(range(n_views)) <= set(test_views):
        raise UserError(
            f"--test-views holds out all {n_views} views, leaving none to train on.",
            path=src,
            hint="Leave some views out of --test-views, or pass --no-split to train on every view.",
        )


def _check_unique_names(views: list[View], src: Path) -> None:
    """Two images with one stem (``a.png`` and ``a.jpg``) would write one output PNG."""
    seen: dict[str, Path | None] = {}
    for view in views:
        if view.name in seen:
            raise UserError(
                f"{seen[view.name]} and {view.image_path} share the name {view.name!r}, so both would be "
                f"written to images/{view.name}.png.",
                path=src,
                hint="Rename one of them (and its mask) so that every image has its own stem.",
            )
        seen[view.name] = view.image_path


def _move_into(tmp: Path, dst: Path, names: list[str]) -> None:
    """Move the built output ``tmp`` to ``dst``: a rename when ``dst`` is absent or empty; otherwise
    (``--force``) replace ``dst/images/*.png`` and the JSONs file by file, images first so that no
    JSON names a missing image, leaving other files alone."""
    if dst.is_dir() and not any(dst.iterdir()):
        dst.rmdir()
    if not dst.exists():
        os.rename(tmp, dst)
        return
    images = dst / "images"
    images.mkdir(exist_ok=True)
    new_pngs = {p.name for p in (tmp / "images").iterdir()}
    for name in sorted(new_pngs):
        os.replace(tmp / "images" / name, images / name)
    for stale in images.glob("*.png"):
        if stale.name not in new_pngs:
            stale.unlink()
    for name in names:
        os.replace(tmp / name, dst / name)
    if "transform_test.json" not in names:
        (dst / "transform_test.json").unlink(missing_ok=True)  # a stale one from an earlier run


def convert_neus(
    src: str | Path,
    dst: str | Path,
    test_views: tuple[int, ...] | list[int] | None = None,
    split: bool = True,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Convert a NeuS/IDR folder into a NeuS2 JSON scene.

    Args:
        src: NeuS folder (``cameras_sphere.npz``, ``image/``, ``mask/``); without
            ``mask/`` the output alpha is 255 everywhere.
        dst: output folder; must be absent or empty unless ``overwrite``. Missing
            parent folders are created.
        test_views: view indices written to transform_test.json. None: NeuS2's DTU
            test views ``DTU_TEST_VIEWS``, those that exist. Given explicitly, every
            index must exist and at least one view must remain for training.
        split: False writes every view to transform_train.json and no test file
            (``test_views`` must then be None).
        overwrite: allow a non-empty ``dst``; the JSONs are replaced and the PNGs in
            ``dst/images`` are replaced by the new ones (stale PNGs deleted); other
            files are left alone.
        workers, progress: image-writing threads and progress bar.

    Returns:
        Paths written: the JSON files, then the images.

    Raises:
        UserError: bad source, bad ``test_views``, a destination that is a file, not
            empty (without ``overwrite``) or not writable; checked before any image
            is converted. A failure while converting leaves ``dst`` untouched.
    """
    src, dst = Path(src), Path(dst)
    if test_views is not None and not split:
        raise UserError("--test-views and --no-split contradict each other: give one of them.")
    _check_destination(src, dst, overwrite)
    explicit = test_views is not None
    held_out = tuple(DTU_TEST_VIEWS if test_views is None else test_views)
    scene = load_scene(src, test_views=held_out if split else ())
    if scene.format != "neus":
        raise UserError(
            f"not a NeuS/IDR folder (found a {scene.format} scene).",
            path=src,
            hint=f"convert-neus reads folders with {CAMERAS_FILE}, image/ and mask/.",
        )
    if explicit:
        _check_test_views(held_out, len(scene.views), src)
    _check_unique_names(scene.views, src)
    K_int, c2w_sphere, scale_mats = neus_cameras_sphere_frame(src)

    # A hidden sibling (same file system, so the final rename is atomic), made with mkdir
    # rather than mkdtemp so that it gets the usual permissions, not mkdtemp's 0700.
    tmp = dst.parent / f".{dst.name}.{secrets.token_hex(4)}.tmp"
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as err:
        raise UserError(f"DST: cannot create the output folder ({err.strerror or err}).", path=dst) from None
    try:
        names = _write_scene(tmp, scene, K_int, c2w_sphere, scale_mats, split, workers, progress)
        _move_into(tmp, dst, names)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a plain rename
    return [dst / name for name in names] + [dst / "images" / f"{v.name}.png" for v in scene.views]


def _write_scene(
    out: Path,
    scene: Scene,
    K_int: np.ndarray,
    c2w_sphere: np.ndarray,
    scale_mats: np.ndarray,
    split: bool,
    workers: int | None,
    progress: bool,
) -> list[str]:
    """Write the converted images and JSONs into the (new, empty) folder ``out``; the JSON names."""
    image_dir = out / "images"
    image_dir.mkdir()

    def write_one(view: View) -> tuple[Path, bool, float]:
        path = image_dir / f"{view.name}.png"
        rgba, masked = decode_view(view)
        write_png_atomic(path, rgba)
        return path, masked, float((rgba[..., 3] > 127).mean())

    written = map_views(write_one, scene.views, workers=workers, progress=progress, desc="writing images")
    image_paths = [w[0] for w in written]
    # The pixels are at hand: refuse masks that would fail training (all empty) before DST changes.
    check_masks(scene.views, [w[1] for w in written], [w[2] for w in written], scene)

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
    parts = {"train": scene.split["train"], "test": scene.split["test"]}
    if not split or not parts["test"]:
        parts = {"train": list(range(len(scene.views)))}
    names = []
    for name, indices in parts.items():
        write_json_atomic(out / f"transform_{name}.json", {**header, "frames": [frame(i) for i in indices]})
        names.append(f"transform_{name}.json")
    return names
