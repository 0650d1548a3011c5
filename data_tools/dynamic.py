"""Dynamic synthetic sequences: a mesh moving (and optionally bending or twisting) in front of
fixed cameras, with per-frame ground truth.

Frames. The canonical mesh is the input in the generator's world frame (bounding-sphere
centre at the origin, radius ``object_radius``; see ``data_tools.generate``); it is
frame 0's world mesh. Frame k's world mesh is::

    x_k = world_from_canonical_k( deform_k( x ) ),   world_from_canonical_k = [R_k | k t]

where R_k rotates by ``k * rotation_deg_per_frame`` about ``rotation_axis`` through the
origin (the object's centre), ``t`` is the per-frame translation, and ``deform_k`` is a
bend or twist along the object's main axis whose angle is ``k * deformation_deg_per_frame``
(identity at k = 0).

Deformations (``h`` = coordinate along the unit axis ``a``, ``L`` = max |h| over the
canonical vertices, ``b`` a unit direction orthogonal to ``a``, ``c = a x b``):

* twist: rotate about ``a`` by ``angle * h / L``.
* bend: Barr's constant-curvature bend in the (a, b) plane with curvature
  ``kappa = angle / L``: the axis becomes a circular arc of the same length and each
  cross-section is rotated by ``kappa * h`` (so by ``angle`` at the ends); the centre
  (h = 0) stays put.

Output folder (NeuS2 dynamic layout)::

    0000.json, 0001.json, ...   one NeuS2 JSON per frame (from_na: true), every camera of that
                                time step; held-out views carry "split": "test"
    images/0000/0000.png ...    RGBA, alpha = mask
    gt/mesh_0000.ply ...        ground-truth mesh of each frame, world frame
    gt/motion.json              {"frames": [{"index", "world_from_canonical", "rotation_deg",
                                 "translation", "deformation"}], "object_radius", ...}
    gt/scene_info.json, gt/README.md, source/ (the mesh's licence files)

The normalization (same in every frame) maps the bounding sphere of the whole motion to
radius 0.45 around the cube centre; cameras look at that sphere's centre.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from data_tools.camera_paths import CameraPose, cameras_from_directions, jitter_directions
from data_tools.generate import (
    GENERATOR_NAME,
    bounding_sphere,
    check_common_args,
    copy_license_files,
    dump_json,
    heldout_azimuth_offset,
    make_cameras,
    mesh_ply_bytes,
    neus2_frame,
    neus2_json,
    normalization_for_sphere,
    prepare_mesh,
    progress_bar,
    random_azimuth_offset,
    readme_text,
    render_views_to_png,
    staged_output,
    write_bytes,
)
from data_tools.render_mesh import DEFAULT_AMBIENT, DEFAULT_DIFFUSE, DEFAULT_LIGHT_DIR, MeshRenderer


def rotation_matrix(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    """(3, 3) right-handed rotation by ``angle_deg`` about the unit ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64).reshape(3)
    n = np.linalg.norm(a)
    if n == 0:
        raise ValueError("rotation axis must be non-zero")
    a = a / n
    th = math.radians(angle_deg)
    cross = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(th) * cross + (1 - math.cos(th)) * cross @ cross


@dataclass
class Deformation:
    """A bend or twist along ``axis`` (see the module docstring); ``kind="none"`` is the identity.

    Attributes:
        kind: "none", "bend" or "twist".
        angle_deg: bend / twist angle reached at h = +-half_length.
        axis: (3,) unit main axis ``a`` (through the canonical origin).
        direction: (3,) unit bend direction ``b``, orthogonal to ``axis``.
        half_length: L, world units (> 0).
    """

    kind: str
    angle_deg: float
    axis: np.ndarray
    direction: np.ndarray
    half_length: float

    def to_dict(self) -> dict:
        return {
            "type": self.kind,
            "angle_deg": float(self.angle_deg),
            "axis": np.asarray(self.axis, dtype=np.float64).tolist(),
            "direction": np.asarray(self.direction, dtype=np.float64).tolist(),
            "half_length": float(self.half_length),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Deformation:
        return cls(d["type"], d["angle_deg"], np.asarray(d["axis"]), np.asarray(d["direction"]), d["half_length"])

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(n, 3) canonical points -> (n, 3) deformed points (same frame, world units)."""
        return deform_points(points, self)


def deform_points(points: np.ndarray, deformation: Deformation | dict | None) -> np.ndarray:
    """Apply a bend / twist (a ``Deformation`` or its ``to_dict()``, as in gt/motion.json) to
    (n, 3) canonical points; returns (n, 3). ``None`` or type "none" returns a copy."""
    p = np.array(points, dtype=np.float64)
    if deformation is None:
        return p
    if isinstance(deformation, dict):
        deformation = Deformation.from_dict(deformation)
    kind = deformation.kind
    if kind == "none" or deformation.angle_deg == 0.0:
        return p
    if kind not in ("bend", "twist"):
        raise ValueError(f"deformation type must be 'none', 'bend' or 'twist', got {kind!r}")
    a = np.asarray(deformation.axis, dtype=np.float64)
    b = np.asarray(deformation.direction, dtype=np.float64)
    c = np.cross(a, b)
    h, qb, qc = p @ a, p @ b, p @ c
    angle = math.radians(deformation.angle_deg)
    if kind == "twist":
        phi = angle * h / deformation.half_length
        cos, sin = np.cos(phi), np.sin(phi)
        return h[:, None] * a + (qb * cos - qc * sin)[:, None] * b + (qb * sin + qc * cos)[:, None] * c
    kappa = angle / deformation.half_length
    th = kappa * h
    cos, sin = np.cos(th), np.sin(th)
    # Arc of the axis (unit speed: same length as the straight axis) and the rotated cross-section.
    spine = (sin / kappa)[:, None] * a + ((1.0 - cos) / kappa)[:, None] * b
    normal = -sin[:, None] * a + cos[:, None] * b
    return spine + qb[:, None] * normal + qc[:, None] * c


def principal_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) points -> (main axis, second axis): unit PCA directions (about the centroid),
    each signed so that its largest-magnitude component is positive (deterministic)."""
    p = np.asarray(points, dtype=np.float64)
    p = p - p.mean(axis=0)
    _, vecs = np.linalg.eigh(p.T @ p)
    axes = []
    for v in (vecs[:, 2], vecs[:, 1]):
        axes.append(v if v[np.argmax(np.abs(v))] > 0 else -v)
    return axes[0], axes[1]


def _vec3(x: float | Sequence[float], axis: Sequence[float], name: str) -> np.ndarray:
    if isinstance(x, int | float):
        a = np.asarray(axis, dtype=np.float64).reshape(3)
        if np.linalg.norm(a) == 0:
            raise ValueError(f"the axis for a scalar {name} must be non-zero")
        return float(x) * a / np.linalg.norm(a)
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    if v.shape != (3,):
        raise ValueError(f"{name} must be a number or a 3-vector, got {x!r}")
    return v


def generate_dynamic_sequence(
    mesh: str | Path | trimesh.Trimesh,
    out_dir: str | Path,
    *,
    n_frames: int = 10,
    n_views: int = 24,
    width: int = 128,
    height: int = 128,
    rotation_deg_per_frame: float = 5.0,
    rotation_axis: Sequence[float] = (0.0, 1.0, 0.0),
    translation_per_frame: float | Sequence[float] = 0.0,
    translation_axis: Sequence[float] = (1.0, 0.0, 0.0),
    deformation: str | None = None,
    deformation_deg_per_frame: float = 5.0,
    deformation_axis: Sequence[float] | None = None,
    n_test_views: int = 0,
    seed: int = 0,
    object_radius: float = 1.0,
    layout: str = "sphere",
    distance: float = 2.75,
    fov_x_deg: float | None = None,
    up: Sequence[float] = (0.0, 1.0, 0.0),
    min_elevation_deg: float = -90.0,
    max_elevation_deg: float = 90.0,
    ring_elevation_deg: float = 20.0,
    jitter_deg: float = 0.0,
    per_frame_jitter_deg: float = 0.0,
    supersample: int = 2,
    light_dir: Sequence[float] = DEFAULT_LIGHT_DIR,
    ambient: float = DEFAULT_AMBIENT,
    diffuse: float = DEFAULT_DIFFUSE,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Render a moving mesh from fixed cameras into a NeuS2 dynamic-sequence folder.

    Args:
        mesh: a mesh file or a Trimesh (becomes the canonical mesh, frame 0).
        out_dir: the sequence folder to create (layout in the module docstring).
        n_frames: time steps; n_views: training cameras; n_test_views: held-out cameras
            (``split: "test"`` in every frame's JSON).
        rotation_deg_per_frame, rotation_axis: rotation about an axis through the object centre.
        translation_per_frame: per-frame translation in object diameters (2 * object_radius):
            a 3-vector, or a number along ``translation_axis``.
        deformation: None, "bend" or "twist"; its angle grows by ``deformation_deg_per_frame``
            per frame; ``deformation_axis`` None uses the canonical mesh's main PCA axis.
        seed: camera azimuth offset and jitters; same arguments, same bytes.
        distance: cameras' distance from the motion's bounding-sphere centre, in radii of that
            sphere; other camera and shading arguments as in ``generate_static_scene``.
        per_frame_jitter_deg: std of extra random camera tilts drawn anew for every frame
            (0: cameras fixed across frames).
    Returns:
        ``out_dir`` as a Path.
    """
    check_common_args(n_views, width, height, supersample)
    if int(n_frames) < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if int(n_test_views) < 0:
        raise ValueError(f"n_test_views must be >= 0, got {n_test_views}")
    if deformation not in (None, "none", "bend", "twist"):
        raise ValueError(f"deformation must be None, 'bend' or 'twist', got {deformation!r}")
    prepared = prepare_mesh(mesh, object_radius)
    R = prepared.object_radius
    t = _vec3(translation_per_frame, translation_axis, "translation_per_frame") * 2.0 * R
    rot_axis = np.asarray(rotation_axis, dtype=np.float64)
    rot_axis = rot_axis / np.linalg.norm(rot_axis)

    gt_vertices = np.asarray(prepared.gt_mesh.vertices, dtype=np.float64)
    main, second = principal_axes(gt_vertices)
    if deformation_axis is not None:
        main = _vec3(deformation_axis, (1, 0, 0), "deformation_axis")
        main = main / np.linalg.norm(main)
        second = np.eye(3)[int(np.argmin(np.abs(main)))]
    second = second - (second @ main) * main
    second /= np.linalg.norm(second)
    half_length = float(np.abs(gt_vertices @ main).max())

    frames = []
    for k in range(n_frames):
        deform = Deformation(
            "none" if deformation in (None, "none") else deformation,
            k * deformation_deg_per_frame if deformation not in (None, "none") else 0.0,
            main,
            second,
            half_length,
        )
        w_from_c = np.eye(4)
        w_from_c[:3, :3] = rotation_matrix(rot_axis, k * rotation_deg_per_frame)
        w_from_c[:3, 3] = k * t
        frames.append((deform, w_from_c))

    def to_world(points: np.ndarray, k: int) -> np.ndarray:
        deform, w_from_c = frames[k]
        return deform_points(points, deform) @ w_from_c[:3, :3].T + w_from_c[:3, 3]

    world_gt = [to_world(gt_vertices, k) for k in range(n_frames)]
    center, radius = bounding_sphere(np.concatenate(world_gt))
    norm = normalization_for_sphere(center, radius)

    train_offset = random_azimuth_offset(seed)
    cam_kw = dict(
        layout=layout,
        width=width,
        height=height,
        center=center,
        radius=radius,
        distance=distance,
        fov_x_deg=fov_x_deg,
        up=up,
        min_elevation_deg=min_elevation_deg,
        max_elevation_deg=max_elevation_deg,
        ring_elevation_deg=ring_elevation_deg,
        jitter_deg=jitter_deg,
    )
    base = make_cameras(n_views, azimuth_offset_deg=train_offset, seed=seed, **cam_kw)
    if n_test_views > 0:
        test_offset = heldout_azimuth_offset(layout, n_views, train_offset)
        base += make_cameras(n_test_views, azimuth_offset_deg=test_offset, seed=seed + 1, **cam_kw)
    splits = ["train"] * n_views + ["test"] * n_test_views

    def cameras_for_frame(k: int) -> list[CameraPose]:
        if per_frame_jitter_deg <= 0:
            return base
        dirs = np.stack([c.c2w[:3, 3] - center for c in base])
        dist = np.linalg.norm(dirs, axis=1, keepdims=True)
        dirs = jitter_directions(dirs / dist, per_frame_jitter_deg, np.random.default_rng([int(seed), 2, k]))
        fov = math.degrees(2 * math.atan(0.5 * width / base[0].K[0, 0]))
        return [
            cameras_from_directions(d[None], float(r[0]), width, height, fov, center, up)[0]
            for d, r in zip(dirs, dist, strict=True)
        ]

    motion_frames = []
    with staged_output(out_dir, overwrite) as tmp:
        with progress_bar(progress, n_frames * len(base), f"rendering {Path(out_dir).name}") as advance:
            for k in range(n_frames):
                deform, w_from_c = frames[k]
                posed = prepared.render_mesh.copy()
                posed.vertices = to_world(np.asarray(prepared.render_mesh.vertices), k)
                renderer = MeshRenderer(
                    posed, light_dir=light_dir, ambient=ambient, diffuse=diffuse, albedo=prepared.albedo
                )
                cams = cameras_for_frame(k)
                rels = [f"images/{k:04d}/{i:04d}.png" for i in range(len(cams))]
                render_views_to_png(
                    renderer,
                    [(c, tmp / r) for c, r in zip(cams, rels, strict=True)],
                    width,
                    height,
                    supersample,
                    advance,
                )
                entries = [
                    neus2_frame(rel, cam, "test" if split == "test" else None)
                    for rel, cam, split in zip(rels, cams, splits, strict=True)
                ]
                write_bytes(tmp / f"{k:04d}.json", dump_json(neus2_json(entries, width, height, norm)))
                gt_k = trimesh.Trimesh(vertices=world_gt[k], faces=prepared.gt_mesh.faces, process=False)
                write_bytes(tmp / "gt" / f"mesh_{k:04d}.ply", mesh_ply_bytes(gt_k))
                motion_frames.append(
                    {
                        "index": k,
                        "world_from_canonical": w_from_c.tolist(),
                        "rotation_deg": k * float(rotation_deg_per_frame),
                        "rotation_axis": rot_axis.tolist(),
                        "translation": w_from_c[:3, 3].tolist(),
                        "deformation": deform.to_dict(),
                    }
                )
        motion = {
            "frames": motion_frames,
            "object_radius": R,
            "canonical_frame": 0,
            "rotation_center": [0.0, 0.0, 0.0],
            "convention": "x_world_k = world_from_canonical_k @ deform_k(x_canonical); "
            "data_tools.dynamic.deform_points implements deform_k",
        }
        write_bytes(tmp / "gt" / "motion.json", dump_json(motion))
        licenses = copy_license_files(prepared.source, tmp / "source")
        info = {
            "generator": GENERATOR_NAME,
            "kind": "dynamic",
            "convention": "neus2",
            "frames": [f"{k:04d}.json" for k in range(n_frames)],
            "mesh_source": prepared.source,
            "mesh_sha256": prepared.source_sha256,
            "coloring": prepared.coloring,
            "source_bounding_sphere": {
                "center": prepared.source_center.tolist(),
                "radius": prepared.source_radius,
            },
            "world_from_source": prepared.world_from_source.tolist(),
            "canonical_bounding_sphere": {"center": [0.0, 0.0, 0.0], "radius": R},
            "motion_bounding_sphere": {"center": center.tolist(), "radius": radius},
            "normalization": norm.to_dict(),
            "settings": {
                "n_frames": int(n_frames),
                "n_views": int(n_views),
                "n_test_views": int(n_test_views),
                "width": int(width),
                "height": int(height),
                "layout": layout,
                "seed": int(seed),
                "object_radius": R,
                "rotation_deg_per_frame": float(rotation_deg_per_frame),
                "rotation_axis": rot_axis.tolist(),
                "translation_per_frame_world": t.tolist(),
                "deformation": deformation or "none",
                "deformation_deg_per_frame": float(deformation_deg_per_frame),
                "distance_radii": float(distance),
                "up": [float(x) for x in up],
                "min_elevation_deg": float(min_elevation_deg),
                "max_elevation_deg": float(max_elevation_deg),
                "ring_elevation_deg": float(ring_elevation_deg),
                "azimuth_offset_deg": train_offset,
                "jitter_deg": float(jitter_deg),
                "per_frame_jitter_deg": float(per_frame_jitter_deg),
                "supersample": int(supersample),
                "light_dir": [float(x) for x in light_dir],
                "ambient": float(ambient),
                "diffuse": float(diffuse),
            },
            "source_license_files": [f"source/{n}" for n in licenses],
        }
        write_bytes(tmp / "gt" / "scene_info.json", dump_json(info))
        write_bytes(tmp / "gt" / "README.md", readme_text("Synthetic dynamic sequence", prepared, command, licenses))
    return Path(out_dir)
