"""``python -m data_tools static|dynamic MESH OUT [options]`` and ``to-colmap SCENE OUT``: thin typer front end."""

from __future__ import annotations

import shlex
import sys
import textwrap
from enum import Enum
from pathlib import Path

import typer

from neus2cli.errors import UserError

app = typer.Typer(
    name="data_tools",
    help="Render meshes into synthetic NeuS2 / Blender scenes with known geometry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class Layout(str, Enum):
    sphere = "sphere"
    ring = "ring"


class Convention(str, Enum):
    neus2 = "neus2"
    blender = "blender"


class CameraModel(str, Enum):
    auto = "auto"
    PINHOLE = "PINHOLE"
    OPENCV = "OPENCV"


class Deform(str, Enum):
    none = "none"
    bend = "bend"
    twist = "twist"


def parse_size(size: str) -> tuple[int, int]:
    """ "WxH" -> (W, H); a single number means a square image."""
    try:
        parts = [int(p) for p in size.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 8:
        raise UserError(f"--size must look like 128x96 (each side >= 8), got {size!r}.")
    return parts[0], parts[1]


def parse_vec3(text: str, option: str) -> tuple[float, float, float]:
    """ "x,y,z" -> (x, y, z)."""
    try:
        v = tuple(float(p) for p in text.split(","))
    except ValueError:
        v = ()
    if len(v) != 3:
        raise UserError(f"{option} must be three comma-separated numbers like 0,1,0, got {text!r}.")
    return v  # type: ignore[return-value]


def settings(cls, **kwargs):
    """``cls(**kwargs)`` (a ``CameraRig`` or ``Shading``), its ValueError turned into a UserError."""
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise UserError(f"{err}.") from err


def _command_line() -> str:
    return "python -m data_tools " + shlex.join(sys.argv[1:])


@app.command("static")
def static_cmd(
    mesh: Path = typer.Argument(..., help="Mesh file (OBJ with MTL and texture, PLY, GLB, ...)."),
    out: Path = typer.Argument(..., help="Scene folder to create."),
    views: int = typer.Option(40, "--views", help="Training views."),
    test_views: int = typer.Option(8, "--test-views", help="Held-out test views (0: none)."),
    size: str = typer.Option("128x128", "--size", help="Image size WxH in pixels."),
    layout: Layout = typer.Option(Layout.sphere, "--layout", help="Camera layout."),
    convention: Convention = typer.Option(Convention.neus2, "--convention", help="JSON convention."),
    seed: int = typer.Option(0, "--seed", help="Seed (camera azimuth offset, jitter)."),
    object_radius: float = typer.Option(1.0, "--object-radius", help="Bounding-sphere radius, world units."),
    distance: float = typer.Option(2.75, "--distance", help="Camera distance in object radii."),
    fov: float = typer.Option(None, "--fov", help="Horizontal FOV in degrees (default: fit the object)."),
    up: str = typer.Option("0,1,0", "--up", help="World up axis, x,y,z."),
    min_elevation: float = typer.Option(-90.0, "--min-elevation", help="Sphere layout: lowest elevation."),
    max_elevation: float = typer.Option(90.0, "--max-elevation", help="Sphere layout: highest elevation."),
    elevation: float = typer.Option(20.0, "--elevation", help="Ring layout: elevation in degrees."),
    jitter: float = typer.Option(0.0, "--jitter", help="Std of random camera tilts, degrees."),
    supersample: int = typer.Option(2, "--supersample", help="s x s rays per pixel."),
    max_gt_mesh_kb: int = typer.Option(None, "--max-gt-mesh-kb", help="Omit gt_mesh.ply above this size."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a scene this tool wrote before."),
    note: str = typer.Option(None, "--note", help="A paragraph for README.md (licence, provenance)."),
    background: float = typer.Option(
        None,
        "--background-sphere",
        help="Put the object inside a textured sphere of this radius (object radii, beyond the cameras) and "
        "write RGB images without alpha: an unmasked scene.",
    ),
) -> None:
    """Render a static scene (RGBA images, cameras JSON, gt_mesh.ply, scene_info.json)."""
    from data_tools.background import EnvironmentSphere
    from data_tools.camera_paths import CameraRig
    from data_tools.generate import generate_static_scene
    from data_tools.render_mesh import Shading

    width, height = parse_size(size)
    rig = settings(
        CameraRig,
        layout=layout.value,
        distance=distance,
        fov_x_deg=fov,
        up=parse_vec3(up, "--up"),
        min_elevation_deg=min_elevation,
        max_elevation_deg=max_elevation,
        ring_elevation_deg=elevation,
        jitter_deg=jitter,
    )
    path = generate_static_scene(
        mesh,
        out,
        n_views=views,
        n_test=test_views,
        width=width,
        height=height,
        convention=convention.value,
        seed=seed,
        object_radius=object_radius,
        rig=rig,
        shading=settings(Shading, supersample=supersample),
        max_gt_mesh_bytes=None if max_gt_mesh_kb is None else 1000 * max_gt_mesh_kb,
        overwrite=overwrite,
        command=_command_line(),
        note=note,
        background=None if background is None else settings(EnvironmentSphere, radius=background),
    )
    typer.echo(f"wrote {path}")


@app.command("dynamic")
def dynamic_cmd(
    mesh: Path = typer.Argument(..., help="Mesh file (becomes the canonical frame 0)."),
    out: Path = typer.Argument(..., help="Sequence folder to create."),
    frames: int = typer.Option(10, "--frames", help="Time steps."),
    views: int = typer.Option(24, "--views", help="Training cameras (fixed across frames)."),
    test_views: int = typer.Option(0, "--test-views", help="Held-out cameras (split: test)."),
    size: str = typer.Option("128x128", "--size", help="Image size WxH in pixels."),
    rotation: float = typer.Option(5.0, "--rotation", help="Rotation per frame, degrees."),
    rotation_axis: str = typer.Option("0,1,0", "--rotation-axis", help="Rotation axis x,y,z (world)."),
    translation: str = typer.Option(
        "0", "--translation", help="Translation per frame in object diameters: a number along x, or x,y,z."
    ),
    deformation: Deform = typer.Option(Deform.none, "--deformation", help="Deformation along the main axis."),
    deformation_deg: float = typer.Option(5.0, "--deformation-deg", help="Bend/twist angle added per frame."),
    layout: Layout = typer.Option(Layout.sphere, "--layout", help="Camera layout."),
    seed: int = typer.Option(0, "--seed", help="Seed (camera azimuth offset, jitter)."),
    object_radius: float = typer.Option(1.0, "--object-radius", help="Bounding-sphere radius, world units."),
    distance: float = typer.Option(2.75, "--distance", help="Camera distance in motion-sphere radii."),
    up: str = typer.Option("0,1,0", "--up", help="World up axis, x,y,z."),
    elevation: float = typer.Option(20.0, "--elevation", help="Ring layout: elevation in degrees."),
    frame_jitter: float = typer.Option(0.0, "--frame-jitter", help="Per-frame random camera tilts, degrees."),
    supersample: int = typer.Option(2, "--supersample", help="s x s rays per pixel."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a sequence this tool wrote before."),
) -> None:
    """Render a moving (optionally bending / twisting) mesh: one NeuS2 JSON per frame plus gt/."""
    from data_tools.camera_paths import CameraRig
    from data_tools.dynamic import generate_dynamic_sequence
    from data_tools.render_mesh import Shading

    width, height = parse_size(size)
    if "," in translation:
        trans: float | tuple[float, float, float] = parse_vec3(translation, "--translation")
    else:
        try:
            trans = float(translation)
        except ValueError as err:
            raise UserError(f"--translation must be a number or x,y,z, got {translation!r}.") from err
    rig = settings(
        CameraRig, layout=layout.value, distance=distance, up=parse_vec3(up, "--up"), ring_elevation_deg=elevation
    )
    path = generate_dynamic_sequence(
        mesh,
        out,
        n_frames=frames,
        n_views=views,
        n_test_views=test_views,
        width=width,
        height=height,
        rotation_deg_per_frame=rotation,
        rotation_axis=parse_vec3(rotation_axis, "--rotation-axis"),
        translation_per_frame=trans,
        deformation=None if deformation is Deform.none else deformation.value,
        deformation_deg_per_frame=deformation_deg,
        seed=seed,
        object_radius=object_radius,
        rig=rig,
        shading=settings(Shading, supersample=supersample),
        per_frame_jitter_deg=frame_jitter,
        overwrite=overwrite,
        command=_command_line(),
    )
    typer.echo(f"wrote {path}")


@app.command("to-colmap")
def to_colmap_cmd(
    scene: Path = typer.Argument(..., help="A static scene (a `data_tools static` folder or any scene neus2 reads)."),
    out: Path = typer.Argument(..., help="COLMAP scene folder to create (images/, masks/, sparse/0/)."),
    binary: bool = typer.Option(True, "--binary/--text", help="Model files: .bin (COLMAP's default) or .txt."),
    camera_model: CameraModel = typer.Option(
        CameraModel.auto, "--camera-model", help="auto: PINHOLE, or OPENCV for views with distortion."
    ),
    masks: bool = typer.Option(
        True, "--masks/--no-masks", help="Write masks/ from the views' alpha; --no-masks composites over white."
    ),
    points: int = typer.Option(2000, "--points", help="Points sampled on the mesh for points3D."),
    mesh: Path = typer.Option(None, "--mesh", help="Mesh in the scene's world frame (default: SCENE/gt_mesh.ply)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the point sampling."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a folder this tool wrote before."),
) -> None:
    """Write a static scene as a COLMAP sparse model (cameras, images, points3D on the mesh) + images/."""
    from data_tools.colmap import export_colmap

    path = export_colmap(
        scene,
        out,
        binary=binary,
        camera_model=camera_model.value,
        masks=masks,
        n_points=points,
        mesh_path=mesh,
        seed=seed,
        overwrite=overwrite,
        command=_command_line(),
    )
    typer.echo(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning ``UserError`` into one paragraph and exit code 2."""
    try:
        app(args=argv, prog_name="python -m data_tools")
    except UserError as err:
        typer.echo("error: " + textwrap.fill(str(err), width=100), err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
