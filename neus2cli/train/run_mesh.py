"""`neus2 export-mesh`: a mesh file from a static checkpoint or a frame of a dynamic run (run-level export)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from neus2cli.compute import Compute
from neus2cli.data.scene import Normalization
from neus2cli.errors import UserError
from neus2cli.export.mesh import save_mesh
from neus2cli.export.texture import bake_texture, import_xatlas, save_textured_mesh, textured_mesh
from neus2cli.train.checkpoint import field_from_checkpoint, find_checkpoint, load_checkpoint
from neus2cli.train.frames import field_for_frame, frame_dir
from neus2cli.train.outputs import TrainedField, field_color_fn, mesh_of_field


def _run_field(
    checkpoint: Path, frame: int | None, compute: Compute
) -> tuple[TrainedField, Normalization, np.ndarray | None, Path]:
    """The field to mesh, its normalization, the 4x4 canonical -> frame world matrix (dynamic runs,
    else None), and the folder default outputs go to."""
    if frame is not None or (checkpoint.is_dir() and (checkpoint / "frames").is_dir()):
        if frame is None:
            raise UserError("this is a dynamic run: say which frame to export with --frame k.", path=checkpoint)
        field, normalization, world_from_canonical = field_for_frame(checkpoint, frame, compute)
        return field, normalization, world_from_canonical, frame_dir(checkpoint, frame)
    ckpt = load_checkpoint(checkpoint)
    field = field_from_checkpoint(ckpt, compute)
    return field, Normalization.from_dict(ckpt["normalization"]), None, find_checkpoint(checkpoint).parent


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
    out: Path | None = None,
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
        bbox_world: optional (2, 3) region in world units (default: the normalized unit cube).
    """
    checkpoint = Path(checkpoint)
    field, normalization, world_from_canonical, folder = _run_field(checkpoint, frame, compute)
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
    out = Path(out) if out is not None else folder / f"mesh_{resolution}.{fmt}"
    if out.suffix == "":
        out = out.with_suffix(f".{fmt}")
    if out.suffix.lower() not in (".ply", ".obj"):
        raise UserError("the mesh file must end in .ply or .obj.", path=out)
    return save_mesh(mesh, out)


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
    folder). The texture (``texture_size`` squared texels) is baked in the field's normalized
    (canonical) frame with the colour function of the vertex colours; a dynamic frame's meshes are
    then moved into that frame's world. Returns the paths by kind ("ply", "obj", "mtl", "png", "glb").
    """
    import_xatlas()  # before minutes of meshing: a missing extra is reported first
    checkpoint = Path(checkpoint)
    if out is not None and Path(out).suffix.lower() not in ("", ".ply", ".obj", ".glb"):
        raise UserError(
            "with --textured, --out names the files' common stem (a suffix of .ply, .obj or .glb is dropped).",
            path=out,
        )
    field, normalization, world_from_canonical, folder = _run_field(checkpoint, frame, compute)
    stem = Path(out).with_suffix("") if out is not None else folder / f"mesh_{resolution}"
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
