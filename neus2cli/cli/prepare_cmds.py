"""Command ``neus2 prepare``: photos -> a posed COLMAP scene (structure from motion with pycolmap)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from neus2cli.cli import app


@app.command("prepare", short_help="Pose photos with structure from motion into a COLMAP scene.")
def prepare_cmd(
    photos_dir: Path = typer.Argument(..., help="Folder of photos (.png, .jpg) of the object from all around."),
    out: Path = typer.Argument(..., help="Scene folder to create (new or empty): images/, sparse/0/, database.db."),
    camera_model: str = typer.Option(
        "SIMPLE_RADIAL",
        "--camera-model",
        help="COLMAP camera model: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL or OPENCV (wide lenses).",
    ),
    max_image_size: int = typer.Option(
        3200, "--max-image-size", min=100, help="Longest side photos are scaled to for feature extraction."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="Print no progress lines."),
) -> None:
    """Pose photos by structure from motion (pycolmap; needs the extra neus2cli[colmap]) and write a COLMAP scene
    that `neus2 train OUT` and `neus2 inspect OUT` read."""
    from neus2cli.data.prepare import prepare_scene

    result = prepare_scene(
        photos_dir, out, camera_model=camera_model, max_image_size=max_image_size, progress=not no_progress
    )
    Console().print(
        Text(
            f"posed {result.registered} of {result.photos} photos, {result.points} points, mean reprojection "
            f"error {result.reprojection_error:.2f} px; wrote {result.out} (next: neus2 inspect {result.out})"
        ),
        highlight=False,
        soft_wrap=True,
    )
