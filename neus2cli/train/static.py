"""`neus2 train`: a static scene in, a run folder out.

Run folder contract (``DIR``): ``config.json`` (resolved), ``checkpoint.pt``, ``mesh.ply``
(world frame), ``metrics.json``, ``renders/`` (test views) and, after a resume that changed
options, ``resumes.json``. Default location: ``outputs/<scene>/<YYYY-mm-dd_HHMMSS>/``.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import torch

from neus2cli import log
from neus2cli.compute import Compute, resolve_compute
from neus2cli.config import Config
from neus2cli.data.images import load_images
from neus2cli.data.loader import load_scene
from neus2cli.data.scene import Scene
from neus2cli.data.validate import validate_scene
from neus2cli.errors import UserError
from neus2cli.export.mesh import save_mesh
from neus2cli.export.raster import up_from_cameras
from neus2cli.train.checkpoint import field_from_checkpoint, load_checkpoint, save_checkpoint
from neus2cli.train.outputs import TrainedField, image_metrics, mesh_of_field, render_views, save_renders
from neus2cli.train.pixels import PixelBank
from neus2cli.train.preview import write_run_preview
from neus2cli.train.run import default_run_dir, new_run_dir, resumable_run_dir, resumed_config, write_json
from neus2cli.train.trainer import NeuSTrainer

CHECKPOINT = "checkpoint.pt"


PREVIEW = "preview.png"  # the mesh from four sides beside the held-out views


def checkpoint_payload(trainer: NeuSTrainer, scene: Scene) -> dict:
    return {
        "kind": "static",
        "config": trainer.cfg.to_dict(),
        "backend": trainer.compute.backend,
        "normalization": scene.normalization.to_dict(),
        "scene": {"path": str(Path(scene.root).resolve()), "name": scene.name, "format": scene.format},
        "trainer": trainer.state_dict(),
    }


def _load_training_scene(scene_path: Path) -> Scene:
    scene = load_scene(scene_path)
    for warning in validate_scene(scene, check_images=True):
        log.warn(warning)
    if not scene.train_views:
        raise UserError("the scene has no training views.", path=scene.root, hint="Check the split of the scene files.")
    return scene


def _new_trainer(cfg: Config, compute: Compute, scene: Scene, ckpt: dict | None, progress: bool) -> NeuSTrainer:
    """The engine on the scene's training pixels, continued from ``ckpt`` when resuming."""
    torch.manual_seed(cfg.train.seed)
    images = load_images(scene.train_views, progress=progress)
    trainer = NeuSTrainer(cfg, compute, PixelBank(scene.train_views, images, scene.normalization, compute.device))
    if ckpt is not None:
        trainer.load_state_dict(ckpt["trainer"])
    return trainer


def _write_outputs(trainer: NeuSTrainer, scene: Scene, out_dir: Path, timing: dict, wall0: float) -> dict:
    """Mesh, renders and metrics of the finished run (EMA weights); returns the metrics."""
    cfg, device = trainer.cfg, trainer.device
    with trainer.ema.applied():
        field = TrainedField(trainer.model, trainer.grid, cfg, trainer.compute)
        t_mesh = time.perf_counter()
        mesh = mesh_of_field(
            field,
            scene.normalization,
            resolution=cfg.output.mesh_resolution,
            color=cfg.output.mesh_color,
            min_component_fraction=cfg.output.remove_floaters,
        )
        save_mesh(mesh, out_dir / "mesh.ply")
        mesh_seconds = time.perf_counter() - t_mesh
        wall_to_mesh = time.perf_counter() - wall0
        test_views = scene.test_views[: cfg.output.render_test_views]
        renders = render_views(field, test_views, load_images(test_views, progress=False), scene.normalization)
    save_renders(renders, out_dir / "renders")
    metrics = {
        "scene": scene.name,
        "backend": trainer.compute.backend,
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
    write_json(out_dir / "metrics.json", metrics)
    up = up_from_cameras(np.stack([v.c2w for v in scene.views]))
    write_run_preview(out_dir / PREVIEW, mesh, renders, metrics, up=up)
    return metrics


def train_static(
    scene_path: Path,
    cfg: Config,
    out_dir: Path | None = None,
    *,
    compute: Compute | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> tuple[Path, dict]:
    """Train one static scene and write the run folder. Returns (run folder, metrics).

    ``compute`` defaults to ``resolve_compute(cfg.backend)``. With ``resume``, ``cfg`` is the run's
    config (``train.run.run_config``): it may differ from the saved one only in
    ``neus2cli.config.RESUMABLE`` keys, and those changes are recorded in the run.
    """
    ckpt = None
    if resume:
        out_dir = resumable_run_dir(out_dir, CHECKPOINT, "a checkpoint")
        ckpt = load_checkpoint(out_dir / CHECKPOINT)
    scene = _load_training_scene(scene_path)
    if out_dir is None:
        out_dir = default_run_dir(scene.name)
    if ckpt is not None:
        resumed_config(out_dir, cfg, {"step": int(ckpt["trainer"]["step"])})
    else:
        new_run_dir(out_dir, force)
        cfg.save(out_dir / "config.json")
    compute = compute or resolve_compute(cfg.backend)
    trainer = _new_trainer(cfg, compute, scene, ckpt, progress)

    ckpt_path = out_dir / CHECKPOINT

    def on_checkpoint(tr: NeuSTrainer) -> Path:
        return save_checkpoint(ckpt_path, checkpoint_payload(tr, scene))

    if compute.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(compute.device)
    wall0 = time.perf_counter()
    timing = trainer.run(
        cfg.train.steps, description=f"train {scene.name}", progress=progress, on_checkpoint=on_checkpoint
    )
    on_checkpoint(trainer)
    return out_dir, _write_outputs(trainer, scene, out_dir, timing, wall0)


def render_test_views(run_dir: str | Path, compute: Compute) -> list[dict]:
    """Render the held-out views of a finished run (used by ``neus2 evaluate RUN``)."""
    ckpt = load_checkpoint(run_dir)
    scene = load_scene(Path(ckpt["scene"]["path"]))
    field = field_from_checkpoint(ckpt, compute)
    views = scene.test_views
    if not views:
        raise UserError("the run's scene has no test views to evaluate.", path=scene.root)
    return render_views(field, views, load_images(views, progress=True), scene.normalization)
