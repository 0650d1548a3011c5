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

Run folder (``DIR``): ``config.json``, ``run.json``, ``metrics.json``, ``state/last.pt``
(resume point) and per frame k (4 digits, index in the input sequence)
``frames/kkkk/{mesh.ply, transform.json, field.bin, metrics.json}``; ``field.bin`` is a
lossless compressed delta against the previous stored frame (``frame_store``).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from neus2cli import log
from neus2cli.compute import Compute, resolve_compute
from neus2cli.config import Config, config_from_dict
from neus2cli.data.hull import centred_normalization, visual_hull_box
from neus2cli.data.images import load_images
from neus2cli.data.loader import load_dynamic_scene
from neus2cli.data.scene import Normalization, Scene
from neus2cli.errors import UserError
from neus2cli.export.mesh import save_mesh
from neus2cli.io import atomic_write_text
from neus2cli.train.checkpoint import save_checkpoint
from neus2cli.train.frame_store import decode_frame, is_keyframe, write_frame
from neus2cli.train.pixels import PixelBank
from neus2cli.train.rigid import FrameToCanonical, world_to_canonical_world
from neus2cli.train.static import image_metrics, mesh_from_trainer, render_views
from neus2cli.train.trainer import DivergenceError, NeuSTrainer, TrainingInterrupted

KEYFRAME_EVERY = 50


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


def field_state(trainer: NeuSTrainer) -> dict[str, torch.Tensor]:
    """What a frame stores: every model tensor plus the occupancy bitfield."""
    state = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    state["grid.binaries"] = trainer.grid.binaries
    return state


def _finalize_ema(trainer: NeuSTrainer) -> None:
    """Make the averaged weights the frame's weights (what is stored, meshed and carried on)."""
    if trainer.ema.decay <= 0:
        return
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            p.copy_(trainer.ema.shadow[name])


def _frame_dir(out_dir: Path, index: int) -> Path:
    return out_dir / "frames" / f"{index:04d}"


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


class DynamicRun:
    """State of one sequence run; ``train_frame`` is the unit of work and of resumption."""

    def __init__(self, cfg: Config, compute: Compute, out_dir: Path, mode: str, progress: bool):
        self.cfg, self.compute, self.device, self.out_dir = cfg, compute, compute.device, out_dir
        self.mode, self.progress = mode, progress
        self.trainer: NeuSTrainer | None = None
        self.accumulated = np.eye(4)
        self.prev_stored: dict[str, torch.Tensor] | None = None
        self.frames_since_key = 0
        self.prev_faces: int | None = None
        self.records: list[dict] = []

    # ---------------------------------------------------------------- one frame
    def _new_trainer(self, steps: int, seed_offset: int = 0) -> NeuSTrainer:
        cfg = copy.deepcopy(self.cfg)
        cfg.train.steps = steps
        cfg.train.seed += seed_offset
        trainer = NeuSTrainer(cfg, self.compute)
        trainer.total_steps = steps
        return trainer

    def _train_first(self, bank: PixelBank, name: str, attempt: int) -> NeuSTrainer:
        trainer = self._new_trainer(self.cfg.dynamic.first_frame_steps, seed_offset=attempt)
        trainer.bank = bank
        trainer.run(trainer.total_steps, description=f"frame {name}", progress=self.progress)
        return trainer

    def _train_next(self, bank: PixelBank, name: str, prev_model: dict, global_steps: int) -> NeuSTrainer:
        d = self.cfg.dynamic
        joint_steps = max(d.next_frame_steps - global_steps, 0) if d.predict_global_movement else d.next_frame_steps
        trainer = self._new_trainer(joint_steps)
        trainer.model.load_state_dict(prev_model)
        trainer.model.variance.requires_grad_(not d.freeze_sharpness)  # Adam skips parameters without grads
        trainer.reset_optimizer()
        trainer.bank = bank
        # The reset grid is rebuilt from the previous field before anything samples it.
        trainer.update_grid(0, force_full=True)
        # The delta rotates about the object (as the grid sees it, mapped into the previous frame).
        pivot = np.linalg.solve(self.accumulated, np.append(occupied_centroid(trainer.grid), 1.0))[:3]
        pose_steps = global_steps if d.predict_global_movement else 0
        trainer.set_ray_transform(
            FrameToCanonical(self.accumulated, pivot).to(self.device), lr=d.global_movement_lr, pose_steps=pose_steps
        )
        if d.predict_global_movement and global_steps > 0:
            trainer.freeze_field = True
            trainer.run(global_steps, description=f"frame {name} (pose)", progress=self.progress)
            trainer.freeze_field = False
            trainer.step = 0
        for group in trainer.transform_optimizer.param_groups:
            group["lr"] = d.global_movement_lr * d.joint_movement_lr_factor
        trainer.run(joint_steps, description=f"frame {name}", progress=self.progress)
        return trainer

    def train_frame(self, index: int, scene: Scene, first: bool) -> dict:
        """Train, check, store and mesh one frame; retries a diverged frame. Returns its record.

        ``scene.normalization`` is the run's (incremental mode); per-frame mode may re-centre it.
        """
        d = self.cfg.dynamic
        t0 = time.perf_counter()
        images = load_images(scene.train_views, progress=False)
        if self.mode == "per-frame" and d.center_on_masks:
            scene.normalization = centre_on_object(scene, images, scene.normalization)
        bank = PixelBank(scene.train_views, images, scene.normalization, self.device)
        del images
        seconds = {"load": time.perf_counter() - t0}
        prev_model = None if self.trainer is None else copy.deepcopy(self.trainer.model.state_dict())
        last_error = None
        for attempt in range(d.max_retries + 1):
            global_steps = d.global_movement_steps * (2**attempt)
            try:
                t_train = time.perf_counter()
                if first or self.mode == "per-frame":
                    trainer = self._train_first(bank, f"{index:04d}", attempt)
                else:
                    trainer = self._train_next(bank, f"{index:04d}", prev_model, global_steps)
                _finalize_ema(trainer)
                seconds["train"] = time.perf_counter() - t_train
                t_mesh = time.perf_counter()
                mesh = mesh_from_trainer(
                    trainer,
                    scene.normalization,
                    resolution=self.cfg.output.mesh_resolution,
                    color=self.cfg.output.mesh_color,
                    min_component_fraction=self.cfg.output.remove_floaters,
                )
                faces = len(mesh.faces)
                if faces == 0 or (self.prev_faces and self.mode == "incremental" and faces < 0.2 * self.prev_faces):
                    raise DivergenceError(f"the mesh vanished ({faces} faces, previous frame {self.prev_faces})")
                seconds["mesh"] = time.perf_counter() - t_mesh
                break
            except DivergenceError as err:
                last_error = err
                log.warn(
                    f"frame {index:04d} diverged ({err}); retrying from the previous frame's state"
                    f" with a {2 ** (attempt + 1)}x longer global-movement phase."
                )
        else:
            raise UserError(
                f"frame {index:04d} diverged {d.max_retries + 1} times ({last_error}); frames before it are saved.",
                path=self.out_dir,
                hint="Try more steps (--set next_frame_steps=...), a longer --set global_movement_steps=..., "
                "or --mode per-frame for sequences with cuts; then --resume.",
            )

        transform = FrameToCanonical(self.accumulated)
        if trainer.ray_transform is not None:
            transform = trainer.ray_transform
        a_norm = transform.matrix().detach().cpu().double().numpy() if self.mode == "incremental" else np.eye(4)
        w2c = world_to_canonical_world(a_norm, scene.normalization)
        mesh.apply_transform(np.linalg.inv(w2c))

        t_store = time.perf_counter()
        fdir = _frame_dir(self.out_dir, index)
        fdir.mkdir(parents=True, exist_ok=True)
        state = field_state(trainer)
        keyframe = self.prev_stored is None or self.frames_since_key >= KEYFRAME_EVERY - 1
        n_bytes = write_frame(fdir / "field.bin", state, None if keyframe else self.prev_stored)
        self.frames_since_key = 0 if keyframe else self.frames_since_key + 1
        save_mesh(mesh, fdir / "mesh.ply")
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
        atomic_write_text(fdir / "transform.json", json.dumps(transform_json, indent=2) + "\n")
        seconds["store"] = time.perf_counter() - t_store
        t_render = time.perf_counter()
        test_views = scene.test_views[: self.cfg.output.render_test_views]
        renders = render_views(trainer, test_views, load_images(test_views, progress=False), scene.normalization)
        seconds["render"] = time.perf_counter() - t_render
        record = {
            "index": index,
            "name": scene.name,
            "seconds": time.perf_counter() - t0,
            "train_seconds": seconds["train"],
            "phase_seconds": seconds,
            "steps": self.cfg.dynamic.first_frame_steps
            if first or self.mode == "per-frame"
            else self.cfg.dynamic.next_frame_steps,
            "retries": attempt,
            "stored_bytes": n_bytes,
            "keyframe": keyframe,
            "mesh_faces": len(mesh.faces),
            **{k: v for k, v in image_metrics(renders).items() if k != "per_view"},
        }
        atomic_write_text(fdir / "metrics.json", json.dumps(record, indent=2) + "\n")

        self.trainer = trainer
        self.accumulated = a_norm
        self.prev_stored = state
        self.prev_faces = len(mesh.faces)
        return record

    # ---------------------------------------------------------------- resume state
    def save_state(self, index: int) -> None:
        assert self.trainer is not None
        save_checkpoint(
            self.out_dir / "state" / "last.pt",
            {
                "kind": "dynamic",
                "last_index": index,
                "model": self.trainer.model.state_dict(),
                "accumulated": self.accumulated,
                "prev_stored": self.prev_stored,
                "frames_since_key": self.frames_since_key,
                "prev_faces": self.prev_faces,
                "records": self.records,
            },
        )

    def load_state(self, state: dict) -> None:
        self.trainer = self._new_trainer(self.cfg.dynamic.next_frame_steps)
        self.trainer.model.load_state_dict(state["model"])
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


def train_dynamic(
    scene_dir: Path,
    cfg: Config,
    out_dir: Path | None = None,
    *,
    mode: str = "incremental",
    frames: str | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> tuple[Path, dict]:
    """Train a sequence frame by frame; returns (run folder, metrics). See the module docstring."""
    from neus2cli.train.checkpoint import load_checkpoint
    from neus2cli.train.static import default_run_dir, prepare_run_dir

    if mode not in ("incremental", "per-frame"):
        raise UserError(f"--mode must be 'incremental' or 'per-frame', got '{mode}'.")
    sequence = load_dynamic_scene(scene_dir)
    indices = parse_frame_range(frames, len(sequence.frames))
    if out_dir is None:
        out_dir = default_run_dir(sequence.name)
    state = None
    if resume:
        if not (out_dir / "state" / "last.pt").exists():
            raise UserError("--resume needs a finished frame in the run folder (state/last.pt).", path=out_dir)
        run_info = json.loads((out_dir / "run.json").read_text())
        cfg = config_from_dict(json.loads((out_dir / "config.json").read_text()), str(out_dir / "config.json"))
        mode, indices = run_info["mode"], run_info["frames"]
        state = load_checkpoint(out_dir / "state" / "last.pt")
    else:
        prepare_run_dir(out_dir, resume=False, force=force)
    compute = resolve_compute(cfg.backend)
    backend = compute.backend
    if state is not None:
        normalization = Normalization.from_dict(run_info["normalization"])
    else:
        normalization = sequence.frames[indices[0]].normalization
        if mode == "incremental" and cfg.dynamic.center_on_masks:
            first = sequence.frames[indices[0]]
            normalization = centre_on_object(first, load_images(first.train_views, progress=False), normalization)
    cfg.save(out_dir / "config.json")
    run_info = {
        "scene": str(Path(scene_dir).resolve()),
        "mode": mode,
        "frames": indices,
        "frame_names": [sequence.frame_names[i] for i in indices],
        "backend": backend,
        "normalization": normalization.to_dict(),
        "keyframe_every": KEYFRAME_EVERY,
    }
    atomic_write_text(out_dir / "run.json", json.dumps(run_info, indent=2) + "\n")

    run = DynamicRun(cfg, compute, out_dir, mode, progress)
    done = -1
    if state is not None:
        run.load_state(state)
        done = indices.index(int(state["last_index"]))
        log.info(f"resuming after frame {state['last_index']:04d}")
    for pos in range(done + 1, len(indices)):
        index = indices[pos]
        scene = sequence.frames[index]
        scene.normalization = normalization
        try:
            record = run.train_frame(index, scene, first=(pos == 0))
        except TrainingInterrupted as err:
            raise TrainingInterrupted(out_dir / "state" / "last.pt") from err
        except KeyboardInterrupt:
            raise TrainingInterrupted(out_dir / "state" / "last.pt") from None
        run.records.append(record)
        run.save_state(index)
        atomic_write_text(out_dir / "metrics.json", json.dumps(_summary(run.records, mode, backend), indent=2) + "\n")
    return out_dir, _summary(run.records, mode, backend)


def _read_frame(run_dir: Path, index: int, read, *args):
    """``read(blob, *args)`` on frame ``index``'s stored field; a damaged file is a ``UserError`` naming it."""
    path = _frame_dir(run_dir, index) / "field.bin"
    try:
        return read(path.read_bytes(), *args)
    except ValueError as err:
        raise UserError(
            f"the stored field of frame {index:04d} cannot be read ({err}).",
            path=path,
            hint="The file is damaged or was written by another version of neus2cli; retrain from the frame "
            "before it (delete this frame's folder and the later ones, then train-dynamic --resume).",
        ) from None


def trainer_for_frame(
    run_dir: Path, frame: int, compute: Compute
) -> tuple[NeuSTrainer, Normalization, np.ndarray]:
    """Rebuild frame ``frame`` of a dynamic run from its stored deltas.

    Returns the trainer (model + occupancy grid in the canonical frame), the normalization
    and the 4x4 canonical-world -> frame-world matrix (world units).
    """
    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.exists():
        raise UserError("not a dynamic run folder (no run.json).", path=run_dir)
    info = json.loads(info_path.read_text())
    indices = info["frames"]
    if frame not in indices:
        raise UserError(f"frame {frame} is not part of this run (frames {indices[0]}..{indices[-1]}).", path=run_dir)
    done = [i for i in indices if (_frame_dir(run_dir, i) / "field.bin").exists()]
    if frame not in done:
        raise UserError(f"frame {frame} has not been trained yet.", path=run_dir, hint="Resume the run first.")
    cfg = config_from_dict(json.loads((run_dir / "config.json").read_text()))
    trainer = NeuSTrainer(cfg, compute)
    like = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    like["grid.binaries"] = trainer.grid.binaries
    chain = done[: done.index(frame) + 1]
    start = max(i for i, k in enumerate(chain) if _read_frame(run_dir, k, is_keyframe))
    state = None
    for k in chain[start:]:
        state = _read_frame(run_dir, k, decode_frame, state, like)
    trainer.model.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
    trainer.grid.binaries.copy_(state["grid.binaries"].to(trainer.grid.binaries.device))
    trainer.ema.shadow = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    transform = json.loads((_frame_dir(run_dir, frame) / "transform.json").read_text())
    normalization = Normalization.from_dict(transform.get("normalization", info["normalization"]))
    return trainer, normalization, np.linalg.inv(np.asarray(transform["world_to_canonical"]))
