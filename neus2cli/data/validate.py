"""Scene sanity checks: catch bad input before a training run wastes minutes on it.

Two levels:

* ``check_scene`` (cheap, no pixels; ``load_scene`` runs it): empty scene, non-finite
  or non-rigid poses, implausible intrinsics, cameras that do not look at the
  reconstruction box.
* ``validate_scene`` (decodes every image): missing/unreadable files, image sizes
  that disagree with the scene file, views with and without masks mixed, masks that
  are all empty, and a **warning** when the masks say the object
  does not fit the normalized cube (estimated by carving a coarse voxel grid with the
  masks), with a ``scale``/``offset`` that would fit.

Errors are ``UserError`` paragraphs naming the file and the fix; warnings are strings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from neus2cli.data.cameras import rigidity_error
from neus2cli.data.hull import carve_hull, pixel_lookup
from neus2cli.data.images import decode_view, map_views
from neus2cli.data.rays import project_points
from neus2cli.data.scene import Normalization, Scene, View
from neus2cli.errors import UserError

#: Largest |R^T R - I| (and |det R - 1|) accepted for a pose.
RIGID_TOL = 1e-3
#: Masks are downsampled to at most this many pixels on their long side for carving.
CARVE_MAX_SIZE = 200
#: Voxels per axis of the carving grid.
CARVE_RESOLUTION = 48
#: Relative margin around the carved content when suggesting a scale/offset.
FIT_MARGIN = 0.10


def _name_list(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _view_label(view: View) -> str:
    return f"view '{view.name}'" + (f" ({view.image_path})" if view.image_path is not None else "")


def region_center_world(normalization: Normalization) -> np.ndarray:
    """(3,) world position of the centre of the reconstruction box (``normalization.aabb``)."""
    return normalization.normalized_to_world(normalization.aabb.mean(axis=0))


def check_poses(scene: Scene) -> None:
    """``UserError`` for the first view with non-finite or non-rigid c2w, or a bad K."""
    for i, view in enumerate(scene.views):
        c2w = np.asarray(view.c2w, dtype=np.float64)
        if c2w.shape != (4, 4) or not np.all(np.isfinite(c2w)):
            raise UserError(
                f"{_view_label(view)}, frame {i}: the camera pose contains NaN or infinite values.",
                path=scene.root,
                hint="Fix or drop that frame.",
            )
        err = float(rigidity_error(c2w))
        if err > RIGID_TOL:
            det = float(np.linalg.det(c2w[:3, :3]))
            what = "is a reflection (det = -1)" if det < 0 else f"is not orthonormal (error {err:.2g})"
            raise UserError(
                f"{_view_label(view)}, frame {i}: the pose's rotation {what}; a camera-to-world matrix must "
                f"be a rotation plus translation (tolerance {RIGID_TOL:g}).",
                path=scene.root,
                hint="Remove any scale from transform_matrix (put it in the scene's 'scale' instead) and "
                "check the last row is [0, 0, 0, 1].",
            )
        K = np.asarray(view.K, dtype=np.float64)
        if (
            K.shape != (3, 3)
            or not np.all(np.isfinite(K))
            or K[0, 0] <= 0
            or K[1, 1] <= 0
            or abs(K[2, 2] - 1) > 1e-9
            or np.any(K[[1, 2, 2], [0, 0, 1]] != 0)
        ):
            raise UserError(
                f"{_view_label(view)}, frame {i}: intrinsics must be a pinhole matrix with positive focal "
                f"lengths, got {np.array2string(K, precision=4)}.",
                path=scene.root,
            )
        if not (0 <= K[0, 2] <= view.width and 0 <= K[1, 2] <= view.height):
            raise UserError(
                f"{_view_label(view)}, frame {i}: the principal point ({K[0, 2]:.1f}, {K[1, 2]:.1f}) lies "
                f"outside the {view.width}x{view.height} image.",
                path=scene.root,
                hint="The intrinsics probably belong to another resolution: rescale fl_x/cx (or the "
                "intrinsic matrix) with the images, or fix 'w'/'h'.",
            )


def check_cameras_see_region(scene: Scene) -> None:
    """``UserError`` naming the views whose camera does not see the reconstruction box's centre.

    The centre must be in front of the camera and project within one image size of
    the image (pinhole; distortion is ignored this far out, where its polynomial is
    meaningless).
    """
    n_views = len(scene.views)
    centre = torch.as_tensor(region_center_world(scene.normalization), dtype=torch.float64)
    uv, depth = project_points(  # all views in one call: one centre per view
        centre.expand(n_views, 3),
        torch.as_tensor(np.stack([v.K for v in scene.views]), dtype=torch.float64),
        torch.as_tensor(np.stack([v.c2w for v in scene.views]), dtype=torch.float64),
    )
    behind, outside = [], []
    for view, (u, v), z in zip(scene.views, uv.tolist(), depth.tolist(), strict=True):
        if z <= 0:
            behind.append(view.name)
        elif not (-view.width <= u <= 2 * view.width and -view.height <= v <= 2 * view.height):
            outside.append(view.name)
    if behind or outside:
        parts = []
        if behind:
            parts.append(f"behind {len(behind)} camera(s) ({_name_list(behind)})")
        if outside:
            parts.append(f"far outside the image of {len(outside)} camera(s) ({_name_list(outside)})")
        n = scene.normalization
        raise UserError(
            f"the centre of the reconstruction box (normalized {n.aabb.mean(axis=0).tolist()}, world "
            f"{np.round(region_center_world(n), 4).tolist()}) is " + " and ".join(parts) + ".",
            path=scene.root,
            hint="The cameras must look at the object: check the pose convention (OpenGL vs OpenCV, "
            "'from_na') and the 'scale'/'offset' that place the object in the unit cube.",
        )


def check_scene(scene: Scene) -> list[str]:
    """Cheap checks (no pixels read). Raises ``UserError``; returns new warnings."""
    if not scene.views:
        raise UserError("the scene has no frames.", path=scene.root, hint="Add frames (images with camera poses).")
    check_poses(scene)
    check_cameras_see_region(scene)
    warnings = []
    if not scene.split.get("train"):
        warnings.append(f"{scene.name}: no training views (every view is in the test split).")
    return warnings


# --------------------------------------------------------------------------------------------
# Decoding every image once: sizes, mask statistics, and small masks for carving.


@dataclass
class MaskSummary:
    """What one pass over a view's pixels leaves behind (small: the full image is dropped).

    Attributes:
        width, height: decoded image size.
        coverage: fraction of pixels with alpha > 127.
        has_mask: False when alpha is 255 everywhere (no mask information).
        masked: the view supplies a mask (a mask file or an alpha channel), even
            one that is 255 everywhere.
        small: (h, w) bool foreground, max-pooled by ``factor`` (a pixel block is
            foreground if any of its pixels is), so carving never cuts real content.
        factor: integer downsampling factor of ``small``.
    """

    width: int
    height: int
    coverage: float
    has_mask: bool
    masked: bool
    small: np.ndarray
    factor: int


def summarize_view(view: View, max_size: int = CARVE_MAX_SIZE) -> MaskSummary:
    """Decode ``view`` (raises ``UserError`` for missing/unreadable files) and summarize its mask."""
    rgba, masked = decode_view(view)
    alpha = rgba[..., 3]
    h, w = alpha.shape
    fg = alpha > 127
    factor = max(1, math.ceil(max(h, w) / max_size))
    hs, ws = math.ceil(h / factor), math.ceil(w / factor)
    padded = np.zeros((hs * factor, ws * factor), dtype=bool)
    padded[:h, :w] = fg
    small = padded.reshape(hs, factor, ws, factor).any(axis=(1, 3))
    return MaskSummary(w, h, float(fg.mean()), bool(alpha.min() < 255), masked, small, factor)


def summarize_views(views: Sequence[View], workers: int | None = None, progress: bool = True) -> list[MaskSummary]:
    """``summarize_view`` for every view, in parallel threads with a progress bar."""
    return map_views(summarize_view, views, workers=workers, progress=progress, desc="checking images")


def check_image_sizes(views: Sequence[View], summaries: Sequence[MaskSummary], scene: Scene) -> None:
    """``UserError`` naming the views whose decoded size differs from the scene file's."""
    bad = [
        f"{v.image_path.name if v.image_path else v.name} is {s.width}x{s.height}, expected {v.width}x{v.height}"
        for v, s in zip(views, summaries, strict=True)
        if (s.width, s.height) != (v.width, v.height)
    ]
    if bad:
        raise UserError(
            f"{len(bad)} image(s) do not match the size in the scene file: {_name_list(bad, 4)}.",
            path=scene.root,
            hint="Fix 'w'/'h' (and the intrinsics) in the scene file, or resize the images to match.",
        )


def check_masks(views: Sequence[View], masked: Sequence[bool], coverage: Sequence[float], scene: Scene) -> list[str]:
    """``UserError`` when some views have a mask and others none, or when every mask is empty.

    Args:
        views: the views read (all of the scene's, or a sample).
        masked: per view, whether it supplies a mask (``MaskSummary.masked``).
        coverage: per view, the fraction of foreground pixels (alpha > 127).

    A view without a mask counts as all foreground, so mixing the two teaches the
    background as the object in the unmasked views; a scene of empty masks has no object
    (the usual cause: inverted or blank mask exports). Returns a warning naming the views
    whose mask alone is empty.
    """
    with_mask = [v.name for v, m in zip(views, masked, strict=True) if m]
    without = [v.name for v, m in zip(views, masked, strict=True) if not m]
    if with_mask and without:
        raise UserError(
            f"{len(with_mask)} of the {len(views)} views read have a mask ({_name_list(with_mask, 3)}) and "
            f"{len(without)} have none ({_name_list(without, 3)}); a view without a mask counts as all "
            "foreground, so the scene mixes masked and unmasked views.",
            path=scene.root,
            hint="Give every view a mask (an RGBA image or a separate mask file) or none.",
        )
    empty = [v.name for v, m, c in zip(views, masked, coverage, strict=True) if m and c == 0]
    if with_mask and len(empty) == len(with_mask):
        raise UserError(
            f"every mask is empty: none of the {len(with_mask)} views read has a foreground pixel (alpha or "
            "mask value > 127), so there is no object to reconstruct.",
            path=scene.root,
            hint="Check the masks (255 is the object, 0 the background); an inverted or blank export is the "
            "usual cause.",
        )
    if empty:
        names = _name_list(empty)
        return [f"{scene.name}: {len(empty)} view(s) have an empty mask ({names}): the object is not in them."]
    return []


def check_summaries(views: Sequence[View], summaries: Sequence[MaskSummary], scene: Scene) -> list[str]:
    """``check_image_sizes`` and ``check_masks`` of decoded views; returns the warnings."""
    check_image_sizes(views, summaries, scene)
    return check_masks(views, [s.masked for s in summaries], [s.coverage for s in summaries], scene)


# --------------------------------------------------------------------------------------------
# Content bounds by carving.


@dataclass
class CarveResult:
    """Visual-hull estimate of the content's extent.

    Attributes:
        bbox_world: (2, 3) [min, max] of the occupied voxels (their full extent), or
            None when carving left nothing.
        touches_region: the hull reaches the edge of the carved region, so the true
            content may be larger than ``bbox_world``.
        n_occupied: occupied voxels.
        voxel_size: voxel edge in world units.
    """

    bbox_world: np.ndarray | None
    touches_region: bool
    n_occupied: int
    voxel_size: float


def carve_region(views: Sequence[View], normalization: Normalization) -> tuple[np.ndarray, float]:
    """(centre (3,), half side) of a world-space cube covering what the cameras commonly see.

    Centred on the reconstruction box; the half side is the larger of the box's half
    side and the median over views of the half-width of the view cone at the box's
    centre (a content fully visible in that view lies within it).
    """
    centre = region_center_world(normalization)
    half_box = float((normalization.aabb[1] - normalization.aabb[0]).max() / 2 / normalization.scale)
    widths = []
    for v in views:
        dist = np.linalg.norm(v.c2w[:3, 3] - centre)
        tan_half = max(v.width / 2 / v.K[0, 0], v.height / 2 / v.K[1, 1])
        widths.append(dist * tan_half)
    return centre, max(half_box, float(np.median(widths)))


def carve(
    views: Sequence[View],
    summaries: Sequence[MaskSummary],
    centre: np.ndarray,
    half: float,
    resolution: int = CARVE_RESOLUTION,
) -> CarveResult:
    """Visual hull of the masks (``carve_hull``'s rule) on a ``resolution``^3 grid over the cube
    ``centre`` +- ``half`` (world), at voxel centres."""
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    voxel = 2 * half / resolution
    axis = (np.arange(resolution) + 0.5) * voxel - half
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3) + centre
    # The small masks are max-pooled (a block is foreground if any of its pixels is): no real content is cut.
    lookups = [pixel_lookup(torch.from_numpy(s.small), s.factor) for s in summaries]
    keep = carve_hull(torch.as_tensor(grid, dtype=torch.float64), views, lookups)
    occupied = keep.reshape(resolution, resolution, resolution).numpy()
    n_occ = int(occupied.sum())
    if n_occ == 0:
        return CarveResult(None, False, 0, voxel)
    touches = bool(occupied[[0, -1]].any() or occupied[:, [0, -1]].any() or occupied[:, :, [0, -1]].any())
    kept = grid[keep.numpy()]
    bbox = np.stack([kept.min(axis=0) - voxel / 2, kept.max(axis=0) + voxel / 2])
    return CarveResult(bbox, touches, n_occ, voxel)


def estimate_content_bbox(
    views: Sequence[View],
    summaries: Sequence[MaskSummary],
    normalization: Normalization,
    resolution: int = CARVE_RESOLUTION,
) -> CarveResult | None:
    """Carve the masks of ``views`` (None when no view has a mask).

    When the hull reaches the edge of the region, the region is doubled once and
    carved again.
    """
    pairs = [(v, s) for v, s in zip(views, summaries, strict=True) if s.has_mask]
    if not pairs:
        return None
    mv, ms = [p[0] for p in pairs], [p[1] for p in pairs]
    centre, half = carve_region(mv, normalization)
    result = carve(mv, ms, centre, half, resolution)
    if result.touches_region:
        result = carve(mv, ms, centre, 2 * half, resolution)
    return result


def fit_normalization(bbox_world: np.ndarray, aabb: np.ndarray, margin: float = FIT_MARGIN) -> tuple[float, np.ndarray]:
    """(scale, offset) that centre ``bbox_world`` (2, 3) in ``aabb`` (2, 3) with a relative ``margin``.

    The largest half-extent, grown by ``margin``, maps to the smallest half side of ``aabb``.
    """
    centre = bbox_world.mean(axis=0)
    half = float((bbox_world[1] - bbox_world[0]).max() / 2 * (1 + margin))
    box_half = float((aabb[1] - aabb[0]).min() / 2)
    scale = box_half / max(half, 1e-12)
    offset = aabb.mean(axis=0) - centre * scale
    return scale, offset


def content_warnings(result: CarveResult | None, scene: Scene) -> list[str]:
    """Warnings about where the carved content lies relative to the reconstruction box."""
    if result is None:
        return []
    if result.bbox_world is None:
        return [
            f"{scene.name}: carving the masks left nothing: no point is foreground in every view that sees "
            "it, so masks and cameras disagree (wrong poses, pose convention or masks?)."
        ]
    n = scene.normalization
    nb = n.world_to_normalized(result.bbox_world)
    lo, hi = n.aabb
    warnings = []
    fmt = lambda a: "[" + ", ".join(f"{x:.3g}" for x in a) + "]"  # noqa: E731
    if np.any(nb[0] < lo) or np.any(nb[1] > hi) or result.touches_region:
        scale, offset = fit_normalization(result.bbox_world, n.aabb)
        at_least = " at least" if result.touches_region else ""
        warnings.append(
            f"{scene.name}: the masked content spans{at_least} normalized {fmt(nb[0])} to {fmt(nb[1])} "
            f"(world {fmt(result.bbox_world[0])} to {fmt(result.bbox_world[1])}), outside the reconstruction "
            f"box {fmt(lo)}-{fmt(hi)}; parts outside will be cut off. scale={scale:.6g} and "
            f"offset={fmt(offset)} would fit it with a {FIT_MARGIN:.0%} margin."
        )
    elif (nb[1] - nb[0]).max() < 0.25 * (hi - lo).min():
        scale, offset = fit_normalization(result.bbox_world, n.aabb)
        fill = (nb[1] - nb[0]).max() / (hi - lo).min()
        warnings.append(
            f"{scene.name}: the masked content fills only {fill:.0%} of the "
            f"reconstruction box's side, wasting grid resolution; scale={scale:.6g} and offset={fmt(offset)} "
            "would enlarge it."
        )
    return warnings


def validate_scene(
    scene: Scene,
    check_images: bool = True,
    carve_masks: bool = True,
    workers: int | None = None,
    progress: bool = True,
) -> list[str]:
    """All checks; raises ``UserError`` for the first problem, returns the scene's warnings.

    Args:
        scene: a loaded scene.
        check_images: decode every image and mask (missing/unreadable files, sizes).
        carve_masks: with ``check_images``, estimate the content's extent from the masks
            and warn when it does not fit the reconstruction box.
        workers, progress: image-decoding threads and progress bar.

    Returns:
        ``scene.warnings`` plus the new warnings (no duplicates).
    """
    warnings = list(scene.warnings)
    warnings += [w for w in check_scene(scene) if w not in warnings]
    if check_images:
        summaries = summarize_views(scene.views, workers=workers, progress=progress)
        warnings += [w for w in check_summaries(scene.views, summaries, scene) if w not in warnings]
        if carve_masks:
            result = estimate_content_bbox(scene.views, summaries, scene.normalization)
            warnings += [w for w in content_warnings(result, scene) if w not in warnings]
    return warnings
