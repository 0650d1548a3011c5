"""`neus2 export-mesh`: a mesh file from a static checkpoint or a frame of a dynamic run (run-level export)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from neus2cli.compute import Compute
from neus2cli.data.scene import Normalization
from neus2cli.errors import UserError
from neus2cli.export.mesh import save_mesh
from neus2cli.io import check_writable
from neus2cli.train.checkpoint import field_from_checkpoint, find_checkpoint, load_checkpoint
from neus2cli.train.frames import field_for_frame, frame_dir
from neus2cli.train.outputs import mesh_of_field


def mesh_path(out: str | Path | None, *, default: Path, name: str, fmt: str) -> Path:
    """The file ``export-mesh --out OUT`` writes, checked before any work (loading, meshing).

    No ``out``: ``default``. An existing folder, or a path written with a trailing separator
    (``exports/``), receives the file as ``name``: writing the mesh beside the folder as
    ``exports.ply``, as a bare suffix-less name would, is not what naming a folder asks for.
    Otherwise ``out`` is the file, with ``.fmt`` added when it has no suffix. ``UserError`` for a
    suffix other than .ply/.obj, a path that is a folder, or a location that cannot be written.
    """
    if out is None:
        path = default
    elif str(out).endswith(("/", os.sep)) or Path(out).is_dir():
        path = Path(out) / name
    else:
        path = Path(out)
        if path.suffix == "":
            path = path.with_suffix(f".{fmt}")
    if path.suffix.lower() not in (".ply", ".obj"):
        raise UserError(
            "--out: the mesh file must end in .ply or .obj.",
            path=path,
            hint="Name a .ply or .obj file, or an existing folder to write the mesh in.",
        )
    if path.is_dir():
        raise UserError(
            "--out: is a folder, not a mesh file.",
            path=path,
            hint="Name another file with --out, or remove that folder.",
        )
    check_writable(path, "--out")
    return path


def export_run_mesh(
    checkpoint: str | Path,
    *,
    compute: Compute,
    out: str | Path | None = None,
    resolution: int = 512,
    bbox_world: np.ndarray | None = None,
    fmt: str = "ply",
    color: bool = True,
    min_component_fraction: float = 0.0,
    frame: int | None = None,
) -> Path:
    """Write one mesh file (world frame) and return its path.

    Args:
        checkpoint: a ``checkpoint.*`` file or a run folder; a dynamic run folder needs ``frame``.
        out: the mesh file, or a folder to write ``mesh_<resolution>.<fmt>`` in (a dynamic frame:
            ``frame_<kkkk>_mesh_<resolution>.<fmt>``); see ``mesh_path``. Default: beside the
            checkpoint, ``mesh_<resolution>.<fmt>`` (a dynamic frame: in its frame folder).
        bbox_world: optional (2, 3) region in world units (default: the normalized unit cube).
    """
    checkpoint = Path(checkpoint)
    dynamic = frame is not None or (checkpoint.is_dir() and (checkpoint / "frames").is_dir())
    if dynamic and frame is None:
        raise UserError("this is a dynamic run: say which frame to export with --frame k.", path=checkpoint)
    name = f"mesh_{resolution}.{fmt}"
    if dynamic:
        default = frame_dir(checkpoint, frame) / name
        name = f"frame_{frame:04d}_{name}"  # frames exported into one folder must not collide
    else:
        default = find_checkpoint(checkpoint).parent / name
    path = mesh_path(out, default=default, name=name, fmt=fmt)

    if dynamic:
        field, normalization, world_from_canonical = field_for_frame(checkpoint, frame, compute)
    else:
        ckpt = load_checkpoint(checkpoint)
        field = field_from_checkpoint(ckpt, compute)
        normalization = Normalization.from_dict(ckpt["normalization"])
        world_from_canonical = None

    bbox = None
    if bbox_world is not None:
        bbox = normalization.world_to_normalized(np.asarray(bbox_world, dtype=np.float64).reshape(2, 3))
    mesh = mesh_of_field(
        field,
        normalization,
        resolution=resolution,
        color=color,
        bbox=bbox,
        min_component_fraction=min_component_fraction,
    )
    if world_from_canonical is not None:
        mesh.apply_transform(world_from_canonical)
    if len(mesh.faces) == 0:
        raise UserError(
            "the SDF has no zero crossing in the export region, so the mesh is empty.",
            path=checkpoint,
            hint="Check --bbox (world units), or train longer.",
        )
    return save_mesh(mesh, path)
