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
from rich.markup import escape

from neus2cli.cli import app, err_console
from neus2cli.errors import UserError
from neus2cli.signals import sigterm_as_interrupt

if TYPE_CHECKING:  # the command imports the training layer lazily (a fast --help)
    from neus2cli.train.distributed import Ranks

console = Console()


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
        f"{escape(prefix)}[yellow]Interrupted.[/yellow] {escape(where)} "
        f"Continue with: {escape(shlex.join(resume_command))}",
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


@app.command("train")
def train(
    scene: Path | None = typer.Argument(None, help="Scene folder or JSON (default: the bundled demo scene)."),
    config: str | None = typer.Option(
        None,
        "--config",
        "-c",
        help="Preset name (base, dtu, fast, demo) or a JSON file. Default: base (demo for the demo scene).",
    ),
    steps: int | None = typer.Option(None, "--steps", help="Training steps (overrides the config)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default outputs/<scene>/<timestamp>)."),
    overrides: list[str] = typer.Option([], "--set", help=SET_HELP),
    backend: BackendChoice | None = typer.Option(
        None, "--backend", help="Compute path (default from the config: auto)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar (for logs)."),
) -> None:
    """Reconstruct a static scene: writes config.json, checkpoint.pt, mesh.ply, metrics.json, renders/.

    With --resume the run keeps its config; --steps, --backend and output options (--set output.*)
    may change and are recorded in the run, anything else is refused.
    """
    # SIGTERM (timeout, schedulers, kill) stops the run as Ctrl-C does: checkpoint, message, exit 130.
    with sigterm_as_interrupt():
        # KeyboardInterrupt is matched first: before the imports below finish, the second name is unbound.
        try:
            from neus2cli.compute import resolve_compute
            from neus2cli.config import ConfigRequest
            from neus2cli.train.run import run_config
            from neus2cli.train.static import train_static
            from neus2cli.train.trainer import TrainingInterrupted

            if scene is None:
                from data_tools import demo_scene_path

                err_console.print("No scene given: training the bundled demo scene.")
            request = ConfigRequest(
                config,
                tuple(overrides),
                {"train.steps": steps, "backend": backend.value if backend else None},
                default_preset="base" if scene is not None else "demo",
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
            )
        except KeyboardInterrupt:
            _interrupted_before_run()
            return
        except TrainingInterrupted as err:
            given = [str(scene)] if scene is not None else []
            _interrupted(err, ["neus2", "train", *given, "--out", str(err.run_dir), "--resume"])
            return
    summary = {k: metrics[k] for k in ("steps", "train_seconds", "psnr_test", "backend") if k in metrics}
    console.print(f"[green]done[/green] {run_dir}  " + "  ".join(f"{k}={_fmt(v)}" for k, v in summary.items()))
    console.print(f"mesh:    {escape(str(run_dir / 'mesh.ply'))}")
    console.print(f"preview: {escape(str(run_dir / 'preview.png'))}")


def _fmt(value) -> str:
    if value is None:  # e.g. the seconds per later frame of a run whose frames all start chunks
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _parse_bbox(text: str | None) -> np.ndarray | None:
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        vals = []
    if len(vals) != 6 or any(vals[i] >= vals[i + 3] for i in range(3)):
        raise UserError(
            f"--bbox must be six numbers xmin,ymin,zmin,xmax,ymax,zmax (world units) with min < max, got '{text}'."
        )
    return np.array(vals, dtype=np.float64).reshape(2, 3)


@app.command("export-mesh")
def export_mesh(
    checkpoint: Path = typer.Argument(
        ..., help="A checkpoint file, a run folder, or a dynamic run folder with --frame."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Mesh file to write (default next to the checkpoint)."),
    resolution: int = typer.Option(512, "--resolution", "-r", min=16, max=2048, help="Marching-cubes lattice size."),
    bbox: str | None = typer.Option(None, "--bbox", help="Region xmin,ymin,zmin,xmax,ymax,zmax in world units."),
    fmt: MeshFormat = typer.Option(MeshFormat.ply, "--format", help="Mesh file format (when --out has no suffix)."),
    no_color: bool = typer.Option(False, "--no-color", help="Skip vertex colours."),
    min_component: float = typer.Option(
        0.0,
        "--remove-floaters",
        help="Drop components smaller than this fraction of the largest (0 keeps all).",
    ),
    frame: int | None = typer.Option(None, "--frame", help="Frame index of a dynamic run."),
    backend: BackendChoice = typer.Option(BackendChoice.auto, "--backend", help="Compute path."),
) -> None:
    """Extract a coloured, watertight mesh in the scene's world coordinates."""
    from neus2cli.compute import resolve_compute
    from neus2cli.train.run_mesh import export_run_mesh

    path = export_run_mesh(
        checkpoint,
        out=out,
        resolution=resolution,
        bbox_world=_parse_bbox(bbox),
        fmt=fmt.value,
        color=not no_color,
        min_component_fraction=min_component,
        frame=frame,
        compute=resolve_compute(backend.value),
    )
    console.print(f"[green]wrote[/green] {path}")


@app.command("doctor")
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


@app.command("train-dynamic")
def train_dynamic_cmd(
    scene_dir: Path = typer.Argument(..., help="Folder of per-frame JSON files (NeuS2 layout), sorted by name."),
    config: str | None = typer.Option(None, "--config", "-c", help="Preset name or JSON file (default: base)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default outputs/<scene>/<timestamp>)."),
    mode: DynamicMode | None = typer.Option(
        None, "--mode", help="incremental (NeuS2, the default) or per-frame; a resumed run keeps its own."
    ),
    frames: str | None = typer.Option(None, "--frames", help="Frame range a:b[:step] (input order)."),
    overrides: list[str] = typer.Option([], "--set", help=SET_HELP),
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
                f"[bold red]error:[/bold red] {escape(ranks.prefix)}{escape(str(err))}. The frames finished so far "
                f"are saved; continue with: {escape(shlex.join(resume_with))}",
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
        err_console.print(f"{escape(ranks.prefix)}done", highlight=False)
    else:
        console.print(
            f"[green]done[/green] {run_dir}  frames={metrics['n_frames']}  "
            f"first={_fmt(metrics['first_frame_seconds'])}s  later={_fmt(metrics['mean_seconds_after_first'])}s/frame"
        )
        console.print(f"contact sheet: {escape(str(run_dir / 'contact_sheet.png'))}")
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
