"""Static synthetic scenes with known geometry: render a mesh from known cameras.

World frame of a generated scene: the input mesh translated so that its minimal
bounding sphere is centred at the origin and uniformly scaled so that this sphere
has radius ``object_radius`` (axes kept, so an OBJ's +y stays up). ``gt_mesh.ply``
is the mesh in this world frame (duplicate UV-seam vertices merged, geometry only).

Normalization written to the JSONs: ``scale = 0.45 / object_radius``, ``offset =
[0.5, 0.5, 0.5]``: the bounding sphere maps to radius 0.45 around the unit cube's
centre (``x_norm = x_world * scale + offset``).

Output folder (``convention="neus2"``)::

    transform_train.json, transform_test.json   from_na: true, OpenCV c2w, 4x4 intrinsic_matrix
    train/0000.png ...  test/0000.png ...       RGBA, straight colour, alpha = coverage mask
    gt_mesh.ply, scene_info.json, README.md, source/ (the mesh's licence files, if any)

``convention="blender"`` writes ``transforms_train.json`` / ``transforms_test.json``
(OpenGL c2w, camera_angle_x, fl_x, fl_y, cx, cy, w, h, scale, offset; ``file_path``
without extension) instead. Everything is a function of the arguments: a rerun with
the same arguments writes identical bytes. The folder is built beside ``out_dir``
and moved into place at the end, so an interrupted run leaves no half scene.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import trimesh

from data_tools.background import EnvironmentSphere
from data_tools.camera_paths import CameraPose, CameraRig, horizontal_fov_deg
from data_tools.render_mesh import MeshRenderer, Shading, has_color, load_mesh, procedural_vertex_colors
from neus2cli.data.scene import Normalization
from neus2cli.errors import UserError

#: Radius of the object's bounding sphere in the normalized unit cube.
NORMALIZED_RADIUS = 0.45
#: OpenCV <-> OpenGL camera axes (self-inverse): c2w_gl = c2w_cv @ GL_FROM_CV.
GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])
GENERATOR_NAME = "data_tools"
LICENSE_PREFIXES = ("license", "licence", "copying", "readme")


@dataclass
class PreparedMesh:
    """A mesh moved into the generator's world frame.

    Attributes:
        render_mesh: the mesh as loaded (UV seams kept), in the world frame.
        gt_mesh: geometry only, duplicate vertices merged, same world frame.
        albedo: (n_render_vertices, 3) procedural albedo for a mesh without colour, else None.
        coloring: "texture", "vertex", "face", "material" or "procedural".
        source: where the mesh came from (the path as given, or "<trimesh>").
        source_sha256: hex digest of the mesh file, or None.
        source_center, source_radius: the minimal bounding sphere in the source's units.
        world_from_source: (4, 4) similarity x_world = s * (x_source - c).
        object_radius: bounding-sphere radius in the world frame.
    """

    render_mesh: trimesh.Trimesh
    gt_mesh: trimesh.Trimesh
    albedo: np.ndarray | None
    coloring: str
    source: str
    source_sha256: str | None
    source_center: np.ndarray
    source_radius: float
    world_from_source: np.ndarray
    object_radius: float

    def source_info(self) -> dict:
        """The mesh's provenance entries of ``scene_info.json``, in file order."""
        return {
            "mesh_source": self.source,
            "mesh_sha256": self.source_sha256,
            "coloring": self.coloring,
            "source_bounding_sphere": {"center": self.source_center.tolist(), "radius": self.source_radius},
            "world_from_source": self.world_from_source.tolist(),
        }


def _coloring(mesh: trimesh.Trimesh) -> str:
    vis = mesh.visual
    if isinstance(vis, trimesh.visual.TextureVisuals):
        return "texture" if has_color(mesh) else "material"
    return {"vertex": "vertex", "face": "face"}.get(vis.kind, "procedural")


def bounding_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """(n, 3) points -> (centre (3,), radius): trimesh's minimal sphere, radius re-measured so
    that every point is inside (the solver's radius can be a rounding step short)."""
    pts = np.asarray(points, dtype=np.float64)
    try:
        center, _ = trimesh.nsphere.minimum_nsphere(pts)
        center = np.asarray(center, dtype=np.float64)
    except Exception:  # degenerate hull (flat or tiny inputs): fall back to the box centre
        center = 0.5 * (pts.min(axis=0) + pts.max(axis=0))
    radius = float(np.linalg.norm(pts - center, axis=1).max())
    return center, radius


def prepare_mesh(mesh: str | Path | trimesh.Trimesh, object_radius: float = 1.0) -> PreparedMesh:
    """Load ``mesh`` (a path or a Trimesh) and move it to the world frame described in the module
    docstring: bounding-sphere centre at the origin, radius ``object_radius``."""
    if not (isinstance(object_radius, int | float) and math.isfinite(object_radius) and object_radius > 0):
        raise ValueError(f"object_radius must be a positive number, got {object_radius!r}")
    if isinstance(mesh, trimesh.Trimesh):
        src = mesh.copy()
        source, sha = "<trimesh>", None
    else:
        src = load_mesh(mesh)
        source = str(mesh)
        sha = hashlib.sha256(Path(mesh).read_bytes()).hexdigest()
    center, radius = bounding_sphere(src.vertices)
    if not radius > 0:
        raise UserError("the mesh has zero extent.", path=None if sha is None else source)
    s = object_radius / radius
    world_from_source = np.diag([s, s, s, 1.0])
    world_from_source[:3, 3] = -s * center
    coloring = _coloring(src)
    src.vertices = (np.asarray(src.vertices, dtype=np.float64) - center) * s
    gt = trimesh.Trimesh(vertices=src.vertices.copy(), faces=src.faces.copy(), process=True)
    # Position-based colours of a plain mesh, on the unit-radius copy so band widths do not depend
    # on object_radius.
    albedo = procedural_vertex_colors(src.vertices / object_radius) if coloring == "procedural" else None
    return PreparedMesh(
        render_mesh=src,
        gt_mesh=gt,
        albedo=albedo,
        coloring=coloring,
        source=source,
        source_sha256=sha,
        source_center=center,
        source_radius=radius,
        world_from_source=world_from_source,
        object_radius=float(object_radius),
    )


def normalization_for_sphere(center: Sequence[float], radius: float) -> Normalization:
    """World -> unit cube mapping the sphere (centre, radius) to radius 0.45 around [0.5]*3."""
    scale = NORMALIZED_RADIUS / radius
    return Normalization(scale=scale, offset=0.5 - scale * np.asarray(center, dtype=np.float64))


def intrinsic_4x4(K: np.ndarray) -> list[list[float]]:
    m = np.eye(4)
    m[:3, :3] = K
    return m.tolist()


def neus2_frame(file_path: str, cam: CameraPose, split: str | None = None) -> dict:
    """One NeuS2 frame entry: OpenCV c2w (``from_na: true``), 4x4 intrinsic matrix in pixels."""
    frame = {
        "file_path": file_path,
        "transform_matrix": np.asarray(cam.c2w, dtype=np.float64).tolist(),
        "intrinsic_matrix": intrinsic_4x4(cam.K),
    }
    if split is not None:
        frame["split"] = split
    return frame


def neus2_json(frames: list[dict], width: int, height: int, norm: Normalization) -> dict:
    return {
        "from_na": True,
        "w": int(width),
        "h": int(height),
        "aabb_scale": 1,
        "scale": norm.scale,
        "offset": norm.offset.tolist(),
        "frames": frames,
    }


def blender_json(file_paths: list[str], cams: list[CameraPose], width: int, height: int, norm) -> dict:
    """Blender / Instant-NGP JSON: OpenGL c2w, shared intrinsics (all cameras share K here)."""
    K = cams[0].K
    return {
        "camera_angle_x": 2.0 * math.atan(0.5 * width / K[0, 0]),
        "camera_angle_y": 2.0 * math.atan(0.5 * height / K[1, 1]),
        "fl_x": float(K[0, 0]),
        "fl_y": float(K[1, 1]),
        "cx": float(K[0, 2]),
        "cy": float(K[1, 2]),
        "w": int(width),
        "h": int(height),
        "aabb_scale": 1,
        "scale": norm.scale,
        "offset": norm.offset.tolist(),
        "frames": [
            {"file_path": p, "transform_matrix": (np.asarray(c.c2w) @ GL_FROM_CV).tolist()}
            for p, c in zip(file_paths, cams, strict=True)
        ],
    }


def _json_lines(value, indent: int) -> str:
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{pad}  {json.dumps(k)}: {_json_lines(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list | tuple):
        if all(not isinstance(v, dict | list | tuple) for v in value):
            # Vectors and matrix rows stay on one line: readable 4x4 matrices.
            return json.dumps(list(value))
        items = [f"{pad}  {_json_lines(v, indent + 2)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(value)


def dump_json(data: dict) -> bytes:
    """Indented JSON with numeric vectors (and matrix rows) on one line, UTF-8, trailing newline."""
    return (_json_lines(data, 0) + "\n").encode()


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_png(path: Path, rgba: np.ndarray) -> None:
    write_bytes(path, iio.imwrite("<bytes>", rgba, extension=".png"))


def mesh_ply_bytes(mesh: trimesh.Trimesh) -> bytes:
    """Binary PLY of the geometry (float32 vertices, int faces), no colours."""
    plain = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False)
    return plain.export(file_type="ply", encoding="binary")


def copy_license_files(source: str, dest: Path) -> list[str]:
    """Copy LICENSE* / LICENCE* / COPYING* / README* files beside a mesh file into ``dest``."""
    path = Path(source)
    if not path.is_file():
        return []
    copied = []
    for f in sorted(path.parent.iterdir()):
        if f.is_file() and f.name.lower().startswith(LICENSE_PREFIXES):
            write_bytes(dest / f.name, f.read_bytes())
            copied.append(f.name)
    return copied


def _looks_generated(folder: Path) -> bool:
    for info in (folder / "scene_info.json", folder / "gt" / "scene_info.json"):
        try:
            if json.loads(info.read_text()).get("generator") == GENERATOR_NAME:
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


@contextlib.contextmanager
def staged_output(out_dir: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir``; on success it replaces ``out_dir``.

    An existing non-empty ``out_dir`` is an error unless ``overwrite`` is set, and even
    then only a folder this generator wrote (it has our ``scene_info.json``) is replaced.
    """
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise UserError("the output path exists and is not a folder.", path=out)
        if any(out.iterdir()):
            if not overwrite:
                raise UserError(
                    "the output folder exists and is not empty.",
                    path=out,
                    hint="Choose another folder or pass --overwrite.",
                )
            if not _looks_generated(out):
                raise UserError(
                    "refusing to overwrite a folder that this generator did not write.",
                    path=out,
                    hint="Choose another folder (or delete it yourself).",
                )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def render_views_to_png(
    renderer: MeshRenderer,
    jobs: list[tuple[CameraPose, Path]],
    width: int,
    height: int,
    supersample: int,
    advance,
    background: tuple[EnvironmentSphere, float] | None = None,
) -> None:
    """Render ``jobs`` [(CameraPose, png path)] to ``width`` x ``height`` RGBA PNGs in parallel threads
    (the ray casts and PNG encoding release the GIL), calling ``advance()`` after each; each view
    depends only on its camera, so the bytes do not depend on the order. ``background``
    (environment, object radius in world units): RGB PNGs of the object over it instead, no alpha."""
    from concurrent.futures import ThreadPoolExecutor

    def one(job) -> None:
        cam, path = job
        rgba = renderer.render(cam.K, cam.c2w, width, height, supersample).rgba
        if background is not None:
            env, object_radius = background
            rgba = env.composite(rgba, cam.K, cam.c2w, object_radius)
        write_png(path, rgba)

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        for _ in pool.map(one, jobs):
            advance()


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, description: str):
    """Yield ``advance()``: a rich progress bar when enabled, a no-op otherwise."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def check_common_args(n_views: int, width: int, height: int, rig: CameraRig, shading: Shading) -> None:
    """Checks shared by both generators: view count, image size (pixels), settings types."""
    if int(n_views) < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    if int(width) < 8 or int(height) < 8:
        raise ValueError(f"width and height must be >= 8, got {width}x{height}")
    if not isinstance(rig, CameraRig):
        raise ValueError(f"rig must be a CameraRig, got {type(rig).__name__}")
    if not isinstance(shading, Shading):
        raise ValueError(f"shading must be a Shading, got {type(shading).__name__}")


def readme_text(
    title: str, prepared: PreparedMesh, command: str | None, licenses: list[str], note: str | None = None
) -> bytes:
    """README.md text: source mesh, licence files, optional note, the command that made the folder."""
    lines = [f"# {title}", ""]
    if note:
        lines += [note.strip(), ""]
    lines += [
        f"Rendered with neus2cli's `data_tools` generator from `{prepared.source}` (colouring: {prepared.coloring}).",
    ]
    if licenses:
        lines.append(
            "The source mesh's licence/readme files are copied in `source/`: "
            + ", ".join(f"`{n}`" for n in licenses)
            + "."
        )
    if command:
        lines += ["", "Command:", "", f"    {command}"]
    lines += ["", "Settings, bounding sphere and normalization: `scene_info.json`.", ""]
    return "\n".join(lines).encode()


def split_json_name(convention: str, split: str) -> str:
    """Cameras file of one split: ``transform_<split>.json`` (neus2) or ``transforms_<split>.json`` (blender)."""
    return f"transform_{split}.json" if convention == "neus2" else f"transforms_{split}.json"


def write_static_split(
    folder: Path,
    split: str,
    cams: list[CameraPose],
    renderer: MeshRenderer,
    convention: str,
    norm: Normalization,
    width: int,
    height: int,
    supersample: int,
    advance,
    background: tuple[EnvironmentSphere, float] | None = None,
) -> None:
    """Render one split's views to ``folder/<split>/0000.png ...`` (``width`` x ``height`` px) and
    write its cameras JSON (OpenCV c2w for neus2, OpenGL for blender; world units, ``norm`` to the cube).
    ``background`` as in ``render_views_to_png``."""
    paths = [f"{split}/{i:04d}" + (".png" if convention == "neus2" else "") for i in range(len(cams))]
    jobs = [(cam, folder / split / f"{i:04d}.png") for i, cam in enumerate(cams)]
    render_views_to_png(renderer, jobs, width, height, supersample, advance, background)
    if convention == "neus2":
        doc = neus2_json([neus2_frame(p, c) for p, c in zip(paths, cams, strict=True)], width, height, norm)
    else:
        doc = blender_json(paths, cams, width, height, norm)
    write_bytes(folder / split_json_name(convention, split), dump_json(doc))


def write_gt_mesh_file(folder: Path, gt_mesh: trimesh.Trimesh, enabled: bool, max_bytes: int | None) -> str | None:
    """Write ``folder/gt_mesh.ply`` (world frame) unless disabled or over ``max_bytes``; returns
    None when written, else the note saying why it was omitted."""
    if not enabled:
        return "gt_mesh.ply omitted (write_gt_mesh=False)"
    ply = mesh_ply_bytes(gt_mesh)
    if max_bytes is not None and len(ply) > max_bytes:
        return f"gt_mesh.ply omitted: {len(ply)} bytes > limit {max_bytes}"
    write_bytes(folder / "gt_mesh.ply", ply)
    return None


def static_scene_info(
    prepared: PreparedMesh,
    convention: str,
    splits: list[str],
    norm: Normalization,
    gt_note: str | None,
    settings: dict,
    licenses: list[str],
) -> dict:
    """The static scene's ``scene_info.json`` (key order is the file's): provenance, world
    bounding sphere (world units), normalization, ground-truth mesh, ``settings``."""
    R = prepared.object_radius
    return {
        "generator": GENERATOR_NAME,
        "kind": "static",
        "convention": convention,
        "files": {s: split_json_name(convention, s) for s in splits},
        **prepared.source_info(),
        "bounding_sphere": {"center": [0.0, 0.0, 0.0], "radius": R},
        "normalization": norm.to_dict(),
        "gt_mesh": None if gt_note else "gt_mesh.ply",
        "gt_mesh_note": gt_note,
        "gt_mesh_vertices": int(len(prepared.gt_mesh.vertices)),
        "gt_mesh_faces": int(len(prepared.gt_mesh.faces)),
        "settings": settings,
        "source_license_files": [f"source/{n}" for n in licenses],
    }


def generate_static_scene(
    mesh: str | Path | trimesh.Trimesh,
    out_dir: str | Path,
    *,
    n_views: int = 40,
    n_test: int = 8,
    width: int = 128,
    height: int = 128,
    convention: str = "neus2",
    seed: int = 0,
    object_radius: float = 1.0,
    rig: CameraRig = CameraRig(),
    shading: Shading = Shading(),
    write_gt_mesh: bool = True,
    max_gt_mesh_bytes: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    note: str | None = None,
    background: EnvironmentSphere | None = None,
) -> Path:
    """Render ``mesh`` from ``n_views`` training and ``n_test`` test cameras into ``out_dir``.

    Args:
        mesh: a mesh file (OBJ+MTL+texture, PLY, ...) or a Trimesh.
        out_dir: the scene folder to create (see the module docstring for its contents).
        n_views, n_test: training and held-out cameras (``n_test=0`` writes no test JSON).
        width, height: image size, pixels.
        convention: "neus2" (OpenCV, transform_*.json) or "blender" (OpenGL, transforms_*.json).
        seed: drives the azimuth offset of the layout and the jitter; same seed, same bytes.
        object_radius: bounding-sphere radius in the world frame (world units).
        rig: camera layout, distance (in object radii), FOV, up, elevations, jitter.
        shading: light direction (world frame), Lambert weights, supersampling.
        write_gt_mesh: write gt_mesh.ply; ``max_gt_mesh_bytes`` omits it above that size
            (scene_info.json says so).
        overwrite: replace an existing scene folder written by this generator.
        progress: show a rich progress bar.
        command: the command line, recorded in README.md.
        note: a paragraph for README.md (licence or provenance of the mesh).
        background: an ``EnvironmentSphere`` around the object: the views are then RGB photos of the
            object in it, without alpha (an unmasked scene); None: RGBA, alpha = coverage.

    Returns:
        ``out_dir`` as a Path.
    """
    check_common_args(n_views, width, height, rig, shading)
    if background is not None and not background.radius > rig.distance:
        raise UserError(
            f"the environment sphere (radius {background.radius} object radii) must hold the cameras "
            f"(at {rig.distance} object radii).",
            hint="Give a larger --background-sphere or a smaller --distance.",
        )
    if int(n_test) < 0:
        raise ValueError(f"n_test must be >= 0, got {n_test}")
    if convention not in ("neus2", "blender"):
        raise ValueError(f"convention must be 'neus2' or 'blender', got {convention!r}")
    prepared = prepare_mesh(mesh, object_radius)
    R = prepared.object_radius
    norm = normalization_for_sphere(np.zeros(3), R)
    cams = rig.split_cameras(n_views, n_test, width, height, (0.0, 0.0, 0.0), R, seed)
    splits = {"train": cams.train, "test": cams.test} if n_test > 0 else {"train": cams.train}
    renderer = shading.renderer(prepared.render_mesh, prepared.albedo)
    settings = {
        "n_views": int(n_views),
        "n_test": int(n_test),
        "width": int(width),
        "height": int(height),
        "layout": rig.layout,
        "seed": int(seed),
        "object_radius": R,
        **rig.to_dict(cams.azimuth_offset_deg, fov_x_deg=horizontal_fov_deg(cams.train[0].K, width)),
        **shading.to_dict(),
    }
    if background is not None:  # only then: the settings (and bytes) of scenes without one stay as they were
        settings["background"] = background.to_dict()
    env = None if background is None else (background, R)
    with staged_output(out_dir, overwrite) as tmp:
        with progress_bar(progress, n_views + n_test, f"rendering {Path(out_dir).name}") as advance:
            for split, split_cams in splits.items():
                write_static_split(
                    tmp, split, split_cams, renderer, convention, norm, width, height, shading.supersample, advance, env
                )
        gt_note = write_gt_mesh_file(tmp, prepared.gt_mesh, write_gt_mesh, max_gt_mesh_bytes)
        licenses = copy_license_files(prepared.source, tmp / "source")
        info = static_scene_info(prepared, convention, list(splits), norm, gt_note, settings, licenses)
        write_bytes(tmp / "scene_info.json", dump_json(info))
        write_bytes(tmp / "README.md", readme_text("Synthetic static scene", prepared, command, licenses, note))
    return Path(out_dir)
