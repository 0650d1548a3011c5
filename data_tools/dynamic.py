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

Jobs: ``Motion`` (per-frame deformation and rigid transform, ``gt/motion.json``),
``SequenceCameras`` (the ``CameraRig``'s cameras plus per-frame jitter), ``write_frame``
(render one frame and write its JSON), ``dynamic_scene_info`` (``gt/scene_info.json``);
``generate_dynamic_sequence`` strings them together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from data_tools.camera_paths import (
    CameraPose,
    CameraRig,
    cameras_from_directions,
    horizontal_fov_deg,
    jitter_directions,
)
from data_tools.checks import finite_number, vector3
from data_tools.generate import (
    GENERATOR_NAME,
    PreparedMesh,
    bounding_sphere,
    check_common_args,
    copy_license_files,
    dump_json,
    mesh_ply_bytes,
    neus2_frame,
    neus2_json,
    normalization_for_sphere,
    prepare_mesh,
    progress_bar,
    readme_text,
    render_views_to_png,
    staged_output,
    write_bytes,
)
from data_tools.render_mesh import Shading
from neus2cli.data.scene import Normalization


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


def deformation_axes(
    canonical_vertices: np.ndarray, axis: float | Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray, float]:
    """The bend / twist frame of the (n, 3) canonical vertices (world units): unit main axis ``a``
    (``axis``, or the main PCA axis when None), unit bend direction ``b`` orthogonal to it (the
    second PCA axis, or the world axis least aligned with ``a``), and L = max |x . a| (world units)."""
    main, second = principal_axes(canonical_vertices)
    if axis is not None:
        main = _vec3(axis, (1, 0, 0), "deformation_axis")
        if np.linalg.norm(main) == 0:
            raise ValueError(f"deformation_axis must be non-zero, got {axis!r}")
        main = main / np.linalg.norm(main)
        second = np.eye(3)[int(np.argmin(np.abs(main)))]
    second = second - (second @ main) * main
    second /= np.linalg.norm(second)
    return main, second, float(np.abs(canonical_vertices @ main).max())


@dataclass(frozen=True, eq=False)
class Motion:
    """The motion of the canonical mesh (module docstring): frame k's world points are
    ``x_k = R_k deform_k(x) + k t``, R_k a rotation by ``k * rotation_deg_per_frame`` about
    ``rotation_axis`` through the origin (the canonical object's centre).

    Attributes:
        rotation_axis: (3,) unit axis, world frame.
        rotation_deg_per_frame: degrees per frame, right-handed about the axis.
        translation_per_frame: (3,) t, world units per frame.
        deformation: "none", "bend" or "twist".
        deformation_deg_per_frame: frame k's bend / twist angle is k times this, degrees.
        deformation_axis, deformation_direction: (3,) unit ``a`` and ``b`` (orthogonal), canonical frame.
        half_length: L (> 0), world units.
    """

    rotation_axis: np.ndarray
    rotation_deg_per_frame: float
    translation_per_frame: np.ndarray
    deformation: str
    deformation_deg_per_frame: float
    deformation_axis: np.ndarray
    deformation_direction: np.ndarray
    half_length: float

    @classmethod
    def build(
        cls,
        canonical_vertices: np.ndarray,
        object_radius: float,
        *,
        rotation_deg_per_frame: float,
        rotation_axis: Sequence[float],
        translation_per_frame: float | Sequence[float],
        translation_axis: Sequence[float],
        deformation: str | None,
        deformation_deg_per_frame: float,
        deformation_axis: float | Sequence[float] | None,
    ) -> Motion:
        """Validate the generator's motion arguments (see ``generate_dynamic_sequence``) and fix the
        frame: translation from object diameters (2 * ``object_radius``) to world units, the
        deformation frame from the (n, 3) canonical vertices (``deformation_axes``)."""
        if deformation not in (None, "none", "bend", "twist"):
            raise ValueError(f"deformation must be None, 'bend' or 'twist', got {deformation!r}")
        rot_axis = np.asarray(vector3(rotation_axis, "rotation_axis"))
        main, second, half_length = deformation_axes(canonical_vertices, deformation_axis)
        return cls(
            rotation_axis=rot_axis / np.linalg.norm(rot_axis),
            rotation_deg_per_frame=finite_number(rotation_deg_per_frame, "rotation_deg_per_frame"),
            translation_per_frame=_vec3(translation_per_frame, translation_axis, "translation_per_frame")
            * 2.0
            * object_radius,
            deformation=deformation or "none",
            deformation_deg_per_frame=finite_number(deformation_deg_per_frame, "deformation_deg_per_frame"),
            deformation_axis=main,
            deformation_direction=second,
            half_length=half_length,
        )

    def deformation_at(self, k: int) -> Deformation:
        """Frame k's bend / twist (the identity at k = 0 and for ``deformation="none"``)."""
        angle = k * self.deformation_deg_per_frame if self.deformation != "none" else 0.0
        return Deformation(self.deformation, angle, self.deformation_axis, self.deformation_direction, self.half_length)

    def world_from_canonical(self, k: int) -> np.ndarray:
        """(4, 4) frame k's rigid part [R_k | k t] (world units), applied after ``deformation_at(k)``."""
        w_from_c = np.eye(4)
        w_from_c[:3, :3] = rotation_matrix(self.rotation_axis, k * self.rotation_deg_per_frame)
        w_from_c[:3, 3] = k * self.translation_per_frame
        return w_from_c

    def to_world(self, points: np.ndarray, k: int) -> np.ndarray:
        """(n, 3) canonical points -> (n, 3) frame k's world points (world units)."""
        w_from_c = self.world_from_canonical(k)
        return deform_points(points, self.deformation_at(k)) @ w_from_c[:3, :3].T + w_from_c[:3, 3]

    def frame_dict(self, k: int) -> dict:
        """Frame k's entry of ``gt/motion.json``."""
        w_from_c = self.world_from_canonical(k)
        return {
            "index": k,
            "world_from_canonical": w_from_c.tolist(),
            "rotation_deg": k * self.rotation_deg_per_frame,
            "rotation_axis": self.rotation_axis.tolist(),
            "translation": w_from_c[:3, 3].tolist(),
            "deformation": self.deformation_at(k).to_dict(),
        }

    def to_dict(self, n_frames: int, object_radius: float) -> dict:
        """``gt/motion.json`` of frames 0 .. n_frames - 1 (``object_radius``: canonical, world units)."""
        return {
            "frames": [self.frame_dict(k) for k in range(n_frames)],
            "object_radius": object_radius,
            "canonical_frame": 0,
            "rotation_center": [0.0, 0.0, 0.0],
            "convention": "x_world_k = world_from_canonical_k @ deform_k(x_canonical); "
            "data_tools.dynamic.deform_points implements deform_k",
        }

    def settings(self) -> dict:
        """The motion's entries of ``gt/scene_info.json`` "settings", in file order."""
        return {
            "rotation_deg_per_frame": self.rotation_deg_per_frame,
            "rotation_axis": self.rotation_axis.tolist(),
            "translation_per_frame_world": self.translation_per_frame.tolist(),
            "deformation": self.deformation,
            "deformation_deg_per_frame": self.deformation_deg_per_frame,
        }


@dataclass(frozen=True, eq=False)
class SequenceCameras:
    """A sequence's cameras: a ``CameraRig``'s training then held-out cameras around the motion's
    bounding sphere, the same in every frame unless ``per_frame_jitter_deg`` re-tilts them.

    Attributes:
        base: the rig's cameras (OpenCV c2w, world units), training first.
        splits: "train" or "test" per camera of ``base``.
        center: (3,) the sphere's centre the cameras look at, world units.
        up: world up of the rig.
        width: image width, pixels (the FOV of re-tilted cameras is read from ``base``).
        height: image height, pixels.
        per_frame_jitter_deg: std of the extra random tilt drawn anew for every frame, degrees.
        seed: the generator's seed (frame k's tilts draw from ``[seed, 2, k]``).
        azimuth_offset_deg: the rig's seed-drawn azimuth offset, degrees.
    """

    base: list[CameraPose]
    splits: list[str]
    center: np.ndarray
    up: tuple[float, float, float]
    width: int
    height: int
    per_frame_jitter_deg: float
    seed: int
    azimuth_offset_deg: float

    @classmethod
    def around(
        cls,
        rig: CameraRig,
        n_views: int,
        n_test_views: int,
        width: int,
        height: int,
        center: np.ndarray,
        radius: float,
        seed: int,
        per_frame_jitter_deg: float,
    ) -> SequenceCameras:
        """``n_views`` + ``n_test_views`` cameras of ``rig`` around the sphere (``center`` (3,),
        ``radius``, world units) for ``width`` x ``height`` pixel images."""
        jitter = finite_number(per_frame_jitter_deg, "per_frame_jitter_deg")
        if jitter < 0:
            raise ValueError(f"per_frame_jitter_deg must be >= 0, got {per_frame_jitter_deg}")
        cams = rig.split_cameras(n_views, n_test_views, width, height, center, radius, seed)
        splits = ["train"] * n_views + ["test"] * n_test_views
        return cls(cams.train + cams.test, splits, center, rig.up, width, height, jitter, seed, cams.azimuth_offset_deg)

    def for_frame(self, k: int) -> list[CameraPose]:
        """Frame k's cameras: ``base`` re-tilted by a seeded random angle (same distance, FOV)."""
        if self.per_frame_jitter_deg <= 0:
            return self.base
        dirs = np.stack([c.c2w[:3, 3] - self.center for c in self.base])
        dist = np.linalg.norm(dirs, axis=1, keepdims=True)
        rng = np.random.default_rng([int(self.seed), 2, k])
        dirs = jitter_directions(dirs / dist, self.per_frame_jitter_deg, rng)
        fov = horizontal_fov_deg(self.base[0].K, self.width)
        return [
            cameras_from_directions(d[None], float(r[0]), self.width, self.height, fov, self.center, self.up)[0]
            for d, r in zip(dirs, dist, strict=True)
        ]


def write_frame(
    folder: Path,
    k: int,
    prepared: PreparedMesh,
    motion: Motion,
    cams: list[CameraPose],
    splits: list[str],
    shading: Shading,
    norm: Normalization,
    width: int,
    height: int,
    advance,
) -> None:
    """Render frame k: pose the render mesh (``motion.to_world``), render ``cams`` to
    ``folder/images/<k>/<i>.png`` (``width`` x ``height`` px) and write ``folder/<k>.json``
    (NeuS2, OpenCV c2w, world units, ``norm`` to the cube; held-out views ``split: "test"``)."""
    posed = prepared.render_mesh.copy()
    posed.vertices = motion.to_world(np.asarray(prepared.render_mesh.vertices), k)
    renderer = shading.renderer(posed, prepared.albedo)
    rels = [f"images/{k:04d}/{i:04d}.png" for i in range(len(cams))]
    jobs = [(c, folder / r) for c, r in zip(cams, rels, strict=True)]
    render_views_to_png(renderer, jobs, width, height, shading.supersample, advance)
    entries = [
        neus2_frame(rel, cam, "test" if split == "test" else None)
        for rel, cam, split in zip(rels, cams, splits, strict=True)
    ]
    write_bytes(folder / f"{k:04d}.json", dump_json(neus2_json(entries, width, height, norm)))


def frame_gt_ply(world_vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """Binary PLY of frame k's ground-truth mesh: (n, 3) world vertices, the canonical faces."""
    return mesh_ply_bytes(trimesh.Trimesh(vertices=world_vertices, faces=faces, process=False))


def dynamic_scene_info(
    prepared: PreparedMesh,
    n_frames: int,
    motion_sphere: tuple[np.ndarray, float],
    norm: Normalization,
    settings: dict,
    licenses: list[str],
) -> dict:
    """The sequence's ``gt/scene_info.json`` (key order is the file's): provenance, canonical and
    motion bounding spheres (world units), normalization, ``settings``."""
    center, radius = motion_sphere
    return {
        "generator": GENERATOR_NAME,
        "kind": "dynamic",
        "convention": "neus2",
        "frames": [f"{k:04d}.json" for k in range(n_frames)],
        **prepared.source_info(),
        "canonical_bounding_sphere": {"center": [0.0, 0.0, 0.0], "radius": prepared.object_radius},
        "motion_bounding_sphere": {"center": center.tolist(), "radius": radius},
        "normalization": norm.to_dict(),
        "settings": settings,
        "source_license_files": [f"source/{n}" for n in licenses],
    }


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
    rig: CameraRig = CameraRig(),
    shading: Shading = Shading(),
    per_frame_jitter_deg: float = 0.0,
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
        rig: the cameras as in ``generate_static_scene``, but around the bounding sphere of the
            whole motion: ``rig.distance`` is in radii of that sphere.
        shading: light direction (world frame), Lambert weights, supersampling.
        per_frame_jitter_deg: std of extra random camera tilts drawn anew for every frame
            (0: cameras fixed across frames).
    Returns:
        ``out_dir`` as a Path.
    """
    check_common_args(n_views, width, height, rig, shading)
    if int(n_frames) < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if int(n_test_views) < 0:
        raise ValueError(f"n_test_views must be >= 0, got {n_test_views}")
    prepared = prepare_mesh(mesh, object_radius)
    R = prepared.object_radius
    gt_vertices = np.asarray(prepared.gt_mesh.vertices, dtype=np.float64)
    motion = Motion.build(
        gt_vertices,
        R,
        rotation_deg_per_frame=rotation_deg_per_frame,
        rotation_axis=rotation_axis,
        translation_per_frame=translation_per_frame,
        translation_axis=translation_axis,
        deformation=deformation,
        deformation_deg_per_frame=deformation_deg_per_frame,
        deformation_axis=deformation_axis,
    )
    world_gt = [motion.to_world(gt_vertices, k) for k in range(n_frames)]
    center, radius = bounding_sphere(np.concatenate(world_gt))
    norm = normalization_for_sphere(center, radius)
    cams = SequenceCameras.around(rig, n_views, n_test_views, width, height, center, radius, seed, per_frame_jitter_deg)
    settings = {
        "n_frames": int(n_frames),
        "n_views": int(n_views),
        "n_test_views": int(n_test_views),
        "width": int(width),
        "height": int(height),
        "layout": rig.layout,
        "seed": int(seed),
        "object_radius": R,
        **motion.settings(),
        **rig.to_dict(cams.azimuth_offset_deg),
        "per_frame_jitter_deg": cams.per_frame_jitter_deg,
        **shading.to_dict(),
    }
    with staged_output(out_dir, overwrite) as tmp:
        with progress_bar(progress, n_frames * len(cams.base), f"rendering {Path(out_dir).name}") as advance:
            for k in range(n_frames):
                write_frame(
                    tmp, k, prepared, motion, cams.for_frame(k), cams.splits, shading, norm, width, height, advance
                )
                write_bytes(tmp / "gt" / f"mesh_{k:04d}.ply", frame_gt_ply(world_gt[k], prepared.gt_mesh.faces))
        write_bytes(tmp / "gt" / "motion.json", dump_json(motion.to_dict(n_frames, R)))
        licenses = copy_license_files(prepared.source, tmp / "source")
        info = dynamic_scene_info(prepared, n_frames, (center, radius), norm, settings, licenses)
        write_bytes(tmp / "gt" / "scene_info.json", dump_json(info))
        write_bytes(tmp / "gt" / "README.md", readme_text("Synthetic dynamic sequence", prepared, command, licenses))
    return Path(out_dir)
