"""What runs make of a trained field: meshes in world coordinates, renders of held-out views, image metrics.

A ``TrainedField`` is the model holding the weights to show (the weight EMA's) with its occupancy grid;
static runs, dynamic frames and exports all mesh and render through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import trimesh
from torch import nn

from neus2cli.compute import Compute
from neus2cli.config import Config
from neus2cli.data.scene import Normalization, View
from neus2cli.eval.images import psnr, ssim
from neus2cli.export.mesh import extract_mesh
from neus2cli.io import atomic_write
from neus2cli.model.fields import NeuSModel
from neus2cli.progress import ProgressReporter
from neus2cli.render.occupancy import make_occupancy_grid
from neus2cli.render.renderer import NORMALIZED_CUBE, render_image_rays
from neus2cli.train.pixels import view_rays

EVAL_BACKGROUND = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class TrainedField:
    """A field ready to mesh and render (normalized frame).

    Attributes:
        model: the networks, holding the weights to show.
        grid: its occupancy grid.
        cfg: the run's config (sampling step, render chunk).
        compute: where and how to evaluate.
        ray_transform: maps a frame's rays into the model's (canonical) frame, or None.
    """

    model: NeuSModel
    grid: nn.Module
    cfg: Config
    compute: Compute
    ray_transform: nn.Module | None = None


def empty_field(cfg: Config, compute: Compute) -> TrainedField:
    """A freshly initialised field of ``cfg``'s shape, to load stored weights into."""
    return TrainedField(
        NeuSModel(cfg.model, compute),
        make_occupancy_grid(compute, NORMALIZED_CUBE, cfg.sampling.grid_resolution),
        cfg,
        compute,
    )


def field_color_fn(field: TrainedField) -> Callable[[torch.Tensor], torch.Tensor]:
    """The field's colour seen along the surface normal: (N, 3) normalized points -> (N, 3) RGB.

    The view direction is ``-normalize(grad sdf)`` at each point (the camera looking straight at the
    surface). Vertex colours and baked textures both use this function, so they agree.
    """
    model = field.model

    def color_fn(x: torch.Tensor) -> torch.Tensor:
        _, grad, outputs = model.sdf_and_gradient(x, create_graph=False)
        view_dir = -torch.nn.functional.normalize(grad, dim=-1)
        return model.color(outputs, view_dir, x, grad)

    return color_fn


@torch.no_grad()
def mesh_of_field(
    field: TrainedField,
    normalization: Normalization,
    *,
    resolution: int,
    color: bool = True,
    bbox: np.ndarray | None = None,
    min_component_fraction: float = 0.0,
    progress: bool = False,
) -> trimesh.Trimesh:
    """Marching cubes on the field's SDF, in world coordinates; colours seen along the normal
    (view direction = -normal). ``bbox``: (2, 3) region in the normalized frame (default the unit cube).
    ``progress``: report the SDF grid's slabs as they are evaluated (``neus2cli.progress``)."""
    model = field.model
    device = field.compute.device
    model.eval()
    with ProgressReporter(resolution, "meshing (SDF slabs)", enabled=progress) as bar:
        return extract_mesh(
            model.sdf,
            normalization,
            resolution=resolution,
            bbox=bbox,
            device=device,
            color_fn=field_color_fn(field) if color else None,
            min_component_fraction=min_component_fraction,
            # On the CPU, 2^18 points per SDF call (about 0.3 GB of hash-grid temporaries) instead of
            # CUDA's 2^21: the larger chunks buy nothing there and took the demo's peak RSS to 8 GB.
            chunk=2**18 if device.type == "cuda" else 2**15,
            on_progress=lambda done, total: bar.update(done),
        )


@torch.no_grad()
def render_views(
    field: TrainedField,
    views: list[View],
    images: list[np.ndarray],
    normalization: Normalization,
    progress: bool = False,
) -> list[dict]:
    """Render ``views`` over a white background; ``progress`` reports the views (and each view's ray chunks).

    Returns per view: ``name``, ``pred`` (H, W, 3) float, ``gt`` (H, W, 3) float composited over
    the same background, ``mask`` (H, W) bool.
    """
    out = []
    bg = torch.tensor(EVAL_BACKGROUND, device=field.compute.device)
    field.model.eval()
    with ProgressReporter(len(views), "rendering test views", enabled=progress and bool(views)) as bar:
        for k, (view, rgba) in enumerate(zip(views, images, strict=True)):

            def on_chunk(done: int, n: int, k: int = k) -> None:
                bar.update(k, f"view {k + 1}: {100 * done // max(n, 1)}% of its rays")

            out.append(_render_view(field, view, rgba, normalization, bg, on_chunk))
            bar.update(k + 1, "")
    return out


def _render_view(
    field: TrainedField,
    view: View,
    rgba: np.ndarray,
    normalization: Normalization,
    bg: torch.Tensor,
    on_chunk: Callable[[int, int], None],
) -> dict:
    """One view of ``render_views`` (its dict); ``on_chunk(rays_done, n_rays)`` after each ray chunk."""
    s = field.cfg.sampling
    rays_o, rays_d = view_rays(view, normalization, field.compute.device)
    if field.ray_transform is not None:
        rays_o, rays_d = field.ray_transform(rays_o, rays_d)
    result = render_image_rays(
        field.model,
        field.grid,
        rays_o,
        rays_d,
        step_size=s.step_size,
        bg_color=bg,
        impl=field.compute.composite_impl,
        march_impl=field.compute.march_impl,
        chunk=field.cfg.output.render_chunk,
        early_stop_eps=s.early_stop_eps,
        on_chunk=on_chunk,
    )
    pred = result["rgb"].clamp(0, 1).reshape(view.height, view.width, 3).cpu().numpy()
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    gt = rgba[..., :3].astype(np.float32) / 255.0 * alpha + (1.0 - alpha) * np.array(EVAL_BACKGROUND)
    return {"name": view.name, "pred": pred, "gt": gt, "mask": alpha[..., 0] > 0.5}


def image_metrics(renders: list[dict]) -> dict:
    """Mean ``psnr_test``, ``psnr_test_masked``, ``ssim_test`` and ``per_view`` figures ({} without renders)."""
    if not renders:
        return {}
    per_view = {
        r["name"]: {
            "psnr": float(psnr(r["pred"], r["gt"])),
            "psnr_masked": float(psnr(r["pred"], r["gt"], mask=r["mask"])),
            "ssim": float(ssim(r["pred"], r["gt"])),
        }
        for r in renders
    }
    return {
        "psnr_test": float(np.mean([v["psnr"] for v in per_view.values()])),
        "psnr_test_masked": float(np.mean([v["psnr_masked"] for v in per_view.values()])),
        "ssim_test": float(np.mean([v["ssim"] for v in per_view.values()])),
        "per_view": per_view,
    }


def save_renders(renders: list[dict], folder: Path) -> None:
    """One PNG per view: ground truth left, rendering right."""
    folder.mkdir(parents=True, exist_ok=True)
    for r in renders:
        side = np.concatenate([r["gt"], r["pred"]], axis=1)
        png = (np.clip(side, 0, 1) * 255 + 0.5).astype(np.uint8)
        atomic_write(
            folder / f"{r['name'].replace('/', '_')}.png",
            lambda tmp, png=png: iio.imwrite(tmp, png, extension=".png"),
        )
