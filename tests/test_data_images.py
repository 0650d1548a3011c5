"""Image decoding rules: RGB/RGBA/gray/16-bit/separate masks -> (H, W, 4) uint8."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from neus2cli.data.images import decode_view, load_images, load_view_rgba, read_image_size, resolve_image_path
from neus2cli.data.scene import View
from neus2cli.errors import UserError


def view_for(image: Path | None, mask: Path | None = None, w: int = 6, h: int = 5, loader=None) -> View:
    return View(
        name="v",
        image_path=image,
        width=w,
        height=h,
        K=np.eye(3),
        c2w=np.eye(4),
        mask_path=mask,
        loader=loader,
    )


def write_png16(path: Path, a: np.ndarray) -> None:
    """Minimal 16-bit PNG writer (Pillow cannot write 16-bit RGB): IHDR, one IDAT, IEND."""
    h, w = a.shape[:2]
    channels = 1 if a.ndim == 2 else a.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))  # filter 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_rgb_gets_opaque_alpha(tmp_path, rng):
    rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "a.png", rgb)
    out = load_view_rgba(view_for(tmp_path / "a.png"))
    assert out.shape == (5, 6, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., :3], rgb)
    assert np.all(out[..., 3] == 255)


def test_rgba_keeps_alpha_and_separate_mask_replaces_it(tmp_path, rng):
    rgba = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    iio.imwrite(tmp_path / "a.png", rgba)
    np.testing.assert_array_equal(load_view_rgba(view_for(tmp_path / "a.png")), rgba)
    # A 3-channel mask (as in DTU): alpha = the largest channel, soft values kept.
    mask = np.zeros((5, 6, 3), dtype=np.uint8)
    mask[1, 2] = [0, 200, 10]
    mask[3, 4] = [90, 0, 0]
    iio.imwrite(tmp_path / "m.png", mask)
    out = load_view_rgba(view_for(tmp_path / "a.png", tmp_path / "m.png"))
    np.testing.assert_array_equal(out[..., :3], rgba[..., :3])
    expected = np.zeros((5, 6), dtype=np.uint8)
    expected[1, 2], expected[3, 4] = 200, 90
    np.testing.assert_array_equal(out[..., 3], expected)


def test_gray_and_gray_alpha_expand_to_rgb(tmp_path, rng):
    gray = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    iio.imwrite(tmp_path / "g.png", gray)
    out = load_view_rgba(view_for(tmp_path / "g.png"))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    assert np.all(out[..., 3] == 255)
    la = rng.integers(0, 256, (5, 6, 2), dtype=np.uint8)
    iio.imwrite(tmp_path / "la.png", la)
    out = load_view_rgba(view_for(tmp_path / "la.png"))
    np.testing.assert_array_equal(out[..., 0], la[..., 0])
    np.testing.assert_array_equal(out[..., 3], la[..., 1])


def test_16bit_images_rescale_to_8bit(tmp_path, rng):
    gray16 = rng.integers(0, 65536, (5, 6), dtype=np.uint16)
    iio.imwrite(tmp_path / "g16.png", gray16)
    out = load_view_rgba(view_for(tmp_path / "g16.png"))
    # x / 257 maps 65535 -> 255 exactly; rounding to nearest.
    np.testing.assert_array_equal(out[..., 0], np.round(gray16 / 257).astype(np.uint8))
    rgba16 = rng.integers(0, 65536, (5, 6, 4), dtype=np.uint16)
    write_png16(tmp_path / "c16.png", rgba16)
    out = load_view_rgba(view_for(tmp_path / "c16.png"))
    # Pillow reduces 16-bit colour PNGs to their high byte (x >> 8); that differs from
    # round(x / 257) by at most 1 level.
    assert np.abs(out.astype(int) - np.round(rgba16 / 257)).max() <= 1


def test_missing_corrupt_and_mismatched_files_name_the_file(tmp_path, rng):
    with pytest.raises(UserError, match="nope.png") as info:
        load_view_rgba(view_for(tmp_path / "nope.png"))
    assert "not found" in str(info.value)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match="bad.png"):
        load_view_rgba(view_for(tmp_path / "bad.png"))
    with pytest.raises(UserError, match="bad.png"):
        read_image_size(tmp_path / "bad.png")
    iio.imwrite(tmp_path / "a.png", rng.integers(0, 256, (5, 6, 3), dtype=np.uint8))
    iio.imwrite(tmp_path / "m.png", np.zeros((4, 6), dtype=np.uint8))
    with pytest.raises(UserError, match="same resolution"):
        load_view_rgba(view_for(tmp_path / "a.png", tmp_path / "m.png"))
    with pytest.raises(UserError, match="not supported"):
        load_view_rgba(view_for(tmp_path / "x.exr"))


def test_resolve_image_path_tries_extensions(tmp_path):
    iio.imwrite(tmp_path / "r_0.png", np.zeros((2, 3), dtype=np.uint8))
    assert resolve_image_path(tmp_path / "r_0") == tmp_path / "r_0.png"
    assert resolve_image_path(tmp_path / "r_0.png") == tmp_path / "r_0.png"
    assert resolve_image_path(tmp_path / "r_1") is None
    assert read_image_size(tmp_path / "r_0.png") == (3, 2)


def test_load_images_parallel_keeps_order_and_loader_override(tmp_path):
    views = []
    for i in range(12):
        iio.imwrite(tmp_path / f"{i}.png", np.full((3, 4, 3), i, dtype=np.uint8))
        views.append(view_for(tmp_path / f"{i}.png"))
    views.append(view_for(None, loader=lambda: np.full((3, 4, 4), 99, dtype=np.uint8)))
    images = load_images(views, workers=4, progress=False)
    assert [int(im[0, 0, 0]) for im in images] == list(range(12)) + [99]
    views.insert(5, view_for(tmp_path / "gone.png"))
    with pytest.raises(UserError, match="gone.png"):
        load_images(views, workers=4, progress=False)


def test_palette_cmyk_and_bilevel_images_convert_by_mode(tmp_path, rng):
    from PIL import Image

    rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).quantize(colors=4)
    pal.save(tmp_path / "p.png")
    out, masked = decode_view(view_for(tmp_path / "p.png"))
    np.testing.assert_array_equal(out[..., :3], np.asarray(pal.convert("RGB")))
    assert not masked and np.all(out[..., 3] == 255)
    # A palette entry marked transparent is a mask: alpha 0 exactly where that entry is used.
    pal.save(tmp_path / "pt.png", transparency=0)
    out, masked = decode_view(view_for(tmp_path / "pt.png"))
    assert masked
    np.testing.assert_array_equal(out[..., 3], np.where(np.asarray(pal) == 0, 0, 255))
    # CMYK's 4th channel is black ink, not alpha: converted to RGB, the view is unmasked.
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    out, masked = decode_view(view_for(tmp_path / "c.jpg"))
    assert not masked and np.all(out[..., 3] == 255)
    # JPEG at quality 95 of a random image: colours survive to within a broad 64 levels on average
    # (chroma subsampling smears single pixels), far from the near-black a CMYK-as-RGBA read gives.
    assert np.abs(out[..., :3].astype(int) - rgb).mean() < 64
    Image.fromarray(rgb[..., 0] > 127).save(tmp_path / "b.png")  # mode "1"
    out = load_view_rgba(view_for(tmp_path / "b.png"))
    np.testing.assert_array_equal(out[..., 0], np.where(rgb[..., 0] > 127, 255, 0))


def test_masked_flag_follows_alpha_or_mask_file(tmp_path, rng):
    iio.imwrite(tmp_path / "rgb.png", rng.integers(0, 256, (5, 6, 3), dtype=np.uint8))
    iio.imwrite(tmp_path / "gray.png", rng.integers(0, 256, (5, 6), dtype=np.uint8))
    iio.imwrite(tmp_path / "la.png", np.full((5, 6, 2), 255, dtype=np.uint8))  # an all-opaque alpha is a mask
    iio.imwrite(tmp_path / "m.png", np.zeros((5, 6), dtype=np.uint8))
    assert not decode_view(view_for(tmp_path / "rgb.png"))[1]
    assert not decode_view(view_for(tmp_path / "gray.png"))[1]
    assert decode_view(view_for(tmp_path / "la.png"))[1]
    assert decode_view(view_for(tmp_path / "gray.png", tmp_path / "m.png"))[1]


def test_folder_named_like_an_image_is_named_as_a_folder(tmp_path):
    (tmp_path / "a.png").mkdir()
    for fn in (load_view_rgba, lambda v: read_image_size(v.image_path)):
        with pytest.raises(UserError, match="is a folder, not an image file") as info:
            fn(view_for(tmp_path / "a.png"))
        assert "a.png" in str(info.value) and "not found" not in str(info.value)
