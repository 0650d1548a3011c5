"""Write COLMAP sparse models: a static scene (generated, or any neus2cli reads) -> a COLMAP scene folder.

A scene with known cameras and known geometry written as COLMAP would have reconstructed it, so
that a COLMAP pipeline (``neus2 train`` on ``sparse/0`` + ``images/``, ``neus2 inspect``, or one's
own tools) can be checked against the scene it came from. Output folder ``OUT``::

    OUT/images/<NAME>        RGB PNGs, NAME = the view's image path relative to the scene (train/0000.png)
    OUT/masks/<NAME>         8-bit masks (the views' alpha), when the scene has masks and they are kept
    OUT/sparse/0/            cameras, images, points3D (.bin, COLMAP's default, or .txt)
    OUT/gt_mesh.ply          the mesh the points were sampled on (the scene's world frame)
    OUT/scene_info.json, OUT/README.md   provenance (scene_info.json is metadata: loaders skip it)

Conventions written (the inverse of ``neus2cli.data.formats_colmap``, which reads them back):

* **Pose.** Per image the **world-to-camera** rotation as a unit quaternion ``(qw, qx, qy, qz)``
  (Hamilton, scalar first, written with ``qw >= 0``) and translation ``t``: ``x_cam = R x_world + t``,
  ``R = c2w[:3, :3]^T``, ``t = -R c2w[:3, 3]``. COLMAP's camera axes are OpenCV's, as our ``c2w``'s,
  so no axis flip is involved; the world frame is the scene's own (world units, not normalized).
* **Pixels.** COLMAP puts the top-left pixel's centre at (0.5, 0.5), as neus2cli does: ``cx, cy``
  are written unchanged.
* **Cameras.** PINHOLE ``(fx, fy, cx, cy)``, or OPENCV ``(fx, fy, cx, cy, k1, k2, p1, p2)`` for views
  with distortion (or when asked for). Views with identical intrinsics and size share one camera, as
  COLMAP's single-camera mode does. A skewed ``K`` cannot be written (COLMAP's models have no skew).
* **Points.** Points sampled on the mesh surface (uniformly, plus 2 % of them at each extreme of the
  mesh's box, so that the loader's robust bounds reach the extremes: ``bounds_samples``). Each one's
  track lists the images that see it: in front of the camera, inside the image, and not hidden (its
  depth agrees with the rendered depth at its pixel). Each image's 2D points are the exact projections
  of the points in its track, so reprojection errors are 0. Points seen by fewer than 2 images are
  dropped, as COLMAP's triangulation would. The loader's automatic bounds then fit the object.

The text writer writes floats with ``repr`` (shortest round-trip form), so text and binary models
hold the same float64 numbers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from neus2cli.data.formats_colmap import CAMERA_MODELS
from neus2cli.errors import UserError

#: COLMAP camera model name -> its numeric id in the binary format.
MODEL_IDS: dict[str, int] = {name: model_id for model_id, (name, _) in CAMERA_MODELS.items()}
#: Camera models the exporter writes ("auto": PINHOLE, OPENCV for views with distortion).
WRITE_MODELS = ("auto", "PINHOLE", "OPENCV")
#: Fewest surface points to ask for: the loader needs 10 points seen by 3 images for its bounds.
MIN_SAMPLES = 10
#: A point is hidden in a view when the rendered depth at its pixel is nearer by more than this
#: fraction of the mesh's bounding radius, plus two pixel footprints at the point's depth (the rendered
#: depth is the pixel centre's, the point is anywhere in the pixel).
VISIBILITY_TOLERANCE = 0.02
#: Share of the points placed at each of the six extremes of the mesh's box (``bounds_samples``).
EXTREME_FRACTION = 0.02
#: Candidates per point that those extremes are chosen from.
EXTREME_OVERSAMPLING = 20


@dataclass
class SparseCamera:
    """One COLMAP camera: model name (``CAMERA_MODELS``), image size in pixels, the model's parameters."""

    camera_id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]


@dataclass
class SparseImage:
    """One registered image: world-to-camera ``qvec`` (qw, qx, qy, qz) and ``tvec``, its camera, file name
    (relative to ``images/``), and its 2D points ``(x, y, point3D_id)`` in pixels (COLMAP's convention:
    top-left pixel centre at (0.5, 0.5)); ``point3D_id`` -1 for a keypoint without a 3D point."""

    image_id: int
    qvec: tuple[float, ...]
    tvec: tuple[float, ...]
    camera_id: int
    name: str
    points2d: list[tuple[float, float, int]] = field(default_factory=list)


@dataclass
class SparsePoint:
    """One 3D point: world position, track ``(image_id, point2D_idx)``, colour, reprojection error (px)."""

    point_id: int
    xyz: tuple[float, float, float]
    track: list[tuple[int, int]] = field(default_factory=list)
    rgb: tuple[int, int, int] = (128, 128, 128)
    error: float = 0.5


@dataclass
class SparseModel:
    """The three tables of a COLMAP sparse model, in file order."""

    cameras: list[SparseCamera]
    images: list[SparseImage]
    points: list[SparsePoint]


# --------------------------------------------------------------------------------------------
# Writers (the layouts of https://colmap.github.io/format.html).


def write_text_model(folder: str | Path, model: SparseModel) -> None:
    """``cameras.txt``, ``images.txt``, ``points3D.txt`` in ``folder`` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    r = repr  # repr(float) round-trips exactly, so text and binary hold the same numbers
    with open(folder / "cameras.txt", "w", encoding="utf-8") as f:
        f.write("# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
        for c in model.cameras:
            f.write(" ".join([str(c.camera_id), c.model, str(c.width), str(c.height), *map(r, c.params)]) + "\n")
    with open(folder / "images.txt", "w", encoding="utf-8") as f:
        f.write("# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n# POINTS2D[] as (X, Y, POINT3D_ID)\n")
        for im in model.images:
            f.write(" ".join([str(im.image_id), *map(r, im.qvec), *map(r, im.tvec), str(im.camera_id), im.name]) + "\n")
            f.write(" ".join(f"{r(x)} {r(y)} {pid}" for x, y, pid in im.points2d) + "\n")
    with open(folder / "points3D.txt", "w", encoding="utf-8") as f:
        f.write("# POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n")
        for p in model.points:
            track = " ".join(f"{i} {j}" for i, j in p.track)
            rgb = " ".join(str(int(c)) for c in p.rgb)
            f.write(" ".join([str(p.point_id), *map(r, p.xyz), rgb, r(float(p.error)), track]).rstrip() + "\n")


def write_binary_model(folder: str | Path, model: SparseModel) -> None:
    """``cameras.bin``, ``images.bin``, ``points3D.bin`` in ``folder`` (created; little endian)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "cameras.bin", "wb") as f:
        f.write(struct.pack("<Q", len(model.cameras)))
        for c in model.cameras:
            f.write(struct.pack("<IiQQ", c.camera_id, MODEL_IDS[c.model], c.width, c.height))
            f.write(struct.pack(f"<{len(c.params)}d", *c.params))
    with open(folder / "images.bin", "wb") as f:
        f.write(struct.pack("<Q", len(model.images)))
        for im in model.images:
            f.write(struct.pack("<I4d3dI", im.image_id, *im.qvec, *im.tvec, im.camera_id))
            f.write(im.name.encode() + b"\0")
            f.write(struct.pack("<Q", len(im.points2d)))
            for x, y, pid in im.points2d:
                f.write(struct.pack("<ddq", x, y, pid))
    with open(folder / "points3D.bin", "wb") as f:
        f.write(struct.pack("<Q", len(model.points)))
        for p in model.points:
            f.write(struct.pack("<Q3d3Bd", p.point_id, *p.xyz, *(int(c) for c in p.rgb), float(p.error)))
            f.write(struct.pack("<Q", len(p.track)))
            for i, j in p.track:
                f.write(struct.pack("<II", i, j))


def write_sparse_model(folder: str | Path, model: SparseModel, binary: bool = True) -> None:
    """The model in ``folder``: binary (``.bin``, COLMAP's default) or text (``.txt``)."""
    (write_binary_model if binary else write_text_model)(folder, model)


# --------------------------------------------------------------------------------------------
# Our cameras -> COLMAP's.


def rotation_to_qvec(R: np.ndarray) -> tuple[float, float, float, float]:
    """(3, 3) rotation -> unit quaternion (qw, qx, qy, qz), scalar first, with ``qw >= 0``.

    (q and -q are the same rotation; the non-negative ``qw`` is COLMAP's habit and makes the output
    deterministic.) A slightly non-orthonormal ``R`` (a pose read from JSON) gives the nearest rotation.
    """
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_quat()  # scipy: scalar last
    q = np.array([w, x, y, z])
    if q[0] < 0:
        q = -q
    return float(q[0]), float(q[1]), float(q[2]), float(q[3])


def c2w_to_colmap_pose(c2w: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(4, 4) OpenCV camera-to-world (world frame) -> COLMAP's world-to-camera (qvec (4,), tvec (3,)).

    ``x_cam = R x_world + t`` with ``R = c2w[:3, :3]^T`` and ``t = -R c2w[:3, 3]`` (both frames OpenCV).
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    R = c2w[:3, :3].T
    t = -R @ c2w[:3, 3]
    return rotation_to_qvec(R), (float(t[0]), float(t[1]), float(t[2]))


def camera_model_params(K: np.ndarray, distortion: np.ndarray | None, model: str = "auto") -> tuple[str, tuple]:
    """(COLMAP model name, parameters) of a view's intrinsics.

    Args:
        K: (3, 3) pixels, pixel centres at +0.5 (COLMAP's convention too: written unchanged).
        distortion: (4,) OpenCV (k1, k2, p1, p2) or None.
        model: "PINHOLE", "OPENCV" or "auto" (PINHOLE unless there is distortion).

    Raises:
        ValueError: a skewed K, or distortion with ``model="PINHOLE"``.
    """
    K = np.asarray(K, dtype=np.float64)
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    if abs(K[0, 1]) > 1e-9 * abs(fx):
        raise ValueError(f"K has skew {K[0, 1]!r}, which no COLMAP camera model can hold")
    dist = None if distortion is None or not np.any(distortion) else np.asarray(distortion, dtype=np.float64)
    if model == "auto":
        model = "PINHOLE" if dist is None else "OPENCV"
    if model == "PINHOLE":
        if dist is not None:
            raise ValueError(f"the view has distortion {dist.tolist()}, which PINHOLE cannot hold (use OPENCV)")
        return "PINHOLE", (fx, fy, cx, cy)
    if model == "OPENCV":
        k = (0.0, 0.0, 0.0, 0.0) if dist is None else tuple(float(v) for v in dist)
        return "OPENCV", (fx, fy, cx, cy, *k)
    raise ValueError(f"camera model must be one of {', '.join(WRITE_MODELS)}, got {model!r}")


# --------------------------------------------------------------------------------------------
# Points on the mesh and who sees them.


def surface_samples(mesh: trimesh.Trimesh, n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) float64 points uniform on the surface of ``mesh`` (area-weighted), in the mesh's frame."""
    rng = np.random.default_rng(seed)
    tris = np.asarray(mesh.triangles, dtype=np.float64)  # (F, 3, 3)
    area = np.asarray(mesh.area_faces, dtype=np.float64)
    face = rng.choice(len(tris), size=int(n), p=area / area.sum())
    a, b = rng.random(n), rng.random(n)
    flip = a + b > 1  # fold the unit square onto the triangle: uniform barycentrics
    a[flip], b[flip] = 1 - a[flip], 1 - b[flip]
    t = tris[face]
    return t[:, 0] + a[:, None] * (t[:, 1] - t[:, 0]) + b[:, None] * (t[:, 2] - t[:, 0])


def bounds_samples(mesh: trimesh.Trimesh, n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) float64 points on the surface of ``mesh``: uniform, except that each of the six axis-aligned
    sides of the mesh's box gets the ``EXTREME_FRACTION * n`` samples nearest to it.

    Why: the COLMAP loader bounds the object by the 1st-99th percentile box of the points (robust to
    a real capture's outliers), and uniform samples leave the object's thin tips (the ends of an
    ellipsoid) outside that box. With 2 % of the points at each extreme the percentiles reach the
    extremes even after the visibility test drops some, and the loader's 10 % margin holds the object.
    """
    n = int(n)
    n_side = int(np.ceil(EXTREME_FRACTION * n))
    candidates = surface_samples(mesh, EXTREME_OVERSAMPLING * n, seed)
    taken = np.zeros(len(candidates), dtype=bool)
    picks = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            order = np.argsort(-sign * candidates[:, axis], kind="stable")
            side = order[~taken[order]][:n_side]
            taken[side] = True
            picks.append(side)
    rest = np.nonzero(~taken)[0][: max(n - 6 * n_side, 0)]  # candidates are i.i.d.: the first are uniform
    return candidates[np.concatenate([*picks, rest])][:n]


def visible_in_view(
    points: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    distortion: np.ndarray | None,
    depth_map: np.ndarray,
    radius: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Which world points one view sees, and where.

    Args:
        points: (n, 3) world frame.
        K, c2w, distortion: the view (pixels with centres at +0.5; OpenCV c2w; OpenCV k1 k2 p1 p2 or None).
        depth_map: (H, W) the mesh's rendered camera z-depth per pixel centre (``inf`` off the mesh).
        radius: the mesh's bounding radius, world units (sets the occlusion tolerance).

    Returns:
        visible: (n,) bool; uv: (n, 2) float64 pixels (COLMAP's convention = ours), meaningful where visible.
    """
    import torch

    from neus2cli.data.rays import project_points

    dist = None if distortion is None else torch.as_tensor(np.asarray(distortion, dtype=np.float64))
    uv_t, z_t = project_points(
        torch.as_tensor(points, dtype=torch.float64),
        torch.as_tensor(np.asarray(K, dtype=np.float64)),
        torch.as_tensor(np.asarray(c2w, dtype=np.float64)),
        dist,
    )
    uv, z = uv_t.numpy(), z_t.numpy()
    h, w = depth_map.shape
    inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    col = np.clip(np.floor(uv[:, 0]).astype(np.int64), 0, w - 1)
    row = np.clip(np.floor(uv[:, 1]).astype(np.int64), 0, h - 1)
    rendered = depth_map[row, col].astype(np.float64)
    tol = VISIBILITY_TOLERANCE * radius + 2.0 * np.abs(z) / min(float(K[0, 0]), float(K[1, 1]))
    visible = inside & np.isfinite(rendered) & (z <= rendered + tol)
    return visible, uv


# --------------------------------------------------------------------------------------------
# Scene -> COLMAP folder.


def _image_name(view, scene_root: Path, index: int) -> str:
    """The view's image path relative to the scene (posix), as a .png; ``view_<index>.png`` without one."""
    if view.image_path is None:
        return f"view_{index:04d}.png"
    try:
        rel = Path(view.image_path).resolve().relative_to(scene_root.resolve())
    except ValueError:
        rel = Path(Path(view.image_path).name)
    return rel.with_suffix(".png").as_posix()


def _load_mesh(path: Path, option: str) -> trimesh.Trimesh:
    if not path.is_file():
        raise UserError(
            "no mesh to sample the COLMAP model's 3D points on.",
            path=path,
            hint=f"Give the scene's ground-truth mesh (world frame) with {option}.",
        )
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as err:  # trimesh raises many types for a bad file
        raise UserError(f"cannot read the mesh ({type(err).__name__}: {err}).", path=path) from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0 or not mesh.area > 0:
        raise UserError("the mesh has no triangles with area.", path=path, hint=f"Give another mesh with {option}.")
    return mesh


def _rgb(c: np.ndarray) -> tuple[int, int, int]:
    return int(c[0]), int(c[1]), int(c[2])


def build_sparse_model(
    scene,
    mesh: trimesh.Trimesh,
    rgba: list[np.ndarray],
    names: list[str],
    *,
    n_points: int = 2000,
    camera_model: str = "auto",
    seed: int = 0,
) -> SparseModel:
    """The COLMAP model of ``scene`` (a ``neus2cli.data.scene.Scene``) with points on ``mesh``.

    Args:
        scene: its views' K, c2w (OpenCV, world frame) and distortion are written.
        mesh: the object in the scene's world frame.
        rgba: per view (H, W, 4) uint8 images (the points' colours come from them).
        names: per view the image name written (relative to ``images/``).
        n_points: surface samples; those seen by fewer than 2 views are dropped.
        camera_model: "auto", "PINHOLE" or "OPENCV" (``camera_model_params``).
        seed: the surface sampling's seed.

    Raises:
        ValueError: a view that ``camera_model`` cannot hold (named).
    """
    from data_tools.render_mesh import MeshRenderer

    cameras: list[SparseCamera] = []
    by_params: dict[tuple, int] = {}
    images: list[SparseImage] = []
    for index, view in enumerate(scene.views):
        try:
            model, params = camera_model_params(view.K, view.distortion, camera_model)
        except ValueError as err:
            raise ValueError(f"view {view.name}: {err}") from None
        key = (model, int(view.width), int(view.height), params)
        if key not in by_params:
            by_params[key] = len(cameras) + 1
            cameras.append(SparseCamera(by_params[key], model, int(view.width), int(view.height), params))
        qvec, tvec = c2w_to_colmap_pose(view.c2w)
        images.append(SparseImage(index + 1, qvec, tvec, by_params[key], names[index]))

    xyz = bounds_samples(mesh, n_points, seed)
    radius = float(np.linalg.norm(mesh.vertices - mesh.bounds.mean(axis=0), axis=1).max())
    # Depth maps of the undistorted pinhole (the renderer has no distortion). With distortion the
    # projected pixel is not the pinhole's, but the two depths agree wherever the surface is smooth over
    # the displacement, and a wrong call only drops or adds one observation of a point on the surface.
    renderer = MeshRenderer(mesh, backend="auto")
    seen_by = np.zeros(len(xyz), dtype=np.int64)
    colours = np.full((len(xyz), 3), 128, dtype=np.uint8)
    coloured = np.zeros(len(xyz), dtype=bool)
    for index, view in enumerate(scene.views):
        depth = renderer.render(view.K, view.c2w, view.width, view.height).depth
        visible, uv = visible_in_view(xyz, view.K, view.c2w, view.distortion, depth, radius)
        image = images[index]
        seen_by += visible
        first = visible & ~coloured
        px = np.floor(uv[first]).astype(np.int64)
        colours[first] = rgba[index][px[:, 1], px[:, 0], :3]
        coloured |= first
        # Sample indices for now: renumbered below, once the kept points are known.
        image.points2d = [(float(uv[k, 0]), float(uv[k, 1]), int(k)) for k in np.nonzero(visible)[0]]
    # Keep points seen twice or more (COLMAP triangulates nothing from one view); number them 1.. and
    # point the 2D observations and tracks at each other.
    kept = [int(k) for k in np.nonzero(seen_by >= 2)[0]]
    point_id = {k: i + 1 for i, k in enumerate(kept)}
    points = [
        SparsePoint(point_id[k], (float(xyz[k, 0]), float(xyz[k, 1]), float(xyz[k, 2])), [], _rgb(colours[k]), 0.0)
        for k in kept
    ]
    by_id = {p.point_id: p for p in points}
    for image in images:
        observations = []
        for x, y, k in image.points2d:
            if k in point_id:
                by_id[point_id[k]].track.append((image.image_id, len(observations)))
                observations.append((x, y, point_id[k]))
        image.points2d = observations
    return SparseModel(cameras, images, points)


def export_colmap(
    scene_path: str | Path,
    out_dir: str | Path,
    *,
    binary: bool = True,
    camera_model: str = "auto",
    masks: bool = True,
    n_points: int = 2000,
    mesh_path: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
    command: str | None = None,
) -> Path:
    """Write the static scene ``scene_path`` as a COLMAP scene folder ``out_dir`` (module docstring).

    Args:
        scene_path: any static scene ``neus2cli.data.loader.load_scene`` reads (a ``data_tools static``
            folder, a NeuS2/Blender JSON, ...); every view (train and test) becomes an image.
        out_dir: the folder to create (``overwrite`` replaces one this package wrote).
        binary: ``.bin`` files (COLMAP's default), else ``.txt``.
        camera_model: "auto" (PINHOLE; OPENCV for views with distortion), "PINHOLE" or "OPENCV".
        masks: write ``masks/`` (the views' alpha) when the scene has masks; False writes the images
            composited over white instead (an unmasked capture of the object on a white backdrop).
        n_points: points sampled on the mesh for points3D (those seen by 2+ views are kept).
        mesh_path: the mesh in the scene's world frame; default ``gt_mesh.ply`` of the scene folder.
        seed: the point sampling's seed (same arguments, same bytes).
        command: the command line, recorded in README.md.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        UserError: an unreadable scene or mesh (named), a view the camera model cannot hold, a bad
            ``n_points``, an output folder that exists and is not ours.
    """
    from data_tools.generate import GENERATOR_NAME, dump_json, mesh_ply_bytes, staged_output, write_bytes, write_png
    from neus2cli.data.images import decode_view
    from neus2cli.data.loader import load_scene

    scene_path = Path(scene_path)
    if int(n_points) < MIN_SAMPLES:
        raise UserError(f"--points must be at least {MIN_SAMPLES}, got {n_points}.")
    if camera_model not in WRITE_MODELS:
        raise UserError(f"--camera-model must be one of {', '.join(WRITE_MODELS)}, got {camera_model!r}.")
    scene = load_scene(scene_path)
    scene_root = scene_path if scene_path.is_dir() else scene_path.parent
    mesh_file = scene_root / "gt_mesh.ply" if mesh_path is None else Path(mesh_path)
    mesh = _load_mesh(mesh_file, "--mesh")
    names = [_image_name(view, scene_root, i) for i, view in enumerate(scene.views)]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"views share the image name(s) {', '.join(dup[:4])}.", path=scene_path)
    decoded = [decode_view(view) for view in scene.views]
    rgba = [image for image, _ in decoded]
    has_masks = any(masked for _, masked in decoded)
    try:
        model = build_sparse_model(
            scene, mesh, rgba, names, n_points=int(n_points), camera_model=camera_model, seed=seed
        )
    except ValueError as err:
        raise UserError(f"{err}.", path=scene_path, hint="Pass --camera-model OPENCV for distorted views.") from None
    with staged_output(out_dir, overwrite) as tmp:
        for name, image in zip(names, rgba, strict=True):
            if has_masks and masks:
                # Straight colour and the alpha as its own mask, as a masked capture comes: the trainer
                # reads the mask into alpha and sees the same RGBA as the scene's own.
                write_png(tmp / "images" / name, image[..., :3])
                write_png(tmp / "masks" / name, image[..., 3])
            else:
                a = image[..., 3:].astype(np.float64) / 255.0
                rgb = np.round(image[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8)
                write_png(tmp / "images" / name, rgb)
        write_sparse_model(tmp / "sparse" / "0", model, binary=binary)
        write_bytes(tmp / "gt_mesh.ply", mesh_ply_bytes(mesh))
        tracks = np.array([len(p.track) for p in model.points], dtype=np.int64)
        info = {
            "generator": GENERATOR_NAME,
            "kind": "colmap",
            "source_scene": str(scene_path),
            "source_mesh": str(mesh_file),
            "format": "binary" if binary else "text",
            "camera_models": sorted({c.model for c in model.cameras}),
            "n_cameras": len(model.cameras),
            "n_images": len(model.images),
            "masks": bool(has_masks and masks),
            "n_samples": int(n_points),
            "n_points": len(model.points),
            "n_points_track_3_or_more": int((tracks >= 3).sum()),
            "seed": int(seed),
        }
        write_bytes(tmp / "scene_info.json", dump_json(info))
        readme = [
            "# COLMAP model of a scene with known geometry",
            "",
            f"Written by neus2cli's `data_tools` from `{scene_path}`: its cameras as a COLMAP sparse model in",
            "`sparse/0/`, its images in `images/`" + (", its masks in `masks/`" if info["masks"] else "") + ",",
            f"and {len(model.points)} points sampled on `gt_mesh.ply` (the scene's world frame) with the",
            "images that see them. Train it with `neus2 train` and compare the mesh with `gt_mesh.ply`.",
        ]
        if command:
            readme += ["", "Command:", "", f"    {command}"]
        write_bytes(tmp / "README.md", ("\n".join(readme) + "\n").encode())
    return Path(out_dir)
