"""`neus2 train`: a static scene in, a run folder out.

Run folder contract (``DIR``): ``config.json`` (resolved), ``run.json`` (the scene's identity),
``checkpoint.pt``, ``mesh.ply`` (world frame), ``metrics.json``, ``renders/`` (test views) and, after
a resume that changed options, ``resumes.json``. Default location: ``outputs/<scene>/<YYYY-mm-dd_HHMMSS>/``.

Interrupted at any moment after ``config.json`` is written, the folder resumes (``--resume``): from
its checkpoint, from step 0 where there is none yet, or straight to the outputs where training had
finished. ``metrics.json`` is written last, so its presence (with the checkpoint at the last step)
marks a complete run, which ``--resume`` leaves as it is.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from neus2cli import log
from neus2cli.compute import Compute, resolve_compute
from neus2cli.config import Config
from neus2cli.data.identity import scene_identity
from neus2cli.data.images import load_images
from neus2cli.data.loader import load_scene
from neus2cli.data.scene import Normalization, Scene
from neus2cli.data.validate import validate_scene
from neus2cli.errors import UserError
from neus2cli.export.mesh import save_mesh
from neus2cli.export.raster import up_from_cameras
from neus2cli.train.checkpoint import field_from_checkpoint, load_checkpoint, save_checkpoint
from neus2cli.train.outputs import TrainedField, image_metrics, mesh_of_field, render_views, save_renders
from neus2cli.train.pixels import PixelBank
from neus2cli.train.preview import write_run_preview
from neus2cli.train.run import (
    RESUMES_FILE,
    RUN_FILE,
    check_new_run_dir,
    check_same_scene,
    default_run_dir,
    new_run_dir,
    read_run_info,
    resumable_run_dir,
    resume_changes,
    resumed_config,
    write_json,
)
from neus2cli.train.trainer import NeuSTrainer, TrainingInterrupted

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"


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


def _load_training_scene(scene_path: Path, bbox: np.ndarray | None = None) -> Scene:
    """The scene, validated; ``bbox`` (2, 3) world [min, max]: its normalization fits that box into the
    unit cube instead of the loader's (before validation, whose fit check then judges the user's box)."""
    scene = load_scene(scene_path)
    if bbox is not None:
        scene.normalization = Normalization.fitting_box(bbox)
    for warning in validate_scene(scene, check_images=True):
        log.warn(warning)
    if not scene.train_views:
        raise UserError("the scene has no training views.", path=scene.root, hint="Check the split of the scene files.")
    return scene


def _new_trainer(cfg: Config, compute: Compute, scene: Scene, ckpt: dict | None, progress: bool) -> NeuSTrainer:
    """The engine on the scene's training pixels, continued from ``ckpt`` when resuming."""
    torch.manual_seed(cfg.train.seed)
    images = load_images(scene.train_views, progress=progress)
    bank = PixelBank(scene.train_views, images, scene.normalization, compute.device)
    if not bank.has_masks and cfg.model.background == "none":
        log.warn(
            f"{scene.name}: the training images have no masks and the config no background model, so the SDF "
            "must explain the whole image (walls where the background is). For an unmasked capture use "
            "--config unmasked (or --set model.background=nerfpp)."
        )
    trainer = NeuSTrainer(cfg, compute, bank)
    if ckpt is not None:
        trainer.load_state_dict(ckpt["trainer"])
    return trainer


def _write_outputs(
    trainer: NeuSTrainer, scene: Scene, out_dir: Path, wall0: float, prior_seconds: float, progress: bool = True
) -> dict:
    """Mesh, renders, preview and, last, metrics of the finished run (EMA weights); returns the metrics.

    Steps, times and rates count every training segment of the run (``NeuSTrainer.train_seconds``);
    ``wall_seconds_to_mesh`` is ``prior_seconds`` (the earlier segments' training time) plus this
    segment's wall time since ``wall0``.
    """
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
            progress=progress,
        )
        save_mesh(mesh, out_dir / "mesh.ply")
        mesh_seconds = time.perf_counter() - t_mesh
        wall_to_mesh = prior_seconds + time.perf_counter() - wall0
        test_views = scene.test_views[: cfg.output.render_test_views]
        images = load_images(test_views, progress=progress)
        renders = render_views(field, test_views, images, scene.normalization, progress=progress)
    save_renders(renders, out_dir / "renders")
    seconds = max(trainer.train_seconds, 1e-9)
    metrics = {
        "scene": scene.name,
        "backend": trainer.compute.backend,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "steps": trainer.step,
        "train_seconds": trainer.train_seconds,
        "steps_per_second": trainer.step / seconds,
        "samples_per_second": trainer.samples_seen / seconds,
        "batches_cut": trainer.batches_cut,
        "final_train_psnr": trainer.train_psnr,
        "mesh_seconds": mesh_seconds,
        "wall_seconds_to_mesh": wall_to_mesh,
        "mesh_vertices": int(len(mesh.vertices)),
        "mesh_faces": int(len(mesh.faces)),
        "peak_gpu_memory_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        **image_metrics(renders),
    }
    up = up_from_cameras(np.stack([v.c2w for v in scene.views]))
    write_run_preview(out_dir / PREVIEW, mesh, renders, metrics, up=up)
    write_json(out_dir / METRICS, metrics)  # last: its presence marks the run complete
    return metrics


def _complete_metrics(out_dir: Path, ckpt: dict | None, cfg: Config, changes: dict) -> dict | None:
    """The metrics of a run that is already complete for ``cfg``, or None where work is left.

    Complete: trained to ``cfg.train.steps`` (or beyond), outputs written (``metrics.json`` of that
    step count) and no ``output.*`` option changed by this resume (which asks for new outputs).
    """
    if ckpt is None or int(ckpt["trainer"]["step"]) < cfg.train.steps:
        return None
    if any(key.startswith("output.") for key in changes):
        return None
    path = out_dir / METRICS
    if not path.is_file() or not (out_dir / "mesh.ply").is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except ValueError:
        return None  # unreadable (not written by this version): write the outputs again
    return metrics if metrics.get("steps") == int(ckpt["trainer"]["step"]) else None


def _recorded_scene(out_dir: Path, ckpt: dict | None) -> dict | None:
    """The scene identity the run recorded (``run.json``), else its checkpoint's scene path (older runs)."""
    info = read_run_info(out_dir)
    if info is not None and "scene_identity" in info:
        return info["scene_identity"]
    if ckpt is not None and "scene" in ckpt:
        return {"path": ckpt["scene"]["path"]}
    return None


def _run_bbox(out_dir: Path, given: np.ndarray | None) -> np.ndarray | None:
    """The ``--bbox`` a resumed run keeps: the one in its ``run.json`` (None: the scene's own normalization);
    a ``given`` one that differs is refused, since the field was trained in that box's normalized frame."""
    info = read_run_info(out_dir)
    if info is None:  # stopped before run.json: nothing was trained in any frame yet
        return given
    recorded = None if info.get("bbox") is None else np.asarray(info["bbox"], dtype=np.float64)
    if given is None or (recorded is not None and np.array_equal(recorded, given)):
        return recorded
    was = "the scene's own normalization" if recorded is None else f"--bbox {_box_text(recorded)}"
    raise UserError(
        f"--bbox {_box_text(given)} would change the normalization of the run being resumed (trained with {was}).",
        path=out_dir,
        hint="Drop --bbox to resume as the run was, or start a new run (another --out) with it.",
    )


def _box_text(box: np.ndarray) -> str:
    return ",".join(f"{v:g}" for v in np.asarray(box).reshape(-1))


def train_static(
    scene_path: Path,
    cfg: Config,
    out_dir: Path | None = None,
    *,
    compute: Compute | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    bbox: np.ndarray | None = None,
) -> tuple[Path, dict]:
    """Train one static scene and write the run folder. Returns (run folder, metrics).

    ``bbox`` (2, 3) world [min, max] (``train --bbox``) overrides the scene's normalization: that box
    fills the unit cube (``Normalization.fitting_box``); recorded in ``run.json``, kept on resume.

    ``compute`` defaults to ``resolve_compute(cfg.backend)``. With ``resume``, ``cfg`` is the run's
    config (``train.run.run_config``): it may differ from the saved one only in
    ``neus2cli.config.RESUMABLE`` keys, and those changes are recorded in the run. A resumed run
    continues from its checkpoint (from step 0 where it has none yet), on its own scene only (else
    ``UserError``); a complete one is left as it is and its saved metrics are returned.

    Raises ``TrainingInterrupted`` (naming the run folder and the checkpoint, if any) on Ctrl-C or,
    inside ``neus2cli.signals.sigterm_as_interrupt``, SIGTERM, once the run folder exists.
    """
    identity = scene_identity(scene_path)  # the camera files only: cheap, and before any long work
    if not resume and out_dir is not None:
        check_new_run_dir(out_dir, force)  # also before the images are read
    ckpt = None
    if resume:
        out_dir = resumable_run_dir(out_dir)
        if (out_dir / CHECKPOINT).exists():
            ckpt = load_checkpoint(out_dir / CHECKPOINT)
        check_same_scene(out_dir, _recorded_scene(out_dir, ckpt), identity)
        bbox = _run_bbox(out_dir, bbox)
        done = _complete_metrics(out_dir, ckpt, cfg, resume_changes(out_dir, cfg))
        if done is not None:
            log.info(f"the run in {out_dir} is already complete ({done['steps']} steps); nothing to do.")
            return out_dir, done
    try:
        scene = _load_training_scene(scene_path, bbox)
        if out_dir is None:
            out_dir = default_run_dir(scene.name)
        ckpt_path = out_dir / CHECKPOINT
        if resume:
            resumed_config(out_dir, cfg, {"step": int(ckpt["trainer"]["step"]) if ckpt is not None else 0})
            if ckpt is None:
                log.info(f"{out_dir} has no checkpoint yet: training from step 0 with the run's config.")
        else:
            new_run_dir(out_dir, force, owned=(METRICS, RUN_FILE, RESUMES_FILE, CHECKPOINT))
            cfg.save(out_dir / "config.json")  # first: from here on the folder is a run that resumes
        info = {"scene": identity["path"], "scene_identity": identity}
        if bbox is not None:
            info["bbox"] = np.asarray(bbox, dtype=np.float64).tolist()
        write_json(out_dir / RUN_FILE, info)
        compute = compute or resolve_compute(cfg.backend)
        trainer = _new_trainer(cfg, compute, scene, ckpt, progress)

        def on_checkpoint(tr: NeuSTrainer) -> Path:
            return save_checkpoint(ckpt_path, checkpoint_payload(tr, scene))

        if compute.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(compute.device)
        wall0, prior_seconds = time.perf_counter(), trainer.train_seconds
        if trainer.step < cfg.train.steps:
            trainer.run(
                cfg.train.steps, description=f"train {scene.name}", progress=progress, on_checkpoint=on_checkpoint
            )
            on_checkpoint(trainer)
        return out_dir, _write_outputs(trainer, scene, out_dir, wall0, prior_seconds, progress)
    except (KeyboardInterrupt, TrainingInterrupted):
        if out_dir is None or not (out_dir / "config.json").is_file():
            raise KeyboardInterrupt from None  # stopped before the run existed: nothing to resume
        # Wherever it came (scene or image loading, training, meshing), the folder resumes: from the
        # checkpoint when one was written, else from step 0 with the run's config.json.
        ckpt_path = out_dir / CHECKPOINT
        raise TrainingInterrupted(ckpt_path if ckpt_path.exists() else None, out_dir) from None


def render_test_views(run_dir: str | Path, compute: Compute) -> list[dict]:
    """Render the held-out views of a finished run (used by ``neus2 evaluate RUN``)."""
    ckpt = load_checkpoint(run_dir)
    scene_path = Path(ckpt["scene"]["path"])
    if not scene_path.exists():  # else load_scene's "scene not found" names a path the user never gave
        raise UserError(
            f"this run's scene is no longer at {scene_path} (moved or deleted); its held-out views are needed "
            "to score the run.",
            path=run_dir,
            hint="Put the scene back at that path, or score the run's mesh with `neus2 evaluate MESH --gt GT`.",
        )
    scene = load_scene(scene_path)
    field = field_from_checkpoint(ckpt, compute)
    views = scene.test_views
    if not views:
        raise UserError("the run's scene has no test views to evaluate.", path=scene.root)
    # The run's own normalization (a --bbox run's differs from the scene's).
    normalization = Normalization.from_dict(ckpt["normalization"])
    return render_views(field, views, load_images(views, progress=True), normalization, progress=True)
