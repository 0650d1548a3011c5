"""`neus2 export-mesh`: a mesh file from a static checkpoint or a frame of a dynamic run (run-level export)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neus2cli.compute import Compute
from neus2cli.data.scene import Normalization
from neus2cli.errors import UserError
from neus2cli.export.mesh import save_mesh
from neus2cli.train.checkpoint import field_from_checkpoint, find_checkpoint, load_checkpoint
from neus2cli.train.frames import field_for_frame, frame_dir
from neus2cli.train.outputs import mesh_of_field


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
    if frame is not None or (checkpoint.is_dir() and (checkpoint / "frames").is_dir()):
        if frame is None:
            raise UserError("this is a dynamic run: say which frame to export with --frame k.", path=checkpoint)
        field, normalization, world_from_canonical = field_for_frame(checkpoint, frame, compute)
        default_out = frame_dir(checkpoint, frame) / f"mesh_{resolution}.{fmt}"
    else:
        ckpt = load_checkpoint(checkpoint)
        field = field_from_checkpoint(ckpt, compute)
        normalization = Normalization.from_dict(ckpt["normalization"])
        world_from_canonical = None
        default_out = find_checkpoint(checkpoint).parent / f"mesh_{resolution}.{fmt}"

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
    out = Path(out) if out is not None else default_out
    if out.suffix == "":
        out = out.with_suffix(f".{fmt}")
    if out.suffix.lower() not in (".ply", ".obj"):
        raise UserError("the mesh file must end in .ply or .obj.", path=out)
    return save_mesh(mesh, out)
