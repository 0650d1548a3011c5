"""`neus2 export-mesh`: a mesh file from a static checkpoint or a frame of a dynamic run (run-level export)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import trimesh

from neus2cli.compute import Compute
from neus2cli.data.scene import Normalization
from neus2cli.errors import UserError
from neus2cli.export.mesh import save_mesh
from neus2cli.export.texture import bake_texture, import_xatlas, save_textured_mesh, textured_mesh
from neus2cli.io import check_writable
from neus2cli.train.checkpoint import field_from_checkpoint, find_checkpoint, load_checkpoint
from neus2cli.train.frames import field_for_frame, frame_dir
from neus2cli.train.outputs import TrainedField, field_color_fn, mesh_of_field


def names_folder(out: str | Path) -> bool:
    """``--out`` names a folder to write in: an existing one, or a path written with a trailing separator
    (``exports/``), which a bare suffix-less name (``exports``, a file) is not."""
    return str(out).endswith(("/", os.sep)) or Path(out).is_dir()


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
    elif names_folder(out):
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


def _is_dynamic(checkpoint: Path, frame: int | None) -> bool:
    """A frame of a dynamic run is asked for; ``UserError`` for a dynamic run folder without ``frame``."""
    dynamic = frame is not None or (checkpoint.is_dir() and (checkpoint / "frames").is_dir())
    if dynamic and frame is None:
        raise UserError("this is a dynamic run: say which frame to export with --frame k.", path=checkpoint)
    return dynamic


def _output_names(checkpoint: Path, frame: int | None, stem: str) -> tuple[Path, str]:
    """(default folder, file stem inside a folder given as --out) of an export: beside the checkpoint,
    or in the frame's folder; a frame exported into a shared folder is prefixed so frames do not collide."""
    if _is_dynamic(checkpoint, frame):
        return frame_dir(checkpoint, frame), f"frame_{frame:04d}_{stem}"
    return find_checkpoint(checkpoint).parent, stem


def _run_field(
    checkpoint: Path, frame: int | None, compute: Compute
) -> tuple[TrainedField, Normalization, np.ndarray | None]:
    """The field to mesh, its normalization and the 4x4 canonical -> frame world matrix (dynamic runs,
    else None)."""
    if _is_dynamic(checkpoint, frame):
        return field_for_frame(checkpoint, frame, compute)
    ckpt = load_checkpoint(checkpoint)
    field = field_from_checkpoint(ckpt, compute)
    return field, Normalization.from_dict(ckpt["normalization"]), None


def _field_mesh(
    checkpoint: Path,
    field: TrainedField,
    normalization: Normalization,
    *,
    resolution: int,
    bbox_world: np.ndarray | None,
    color: bool,
    min_component_fraction: float,
) -> trimesh.Trimesh:
    """Marching cubes of ``field`` in the (canonical) world frame; an empty mesh is a ``UserError``."""
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
    if len(mesh.faces) == 0:
        raise UserError(
            "the SDF has no zero crossing in the export region, so the mesh is empty.",
            path=checkpoint,
            hint="Check --bbox (world units), or train longer.",
        )
    return mesh


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
    folder, stem = _output_names(checkpoint, frame, f"mesh_{resolution}")
    path = mesh_path(out, default=folder / f"mesh_{resolution}.{fmt}", name=f"{stem}.{fmt}", fmt=fmt)
    field, normalization, world_from_canonical = _run_field(checkpoint, frame, compute)
    mesh = _field_mesh(
        checkpoint,
        field,
        normalization,
        resolution=resolution,
        bbox_world=bbox_world,
        color=color,
        min_component_fraction=min_component_fraction,
    )
    if world_from_canonical is not None:
        mesh.apply_transform(world_from_canonical)
    return save_mesh(mesh, path)


def export_run_textured_mesh(
    checkpoint: str | Path,
    *,
    compute: Compute,
    out: Path | None = None,
    resolution: int = 512,
    texture_size: int = 1024,
    bbox_world: np.ndarray | None = None,
    min_component_fraction: float = 0.0,
    frame: int | None = None,
) -> dict[str, Path]:
    """Write the vertex-coloured PLY plus a UV-mapped OBJ (+ MTL + PNG) and GLB, all in the world frame.

    The files are STEM.ply, STEM.obj, STEM.mtl, STEM_texture.png and STEM.glb, STEM being ``out``
    without its suffix (default ``mesh_<resolution>`` next to the checkpoint or in the frame's
    folder; an existing folder, or a path ending in a separator, receives them under that name).
    The texture (``texture_size`` squared texels) is baked in the field's normalized (canonical)
    frame with the colour function of the vertex colours; a dynamic frame's meshes are then moved
    into that frame's world. Returns the paths by kind ("ply", "obj", "mtl", "png", "glb").
    """
    import_xatlas()  # before minutes of meshing: a missing extra is reported first
    checkpoint = Path(checkpoint)
    if out is not None and Path(out).suffix.lower() not in ("", ".ply", ".obj", ".glb"):
        raise UserError(
            "with --textured, --out names the files' common stem (a suffix of .ply, .obj or .glb is dropped).",
            path=out,
        )
    folder, name = _output_names(checkpoint, frame, f"mesh_{resolution}")
    if out is None:
        stem = folder / f"mesh_{resolution}"
    elif names_folder(out):
        stem = Path(out) / name
    else:
        stem = Path(out).with_suffix("")
    for suffix in (".ply", ".obj", ".glb"):  # before minutes of meshing and baking
        check_writable(stem.with_name(stem.name + suffix), "--out")
    field, normalization, world_from_canonical = _run_field(checkpoint, frame, compute)
    mesh = _field_mesh(
        checkpoint,
        field,
        normalization,
        resolution=resolution,
        bbox_world=bbox_world,
        color=True,
        min_component_fraction=min_component_fraction,
    )
    baked = bake_texture(
        normalization.world_to_normalized(np.asarray(mesh.vertices)),
        mesh.faces,
        field_color_fn(field),
        size=texture_size,
        device=compute.device,
    )
    textured = textured_mesh(np.asarray(mesh.vertices), baked, name=stem.name)
    if world_from_canonical is not None:
        mesh.apply_transform(world_from_canonical)
        textured.apply_transform(world_from_canonical)
    paths = {"ply": save_mesh(mesh, stem.with_name(stem.name + ".ply"))}
    paths.update(save_textured_mesh(textured, stem))
    return paths
