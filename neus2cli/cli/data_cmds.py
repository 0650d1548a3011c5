"""Data commands: ``neus2 inspect`` and ``neus2 convert-neus`` (parse, call the library, print).

Everything printed that came from the user (paths, scene names) is a rich ``Text``, so that a
folder called ``scan[v2]`` prints as itself and never as rich markup.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from neus2cli.cli import app
from neus2cli.errors import UserError


def _parse_indices(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise UserError(f"--test-views must be comma-separated view indices such as 8,13,16, got {text!r}.") from None
    if any(v < 0 for v in values):
        raise UserError(f"--test-views indices must be >= 0, got {text!r}.")
    if not values:  # "" or ",": hold out nothing, which --no-split says; refused rather than guessed
        raise UserError(
            f"--test-views names no view ({text!r}). Give indices such as 8,13,16, or --no-split to hold none out."
        )
    return values


@app.command("inspect", short_help="Say what is in a scene, and what is wrong with it.")
def inspect_cmd(
    scene: Path = typer.Argument(
        ...,
        metavar="SCENE",
        help="Scene folder or JSON file (NeuS/IDR, Blender/NGP, NeuS2, COLMAP), or a dynamic-sequence folder.",
    ),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="Also draw the cameras and the unit cube (normalized frame) to this file (.png, .pdf or .svg).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    check: bool = typer.Option(
        False, "--check", help="Decode every image and check sizes and masks (slower; static scenes)."
    ),
    max_views: int = typer.Option(
        24, "--max-views", min=0, help="Views sampled for mask coverage and the content bounds (0: none)."
    ),
) -> None:
    """Summarize a scene: views, resolutions, cameras, normalization, content bounds, warnings."""
    from neus2cli.data.formats_colmap import sparse_points
    from neus2cli.data.inspect import (
        check_plot_path,
        describe_dynamic_scene,
        describe_scene,
        plot_cameras,
        render_description,
    )
    from neus2cli.data.loader import is_dynamic_dir, load_dynamic_scene, load_scene
    from neus2cli.data.validate import validate_scene

    if plot is not None:
        check_plot_path(plot)  # before reading any image
    progress = not as_json
    if is_dynamic_dir(scene):
        dynamic = load_dynamic_scene(scene)
        desc = describe_dynamic_scene(dynamic, max_views=max_views, progress=progress)
        first = dynamic.frames[0]
    else:
        first = load_scene(scene)
        if check:
            first.warnings = validate_scene(first, progress=progress)
        desc = describe_scene(first, max_views=max_views, progress=progress)
    if plot is not None:
        sparse = sparse_points(first.root) if first.format == "colmap" else None
        desc["plot"] = str(plot_cameras(first, plot, sparse=sparse))
    if as_json:
        typer.echo(json.dumps(desc, indent=2))
    else:
        console = Console()
        console.print(render_description(desc))
        if plot is not None:
            console.print(Text(f"camera plot written to {desc['plot']}"), highlight=False, soft_wrap=True)


@app.command("convert-neus", short_help="Convert a NeuS/IDR folder to the NeuS2 JSON format.")
def convert_neus_cmd(
    src: Path = typer.Argument(..., metavar="SRC", help="NeuS/IDR folder: cameras_sphere.npz, image/, mask/."),
    dst: Path = typer.Argument(
        ..., metavar="DST", help="Output folder for the NeuS2 JSON scene (must be new or empty)."
    ),
    test_views: str | None = typer.Option(
        None,
        "--test-views",
        help="Comma-separated view indices for transform_test.json [default: NeuS2's DTU test views "
        "8,13,16,21,26,31,34,56, those that exist].",
        show_default=False,
    ),
    no_split: bool = typer.Option(
        False, "--no-split", help="Put every view in transform_train.json and write no test file."
    ),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty DST, replacing our files."),
) -> None:
    """Convert a NeuS/IDR folder to NeuS2 format (RGBA images with the mask in alpha, OpenCV poses).

    The output is built beside DST and moved into place at the end: a failed conversion leaves DST as it was.
    """
    from neus2cli.data.convert import convert_neus

    indices = None if test_views is None else _parse_indices(test_views)
    paths = convert_neus(src, dst, test_views=indices, split=not no_split, overwrite=force)
    jsons = [p for p in paths if p.suffix == ".json"]
    Console().print(
        Text(f"wrote {len(paths) - len(jsons)} images and {', '.join(p.name for p in jsons)} to {dst}"),
        highlight=False,
        soft_wrap=True,
    )
