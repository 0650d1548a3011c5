"""NeuS / IDR folders: ``cameras_sphere.npz`` + ``image/`` + ``mask/`` -> ``Scene``.

``world_mat_i`` is a projection P = K [R | t] (world -> pixels, pixel centres at
integers); ``scale_mat_i`` maps the unit sphere onto the object's bounding sphere
in world units. We keep the world frame of P, shift K to +0.5 pixel centres, and
turn the (shared, uniform) scale_mat into the ``Normalization`` that puts the unit
sphere at radius 0.5 around the cube centre.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from neus2cli.data.cameras import decompose_projection
from neus2cli.data.images import read_image_size
from neus2cli.data.scene import Normalization, Scene, View
from neus2cli.errors import UserError

CAMERAS_FILE = "cameras_sphere.npz"
#: NeuS2's held-out DTU views (indices into the sorted image list).
DTU_TEST_VIEWS = (8, 13, 16, 21, 26, 31, 34, 56)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _list_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` sorted by name; ``UserError`` for an image-named entry that is
    not a regular file (a folder called ``000003.png``), which would otherwise shift the
    image <-> camera pairing silently."""
    entries = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    for entry in entries:
        if not entry.is_file():
            what = "a folder" if entry.is_dir() else "not a regular file"
            raise UserError(
                f"is {what}, not an image file.",
                path=entry,
                hint=f"Remove or rename it: every {', '.join(_IMAGE_SUFFIXES)} entry of {folder.name}/ is read "
                "as one view, in name order.",
            )
    return entries


def find_image_dir(root: Path) -> Path:
    """``root/image`` or ``root/images`` (the first that exists)."""
    for name in ("image", "images"):
        if (root / name).is_dir():
            return root / name
    for name in ("image", "images"):
        if (root / name).exists():
            raise UserError(f"{name} is not a folder.", path=root / name, hint="NeuS/IDR images live in a folder.")
    raise UserError(
        "no image/ or images/ folder next to cameras_sphere.npz.",
        path=root,
        hint="NeuS/IDR scenes keep their images in image/ (png or jpg, sorted by name).",
    )


def find_mask_dir(root: Path) -> Path | None:
    """``root/mask`` or ``root/masks``, or None."""
    for name in ("mask", "masks"):
        if (root / name).is_dir():
            return root / name
    return None


def _npz_matrix(data: dict, key: str, path: Path, shapes: tuple[tuple[int, int], ...]) -> np.ndarray:
    """``data[key]`` as a float64 matrix of one of ``shapes``, else a ``UserError`` naming the key."""
    want = " or ".join(f"{a}x{b}" for a, b in shapes)
    try:
        m = np.asarray(data[key], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{key} must be a numeric {want} matrix, got dtype {data[key].dtype}.", path=path) from None
    if m.shape not in shapes:
        raise UserError(f"{key} must be {want}, got shape {m.shape}.", path=path)
    return m


def _indices(data: dict, prefix: str) -> list[int]:
    """Sorted i of the ``<prefix>_<i>`` keys; canonical decimals only ("world_mat_01" is not view 1)."""
    return sorted(int(m.group(1)) for k in data if (m := re.fullmatch(prefix + r"_(0|[1-9]\d*)", k)))


def read_neus_cameras(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(world_mats (n, 4, 4), scale_mats (n, 4, 4)) from ``root/cameras_sphere.npz``.

    3x4 world_mats are padded with [0, 0, 0, 1]. Raises ``UserError`` naming the key
    when one is missing (``world_mat_3`` of 0..5), not numeric, of the wrong shape or
    not finite.
    """
    path = root / CAMERAS_FILE
    try:
        # Our own file object: np.load leaks the one it opens when the archive is truncated.
        with open(path, "rb") as f:
            npz = np.load(f, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            with npz:
                data = {k: np.asarray(npz[k]) for k in npz.files}
    except FileNotFoundError:
        raise UserError("cameras_sphere.npz not found.", path=root) from None
    except IsADirectoryError:
        raise UserError("is a folder, not a camera file.", path=path) from None
    except Exception as err:  # np.load raises several types for a corrupt archive
        raise UserError(
            f"cannot read the camera file ({type(err).__name__}: {err}).",
            path=path,
            hint="It must be a numpy .npz archive of world_mat_<i> and scale_mat_<i> arrays.",
        ) from None
    indices = _indices(data, "world_mat")
    if not indices:
        raise UserError("no world_mat_<i> arrays in the camera file.", path=path)
    # A scale_mat_<i> beyond the last world_mat names a missing world_mat too.
    top = max(indices + _indices(data, "scale_mat"))
    missing = sorted(set(range(top + 1)) - set(indices))
    if missing:
        shown = ", ".join(f"world_mat_{i}" for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise UserError(
            f"{shown} {'is' if len(missing) == 1 else 'are'} missing: the camera file has world_mat_<i> for "
            f"{len(indices)} of the indices 0..{top}.",
            path=path,
            hint="world_mat indices must run 0..n-1 without gaps, one per image in sorted file-name order.",
        )
    world, scale = [], []
    for i in indices:
        P = _npz_matrix(data, f"world_mat_{i}", path, ((3, 4), (4, 4)))
        if P.shape == (3, 4):
            P = np.vstack([P, [0.0, 0.0, 0.0, 1.0]])
        if f"scale_mat_{i}" not in data:
            raise UserError(
                f"scale_mat_{i} is missing.",
                path=path,
                hint="cameras_sphere.npz needs a scale_mat_<i> per view (NeuS preprocessing writes them).",
            )
        world.append(P)
        scale.append(_npz_matrix(data, f"scale_mat_{i}", path, ((4, 4),)))
    world_mats, scale_mats = np.stack(world), np.stack(scale)
    for name, arr in (("world_mat", world_mats), ("scale_mat", scale_mats)):
        bad = np.flatnonzero(~np.all(np.isfinite(arr), axis=(1, 2)))
        if bad.size:
            raise UserError(f"{name}_{bad[0]} contains NaN or infinite values.", path=path)
    return world_mats, scale_mats


def normalization_from_scale_mat(scale_mats: np.ndarray, path: Path) -> Normalization:
    """The shared uniform ``scale_mat`` -> ``Normalization`` (unit sphere -> radius 0.5 at the cube centre).

    scale_mat = [[s, 0, 0, tx], [0, s, 0, ty], [0, 0, s, tz], [0, 0, 0, 1]] gives
    scale = 0.5 / s and offset = 0.5 - 0.5 * t / s.
    """
    S = scale_mats[0]
    # Relative 1e-6: the files store float32/float64 copies of one matrix.
    tol = 1e-6 * max(1.0, np.abs(S).max())
    differs = np.flatnonzero(np.abs(scale_mats - S).max(axis=(1, 2)) > tol)
    if differs.size:
        raise UserError(
            f"scale_mat_{differs[0]} differs from scale_mat_0; all views must share one scale_mat.",
            path=path,
            hint="Re-run the NeuS preprocessing so that every view has the same normalization.",
        )
    s = S[0, 0]
    expected = np.eye(4) * s
    expected[3, 3] = 1.0
    expected[:3, 3] = S[:3, 3]
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        scale, offset = 0.5 / s, 0.5 - 0.5 * S[:3, 3] / s
    if not (s > 0) or np.abs(S - expected).max() > 1e-6 * max(1.0, abs(s)):
        raise UserError(
            "scale_mat_0 is not a uniform scale plus translation ([[s,0,0,tx],[0,s,0,ty],[0,0,s,tz],[0,0,0,1]]).",
            path=path,
            hint="Anisotropic or rotated scale_mats are not supported.",
        )
    if not (np.isfinite(scale) and scale > 0 and np.all(np.isfinite(offset))):
        raise UserError(
            f"scale_mat_0's scale {s:g} is too small or too large to normalize the scene.",
            path=path,
            hint="scale_mat maps the unit sphere onto the object's bounding sphere, in world units.",
        )
    return Normalization(scale=scale, offset=offset)


def load_neus_folder(root: Path, test_views: tuple[int, ...] | list[int] | None = None) -> Scene:
    """Load a NeuS/IDR folder.

    Args:
        root: folder with ``cameras_sphere.npz``, ``image/`` and optionally ``mask/``.
        test_views: indices held out for testing (those that exist); default NeuS2's
            DTU test views ``DTU_TEST_VIEWS``.

    Returns:
        ``Scene`` with format "neus": c2w in the world frame of world_mat, K with
        pixel centres at +0.5, separate mask files, normalization from scale_mat.
    """
    root = Path(root)
    npz_path = root / CAMERAS_FILE
    world_mats, scale_mats = read_neus_cameras(root)
    n = len(world_mats)
    image_dir = find_image_dir(root)
    images = _list_images(image_dir)
    if len(images) != n:
        raise UserError(
            f"{len(images)} images in {image_dir.name}/ but {n} cameras (world_mat_0..{n - 1}) in {CAMERAS_FILE}.",
            path=root,
            hint="Each image needs exactly one world_mat/scale_mat pair, in sorted file-name order.",
        )
    mask_dir = find_mask_dir(root)
    masks: list[Path | None] = [None] * n
    if mask_dir is not None:
        mask_files = _list_images(mask_dir)
        if len(mask_files) != n:
            raise UserError(
                f"{len(mask_files)} masks in {mask_dir.name}/ but {n} images in {image_dir.name}/.",
                path=root,
                hint="Provide one mask per image (sorted by name), or remove the mask folder.",
            )
        masks = list(mask_files)
    normalization = normalization_from_scale_mat(scale_mats, npz_path)
    views = []
    for i in range(n):
        try:
            K, c2w = decompose_projection(world_mats[i])
        except ValueError as err:
            raise UserError(f"world_mat_{i} is not a valid projection matrix ({err}).", path=npz_path) from None
        K[0, 2] += 0.5  # NeuS/IDR pixel centres are at integers; ours at +0.5
        K[1, 2] += 0.5
        w, h = read_image_size(images[i])
        views.append(
            View(name=images[i].stem, image_path=images[i], width=w, height=h, K=K, c2w=c2w, mask_path=masks[i])
        )
    held_out = set(DTU_TEST_VIEWS if test_views is None else test_views)
    split = {
        "train": [i for i in range(n) if i not in held_out],
        "test": [i for i in range(n) if i in held_out],
    }
    warnings = []
    if mask_dir is None:
        warnings.append(
            f"{root.name}: no mask/ folder: every pixel is treated as foreground (train with --config unmasked, "
            "whose background model explains what is not the object)."
        )
    return Scene(
        name=root.resolve().name,
        root=root,
        format="neus",
        views=views,
        split=split,
        normalization=normalization,
        warnings=warnings,
    )
