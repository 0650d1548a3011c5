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

Chunks (``neus2cli.train.chunks``): the sequence may be cut into contiguous chunks that train
independently, each from scratch at its first frame, one or more per rank of a ``torchrun`` launch
(``neus2cli.train.distributed``); a plain command trains one chunk, all frames, as before chunks existed.
Ranks agree only on the run folder and plan (rank 0 sets them up) and on the final metrics (rank 0
writes them); the frames themselves need no communication.

Run folder (``DIR``): ``config.json``, ``run.json`` (mode, frames, chunk plan, normalization and the
sequence's identity), ``metrics.json``, the resume points (``state/last.pt`` for a one-chunk run, else
``state/chunk_cccc.pt`` per chunk) and per frame k (4 digits, index in the input sequence)
``frames/kkkk/{mesh.ply, transform.json, field.bin, metrics.json}``; ``field.bin`` is a lossless
compressed delta against the previous stored frame of its chunk (``train.frames``), a keyframe at
every chunk's start.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import trimesh

from neus2cli import log
from neus2cli.compute import Compute, resolve_compute
from neus2cli.config import Config, config_from_dict
from neus2cli.data.hull import centred_normalization, visual_hull_box
from neus2cli.data.identity import sequence_identity
from neus2cli.data.images import load_images
from neus2cli.data.loader import load_dynamic_scene
from neus2cli.data.scene import DynamicScene, Normalization, Scene
from neus2cli.errors import UserError
from neus2cli.export.mesh import save_mesh
from neus2cli.export.raster import up_from_cameras
from neus2cli.io import read_json
from neus2cli.train.checkpoint import load_checkpoint, save_checkpoint
from neus2cli.train.chunks import SINGLE_STATE, Chunk, ChunkPlan, check_plan, plan_chunks, single_chunk_plan
from neus2cli.train.distributed import (
    SINGLE,
    RankLost,
    Ranks,
    barrier,
    broadcast,
    device_for_rank,
    gather,
    process_group,
)
from neus2cli.train.frames import KEYFRAME_EVERY, field_state, frame_dir, frame_is_complete, store_field, stored_state
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
RESUME_POINT = SINGLE_STATE  # of a one-chunk run; chunked runs have one per chunk (``ChunkPlan.state_path``)


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
    """State of one chunk of a sequence run (all of it without chunks); ``train_frame`` is the unit of work
    and of resumption.

    ``state_path``: the chunk's resume point, relative to ``out_dir``. ``chunk``: what every frame's
    ``transform.json`` records of its chunk (``index``, ``first_frame``, ``canonical_frame``; frame numbers).
    """

    def __init__(
        self,
        cfg: Config,
        compute: Compute,
        out_dir: Path,
        mode: str,
        progress: bool,
        state_path: str = RESUME_POINT,
        chunk: dict | None = None,
    ):
        self.cfg, self.compute, self.out_dir = cfg, compute, out_dir
        self.mode, self.progress = mode, progress
        self.state_path = state_path
        self.chunk = chunk if chunk is not None else {"index": 0, "first_frame": None, "canonical_frame": None}
        self.prev_field: dict[str, torch.Tensor] | None = None  # the previous frame's model state
        self.accumulated = np.eye(4)
        self.prev_stored: dict[str, torch.Tensor] | None = None
        self.frames_since_key = 0
        self.prev_faces: int | None = None
        self.records: list[dict] = []
        self.overlap_seconds = 0.0  # overlap frames trained since the last written frame (its record says so)

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
        a_norm = self._accumulated_of(frame)
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
            # The canonical frame is the chunk's (its canonical_frame's world); the README says how to compose.
            "chunk": self.chunk,
            # The field's frame: x_field = scale * x_canonical + offset (what export-mesh needs).
            "normalization": scene.normalization.to_dict(),
        }
        write_json(fdir / "transform.json", transform_json)
        return a_norm, state, n_bytes, keyframe

    def _accumulated_of(self, frame: TrainedFrame) -> np.ndarray:
        """(4, 4) normalized frame -> canonical transform A_k after ``frame`` (the identity in per-frame mode)."""
        transform = frame.transform if frame.transform is not None else FrameToCanonical(self.accumulated)
        return transform.matrix().detach().cpu().double().numpy() if self.mode == "incremental" else np.eye(4)

    def _carry(self, frame: TrainedFrame, a_norm: np.ndarray) -> None:
        """What the next frame starts from."""
        self.prev_field = copy.deepcopy(frame.trainer.model.state_dict())
        self.accumulated = a_norm
        self.prev_faces = len(frame.mesh.faces)

    def train_overlap_frame(self, index: int, scene: Scene, first: bool) -> None:
        """Train frame ``index`` only as the start of the frames after it (a chunk's overlap): nothing is
        written, and the next stored frame stays a keyframe."""
        t0 = time.perf_counter()
        images = load_images(scene.train_views, progress=False)
        bank = PixelBank(scene.train_views, images, scene.normalization, self.compute.device)
        del images
        frame = self._train_checked(bank, index, scene, first)
        self._carry(frame, self._accumulated_of(frame))
        self.overlap_seconds += time.perf_counter() - t0

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
            "chunk": self.chunk["index"],
            "mesh_faces": len(frame.mesh.faces),
            **{k: v for k, v in image_metrics(renders).items() if k != "per_view"},
        }
        if self.overlap_seconds > 0:  # the chunk's overlap frames, trained for this one (not in "seconds")
            record["overlap_seconds"], self.overlap_seconds = self.overlap_seconds, 0.0
        write_json(frame_dir(self.out_dir, index) / "metrics.json", record)
        self._carry(frame, a_norm)
        self.prev_stored = state
        self.frames_since_key = 0 if keyframe else self.frames_since_key + 1
        return record

    # ---------------------------------------------------------------- resume state
    def save_state(self, index: int, normalization: Normalization | None = None) -> None:
        """Write the chunk's resume point after frame ``index``; ``normalization``: the chunk's (kept for resume)."""
        assert self.prev_field is not None
        save_checkpoint(
            self.out_dir / self.state_path,
            {
                "kind": "dynamic",
                "chunk": self.chunk["index"],
                "normalization": normalization.to_dict() if normalization is not None else None,
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

    def rewind_to(self, index: int) -> None:
        """Carry on from frame ``index``, whose outputs are on disk, instead of from the resume point's
        later frame (whose folders were deleted: the damaged-frame hint): the field, the accumulated
        transform and the keyframe count are read back from the frame store and ``transform.json``."""
        stored = [r["index"] for r in self.records if (frame_dir(self.out_dir, r["index"]) / "field.bin").exists()]
        like = {f"model.{k}": v for k, v in self.prev_field.items()} | {
            "grid.binaries": self.prev_stored["grid.binaries"]
        }
        state, since_key = stored_state(self.out_dir, index, stored, like)
        transform = read_json(frame_dir(self.out_dir, index) / "transform.json")
        self.prev_stored = state
        self.prev_field = {
            k[len("model.") :]: v.to(self.compute.device) for k, v in state.items() if k.startswith("model.")
        }
        self.accumulated = np.asarray(transform["normalized_to_canonical"], dtype=np.float64)
        self.frames_since_key = since_key
        self.records = self.records[: [r["index"] for r in self.records].index(index) + 1]
        self.prev_faces = self.records[-1]["mesh_faces"]


def _summary(records: list[dict], mode: str, backend: str, chunk_starts: set[int] | None = None) -> dict:
    """metrics.json of the run: ``records`` in frame order; ``chunk_starts`` (frame numbers, default the
    first record's) are the frames trained from scratch, left out of the means "after first"."""
    starts = chunk_starts if chunk_starts is not None else {records[0]["index"]} if records else set()
    later = [r for r in records if r["index"] not in starts]
    return {
        "mode": mode,
        "backend": backend,
        "n_frames": len(records),
        "n_chunks": len(starts),
        "first_frame_seconds": records[0]["seconds"] if records else None,
        "mean_seconds_after_first": float(np.mean([r["seconds"] for r in later])) if later else None,
        "mean_stored_bytes_after_first": float(np.mean([r["stored_bytes"] for r in later])) if later else None,
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


@dataclass(frozen=True)
class RunSetup:
    """What rank 0 decided when it set the run folder up, sent to every rank (plain data)."""

    config: dict  # the run's resolved config (a resumed run's own), Config.to_dict()
    out_dir: Path
    mode: str
    indices: list[int]
    plan: dict  # ChunkPlan.to_dict()
    normalization: dict  # the run's (chunk 0's) normalization


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
    ranks: Ranks = SINGLE,
) -> tuple[Path, dict]:
    """Train a sequence frame by frame; returns (run folder, metrics). See the module docstring.

    ``mode`` defaults to incremental, ``compute`` to ``resolve_compute(cfg.backend)``. With ``resume``,
    ``cfg`` may differ from the run's saved config only in ``neus2cli.config.RESUMABLE`` keys (recorded
    in the run), and ``mode`` and ``frames``, where given, must be the run's; so must the sequence
    (``run.json``'s ``scene_identity``). A run stopped before its first finished frame resumes from its
    first frame; a complete one is left as it is.

    ``ranks``: this process's place in a multi-process launch (``distributed.ranks_from_env``); every rank
    calls this with the same arguments, trains its chunks of the run's plan and gets the same metrics.
    ``compute`` is moved to the rank's GPU. A new run is planned for ``ranks.world_size`` ranks; a resumed
    one keeps its plan, whatever the number of ranks.

    Raises ``TrainingInterrupted`` (the run folder, and the resume point of the chunk in progress where one
    of its frames had finished) on Ctrl-C or, inside ``neus2cli.signals.sigterm_as_interrupt``, SIGTERM,
    once ``config.json`` is written; ``RankLost`` where another rank stopped before the ranks met again.
    """
    if mode is not None and mode not in MODES:
        raise UserError(f"--mode must be 'incremental' or 'per-frame', got '{mode}'.")
    if cfg.model.background != "none":
        # A frame's rigid transform maps its rays into the canonical frame, background and all: the
        # room would move with the object. Refused rather than trained wrong.
        raise UserError(
            f"model.background={cfg.model.background} is for static scenes (`neus2 train`); a dynamic sequence "
            "is reconstructed from masked views.",
            hint="Drop the option (or use a preset without a background), and give the frames masks.",
        )
    compute = device_for_rank(compute or resolve_compute(cfg.backend), ranks)
    with process_group(ranks, compute):
        sequence = load_dynamic_scene(scene_dir)
        identity = sequence_identity(scene_dir)
        indices = parse_frame_range(frames, len(sequence.frames))
        setup: RunSetup | None = None
        first_state: dict | None = None  # a one-chunk run's resume point, read by rank 0 while setting up
        try:
            if ranks.is_main:
                try:
                    setup, first_state = _set_up_run(
                        sequence, identity, indices, cfg, out_dir, compute, mode, frames, resume, force, ranks
                    )
                except BaseException:
                    with contextlib.suppress(RankLost):  # the others must not wait for a run that never starts
                        broadcast(None, ranks, "the run folder was set up")
                    raise
            setup = broadcast(setup, ranks, "the run folder was set up")
            if setup is None:
                raise RankLost("rank 0 could not set the run up (its own message says why); nothing was trained")
            out_dir = setup.out_dir
            if not ranks.is_main:  # rank 0's config is the run's (a resumed run's own, as saved)
                cfg = config_from_dict(setup.config, "rank 0's config")
            return _train_chunks(sequence, setup, cfg, compute, first_state, progress, ranks)
        except RankLost as err:
            raise RankLost(str(err), out_dir) from None  # with the folder to resume
        except (KeyboardInterrupt, TrainingInterrupted) as err:
            if isinstance(err, TrainingInterrupted) and err.run_dir is not None:  # a chunk's, complete
                raise
            if out_dir is None or not (out_dir / "config.json").is_file():
                raise KeyboardInterrupt from None  # stopped before the run existed: nothing to resume
            point = out_dir / RESUME_POINT
            raise TrainingInterrupted(point if point.exists() else None, out_dir) from None


def _set_up_run(
    sequence: DynamicScene,
    identity: dict,
    indices: list[int],
    cfg: Config,
    out_dir: Path | None,
    compute: Compute,
    mode: str | None,
    frames: str | None,
    resume: bool,
    force: bool,
    ranks: Ranks,
) -> tuple[RunSetup, dict | None]:
    """Rank 0: check or create the run folder, fix the plan, write ``config.json`` and ``run.json``.

    Returns the setup and, for a one-chunk run being resumed, its resume point (already read).
    """
    if not resume and out_dir is not None:
        check_new_run_dir(out_dir, force)  # before any image is read
    d = cfg.dynamic
    state = None
    run_info = None
    if resume:
        out_dir = resumable_run_dir(out_dir)
        run_info = read_run_info(out_dir)  # None: stopped before it was written, nothing trained yet
    if run_info is not None:
        recorded = run_info.get("scene_identity") or {"path": run_info["scene"]}
        check_same_scene(out_dir, recorded, identity)
        _check_unchanged("--mode", mode, run_info["mode"], out_dir)
        _check_unchanged("--frames", indices if frames is not None else None, run_info["frames"], out_dir)
        mode, indices = run_info["mode"], run_info["frames"]
        # A run from before chunks existed is one chunk.
        plan = ChunkPlan.from_dict(run_info["plan"]) if "plan" in run_info else single_chunk_plan(len(indices))
        check_plan(plan, d.chunk_frames, d.chunk_overlap, len(indices), out_dir)
        if len(plan.chunks) == 1 and (out_dir / RESUME_POINT).exists():
            state = load_checkpoint(out_dir / RESUME_POINT)
        normalization = Normalization.from_dict(run_info["normalization"])
    else:
        mode = mode or "incremental"
        if not resume:
            out_dir = out_dir or default_run_dir(sequence.name)
            chunk_states = sorted(out_dir.glob("state/chunk_*.pt")) if out_dir.is_dir() else []
            out_dir = new_run_dir(
                out_dir,
                force,
                owned=(
                    RESUME_POINT,
                    "metrics.json",
                    RUN_FILE,
                    RESUMES_FILE,
                    *(str(p.relative_to(out_dir)) for p in chunk_states),
                ),
            )
        plan = plan_chunks(len(indices), ranks.world_size, d.chunk_frames, d.chunk_overlap)
        if mode != "incremental":  # every frame starts from scratch: nothing to carry over a boundary
            plan = ChunkPlan(plan.chunk_frames, plan.chunk_overlap, tuple(replace(c, overlap=0) for c in plan.chunks))
        normalization = _run_normalization(sequence, indices, mode, cfg)
    if resume:
        after = int(state["last_index"]) if state is not None else None
        resumed_config(out_dir, cfg, {"after_frame": after, "chunks": len(plan.chunks), "ranks": ranks.world_size})
    else:
        cfg.save(out_dir / "config.json")  # first: from here on the folder is a run that resumes
    run_info = {
        "scene": identity["path"],
        "scene_identity": identity,
        "mode": mode,
        "frames": indices,
        "frame_names": [sequence.frame_names[i] for i in indices],
        "backend": compute.backend,
        "normalization": normalization.to_dict(),
        "keyframe_every": KEYFRAME_EVERY,
        "plan": plan.to_dict(),
        "ranks": ranks.world_size,  # of the latest launch; the plan, not this, decides who trains what
    }
    write_json(out_dir / RUN_FILE, run_info)
    return RunSetup(cfg.to_dict(), out_dir, mode, indices, plan.to_dict(), normalization.to_dict()), state


def _chunk_normalization(
    sequence: DynamicScene, setup: RunSetup, chunk: Chunk, cfg: Config, state: dict | None
) -> Normalization:
    """The normalized frame a chunk trains in: the run's for the first chunk (and in per-frame mode, where
    every frame centres itself); a later chunk's is centred on its own canonical frame, as a run started
    there would be, and kept in its resume point (the masks of a frame far into the sequence may sit near
    a face of the run's cube)."""
    if state is not None and state.get("normalization") is not None:
        return Normalization.from_dict(state["normalization"])
    run_normalization = Normalization.from_dict(setup.normalization)
    if chunk.index == 0 or setup.mode != "incremental":
        return run_normalization
    first = sequence.frames[setup.indices[chunk.train_start]]
    if not cfg.dynamic.center_on_masks:
        return first.normalization
    return centre_on_object(first, load_images(first.train_views, progress=False), first.normalization)


def _train_chunks(
    sequence: DynamicScene,
    setup: RunSetup,
    cfg: Config,
    compute: Compute,
    first_state: dict | None,
    progress: bool,
    ranks: Ranks,
) -> tuple[Path, dict]:
    """This rank's chunks of the plan (their frames after each one's resume point), then the run's metrics
    (rank 0 writes them, with the contact sheet)."""
    out_dir, indices, mode = setup.out_dir, setup.indices, setup.mode
    plan = ChunkPlan.from_dict(setup.plan)
    starts = {indices[c.start] for c in plan.chunks}
    records: list[dict] = []
    trained = False

    position = {k: i for i, k in enumerate(indices)}

    def frame_done(chunk_records: list[dict]) -> None:
        if ranks.distributed:  # the ranks' metrics meet at the end; rank 0's progress bars say the rest
            if not ranks.is_main:
                last = chunk_records[-1]
                log.info(f"frame {last['index']:04d} done in {last['seconds']:.1f} s")
        else:  # a single process knows every frame: metrics.json follows each one, as it always did
            so_far = sorted([*records, *chunk_records], key=lambda r: position[r["index"]])
            write_json(out_dir / "metrics.json", _summary(so_far, mode, compute.backend, starts))

    for chunk in plan.for_rank(ranks.rank, ranks.world_size):
        state_path = plan.state_path(chunk)
        state = first_state if len(plan.chunks) == 1 else None
        if state is None and (out_dir / state_path).exists():
            state = load_checkpoint(out_dir / state_path)
        chunk_records, chunk_trained = _train_chunk(
            sequence, setup, chunk, state_path, state, cfg, compute, progress and ranks.is_main, frame_done
        )
        records.extend(chunk_records)
        trained = trained or chunk_trained

    gathered = gather({"records": records, "trained": trained}, ranks, "the run's metrics were gathered")
    records = sorted((r for g in gathered for r in g["records"]), key=lambda r: position[r["index"]])
    summary = _summary(records, mode, compute.backend, starts)
    if ranks.is_main:
        if not any(g["trained"] for g in gathered):
            log.info(f"the run in {out_dir} is already complete ({len(indices)} frames); nothing to do.")
            if not (out_dir / CONTACT_SHEET).exists():  # a run of an older version, or interrupted here
                write_sequence_sheet(out_dir, records, sequence.frames[indices[0]])
        else:
            write_json(out_dir / "metrics.json", summary)
            write_sequence_sheet(out_dir, records, sequence.frames[indices[0]])
    barrier(ranks, "the run's final files were written")  # every rank returns once the run is complete
    return out_dir, summary


def _train_chunk(
    sequence: DynamicScene,
    setup: RunSetup,
    chunk: Chunk,
    state_path: str,
    state: dict | None,
    cfg: Config,
    compute: Compute,
    progress: bool,
    frame_done,
) -> tuple[list[dict], bool]:
    """One chunk's frames after ``state``'s last finished one; returns the chunk's records and whether it
    trained anything. ``frame_done(record)`` follows every written frame."""
    out_dir, indices = setup.out_dir, setup.indices
    info = {"index": chunk.index, "first_frame": indices[chunk.start], "canonical_frame": indices[chunk.train_start]}
    run = DynamicRun(cfg, compute, out_dir, setup.mode, progress, state_path=state_path, chunk=info)
    normalization = _chunk_normalization(sequence, setup, chunk, cfg, state)
    done = chunk.train_start - 1
    where = f"chunk {chunk.index}: " if chunk.index > 0 or chunk.stop < len(indices) else ""
    if state is not None:
        run.load_state(state)
        done = indices.index(int(state["last_index"]))
        # Resume from what is on disk: the frames up to the first whose outputs are gone (deleted after
        # a damaged one, say) count, the rest is trained again.
        written = [indices[p] for p in range(chunk.start, done + 1)]
        present = next((i for i, k in enumerate(written) if not frame_is_complete(out_dir, k)), len(written))
        if present < len(written):
            missing = ", ".join(f"{k:04d}" for k in written[present:])
            if present == 0:
                log.info(f"{where}frames {missing} are not on disk: the chunk trains again from its start")
                run = DynamicRun(cfg, compute, out_dir, setup.mode, progress, state_path=state_path, chunk=info)
                state, done = None, chunk.train_start - 1
            else:
                log.info(f"{where}frames {missing} are not on disk: continuing after frame {written[present - 1]:04d}")
                run.rewind_to(written[present - 1])
                done = indices.index(written[present - 1])
        if state is not None and done == chunk.stop - 1:
            return run.records, False
        if state is not None:
            log.info(f"{where}resuming after frame {indices[done]:04d}")
    try:
        for pos in range(done + 1, chunk.stop):
            index = indices[pos]
            scene = sequence.frames[index]
            scene.normalization = normalization
            if pos < chunk.start:  # overlap: trained from the chunk's canonical frame on, never written
                run.train_overlap_frame(index, scene, first=(pos == chunk.train_start))
                continue
            record = run.train_frame(index, scene, first=(pos == chunk.train_start))
            run.records.append(record)
            run.save_state(index, normalization)
            frame_done(run.records)
    except (KeyboardInterrupt, TrainingInterrupted):  # the trainer's own says nothing of the chunk's resume point
        point = out_dir / state_path
        raise TrainingInterrupted(point if point.exists() else None, out_dir) from None
    return run.records, True


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
