"""One picture of a run: ``preview.png`` (static runs) and a contact sheet of frames (dynamic runs).

Layout of ``write_run_preview`` (all sizes in pixels; ``tile`` = ``TILE``, ``GAP``, ``LINE``)::

    +------------------------------------------------------------+
    | caption lines (scene, steps, PSNR, Chamfer), LINE each     |
    | mesh az 0 | mesh az 90 | mesh az 180 | mesh az 270          |  tile x tile each
    | "ground truth" | "rendering" | "|error|"  (labels, LINE)   |
    | view name, PSNR (LINE)                                     |  per held-out view:
    | gt | pred | error, each panel_width wide, aspect kept      |  one label + one row
    +------------------------------------------------------------+

    width  = 4 tile + 5 GAP
    height = GAP + LINE * n_caption + GAP + tile + GAP
             [+ LINE + sum over views of (LINE + panel_height(view) + GAP)]   (when there are views)
    panel_width = (width - 4 GAP) // 3, panel_height = round(panel_width * H / W) of the view

Pure functions of arrays (no display, no matplotlib); text is drawn with Pillow's default font.
Files are written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image, ImageDraw, ImageFont

from neus2cli.eval.images import psnr
from neus2cli.export.raster import bounding_sphere, render_mesh_views
from neus2cli.io import atomic_write

TILE = 256
"""Side of one shaded mesh picture in ``preview.png``."""
SHEET_TILE = 160
"""Side of one frame's picture in the contact sheet."""
GAP = 4
LINE = 16
"""Height of one line of text (the default font is 11-12 px tall)."""
MAX_VIEWS = 4
"""Held-out views shown in ``preview.png`` (the first ones)."""
MAX_SHEET_FRAMES = 48
"""Frames shown in a contact sheet; longer sequences are subsampled evenly, first and last kept."""
ERROR_RANGE = 0.2
"""Mean absolute RGB error shown as full scale in the error panel (errors above it saturate)."""
PAPER = (255, 255, 255)
INK = (20, 20, 20)
NOTE_INK = (170, 30, 30)


def preview_caption(caption_metrics: Mapping) -> list[str]:
    """The caption lines of ``preview.png`` from a run's metrics (missing keys are left out).

    Keys read: ``scene``, ``steps``, ``train_seconds``, ``mesh_faces``, ``psnr_test``,
    ``psnr_test_masked``, ``ssim_test`` and, when ground-truth geometry was evaluated, ``chamfer``
    with its ``units`` (e.g. ``"mm"``).
    """
    m = caption_metrics
    first = [str(m["scene"])] if m.get("scene") is not None else []
    if m.get("steps") is not None:
        steps = f"{int(m['steps'])} steps"
        if m.get("train_seconds") is not None:
            steps += f" in {_duration(float(m['train_seconds']))}"
        first.append(steps)
    if m.get("mesh_faces") is not None:
        first.append(f"{int(m['mesh_faces'])} faces")
    second = []
    if m.get("psnr_test") is not None:
        text = f"test PSNR {float(m['psnr_test']):.2f} dB"
        if m.get("psnr_test_masked") is not None:
            text += f" (in mask {float(m['psnr_test_masked']):.2f})"
        second.append(text)
    else:
        second.append("no held-out views")
    if m.get("ssim_test") is not None:
        second.append(f"SSIM {float(m['ssim_test']):.3f}")
    if m.get("chamfer") is not None:
        units = f" {m['units']}" if m.get("units") else ""
        second.append(f"Chamfer {float(m['chamfer']):.4g}{units}")
    return [line for line in (", ".join(first), ", ".join(second)) if line]


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def error_image(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(H, W, 3) float false-colour picture of the mean absolute RGB error of (H, W, 3) images.

    Black (no error) through red and yellow to white at ``ERROR_RANGE`` and above.
    """
    err = np.abs(np.asarray(pred, np.float64) - np.asarray(gt, np.float64)).mean(axis=-1)
    x = np.clip(err / ERROR_RANGE, 0.0, 1.0)
    # A "hot" ramp: red rises over the first third, green over the second, blue over the last.
    return np.stack([np.clip(3 * x, 0, 1), np.clip(3 * x - 1, 0, 1), np.clip(3 * x - 2, 0, 1)], axis=-1)


def _to_pil(image: np.ndarray) -> Image.Image:
    """(H, W, 3) float in [0, 1] -> 8-bit RGB Pillow image."""
    return Image.fromarray((np.clip(np.asarray(image, np.float64), 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _mesh_tiles(
    mesh: trimesh.Trimesh, tile: int, up: Sequence[float], azimuths: Sequence[float], sphere=None
) -> list[Image.Image]:
    """Shaded pictures of ``mesh`` (one per azimuth); an empty mesh gets a note instead."""
    if len(mesh.faces) == 0:
        blank = Image.new("RGB", (tile, tile), PAPER)
        ImageDraw.Draw(blank).text((GAP, tile // 2 - LINE // 2), "empty mesh (0 faces)", fill=NOTE_INK, font=_font())
        return [blank] + [Image.new("RGB", (tile, tile), PAPER) for _ in azimuths[1:]]
    return [_to_pil(im) for im in render_mesh_views(mesh, tile, azimuths, up=up, sphere=sphere)]


def render_run_preview(
    mesh: trimesh.Trimesh,
    renders: Sequence[Mapping],
    caption_metrics: Mapping,
    *,
    up: Sequence[float] = (0.0, 0.0, 1.0),
    tile: int = TILE,
    max_views: int = MAX_VIEWS,
) -> Image.Image:
    """The picture of ``write_run_preview`` as an RGB Pillow image (layout in the module docstring).

    ``mesh`` is in the world frame, ``up`` (3,) the world up (``raster.up_from_cameras``).
    ``renders``: per held-out view ``name``, ``pred`` and ``gt`` (H, W, 3) float in [0, 1] and
    ``mask`` (H, W) bool, as ``train.static.render_views`` returns; the first ``max_views`` are shown.
    """
    font = _font()
    width = 4 * tile + 5 * GAP
    panel_w = (width - 4 * GAP) // 3
    caption = preview_caption(caption_metrics)
    views = list(renders)[:max_views]
    for r in views:
        if np.shape(r["pred"]) != np.shape(r["gt"]) or np.ndim(r["pred"]) != 3:
            raise ValueError(f"render {r.get('name')}: pred {np.shape(r['pred'])} and gt {np.shape(r['gt'])} differ")
    panel_h = [max(1, round(panel_w * np.shape(r["pred"])[0] / np.shape(r["pred"])[1])) for r in views]
    height = GAP + LINE * len(caption) + GAP + tile + GAP
    if views:
        height += LINE + sum(LINE + h + GAP for h in panel_h)
    canvas = Image.new("RGB", (width, height), PAPER)
    draw = ImageDraw.Draw(canvas)
    y = GAP
    for line in caption:
        draw.text((GAP, y), line, fill=INK, font=font)
        y += LINE
    y += GAP
    for i, im in enumerate(_mesh_tiles(mesh, tile, up, (0.0, 90.0, 180.0, 270.0))):
        canvas.paste(im, (GAP + i * (tile + GAP), y))
    y += tile + GAP
    if not views:
        return canvas
    columns = [GAP + i * (panel_w + GAP) for i in range(3)]
    for x, label in zip(columns, ("ground truth", "rendering", f"|error| (white = {ERROR_RANGE:g})"), strict=True):
        draw.text((x, y), label, fill=INK, font=font)
    y += LINE
    for r, h in zip(views, panel_h, strict=True):
        draw.text((GAP, y), f"{r['name']}: PSNR {float(psnr(r['pred'], r['gt'])):.2f} dB", fill=INK, font=font)
        y += LINE
        for x, im in zip(columns, (r["gt"], r["pred"], error_image(r["pred"], r["gt"])), strict=True):
            canvas.paste(_to_pil(im).resize((panel_w, h), Image.Resampling.LANCZOS), (x, y))
        y += h + GAP
    return canvas


def write_run_preview(
    path: str | Path,
    mesh: trimesh.Trimesh,
    renders: Sequence[Mapping],
    caption_metrics: Mapping,
    *,
    up: Sequence[float] = (0.0, 0.0, 1.0),
    tile: int = TILE,
    max_views: int = MAX_VIEWS,
) -> Path:
    """Write ``render_run_preview(...)`` to ``path`` (PNG, atomically); returns ``path``."""
    image = render_run_preview(mesh, renders, caption_metrics, up=up, tile=tile, max_views=max_views)
    return _save_png(Path(path), image)


@dataclass(frozen=True)
class SheetFrame:
    """One frame of a contact sheet: its index in the sequence, its world-frame mesh (or the
    path of a mesh file, loaded when drawn) and its test PSNR (None when it has no test views)."""

    index: int
    mesh: trimesh.Trimesh | Path
    psnr: float | None = None


def sheet_caption(frame: SheetFrame) -> str:
    """The label under one frame's picture: ``"0012  PSNR 28.41"``."""
    text = f"{frame.index:04d}"
    if frame.psnr is not None and math.isfinite(frame.psnr):
        text += f"  PSNR {frame.psnr:.2f}"
    return text


def pick_frames(n: int, limit: int = MAX_SHEET_FRAMES) -> list[int]:
    """Positions ``0..n-1`` to show: all of them up to ``limit``, else ``limit`` evenly spaced (first and last kept)."""
    if n <= limit:
        return list(range(n))
    return sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})


def render_contact_sheet(
    frames: Sequence[SheetFrame],
    *,
    up: Sequence[float] = (0.0, 0.0, 1.0),
    tile: int = SHEET_TILE,
    columns: int | None = None,
    max_frames: int = MAX_SHEET_FRAMES,
    title: str | None = None,
) -> Image.Image:
    """A grid of frames' meshes (shaded, one direction, all framed by one shared sphere so that
    motion shows), each labelled ``sheet_caption(frame)``.

    Layout: a title line (``title``, and "k of N frames" when subsampled), then rows of
    ``columns`` cells (default ``ceil(sqrt(shown))``), each cell ``tile`` wide and
    ``tile + LINE`` tall, separated by ``GAP``::

        width  = columns * (tile + GAP) + GAP
        height = GAP + LINE + GAP + rows * (tile + LINE + GAP)
    """
    shown = [frames[i] for i in pick_frames(len(frames), max_frames)]
    cols = columns or max(1, math.ceil(math.sqrt(max(len(shown), 1))))
    rows = math.ceil(len(shown) / cols) if shown else 0
    width = cols * (tile + GAP) + GAP
    height = GAP + LINE + GAP + rows * (tile + LINE + GAP)
    canvas = Image.new("RGB", (width, height), PAPER)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    head = title or "frames"
    if len(shown) < len(frames):
        head += f" ({len(shown)} of {len(frames)} frames)"
    elif not frames:
        head += " (no frames)"
    draw.text((GAP, GAP), head, fill=INK, font=font)
    # One sphere around every frame's bounding sphere (a mesh given as a path is loaded here and again to draw it).
    spheres = []
    for frame in shown:
        mesh = _load(frame.mesh)
        if len(mesh.faces):
            spheres.append(bounding_sphere(mesh.vertices))
    sphere = None
    if spheres:
        lo = np.min([c - r for c, r in spheres], axis=0)
        hi = np.max([c + r for c, r in spheres], axis=0)
        centre = 0.5 * (lo + hi)
        sphere = (centre, max(float(np.linalg.norm(c - centre)) + r for c, r in spheres))
    for k, frame in enumerate(shown):
        x = GAP + (k % cols) * (tile + GAP)
        y = GAP + LINE + GAP + (k // cols) * (tile + LINE + GAP)
        (im,) = _mesh_tiles(_load(frame.mesh), tile, up, (0.0,), sphere=sphere)
        canvas.paste(im, (x, y))
        draw.text((x, y + tile), sheet_caption(frame), fill=INK, font=font)
    return canvas


def write_contact_sheet(
    path: str | Path,
    frames: Sequence[SheetFrame],
    *,
    up: Sequence[float] = (0.0, 0.0, 1.0),
    tile: int = SHEET_TILE,
    columns: int | None = None,
    max_frames: int = MAX_SHEET_FRAMES,
    title: str | None = None,
) -> Path:
    """Write ``render_contact_sheet(...)`` to ``path`` (PNG, atomically); returns ``path``."""
    image = render_contact_sheet(frames, up=up, tile=tile, columns=columns, max_frames=max_frames, title=title)
    return _save_png(Path(path), image)


def _load(mesh: trimesh.Trimesh | Path) -> trimesh.Trimesh:
    if isinstance(mesh, trimesh.Trimesh):
        return mesh
    return trimesh.load(str(mesh), force="mesh", process=False)


def _save_png(path: Path, image: Image.Image) -> Path:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path
