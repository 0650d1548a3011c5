"""`neus2 train-dynamic`: a multi-view video in, one mesh per frame out.

Incremental mode (default, NeuS2's): frame 0 trains from scratch; each later frame starts
from the previous frame's weights, sharpness and accumulated rigid transform, with Adam,
the weight EMA and the occupancy grid reset and the progressive level schedule restarted.
The sharpness stays at frame 0's value (``dynamic.freeze_sharpness``): learned frame after
frame it grows until the surface is sharper than the marching step resolves and tracking fails.
First only a per-frame rigid delta is optimised with the field frozen and all levels on
(global transform prediction), then field and delta train together. Composition order:
``A_k = A_{k-1} @ D_k`` (see ``neus2cli.train.rigid``).

Per-frame mode trains every frame from scratch with the static pipeline.

Run folder (``DIR``): ``config.json``, ``run.json`` (mode, frames, normalization and the sequence's
identity), ``metrics.json``, ``state/last.pt`` (resume point) and per frame k (4 digits, index in
the input sequence) ``frames/kkkk/{mesh.ply, transform.json, field.bin, metrics.json}``; ``field.bin``
is a lossless compressed delta against the previous stored frame (``train.frames``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh

from neus2cli import log
from neus2cli.compute import Compute, resolve_compute
from neus2cli.config import Config
from neus2cli.data.hull import centred_normalization, visual_hull_box
from neus2cli.data.identity import sequence_identity
from neus2cli.data.images import load_images
from neus2cli.data.loader import load_dynamic_scene
from neus2cli.data.scene import DynamicScene, Normalization, Scene
from neus2cli.errors import UserError
from neus2cli.export.mesh import save_mesh
from neus2cli.export.raster import up_from_cameras
from neus2cli.train.checkpoint import load_checkpoint, save_checkpoint
from neus2cli.train.frames import KEYFRAME_EVERY, field_state, frame_dir, store_field
from neus2cli.train.outputs import TrainedField, image_metrics, mesh_of_field, render_views
from neus2cli.train.pixels import PixelBank
from neus2cli.train.pose import PoseOptimizer
from neus2cli.train.preview import SheetFrame, write_contact_sheet
from neus2cli.train.rigid import FrameToCanonical, world_to_canonical_world
from neus2cli.train.run import (
    RESUMES_FILE,
    RUN_FILE,
    check_new_run_dir,
    check_same_scene,
    default_run_dir,
    new_run_dir,
    read_run_info,
    resumable_run_dir,
    resumed_config,
    write_json,
)
from neus2cli.train.trainer import DivergenceError, NeuSTrainer, TrainingInterrupted

CONTACT_SHEET = "contact_sheet.png"  # every frame's mesh with its test PSNR, written at the end

MODES = ("incremental", "per-frame")
RESUME_POINT = "state/last.pt"


def parse_frame_range(text: str | None, n_frames: int) -> list[int]:
    """``"a:b[:step]"`` (Python slice semantics, either end optional) -> frame indices."""
    if text is None or text.strip() == "":
        return list(range(n_frames))
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise UserError(f"--frames expects a:b or a:b:step, got '{text}'.", hint="Example: --frames 0:100:2")
    try:
        nums = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise UserError(f"--frames expects integers, got '{text}'.") from None
    if len(nums) == 3 and nums[2] is not None and nums[2] <= 0:
        raise UserError(f"--frames step must be positive, got '{text}'.")
    picked = list(range(n_frames))[slice(*nums)]
    if not picked:
        raise UserError(f"--frames {text} selects no frame of the {n_frames} in the sequence.")
    return picked


def occupied_centroid(grid) -> np.ndarray:
    """(3,) mean centre of the occupied cells of an occupancy grid's first level (its roi frame).

    The cube centre when nothing is occupied.
    """
    cells = torch.nonzero(grid.binaries[0]).double()
    if cells.shape[0] == 0:
        return np.full(3, 0.5)
    res = torch.tensor(grid.binaries.shape[1:], dtype=torch.float64, device=cells.device)
    aabb = grid.aabbs[0].double()
    centre = aabb[:3] + (cells.mean(dim=0) + 0.5) / res * (aabb[3:] - aabb[:3])
    return centre.cpu().numpy()


def centre_on_object(scene: Scene, images: list[np.ndarray], normalization: Normalization) -> Normalization:
    """``normalization`` shifted so the visual hull of ``scene``'s masks is centred (unchanged without masks)."""
    box = visual_hull_box(scene.train_views, images, normalization)
    if box is None:
        log.warn(f"{scene.name}: the masks do not locate the object; the normalized frame stays as given.")
        return normalization
    return centred_normalization(normalization, box)


@dataclass
class TrainedFrame:
    """One frame's training result: the engine (EMA weights loaded), its ray transform, its mesh
    (normalized field -> world coordinates of the canonical frame) and the attempt that succeeded."""

    trainer: NeuSTrainer
    transform: FrameToCanonical | None
    mesh: trimesh.Trimesh
    attempt: int
    train_seconds: float
    mesh_seconds: float


class DynamicRun:
    """State of one sequence run; ``train_frame`` is the unit of work and of resumption."""

    def __init__(self, cfg: Config, compute: Compute, out_dir: Path, mode: str, progress: bool):
        self.cfg, self.compute, self.out_dir = cfg, compute, out_dir
        self.mode, self.progress = mode, progress
        self.prev_field: dict[str, torch.Tensor] | None = None  # the previous frame's model state
        self.accumulated = np.eye(4)
        self.prev_stored: dict[str, torch.Tensor] | None = None
        self.frames_since_key = 0
        self.prev_faces: int | None = None
        self.records: list[dict] = []

    def _from_scratch(self, first: bool) -> bool:
        return first or self.mode == "per-frame"

    # ---------------------------------------------------------------- training one frame
    def _frame_config(self, steps: int, seed_offset: int = 0) -> Config:
        cfg = copy.deepcopy(self.cfg)
        cfg.train.steps = steps
        cfg.train.seed += seed_offset
        return cfg

    def _train_first(self, bank: PixelBank, name: str, attempt: int) -> tuple[NeuSTrainer, None]:
        cfg = self._frame_config(self.cfg.dynamic.first_frame_steps, seed_offset=attempt)
        trainer = NeuSTrainer(cfg, self.compute, bank)
        trainer.run(cfg.train.steps, description=f"frame {name}", progress=self.progress)
        return trainer, None

    def _train_next(self, bank: PixelBank, name: str, global_steps: int) -> tuple[NeuSTrainer, FrameToCanonical]:
        """Pose phase (field frozen), then field and pose together, from the previous frame's field."""
        d = self.cfg.dynamic
        pose_steps = global_steps if d.predict_global_movement else 0
        joint_steps = max(d.next_frame_steps - pose_steps, 0) if d.predict_global_movement else d.next_frame_steps
        transform = FrameToCanonical(self.accumulated).to(self.compute.device)
        trainer = NeuSTrainer(
            self._frame_config(joint_steps),
            self.compute,
            bank,
            init_field=self.prev_field,
            learn_sharpness=not d.freeze_sharpness,
            ray_transform=transform,
        )
        # The delta rotates about the object (as the rebuilt grid sees it, mapped into the previous frame).
        transform.delta.set_pivot(
            np.linalg.solve(self.accumulated, np.append(occupied_centroid(trainer.grid), 1.0))[:3]
        )
        pose = PoseOptimizer(transform, d.global_movement_lr, pose_steps, d.joint_movement_lr_factor)
        if pose_steps > 0:
            with trainer.field_frozen():
                trainer.run(
                    pose_steps, description=f"frame {name} (pose)", progress=self.progress, after_step=pose.after_step
                )
        pose.start_joint_phase()
        trainer.run(joint_steps, description=f"frame {name}", progress=self.progress, after_step=pose.after_step)
        return trainer, transform

    def _train_checked(self, bank: PixelBank, index: int, scene: Scene, first: bool) -> TrainedFrame:
        """Train and mesh the frame, retrying a diverged one with a longer pose phase."""
        d = self.cfg.dynamic
        last_error = None
        for attempt in range(d.max_retries + 1):
            try:
                t_train = time.perf_counter()
                if self._from_scratch(first):
                    trainer, transform = self._train_first(bank, f"{index:04d}", attempt)
                else:
                    trainer, transform = self._train_next(bank, f"{index:04d}", d.global_movement_steps * (2**attempt))
                trainer.ema.copy_to(trainer.model)  # the averaged weights are what is stored, meshed, carried on
                t_mesh = time.perf_counter()
                mesh = self._mesh(trainer, scene)
                return TrainedFrame(trainer, transform, mesh, attempt, t_mesh - t_train, time.perf_counter() - t_mesh)
            except DivergenceError as err:
                last_error = err
                log.warn(
                    f"frame {index:04d} diverged ({err}); retrying from the previous frame's state"
                    f" with a {2 ** (attempt + 1)}x longer global-movement phase."
                )
        raise UserError(
            f"frame {index:04d} diverged {d.max_retries + 1} times ({last_error}); frames before it are saved.",
            path=self.out_dir,
            hint="Try more steps (--set next_frame_steps=...), a longer --set global_movement_steps=..., "
            "or --mode per-frame for sequences with cuts; then --resume.",
        )

    def _mesh(self, trainer: NeuSTrainer, scene: Scene) -> trimesh.Trimesh:
        out = self.cfg.output
        mesh = mesh_of_field(
            TrainedField(trainer.model, trainer.grid, trainer.cfg, self.compute),
            scene.normalization,
            resolution=out.mesh_resolution,
            color=out.mesh_color,
            min_component_fraction=out.remove_floaters,
        )
        faces = len(mesh.faces)
        if faces == 0 or (self.prev_faces and self.mode == "incremental" and faces < 0.2 * self.prev_faces):
            raise DivergenceError(f"the mesh vanished ({faces} faces, previous frame {self.prev_faces})")
        return mesh

    # ---------------------------------------------------------------- writing one frame
    def _store(self, index: int, frame: TrainedFrame, scene: Scene) -> tuple[np.ndarray, dict, int, bool]:
        """Field, mesh (frame world coordinates) and transform.json of the frame.

        Returns the accumulated normalized transform, the stored state, its size and whether it is a keyframe.
        """
        transform = frame.transform if frame.transform is not None else FrameToCanonical(self.accumulated)
        a_norm = transform.matrix().detach().cpu().double().numpy() if self.mode == "incremental" else np.eye(4)
        w2c = world_to_canonical_world(a_norm, scene.normalization)
        frame.mesh.apply_transform(np.linalg.inv(w2c))
        fdir = frame_dir(self.out_dir, index)
        fdir.mkdir(parents=True, exist_ok=True)
        state = field_state(frame.trainer.model, frame.trainer.grid)
        keyframe = self.prev_stored is None or self.frames_since_key >= KEYFRAME_EVERY - 1
        n_bytes = store_field(self.out_dir, index, state, None if keyframe else self.prev_stored)
        save_mesh(frame.mesh, fdir / "mesh.ply")
        transform_json = {
            "world_to_canonical": w2c.tolist(),
            "normalized_to_canonical": a_norm.tolist(),
            "rotation": w2c[:3, :3].tolist(),
            "translation": w2c[:3, 3].tolist(),
            "units": "world",
            "composition": "A_k = A_{k-1} @ D_k; x_canonical = world_to_canonical @ x_world",
            # The field's frame: x_field = scale * x_canonical + offset (what export-mesh needs).
            "normalization": scene.normalization.to_dict(),
        }
        write_json(fdir / "transform.json", transform_json)
        return a_norm, state, n_bytes, keyframe

    def train_frame(self, index: int, scene: Scene, first: bool) -> dict:
        """Train, check, store and mesh one frame; retries a diverged frame. Returns its record.

        ``scene.normalization`` is the run's (incremental mode); per-frame mode may re-centre it.
        """
        t0 = time.perf_counter()
        images = load_images(scene.train_views, progress=False)
        if self.mode == "per-frame" and self.cfg.dynamic.center_on_masks:
            scene.normalization = centre_on_object(scene, images, scene.normalization)
        bank = PixelBank(scene.train_views, images, scene.normalization, self.compute.device)
        del images
        seconds = {"load": time.perf_counter() - t0}
        frame = self._train_checked(bank, index, scene, first)
        seconds["train"], seconds["mesh"] = frame.train_seconds, frame.mesh_seconds
        t_store = time.perf_counter()
        a_norm, state, n_bytes, keyframe = self._store(index, frame, scene)
        seconds["store"] = time.perf_counter() - t_store
        t_render = time.perf_counter()
        test_views = scene.test_views[: self.cfg.output.render_test_views]
        field = TrainedField(frame.trainer.model, frame.trainer.grid, frame.trainer.cfg, self.compute, frame.transform)
        renders = render_views(field, test_views, load_images(test_views, progress=False), scene.normalization)
        seconds["render"] = time.perf_counter() - t_render
        d = self.cfg.dynamic
        record = {
            "index": index,
            "name": scene.name,
            "seconds": time.perf_counter() - t0,
            "train_seconds": seconds["train"],
            "phase_seconds": seconds,
            "steps": d.first_frame_steps if self._from_scratch(first) else d.next_frame_steps,
            "retries": frame.attempt,
            "stored_bytes": n_bytes,
            "keyframe": keyframe,
            "mesh_faces": len(frame.mesh.faces),
            **{k: v for k, v in image_metrics(renders).items() if k != "per_view"},
        }
        write_json(frame_dir(self.out_dir, index) / "metrics.json", record)
        self.prev_field = copy.deepcopy(frame.trainer.model.state_dict())
        self.accumulated = a_norm
        self.prev_stored = state
        self.frames_since_key = 0 if keyframe else self.frames_since_key + 1
        self.prev_faces = len(frame.mesh.faces)
        return record

    # ---------------------------------------------------------------- resume state
    def save_state(self, index: int) -> None:
        assert self.prev_field is not None
        save_checkpoint(
            self.out_dir / RESUME_POINT,
            {
                "kind": "dynamic",
                "last_index": index,
                "model": self.prev_field,
                "accumulated": self.accumulated,
                "prev_stored": self.prev_stored,
                "frames_since_key": self.frames_since_key,
                "prev_faces": self.prev_faces,
                "records": self.records,
            },
        )

    def load_state(self, state: dict) -> None:
        self.prev_field = {k: v.to(self.compute.device) for k, v in state["model"].items()}
        self.accumulated = np.asarray(state["accumulated"])
        self.prev_stored = state["prev_stored"]
        self.frames_since_key = int(state["frames_since_key"])
        self.prev_faces = state["prev_faces"]
        self.records = list(state["records"])


def _summary(records: list[dict], mode: str, backend: str) -> dict:
    later = [r["seconds"] for r in records[1:]]
    return {
        "mode": mode,
        "backend": backend,
        "n_frames": len(records),
        "first_frame_seconds": records[0]["seconds"] if records else None,
        "mean_seconds_after_first": float(np.mean(later)) if later else None,
        "mean_stored_bytes_after_first": float(np.mean([r["stored_bytes"] for r in records[1:]]))
        if len(records) > 1
        else None,
        "frames": records,
    }


def _run_normalization(sequence: DynamicScene, indices: list[int], mode: str, cfg: Config) -> Normalization:
    """Frame 0's normalization, centred on its masks' visual hull in incremental mode."""
    first = sequence.frames[indices[0]]
    normalization = first.normalization
    if mode == "incremental" and cfg.dynamic.center_on_masks:
        normalization = centre_on_object(first, load_images(first.train_views, progress=False), normalization)
    return normalization


def _check_unchanged(option: str, given, stored, out_dir: Path) -> None:
    if given is not None and given != stored:
        raise UserError(
            f"{option} {given} differs from the run being resumed ({stored}); a resumed run keeps its frames and mode.",
            path=out_dir,
            hint=f"Drop {option} to resume, or start a new run (another --out).",
        )


def train_dynamic(
    scene_dir: Path,
    cfg: Config,
    out_dir: Path | None = None,
    *,
    compute: Compute | None = None,
    mode: str | None = None,
    frames: str | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> tuple[Path, dict]:
    """Train a sequence frame by frame; returns (run folder, metrics). See the module docstring.

    ``mode`` defaults to incremental, ``compute`` to ``resolve_compute(cfg.backend)``. With ``resume``,
    ``cfg`` may differ from the run's saved config only in ``neus2cli.config.RESUMABLE`` keys (recorded
    in the run), and ``mode`` and ``frames``, where given, must be the run's; so must the sequence
    (``run.json``'s ``scene_identity``). A run stopped before its first finished frame resumes from its
    first frame; a complete one is left as it is.

    Raises ``TrainingInterrupted`` (the run folder, and ``state/last.pt`` where a frame had finished) on
    Ctrl-C or, inside ``neus2cli.signals.sigterm_as_interrupt``, SIGTERM, once ``config.json`` is written.
    """
    if mode is not None and mode not in MODES:
        raise UserError(f"--mode must be 'incremental' or 'per-frame', got '{mode}'.")
    if not resume and out_dir is not None:
        check_new_run_dir(out_dir, force)  # before the sequence is read
    sequence = load_dynamic_scene(scene_dir)
    identity = sequence_identity(scene_dir)
    indices = parse_frame_range(frames, len(sequence.frames))
    state = None
    run_info = None
    if resume:
        out_dir = resumable_run_dir(out_dir)
        run_info = read_run_info(out_dir)  # None: stopped before it was written, nothing trained yet
    try:
        if run_info is not None:
            recorded = run_info.get("scene_identity") or {"path": run_info["scene"]}
            check_same_scene(out_dir, recorded, identity)
            _check_unchanged("--mode", mode, run_info["mode"], out_dir)
            _check_unchanged("--frames", indices if frames is not None else None, run_info["frames"], out_dir)
            mode, indices = run_info["mode"], run_info["frames"]
            if (out_dir / RESUME_POINT).exists():
                state = load_checkpoint(out_dir / RESUME_POINT)
            normalization = Normalization.from_dict(run_info["normalization"])
        else:
            mode = mode or "incremental"
            if not resume:
                out_dir = new_run_dir(
                    out_dir or default_run_dir(sequence.name),
                    force,
                    owned=(RESUME_POINT, "metrics.json", RUN_FILE, RESUMES_FILE),
                )
            normalization = _run_normalization(sequence, indices, mode, cfg)
        if resume:
            resumed_config(out_dir, cfg, {"after_frame": int(state["last_index"]) if state is not None else None})
        else:
            cfg.save(out_dir / "config.json")  # first: from here on the folder is a run that resumes
        return _train_frames(sequence, identity, indices, mode, normalization, cfg, out_dir, compute, state, progress)
    except (KeyboardInterrupt, TrainingInterrupted):
        if out_dir is None or not (out_dir / "config.json").is_file():
            raise KeyboardInterrupt from None  # stopped before the run existed: nothing to resume
        point = out_dir / RESUME_POINT
        raise TrainingInterrupted(point if point.exists() else None, out_dir) from None


def _train_frames(
    sequence: DynamicScene,
    identity: dict,
    indices: list[int],
    mode: str,
    normalization: Normalization,
    cfg: Config,
    out_dir: Path,
    compute: Compute | None,
    state: dict | None,
    progress: bool,
) -> tuple[Path, dict]:
    """The frames after ``state``'s last finished one (all of them without ``state``), in a run folder
    whose ``config.json`` is written."""
    compute = compute or resolve_compute(cfg.backend)
    run_info = {
        "scene": identity["path"],
        "scene_identity": identity,
        "mode": mode,
        "frames": indices,
        "frame_names": [sequence.frame_names[i] for i in indices],
        "backend": compute.backend,
        "normalization": normalization.to_dict(),
        "keyframe_every": KEYFRAME_EVERY,
    }
    write_json(out_dir / RUN_FILE, run_info)

    run = DynamicRun(cfg, compute, out_dir, mode, progress)
    done = -1
    if state is not None:
        run.load_state(state)
        done = indices.index(int(state["last_index"]))
        if done == len(indices) - 1:
            log.info(f"the run in {out_dir} is already complete ({len(indices)} frames); nothing to do.")
            if not (out_dir / CONTACT_SHEET).exists():  # a run of an older version, or interrupted here
                write_sequence_sheet(out_dir, run.records, sequence.frames[indices[0]])
            return out_dir, _summary(run.records, mode, compute.backend)
        log.info(f"resuming after frame {state['last_index']:04d}")
    for pos in range(done + 1, len(indices)):
        index = indices[pos]
        scene = sequence.frames[index]
        scene.normalization = normalization
        record = run.train_frame(index, scene, first=(pos == 0))
        run.records.append(record)
        run.save_state(index)
        write_json(out_dir / "metrics.json", _summary(run.records, mode, compute.backend))
    write_sequence_sheet(out_dir, run.records, sequence.frames[indices[0]])
    return out_dir, _summary(run.records, mode, compute.backend)


def write_sequence_sheet(out_dir: Path, records: list[dict], first: Scene) -> Path:
    """``contact_sheet.png``: every frame's mesh (evenly spaced beyond the sheet's limit) with its test PSNR,
    drawn with the first frame's cameras' up direction."""
    frames = [
        SheetFrame(r["index"], frame_dir(out_dir, r["index"]) / "mesh.ply", r.get("psnr_test"))
        for r in records
        if (frame_dir(out_dir, r["index"]) / "mesh.ply").exists()
    ]
    up = up_from_cameras(np.stack([v.c2w for v in first.views]))
    return write_contact_sheet(out_dir / CONTACT_SHEET, frames, up=up, title=f"{out_dir.name}: {len(frames)} frames")
