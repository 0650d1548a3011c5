"""Image files -> (H, W, 4) uint8 RGBA arrays, with the mask in alpha.

Rules (shared by every loader):

* RGB images get alpha 255 (everything is foreground) unless the view names a
  separate mask file.
* RGBA images keep their alpha as the mask.
* A separate mask file replaces the alpha: alpha = the mask's largest colour
  channel, so soft edges survive and "any channel > 127" is foreground.
* 16-bit images are rescaled to 8 bits; grayscale (with or without alpha) is
  expanded to RGB; palette images are expanded to RGB(A); CMYK and other colour
  spaces are converted to RGB (see ``_pillow_to_array``).
* A path that is a folder, missing, or undecodable is a ``UserError`` naming it.

Only the header is read when just the size is needed (``read_image_size``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from neus2cli.data.scene import View
from neus2cli.errors import UserError
from neus2cli.progress import ProgressReporter

#: Extensions tried, in order, when a frame's ``file_path`` has none (Blender JSON).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
#: Extensions we refuse with a clear message instead of a decoder error.
UNSUPPORTED_EXTENSIONS = (".exr", ".hdr")


def resolve_image_path(base: Path) -> Path | None:
    """The existing file for ``base``: as given, then with each of ``IMAGE_EXTENSIONS`` appended.

    Returns None when none exists. ``r_0`` -> ``r_0.png``; ``img.png`` -> ``img.png``. A folder
    is not an image: ``check_image_file`` names it when ``base`` itself is one.
    """
    base = Path(base)
    try:
        if base.is_file():
            return base
        for ext in IMAGE_EXTENSIONS:
            candidate = base.with_name(base.name + ext)
            if candidate.is_file():
                return candidate
    except OSError as err:  # a name too long for the file system, a permission problem, ...
        raise UserError(f"cannot access the image ({err.strerror or err}).", path=base) from None
    return None


def check_image_file(path: str | Path) -> Path:
    """``path`` if it names an existing regular file of a supported type, else a ``UserError``
    that says which: unsupported extension, missing, a folder, or not a regular file."""
    path = Path(path)
    if path.suffix.lower() in UNSUPPORTED_EXTENSIONS:
        raise UserError(
            f"{path.suffix} images are not supported.",
            path=path,
            hint="Convert the images to 8- or 16-bit PNG (tone-map HDR data first).",
        )
    try:
        is_dir, is_file, exists = path.is_dir(), path.is_file(), path.exists()
    except OSError as err:
        raise UserError(f"cannot access the image ({err.strerror or err}).", path=path) from None
    if is_dir:
        raise UserError("is a folder, not an image file.", path=path, hint="Point the scene at the image file itself.")
    if not exists:
        raise UserError("image file not found.", path=path, hint="Check the file path in the scene.")
    if not is_file:
        raise UserError("is not a regular file.", path=path, hint="Point the scene at a PNG or JPEG file.")
    return path


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, reading only its header."""
    from PIL import Image

    path = check_image_file(path)
    try:
        with Image.open(path) as im:  # lazy: decodes the header only
            return int(im.size[0]), int(im.size[1])
    except Exception as err:  # Pillow raises many types for a corrupt header
        raise UserError(
            f"cannot read the image header ({type(err).__name__}: {err}).",
            path=path,
            hint="Re-export it as PNG or JPEG.",
        ) from None


def _pillow_to_array(im, path: Path) -> np.ndarray:
    """A decoded Pillow image -> one of the layouts ``to_rgba`` takes, whatever its mode.

    Palette images become RGB, or RGBA when they carry transparency; CMYK, YCbCr, LAB
    and HSV become RGB (their 4th channel is not alpha); 16-bit grayscale stays uint16
    (``to_uint8`` rescales it); 32-bit float images are refused (no agreed range).
    """
    mode = im.mode  # np.array (a copy), not np.asarray: callers write into the result
    if mode in ("1", "L", "LA", "RGB", "RGBA", "I", "I;16", "I;16L", "I;16B", "I;16N"):
        return np.array(im)
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        return np.array(im.convert("RGBA" if has_alpha else "RGB"))
    if mode in ("La", "RGBa"):  # premultiplied alpha
        return np.array(im.convert(mode.upper()))
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return np.array(im.convert("RGB"))
    raise UserError(
        f"images of Pillow mode {mode!r} are not supported.",
        path=path,
        hint="Save it as an 8- or 16-bit grayscale, RGB or RGBA PNG.",
    )


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file: (H, W) bool/uint8/uint16/int32 gray, (H, W, 2) gray+alpha,
    (H, W, 3) RGB or (H, W, 4) RGBA (see ``_pillow_to_array`` for the modes converted).

    Raises ``UserError`` naming the file when it is missing, a folder, or cannot be decoded.
    """
    from PIL import Image

    path = check_image_file(path)
    try:
        with Image.open(path) as im:
            im.load()  # the full decode: a truncated file fails here, not later
            return _pillow_to_array(im, path)
    except UserError:
        raise
    except Exception as err:  # Pillow raises many types for a corrupt file
        raise UserError(
            f"cannot decode the image ({type(err).__name__}: {err}).",
            path=path,
            hint="Check that the file is a complete PNG or JPEG.",
        ) from None


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Rescale any integer, float or bool image to uint8 (same shape).

    16-bit values map by x / 257 (65535 -> 255); floats are taken as [0, 1].
    """
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if image.dtype.kind in "ui":
        if image.dtype.itemsize == 1:  # int8: not a real image format, clip to range
            return np.clip(image, 0, 255).astype(np.uint8)
        # Pillow reads 16-bit grayscale as uint16 or int32 ("I" mode); both hold 16-bit data.
        # round(x * 255 / 65535) in integers: 65535 -> 255, 32768 -> 128.
        wide = np.clip(image, 0, 65535).astype(np.uint32)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)
    if image.dtype.kind == "f":
        return np.round(np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ValueError(f"image: unsupported dtype {image.dtype}")


def to_rgba(image: np.ndarray) -> np.ndarray:
    """(H, W) gray, (H, W, 2) gray+alpha, (H, W, 3) RGB or (H, W, 4) RGBA, any dtype -> (H, W, 4) uint8."""
    image = to_uint8(np.asarray(image))
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"image: expected (H, W[, 1|2|3|4]), got shape {image.shape}")
    h, w, c = image.shape
    if c == 4:
        return np.ascontiguousarray(image)
    out = np.empty((h, w, 4), dtype=np.uint8)
    if c in (1, 2):
        out[..., :3] = image[..., :1]
    else:
        out[..., :3] = image
    out[..., 3] = image[..., 1] if c == 2 else 255
    return out


def mask_to_alpha(mask: np.ndarray) -> np.ndarray:
    """A mask image of any layout -> (H, W) uint8 alpha: its largest colour channel.

    An alpha channel in the mask file is ignored (masks are black/white images);
    "> 127" of the result is foreground, as in NeuS/IDR.
    """
    mask = to_uint8(np.asarray(mask))
    if mask.ndim == 2:
        return mask
    if mask.ndim != 3:
        raise ValueError(f"mask: expected (H, W[, C]), got shape {mask.shape}")
    colour = mask[..., :3] if mask.shape[2] >= 3 else mask[..., :1]
    return colour.max(axis=2)


def decode_view(view: View) -> tuple[np.ndarray, bool]:
    """(rgba, masked) of ``view``: (H, W, 4) uint8 RGBA with the mask in alpha, and whether
    the view supplies a mask at all (a mask file, an alpha channel in its image, or a
    ``loader``, whose alpha is the mask by definition).

    An unmasked view has alpha 255 everywhere. Raises ``UserError`` naming the file when
    the image or mask is missing, a folder, unreadable, or the two differ in size.
    """
    if view.loader is not None:
        rgba = np.asarray(view.loader())
        if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
            raise ValueError(f"view {view.name!r}: loader must return (H, W, 4) uint8, got {rgba.shape}")
        return rgba, True
    if view.image_path is None:
        raise ValueError(f"view {view.name!r} has neither image_path nor loader")
    image = read_image(view.image_path)
    masked = image.ndim == 3 and image.shape[2] in (2, 4)
    rgba = to_rgba(image)
    if view.mask_path is not None:
        alpha = mask_to_alpha(read_image(view.mask_path))
        if alpha.shape != rgba.shape[:2]:
            raise UserError(
                f"mask is {alpha.shape[1]}x{alpha.shape[0]} but its image {view.image_path.name} is "
                f"{rgba.shape[1]}x{rgba.shape[0]}.",
                path=view.mask_path,
                hint="Masks must have the same resolution as their images.",
            )
        rgba[..., 3] = alpha
        masked = True
    return rgba, masked


def load_view_rgba(view: View) -> np.ndarray:
    """(H, W, 4) uint8 RGBA of ``view``, mask in alpha (255 when there is no mask); see ``decode_view``."""
    return decode_view(view)[0]


def default_workers() -> int:
    """Threads for image decoding: decoders release the GIL, so one per core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def map_views(fn, views: Sequence[View], workers: int | None = None, progress: bool = True, desc: str = ""):
    """``[fn(view) for view in views]``, in threads, in order, with progress (``neus2cli.progress``).

    ``fn`` should return something small (a downsampled mask, a size) or the final
    image; nothing else is kept, so memory stays at one result per view plus one
    in-flight decode per thread.
    """
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: list = [None] * len(views)
    if not views:
        return results
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        ProgressReporter(len(views), desc or "images", enabled=progress, transient=True) as bar,
    ):
        futures = {pool.submit(fn, view): i for i, view in enumerate(views)}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.advance()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results


def load_images(views: Sequence[View], workers: int | None = None, progress: bool = True) -> list[np.ndarray]:
    """Load every view's (H, W, 4) uint8 RGBA in parallel threads, in ``views`` order.

    Returns a list (not a stacked array) so that the images are never held twice.
    Raises the first ``UserError`` met (missing or unreadable file, mask size).
    """
    return map_views(load_view_rgba, views, workers=workers, progress=progress, desc="loading images")
