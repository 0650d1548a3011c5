"""``neus2 evaluate``: geometry metrics of a mesh, or image metrics of a training run.

The command only parses and validates; the work is in ``neus2cli.eval``
(imported inside the command so that ``neus2 --help`` stays fast).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.text import Text

from neus2cli.cli import app, err_console
from neus2cli.errors import UserError
from neus2cli.io import check_writable

GEOMETRY_HELP = (
    "Score a reconstruction.\n\n"
    "TARGET is a predicted mesh or point cloud, scored against --gt (or DTU's official files with "
    "--dtu-official DIR --scan N), or a training run folder (one holding checkpoint.*), whose held-out "
    "views are rendered and scored with PSNR and SSIM.\n\n"
    "Geometry: accuracy = mean distance pred -> GT, completeness = GT -> pred, Chamfer-L1 = their mean, "
    "F-score at each --threshold, normal consistency. Meshes are sampled uniformly by area; distances "
    "are in the GT's units."
)


@contextmanager
def _progress(enabled: bool) -> Iterator:
    """Progress on stderr (stdout stays clean for --json): a live bar on a terminal, plain lines every few
    seconds elsewhere (``neus2cli.progress``); yields the ``on_progress(stage, fraction)`` callback."""
    if not enabled:
        yield None
        return
    from neus2cli.progress import ProgressReporter

    with ProgressReporter(100, "evaluating (%)", console=err_console, transient=True) as bar:
        yield bar.report_fraction


# GeometryOptions' fields named as this command's options, where the two differ.
_OPTION_OF_FIELD = {"thresholds": "--threshold"}


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise UserError(f"{name} must be a positive number, got {value}.")


@app.command(
    "evaluate", help=GEOMETRY_HELP, short_help="Score a mesh against a ground truth, or a run's held-out views."
)
def evaluate(
    target: Path = typer.Argument(
        ..., metavar="TARGET", help="Predicted mesh / point cloud, or a training run folder."
    ),
    gt: Path | None = typer.Option(
        None, "--gt", help="Ground-truth mesh (sampled by area) or point cloud (PLY/XYZ/NPY, used as is)."
    ),
    threshold: list[float] | None = typer.Option(
        None,
        "--threshold",
        "-t",
        metavar="<float>",  # one value per use, not a list
        help="F-score threshold in GT units; repeat for several. Default: 1% of the GT bounding-box "
        "diagonal (1 mm with --dtu-official).",
    ),
    n_points: int | None = typer.Option(
        None, "--n-points", help="Points sampled on each mesh (default 200000, unless --density)."
    ),
    density: float | None = typer.Option(None, "--density", help="Points per unit area on each mesh instead."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (pred: seed, GT: seed + 1)."),
    clip: float | None = typer.Option(
        None,
        "--clip",
        help="Clip distances above this before averaging accuracy and completeness (also stops the "
        "nearest-neighbour search there: much faster when the prediction has far-off floaters).",
    ),
    crop: tuple[float, float, float, float, float, float] | None = typer.Option(
        None,
        "--crop",
        metavar="XMIN YMIN ZMIN XMAX YMAX ZMAX",
        help="Only score points inside this box (GT units, after --scale-mat).",
    ),
    scale_mat: Path | None = typer.Option(
        None,
        "--scale-mat",
        help="cameras_sphere.npz: map the prediction from NeuS's unit-sphere frame to world units "
        "with scale_mat_0 (x_world = S[:3,:3] @ x + S[:3,3]).",
    ),
    scale_mat_index: int = typer.Option(0, "--scale-mat-index", help="Use scale_mat_<i> instead of scale_mat_0."),
    downsample: float | None = typer.Option(
        None,
        "--downsample",
        help="Thin both samples to this point spacing (GT units), e.g. 0.2 for DTU millimetres. "
        "With --dtu-official: default 0.2, 0 disables.",
    ),
    downsample_method: str | None = typer.Option(
        None, "--downsample-method", help="'voxel' (default, fast) or 'radius' (greedy, as DTU's script)."
    ),
    dtu_official: Path | None = typer.Option(
        None,
        "--dtu-official",
        help="Folder with DTU's ObsMask/ObsMask{N}_10.mat, ObsMask/Plane{N}.mat and "
        "Points/stl/stl{NNN}_total.ply: use the official protocol (needs --scan).",
    ),
    scan: int | None = typer.Option(None, "--scan", help="DTU scan number for --dtu-official."),
    max_dist: float = typer.Option(
        20.0,
        "--max-dist",
        help="--dtu-official: distances of this many mm or more are left out of the means.",
    ),
    units: str | None = typer.Option(
        None, "--units", help="Name of the GT's units for the report (default 'GT units'; 'mm' for DTU)."
    ),
    no_check_units: bool = typer.Option(
        False,
        "--no-check-units",
        help="Compare even if the bounding boxes differ >10x in size or do not overlap.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of a table."),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="Write the prediction as a PLY coloured by distance to the GT (red: >= largest threshold).",
    ),
) -> None:
    if not target.exists():
        raise UserError(
            "does not exist.",
            path=target,
            hint="Pass a mesh or point-cloud file (with --gt or --dtu-official), or the folder of a training run.",
        )
    if target.is_file() and (target.name.startswith("checkpoint.") or target.suffix == ".pt"):
        raise UserError(
            "is a training checkpoint, not a mesh.",
            path=target,
            hint=f"Score the run's held-out views with `neus2 evaluate {target.parent}`, or extract a mesh with "
            "`neus2 export-mesh` and score that with --gt.",
        )
    if target.is_dir():
        if gt is not None or dtu_official is not None:
            raise UserError(
                "is a folder (a training run), which is scored with image metrics; --gt and --dtu-official "
                "apply to a mesh file.",
                path=target,
            )
        _evaluate_run(target, json_out)
        return

    from neus2cli.eval.geometry import GeometryOptions, InvalidOption

    _positive("--max-dist", max_dist)
    if plot is not None and plot.suffix.lower() != ".ply":
        raise UserError("--plot must name a .ply file (it stores per-vertex colours).", path=plot)
    if plot is not None:
        if plot.is_dir():
            raise UserError("--plot: is a folder, not a file.", path=plot, hint="Name a .ply file to write.")
        check_writable(plot, "--plot")  # before the evaluation, not after it

    try:
        options = GeometryOptions(
            thresholds=threshold or None,
            n_points=n_points,
            density=density,
            seed=seed,
            clip=clip,
            crop=None if crop is None else [crop[:3], crop[3:]],
            scale_mat=scale_mat,
            scale_mat_index=scale_mat_index,
            downsample=downsample,
            downsample_method=downsample_method,
            check_units=not no_check_units,
            units=units or ("mm" if dtu_official is not None else "GT units"),
            plot=plot,
        )
    except InvalidOption as exc:  # the library checks the ranges; name the option as typed here
        flags = [_OPTION_OF_FIELD.get(f, "--" + f.replace("_", "-")) for f in exc.fields]
        raise UserError(f"{' and '.join(flags)} {exc.reason}.") from None

    if dtu_official is not None:
        if scan is None:
            raise UserError("--dtu-official needs --scan N (the DTU scan number).")
        if gt is not None or crop is not None or clip is not None:
            raise UserError(
                "--gt, --crop and --clip do not apply with --dtu-official: the protocol uses the STL points, "
                "the observation mask and --max-dist."
            )
        from neus2cli.eval.dtu import evaluate_dtu_official

        with _progress(True) as cb:
            metrics = evaluate_dtu_official(target, dtu_official, scan, options, max_dist=max_dist, on_progress=cb)
    else:
        if gt is None:
            raise UserError(
                "needs a ground truth: pass --gt GT_MESH_OR_POINTS, or --dtu-official DIR --scan N.",
                path=target,
            )
        from neus2cli.eval.geometry import evaluate_geometry

        with _progress(True) as cb:
            metrics = evaluate_geometry(target, gt, options, on_progress=cb)

    from neus2cli.eval.report import geometry_table, to_json

    if json_out:
        sys.stdout.write(to_json(metrics.to_dict()) + "\n")
    else:
        from rich.console import Console

        Console().print(geometry_table(metrics))
        if plot is not None:
            err_console.print(Text(f"error plot written to {plot}"), highlight=False, soft_wrap=True)


def _evaluate_run(run_dir: Path, json_out: bool) -> None:
    """Render the run's held-out views and print their image metrics."""
    if not any(run_dir.glob("checkpoint.*")):
        raise UserError(
            "is a folder without a checkpoint.* file.",
            path=run_dir,
            hint="Pass a mesh file (with --gt) or the output folder of `neus2 train`.",
        )
    from neus2cli.compute import resolve_compute
    from neus2cli.eval.images import evaluate_images
    from neus2cli.eval.report import images_table, to_json
    from neus2cli.train.static import render_test_views

    views = render_test_views(run_dir, resolve_compute("auto"))
    result = evaluate_images(
        [v["pred"] for v in views],
        [v["gt"] for v in views],
        [v.get("mask") for v in views] if all(v.get("mask") is not None for v in views) else None,
        [v["name"] for v in views],
    )
    if json_out:
        sys.stdout.write(to_json(result) + "\n")
    else:
        from rich.console import Console

        Console().print(images_table(result))
