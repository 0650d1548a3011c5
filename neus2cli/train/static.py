"""`neus2 train`: a static scene in, a run folder out.

Run folder contract (``DIR``): ``config.json`` (resolved), ``checkpoint.pt``, ``mesh.ply``
(world frame), ``metrics.json`` and ``renders/`` (test views). Default location:
``outputs/<scene>/<YYYY-mm-dd_HHMMSS>/``.
"""

from __future__ import annotations

import json
import platform
import time
from datetime import datetime
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import trimesh

from neus2cli import log
from neus2cli.compute import Compute, resolve_compute
from neus2cli.config import Config, config_from_dict
from neus2cli.data.images import load_images
from neus2cli.data.loader import load_scene
from neus2cli.data.scene import Normalization, Scene, View
from neus2cli.data.validate import validate_scene
from neus2cli.errors import UserError
from neus2cli.export.mesh import extract_mesh, save_mesh
from neus2cli.io import atomic_write, atomic_write_text
from neus2cli.render.renderer import render_image_rays
from neus2cli.train.checkpoint import load_checkpoint, save_checkpoint
from neus2cli.train.pixels import PixelBank, view_rays
from neus2cli.train.trainer import NeuSTrainer

EVAL_BACKGROUND = (1.0, 1.0, 1.0)


def default_run_dir(scene_name: str, root: Path = Path("outputs")) -> Path:
    return root / scene_name / datetime.now().strftime("%Y-%m-%d_%H%M%S")


def prepare_run_dir(out_dir: Path, resume: bool, force: bool) -> None:
    if resume:
        if not (out_dir / "checkpoint.pt").exists():
            raise UserError(
                "--resume needs a checkpoint.pt in the run folder.",
                path=out_dir,
                hint="Point --out at the folder of the interrupted run.",
            )
        return
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise UserError(
            "the output folder already holds files; runs never overwrite each other.",
            path=out_dir,
            hint="Pass --resume to continue that run, --force to overwrite it, or choose another --out.",
        )
    out_dir.mkdir(parents=True, exist_ok=True)


def checkpoint_payload(trainer: NeuSTrainer, scene: Scene) -> dict:
    return {
        "kind": "static",
        "config": trainer.cfg.to_dict(),
        "backend": trainer.compute.backend,
        "normalization": scene.normalization.to_dict(),
        "scene": {"path": str(Path(scene.root).resolve()), "name": scene.name, "format": scene.format},
        "trainer": trainer.state_dict(),
    }


def trainer_from_checkpoint(ckpt: dict, compute: Compute) -> NeuSTrainer:
    """Rebuild a trainer (weights, EMA, grid) from a loaded checkpoint, on any backend."""
    cfg = config_from_dict(ckpt["config"])
    trainer = NeuSTrainer(cfg, compute)
    trainer.load_state_dict(ckpt["trainer"], optimizer=True)
    return trainer


@torch.no_grad()
def mesh_from_trainer(
    trainer: NeuSTrainer,
    normalization: Normalization,
    *,
    resolution: int,
    color: bool = True,
    bbox: np.ndarray | None = None,
    min_component_fraction: float = 0.0,
) -> trimesh.Trimesh:
    """Marching cubes on the EMA model; colours seen along the normal (view direction = -normal)."""
    model = trainer.model

    def color_fn(x: torch.Tensor) -> torch.Tensor:
        _, grad, outputs = model.sdf_and_gradient(x, create_graph=False)
        view_dir = -torch.nn.functional.normalize(grad, dim=-1)
        return model.color(outputs, view_dir, x, grad)

    with trainer.ema.applied():
        model.eval()
        return extract_mesh(
            model.sdf,
            normalization,
            resolution=resolution,
            bbox=bbox,
            device=trainer.device,
            color_fn=color_fn if color else None,
            min_component_fraction=min_component_fraction,
        )


def render_views(
    trainer: NeuSTrainer, views: list[View], images: list[np.ndarray], normalization: Normalization
) -> list[dict]:
    """Render ``views`` with the EMA model over a white background.

    Returns per view: ``name``, ``pred`` (H, W, 3) float, ``gt`` (H, W, 3) float composited over
    the same background, ``mask`` (H, W) bool.
    """
    out = []
    bg = torch.tensor(EVAL_BACKGROUND, device=trainer.device)
    s = trainer.cfg.sampling
    with trainer.ema.applied():
        trainer.model.eval()
        for view, rgba in zip(views, images, strict=True):
            rays_o, rays_d = view_rays(view, normalization, trainer.device)
            if trainer.ray_transform is not None:
                with torch.no_grad():
                    rays_o, rays_d = trainer.ray_transform(rays_o, rays_d)
            result = render_image_rays(
                trainer.model,
                trainer.grid,
                rays_o,
                rays_d,
                step_size=s.step_size,
                bg_color=bg,
                impl=trainer.compute.composite_impl,
                march_impl=trainer.compute.march_impl,
                chunk=trainer.cfg.output.render_chunk,
                early_stop_eps=s.early_stop_eps,
            )
            pred = result["rgb"].clamp(0, 1).reshape(view.height, view.width, 3).cpu().numpy()
            alpha = rgba[..., 3:4].astype(np.float32) / 255.0
            gt = rgba[..., :3].astype(np.float32) / 255.0 * alpha + (1.0 - alpha) * np.array(EVAL_BACKGROUND)
            out.append({"name": view.name, "pred": pred, "gt": gt, "mask": alpha[..., 0] > 0.5})
    return out


def image_metrics(renders: list[dict]) -> dict:
    from neus2cli.eval.images import psnr, ssim

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
    folder.mkdir(parents=True, exist_ok=True)
    for r in renders:
        side = np.concatenate([r["gt"], r["pred"]], axis=1)
        png = (np.clip(side, 0, 1) * 255 + 0.5).astype(np.uint8)
        atomic_write(
            folder / f"{r['name'].replace('/', '_')}.png",
            lambda tmp, png=png: iio.imwrite(tmp, png, extension=".png"),
        )


def _resolve_scene(scene_path: Path | None) -> Path:
    if scene_path is not None:
        return scene_path
    from data_tools import demo_scene_path

    return demo_scene_path()


def train_static(
    scene_path: Path | None,
    cfg: Config,
    out_dir: Path | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    steps: int | None = None,
) -> tuple[Path, dict]:
    """Train one static scene and write the run folder. Returns (run folder, metrics).

    ``scene_path`` None trains the bundled demo scene. With ``resume``, the run's own
    ``config.json`` and checkpoint are used and ``steps`` (if given) extends the schedule.
    """
    scene_path = _resolve_scene(scene_path)
    ckpt = None
    if resume:
        if out_dir is None:
            raise UserError("--resume needs --out pointing at the run folder to continue.")
        prepare_run_dir(out_dir, resume=True, force=False)
        ckpt = load_checkpoint(out_dir / "checkpoint.pt")
        cfg = config_from_dict(ckpt["config"], str(out_dir / "checkpoint.pt"))
        if steps is not None:
            cfg.train.steps = steps
    scene = load_scene(scene_path)
    for warning in validate_scene(scene, check_images=True):
        log.warn(warning)
    if not scene.train_views:
        raise UserError("the scene has no training views.", path=scene.root, hint="Check the split of the scene files.")
    if out_dir is None:
        out_dir = default_run_dir(scene.name)
    if not resume:  # a resumed run folder was checked above
        prepare_run_dir(out_dir, resume=False, force=force)

    compute = resolve_compute(ckpt["backend"] if ckpt is not None else cfg.backend)
    backend, device = compute.backend, compute.device
    torch.manual_seed(cfg.train.seed)
    cfg.save(out_dir / "config.json")

    images = load_images(scene.train_views, progress=progress)
    trainer = NeuSTrainer(cfg, compute)
    trainer.bank = PixelBank(scene.train_views, images, scene.normalization, device)
    del images
    if ckpt is not None:
        trainer.load_state_dict(ckpt["trainer"])
        trainer.total_steps = cfg.train.steps

    ckpt_path = out_dir / "checkpoint.pt"

    def on_checkpoint(tr: NeuSTrainer) -> Path:
        return save_checkpoint(ckpt_path, checkpoint_payload(tr, scene))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wall0 = time.perf_counter()
    timing = trainer.run(
        cfg.train.steps, description=f"train {scene.name}", progress=progress, on_checkpoint=on_checkpoint
    )
    on_checkpoint(trainer)

    t_mesh = time.perf_counter()
    mesh = mesh_from_trainer(
        trainer,
        scene.normalization,
        resolution=cfg.output.mesh_resolution,
        color=cfg.output.mesh_color,
        min_component_fraction=cfg.output.remove_floaters,
    )
    save_mesh(mesh, out_dir / "mesh.ply")
    mesh_seconds = time.perf_counter() - t_mesh
    wall_to_mesh = time.perf_counter() - wall0

    test_views = scene.test_views[: cfg.output.render_test_views]
    renders = render_views(trainer, test_views, load_images(test_views, progress=False), scene.normalization)
    save_renders(renders, out_dir / "renders")
    metrics = {
        "scene": scene.name,
        "backend": backend,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "steps": trainer.step,
        "train_seconds": timing["seconds"],
        "steps_per_second": timing["steps_per_second"],
        "samples_per_second": timing["samples_per_second"],
        "batches_cut": timing["batches_cut"],
        "final_train_psnr": timing["final_train_psnr"],
        "mesh_seconds": mesh_seconds,
        "wall_seconds_to_mesh": wall_to_mesh,
        "mesh_vertices": int(len(mesh.vertices)),
        "mesh_faces": int(len(mesh.faces)),
        "peak_gpu_memory_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        **image_metrics(renders),
    }
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return out_dir, metrics


def render_test_views(run_dir: str | Path) -> list[dict]:
    """Render the held-out views of a finished run (used by ``neus2 evaluate RUN``)."""
    ckpt = load_checkpoint(run_dir)
    scene = load_scene(Path(ckpt["scene"]["path"]))
    trainer = trainer_from_checkpoint(ckpt, resolve_compute("auto"))
    views = scene.test_views
    if not views:
        raise UserError("the run's scene has no test views to evaluate.", path=scene.root)
    return render_views(trainer, views, load_images(views, progress=True), scene.normalization)
