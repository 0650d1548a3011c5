"""Commands: ``train``, ``train-dynamic``, ``export-mesh``, ``doctor``."""

from __future__ import annotations

import json
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import typer
from rich.console import Console
from rich.text import Text

from neus2cli.cli import app, err_console
from neus2cli.errors import UserError
from neus2cli.signals import sigterm_as_interrupt

if TYPE_CHECKING:  # the command imports the training layer lazily (a fast --help)
    from neus2cli.train.distributed import Ranks

console = Console()

# Every line printed here is a ``Text``: run folders, scene names and the resume command are the
# user's text and print as written ("runs/[v2]"), never as rich markup or emoji codes.


class BackendChoice(str, Enum):
    auto = "auto"
    tcnn = "tcnn"
    torch = "torch"


class MeshFormat(str, Enum):
    ply = "ply"
    obj = "obj"


SET_HELP = "Override a config value, e.g. --set train.steps=500 (repeatable; bare keys work when unique)."


#: The exit status of a run stopped by Ctrl-C or SIGTERM (128 + SIGINT, the shell's convention for Ctrl-C).
INTERRUPTED_EXIT = 130


def _interrupted(err, resume_command: list[str], prefix: str = "") -> None:
    """Say where the interrupted run stands and the command that continues it; exit 130.

    ``prefix``: the rank of a multi-process launch ("rank 1: "), whose processes all print this.
    """
    if err.checkpoint_path is not None:
        where = f"A resumable checkpoint is at {err.checkpoint_path}."
    else:
        where = f"It stopped before its first checkpoint; the run in {err.run_dir} resumes from the start."
    # shlex.join: the command pastes into a shell as it is, whatever spaces or quotes the paths hold.
    err_console.print(
        Text.assemble(prefix, ("Interrupted.", "yellow"), f" {where} Continue with: {shlex.join(resume_command)}"),
        soft_wrap=True,
        highlight=False,
    )
    sys.exit(INTERRUPTED_EXIT)


def _interrupted_before_run() -> None:
    err_console.print(
        "[yellow]Interrupted[/yellow] before the run folder was set up; nothing to resume: run the command again.",
        soft_wrap=True,
        highlight=False,
    )
    sys.exit(INTERRUPTED_EXIT)


@app.command("train", short_help="Reconstruct a static scene (one mesh).")
def train(
    scene: Path | None = typer.Argument(
        None, metavar="SCENE", help="Scene folder or JSON (default: the bundled demo scene)."
    ),
    config: str | None = typer.Option(
        None,
        "--config",
        "-c",
        help="Preset name (base, dtu, unmasked for captures without masks, fast, demo) or a JSON file. "
        "Default: base (demo for the demo scene).",
    ),
    steps: int | None = typer.Option(None, "--steps", help="Training steps (overrides the config)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default outputs/<scene>/<timestamp>)."),
    overrides: list[str] = typer.Option([], "--set", metavar="<key=value>", help=SET_HELP),
    backend: BackendChoice | None = typer.Option(
        None, "--backend", help="Compute path (default from the config: auto)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar (for logs)."),
    bbox: str | None = typer.Option(
        None,
        "--bbox",
        metavar="xmin,ymin,zmin,xmax,ymax,zmax",
        help="The region to reconstruct, world units: it fills the unit cube instead of the scene's own "
        "normalization (a COLMAP scene's automatic box, a JSON's scale/offset).",
    ),
) -> None:
    """Reconstruct a static scene: writes config.json, checkpoint.pt, mesh.ply, metrics.json, renders/.

    With --resume the run keeps its config and its --bbox; --steps, --backend and output options
    (--set output.*) may change and are recorded in the run, anything else is refused.
    """
    # SIGTERM (timeout, schedulers, kill) stops the run as Ctrl-C does: checkpoint, message, exit 130.
    with sigterm_as_interrupt():
        # KeyboardInterrupt is matched first: before the imports below finish, the second name is unbound.
        try:
            from neus2cli.compute import resolve_compute
            from neus2cli.config import ConfigRequest, demo_preset
            from neus2cli.train.run import run_config
            from neus2cli.train.static import train_static
            from neus2cli.train.trainer import TrainingInterrupted

            bbox_world = parse_box(bbox, "--bbox")  # before anything slow: a typo fails at once
            default_preset = "base"
            if scene is None:
                from data_tools import demo_scene_path

                default_preset = demo_preset(resolve_compute(backend.value if backend else "auto").backend)
                err_console.print(f"No scene given: training the bundled demo scene ({default_preset} preset).")
            request = ConfigRequest(
                config,
                tuple(overrides),
                {"train.steps": steps, "backend": backend.value if backend else None},
                default_preset=default_preset,
            )
            cfg = run_config(request, out, resume=resume)
            run_dir, metrics = train_static(
                scene if scene is not None else demo_scene_path(),
                cfg,
                out,
                compute=resolve_compute(cfg.backend),
                resume=resume,
                force=force,
                progress=not no_progress,
                bbox=bbox_world,
            )
        except KeyboardInterrupt:
            _interrupted_before_run()
            return
        except TrainingInterrupted as err:
            given = [str(scene)] if scene is not None else []
            _interrupted(err, ["neus2", "train", *given, "--out", str(err.run_dir), "--resume"])
            return
    summary = {k: metrics[k] for k in ("steps", "train_seconds", "psnr_test", "backend") if k in metrics}
    fields = "  ".join(f"{k}={_fmt(v)}" for k, v in summary.items())
    console.print(Text.assemble(("done", "green"), f" {run_dir}  {fields}"), highlight=False, soft_wrap=True)
    console.print(Text(f"mesh:    {run_dir / 'mesh.ply'}"), highlight=False, soft_wrap=True)
    console.print(Text(f"preview: {run_dir / 'preview.png'}"), highlight=False, soft_wrap=True)


def _fmt(value) -> str:
    if value is None:  # e.g. the seconds per later frame of a run whose frames all start chunks
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def parse_box(text: str | None, option: str) -> np.ndarray | None:
    """``xmin,ymin,zmin,xmax,ymax,zmax`` -> (2, 3) array; ``UserError`` naming ``option`` otherwise."""
    if text is None:
        return None
    usage = f"{option} takes six comma-separated numbers xmin,ymin,zmin,xmax,ymax,zmax (world units)"
    example = f"e.g. {option} -1,-1,-1,1,1,1."
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise UserError(f"{usage}; {text!r} is not a list of numbers, {example}") from None
    if len(vals) != 6:
        raise UserError(f"{usage}; {text!r} has {len(vals)}, {example}")
    box = np.array(vals, dtype=np.float64).reshape(2, 3)
    if not np.isfinite(box).all():
        # float() reads "nan" and "inf"; a NaN bound compares false with everything and would pass
        # every min < max check below, then mesh nothing.
        raise UserError(f"{usage}; {text!r} holds a NaN or infinite value: give finite bounds, {example}")
    for axis, (lo, hi) in zip("xyz", box.T, strict=True):
        if not lo < hi:
            raise UserError(
                f"{usage}; {text!r} has {axis}min {lo:g} >= {axis}max {hi:g}: each min must be below its max."
            )
    return box


@app.command("export-mesh", short_help="Extract a mesh from a run (any resolution, crop, format).")
def export_mesh(
    checkpoint: Path = typer.Argument(
        ..., metavar="CHECKPOINT", help="A checkpoint file, a run folder, or a dynamic run folder with --frame."
    ),
    # A str, not a Path: Path drops the trailing "/" that says "exports/" is a folder to write in.
    out: str | None = typer.Option(
        None,
        "--out",
        "-o",
        metavar="<path>",
        help="Mesh file to write, or a folder to write it in (see above).",
    ),
    resolution: int = typer.Option(512, "--resolution", "-r", min=16, max=2048, help="Marching-cubes lattice size."),
    bbox: str | None = typer.Option(
        None,
        "--bbox",
        help="Region xmin,ymin,zmin,xmax,ymax,zmax in world units, each min below its max (default: the "
        "run's reconstruction box).",
    ),
    fmt: MeshFormat = typer.Option(MeshFormat.ply, "--format", help="Mesh file format (when --out has no suffix)."),
    no_color: bool = typer.Option(False, "--no-color", help="Skip vertex colours."),
    min_component: float = typer.Option(
        0.0,
        "--remove-floaters",
        help="Drop components smaller than this fraction of the largest (0 to 1; 0 keeps all).",
    ),
    frame: int | None = typer.Option(None, "--frame", help="Frame index of a dynamic run."),
    backend: BackendChoice = typer.Option(BackendChoice.auto, "--backend", help="Compute path."),
    textured: bool = typer.Option(
        False,
        "--textured",
        help="Also write STEM.obj (+ .mtl, STEM_texture.png) and STEM.glb with a UV atlas and a texture baked "
        "from the colour network, besides STEM.ply; STEM is --out without its suffix. "
        "Needs the extra neus2cli[texture].",
    ),
    texture_size: int = typer.Option(
        1024, "--texture-size", min=64, max=8192, help="Texture width and height in texels (with --textured)."
    ),
) -> None:
    """Extract a coloured, watertight mesh in the scene's world coordinates.

    --out names the mesh file (.ply or .obj; without a suffix, --format's; an existing file is replaced)
    or a folder to write it in: an existing folder, or a path ending in /, receives
    mesh_<resolution>.<format> (frame_<kkkk>_mesh_<resolution>.<format> for a frame of a dynamic run).
    Without --out the mesh goes beside the checkpoint (a dynamic frame's into frames/<kkkk>/).
    """
    from neus2cli.compute import resolve_compute
    from neus2cli.train.run_mesh import export_run_mesh

    bbox_world = parse_box(bbox, "--bbox")
    if not 0 <= min_component <= 1:  # also NaN, which a range check of typer's lets through
        raise UserError(
            f"--remove-floaters is a fraction of the largest component's size, from 0 (keep all) to 1; "
            f"got {min_component}."
        )
    if textured:
        from neus2cli.train.run_mesh import export_run_textured_mesh

        if no_color:
            raise UserError("--textured bakes the colours into a texture; it cannot be combined with --no-color.")
        paths = export_run_textured_mesh(
            checkpoint,
            out=out,
            resolution=resolution,
            texture_size=texture_size,
            bbox_world=bbox_world,
            min_component_fraction=min_component,
            frame=frame,
            compute=resolve_compute(backend.value),
        )
        for path in paths.values():
            console.print(Text.assemble(("wrote", "green"), f" {path}"), highlight=False, soft_wrap=True)
        return
    path = export_run_mesh(
        checkpoint,
        out=out,
        resolution=resolution,
        bbox_world=bbox_world,
        fmt=fmt.value,
        color=not no_color,
        min_component_fraction=min_component,
        frame=frame,
        compute=resolve_compute(backend.value),
    )
    console.print(Text.assemble(("wrote", "green"), f" {path}"), highlight=False, soft_wrap=True)


@app.command("doctor", short_help="Say which compute path will run, and why.")
def doctor(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Say which compute path `auto` will use, and why."""
    from neus2cli import backends

    report = backends.doctor_report()
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        backends.render_doctor_report(report)


class DynamicMode(str, Enum):
    incremental = "incremental"
    per_frame = "per-frame"


@app.command("train-dynamic", short_help="Reconstruct a multi-view video, one mesh per frame.")
def train_dynamic_cmd(
    scene_dir: Path = typer.Argument(
        ..., metavar="SCENE_DIR", help="Folder of per-frame JSON files (NeuS2 layout), sorted by name."
    ),
    config: str | None = typer.Option(None, "--config", "-c", help="Preset name or JSON file (default: base)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default outputs/<scene>/<timestamp>)."),
    mode: DynamicMode | None = typer.Option(
        None, "--mode", help="incremental (NeuS2, the default) or per-frame; a resumed run keeps its own."
    ),
    frames: str | None = typer.Option(None, "--frames", help="Frame range a:b[:step] (input order)."),
    overrides: list[str] = typer.Option([], "--set", metavar="<key=value>", help=SET_HELP),
    backend: BackendChoice | None = typer.Option(None, "--backend", help="Compute path (default from the config)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out after its last finished frame."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
) -> None:
    """Reconstruct a multi-view video: one mesh and rigid transform per frame.

    With --resume the run keeps its config, mode, frames and chunks; --backend and output options may change.

    Under torchrun (or srun setting RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) the ranks share one run.

    The sequence is cut into chunks (dynamic.chunk_frames; default one per rank), trained at the same time.

    Example: torchrun --nproc-per-node 2 -m neus2cli train-dynamic SCENE_DIR --out RUN
    """
    from neus2cli.train.distributed import SINGLE, RankLost, leave, ranks_from_env

    ranks = SINGLE
    with sigterm_as_interrupt():
        try:  # KeyboardInterrupt first, as in ``train``
            from neus2cli.compute import resolve_compute
            from neus2cli.config import ConfigRequest
            from neus2cli.train.dynamic import train_dynamic
            from neus2cli.train.run import run_config
            from neus2cli.train.trainer import TrainingInterrupted

            ranks = ranks_from_env()
            request = ConfigRequest(config, tuple(overrides), {"backend": backend.value if backend else None})
            cfg = run_config(request, out, resume=resume)
            run_dir, metrics = train_dynamic(
                scene_dir,
                cfg,
                out,
                compute=resolve_compute(cfg.backend),
                mode=mode.value if mode else None,
                frames=frames,
                resume=resume,
                force=force,
                progress=not no_progress,
                ranks=ranks,
            )
        except KeyboardInterrupt:
            _interrupted_before_run()
            return
        except TrainingInterrupted as err:
            _interrupted(err, _resume_dynamic(scene_dir, err.run_dir, ranks), ranks.prefix)
            return
        except RankLost as err:
            resume_with = _resume_dynamic(scene_dir, err.run_dir or out, ranks)
            err_console.print(
                Text.assemble(
                    ("error:", "bold red"),
                    f" {ranks.prefix}{err}. The frames finished so far are saved; continue with: "
                    f"{shlex.join(resume_with)}",
                ),
                soft_wrap=True,
                highlight=False,
            )
            leave(ranks, RANK_LOST_EXIT)
            sys.exit(RANK_LOST_EXIT)  # not reached: a lost rank is always one of several
        except UserError as err:
            if ranks.distributed:  # N processes may print it: say whose it is
                raise UserError(f"{ranks.prefix}{err}") from None
            raise
    if not ranks.is_main:  # rank 0 speaks for the run
        err_console.print(Text(f"{ranks.prefix}done"), highlight=False)
    else:
        timing = (
            f"first={_fmt(metrics['first_frame_seconds'])}s  later={_fmt(metrics['mean_seconds_after_first'])}s/frame"
        )
        console.print(
            Text.assemble(("done", "green"), f" {run_dir}  frames={metrics['n_frames']}  {timing}"),
            highlight=False,
            soft_wrap=True,
        )
        console.print(Text(f"contact sheet: {run_dir / 'contact_sheet.png'}"), highlight=False, soft_wrap=True)
    leave(ranks)


#: The exit status of a rank whose peers stopped before the run finished (its own frames are saved).
RANK_LOST_EXIT = 1


def _resume_dynamic(scene_dir: Path, run_dir: Path | None, ranks: Ranks) -> list[str]:
    """The command that continues a dynamic run: under torchrun again for a multi-process launch (with any
    number of ranks: the run's chunk plan decides who trains what)."""
    command = ["neus2", "train-dynamic", str(scene_dir), "--out", str(run_dir), "--resume"]
    if ranks.distributed:
        return ["torchrun", "--nproc-per-node", str(ranks.local_world_size), "-m", "neus2cli", *command[1:]]
    return command
