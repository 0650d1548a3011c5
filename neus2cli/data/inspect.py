"""Human-readable scene summaries (``neus2 inspect``) and a camera plot.

``describe_scene`` returns plain data (JSON-ready); ``render_description`` turns it
into rich tables; ``plot_cameras`` draws frusta and the unit cube in the normalized
frame with matplotlib (optional dependency).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from neus2cli.data.scene import DynamicScene, Scene
from neus2cli.data.validate import (
    check_summaries,
    content_warnings,
    estimate_content_bbox,
    region_center_world,
    summarize_views,
)
from neus2cli.errors import DependencyError, UserError
from neus2cli.io import atomic_write, check_writable

#: File types ``plot_cameras`` writes (matplotlib's, by suffix).
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _stats(values) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"min": float(a.min()), "mean": float(a.mean()), "max": float(a.max())}


def _subsample(n: int, k: int) -> list[int]:
    """Up to ``k`` indices spread evenly over range(n)."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def describe_scene(
    scene: Scene, max_views: int = 24, carve: bool = True, workers: int | None = None, progress: bool = True
) -> dict:
    """Summarize a scene as JSON-ready data.

    Args:
        scene: a loaded scene.
        max_views: views (evenly spread) whose masks are decoded for the mask coverage
            and the content estimate; 0 skips reading pixels altogether.
        carve: estimate the content's bounding box by carving those masks.
        workers, progress: decoding threads and progress bar.

    Returns:
        dict with: name, root, format, n_views, n_train, n_test, resolutions
        ({"WxH": count}), focal_px (min/mean/max over fx and fy), n_distorted,
        mask_coverage (fraction of foreground pixels, or None), camera_distance_world
        and camera_distance_normalized (camera centre to the reconstruction box's
        centre), cameras_inside_box, max_axis_angle_deg (largest angle between a
        camera's optical axis and the direction to the box centre), normalization,
        content_bbox_world / content_bbox_normalized ((2, 3) lists or None), warnings.

    Raises:
        UserError: among the views read, an image whose size disagrees with the scene
            file, masked and unmasked views mixed, or every mask empty.
    """
    n = scene.normalization
    centre = region_center_world(n)
    centres = np.stack([v.c2w[:3, 3] for v in scene.views])
    dist_world = np.linalg.norm(centres - centre, axis=1)
    to_centre = (centre - centres) / np.maximum(dist_world[:, None], 1e-12)
    axes = np.stack([v.c2w[:3, 2] for v in scene.views])
    angles = np.degrees(np.arccos(np.clip((axes * to_centre).sum(axis=1), -1.0, 1.0)))
    centres_norm = n.world_to_normalized(centres)
    inside = np.all((centres_norm >= n.aabb[0]) & (centres_norm <= n.aabb[1]), axis=1)
    focals = [f for v in scene.views for f in (v.K[0, 0], v.K[1, 1])]
    desc = {
        "name": scene.name,
        "root": str(scene.root),
        "format": scene.format,
        "n_views": len(scene.views),
        "n_train": len(scene.train_views),
        "n_test": len(scene.test_views),
        "resolutions": dict(Counter(f"{v.width}x{v.height}" for v in scene.views)),
        "focal_px": _stats(focals),
        "n_distorted": sum(v.distortion is not None for v in scene.views),
        "mask_coverage": None,
        "camera_distance_world": _stats(dist_world),
        "camera_distance_normalized": _stats(dist_world * n.scale),
        "cameras_inside_box": int(inside.sum()),
        "max_axis_angle_deg": float(angles.max()),
        "normalization": n.to_dict(),
        "content_bbox_world": None,
        "content_bbox_normalized": None,
        "warnings": list(scene.warnings),
    }
    if max_views > 0:
        views = [scene.views[i] for i in _subsample(len(scene.views), max_views)]
        summaries = summarize_views(views, workers=workers, progress=progress)
        desc["warnings"] += [w for w in check_summaries(views, summaries, scene) if w not in desc["warnings"]]
        masked = [s for s in summaries if s.has_mask]
        if masked:
            desc["mask_coverage"] = {**_stats([s.coverage for s in masked]), "views_sampled": len(masked)}
        if carve:
            result = estimate_content_bbox(views, summaries, n)
            if result is not None and result.bbox_world is not None:
                desc["content_bbox_world"] = result.bbox_world.tolist()
                desc["content_bbox_normalized"] = n.world_to_normalized(result.bbox_world).tolist()
            desc["warnings"] += [w for w in content_warnings(result, scene) if w not in desc["warnings"]]
    return desc


def describe_dynamic_scene(scene: DynamicScene, **kwargs) -> dict:
    """``describe_scene`` of the first frame, plus the sequence's frame count and names.

    Adds: dynamic (True), n_frames, frame_names ([first, last]), views_per_frame
    (min/mean/max); ``name``/``root`` are the sequence's. ``kwargs`` go to ``describe_scene``.
    """
    desc = describe_scene(scene.frames[0], **kwargs)
    desc.update(
        name=scene.name,
        root=str(scene.root),
        dynamic=True,
        n_frames=len(scene.frames),
        frame_names=[scene.frame_names[0], scene.frame_names[-1]],
        views_per_frame=_stats([len(f.views) for f in scene.frames]),
    )
    desc["warnings"] = list(scene.warnings) + [w for w in desc["warnings"] if w not in scene.warnings]
    return desc


def _fmt_vec(v) -> str:
    return "[" + ", ".join(f"{x:.3g}" for x in v) + "]"


def _fmt_stats(s: dict, unit: str = "") -> str:
    return f"{s['min']:.4g} / {s['mean']:.4g} / {s['max']:.4g}{unit}"


def render_description(desc: dict):
    """A rich renderable (table + warnings) of ``describe_scene``'s output."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    # Names and paths come from the user: Text shows them as they are, never as rich markup.
    table = Table(title=Text(f"{desc['name']} ({desc['format']})"), show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")

    def add(field: str, value: str) -> None:
        table.add_row(field, Text(value))

    add("root", desc["root"])
    if desc.get("dynamic"):
        add("frames", f"{desc['n_frames']} ({desc['frame_names'][0]} .. {desc['frame_names'][1]})")
        add("views per frame (min/mean/max)", _fmt_stats(desc["views_per_frame"]))
        add("first frame", "statistics below are for the first frame")
    add("views", f"{desc['n_views']} ({desc['n_train']} train, {desc['n_test']} test)")
    add("resolutions", ", ".join(f"{k} x{v}" for k, v in desc["resolutions"].items()))
    add("focal length px (min/mean/max)", _fmt_stats(desc["focal_px"]))
    if desc["n_distorted"]:
        add("distorted views", str(desc["n_distorted"]))
    cov = desc["mask_coverage"]
    add(
        "mask coverage (min/mean/max)",
        "no masks (all foreground)" if cov is None else f"{_fmt_stats(cov)} over {cov['views_sampled']} views",
    )
    norm = desc["normalization"]
    add(
        "normalization",
        f"x_norm = x_world * {norm['scale']:.6g} + {_fmt_vec(norm['offset'])}; "
        f"box {_fmt_vec(norm['aabb'][0])}-{_fmt_vec(norm['aabb'][1])}",
    )
    add("camera to box centre, world", _fmt_stats(desc["camera_distance_world"]))
    add("camera to box centre, normalized", _fmt_stats(desc["camera_distance_normalized"]))
    add("cameras inside the box", str(desc["cameras_inside_box"]))
    add("max optical-axis angle to centre", f"{desc['max_axis_angle_deg']:.1f} deg")
    if desc["content_bbox_normalized"] is not None:
        bw, bn = desc["content_bbox_world"], desc["content_bbox_normalized"]
        add("content bbox (masks), world", f"{_fmt_vec(bw[0])} - {_fmt_vec(bw[1])}")
        add("content bbox (masks), normalized", f"{_fmt_vec(bn[0])} - {_fmt_vec(bn[1])}")
    parts = [table]
    for w in desc["warnings"]:
        parts.append(Text(f"warning: {w}", style="yellow"))
    return Group(*parts)


def _frustum_lines(view, normalization, depth: float) -> list[np.ndarray]:
    """Line segments ((2, 3) arrays, normalized frame) of a camera frustum of ``depth``."""
    c2w = normalization.c2w_to_normalized(view.c2w)
    K_inv = np.linalg.inv(view.K)
    corners_px = np.array([[0, 0, 1], [view.width, 0, 1], [view.width, view.height, 1], [0, view.height, 1]])
    corners_cam = (K_inv @ corners_px.T).T * depth  # z = depth (pinhole; distortion ignored)
    corners = corners_cam @ c2w[:3, :3].T + c2w[:3, 3]
    apex = c2w[:3, 3]
    lines = [np.stack([apex, c]) for c in corners]
    lines += [np.stack([corners[i], corners[(i + 1) % 4]]) for i in range(4)]
    # A short stub on the top edge tells up from down.
    top_mid = (corners[0] + corners[1]) / 2
    up = -c2w[:3, 1] * depth * 0.3
    lines.append(np.stack([top_mid, top_mid + up]))
    return lines


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DependencyError(
            "plotting cameras needs matplotlib, which is not installed.",
            hint="Install it with `pip install 'neus2cli[plot]'` (or `pip install matplotlib`).",
        ) from None


def check_plot_path(path: str | Path) -> Path:
    """``path`` if ``plot_cameras`` can write it: a supported suffix, a writable location and
    matplotlib installed; else a ``UserError`` naming ``--plot``. Cheap: run it before the scene."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise UserError(
            f"--plot: cannot write a {path.suffix or 'suffix-less'} file; the plot is an image.",
            path=path,
            hint=f"Give a file name ending in {', '.join(PLOT_SUFFIXES)}.",
        )
    if path.is_dir():
        raise UserError("--plot: is a folder.", path=path, hint="Give a file name such as cameras.png.")
    check_writable(path, "--plot")
    _require_matplotlib()
    return path


def _box_edges(box: np.ndarray) -> list[np.ndarray]:
    """The 12 edges (2, 3) of the axis-aligned box (2, 3) [min, max]: vary one axis, fix the others."""
    lo, hi = box
    edges = []
    for i in range(3):
        j, k = [a for a in range(3) if a != i]
        for a in (lo[j], hi[j]):
            for b in (lo[k], hi[k]):
                p, q = np.zeros(3), np.zeros(3)
                p[i], q[i] = lo[i], hi[i]
                p[j] = q[j] = a
                p[k] = q[k] = b
                edges.append(np.stack([p, q]))
    return edges


#: At most this many sparse points are drawn (evenly subsampled): enough to show the object's shape.
PLOT_MAX_POINTS = 4000


def plot_cameras(
    scene: Scene,
    out_png: str | Path,
    frustum_depth: float | None = None,
    sparse: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Draw the camera frusta (train blue, test orange) and the reconstruction box, in the
    normalized frame, to ``out_png`` (PNG, PDF or SVG by suffix, written atomically).
    Needs matplotlib (``pip install 'neus2cli[plot]'``).

    Args:
        frustum_depth: frustum length in normalized units; default 15% of the median
            camera distance to the box centre.
        sparse: a COLMAP scene's points (m, 3) and the robust box (2, 3) the normalization fitted into
            the cube, world frame (``formats_colmap.sparse_points``): drawn as grey dots and a green box.
    """
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_png = check_plot_path(out_png)
    n = scene.normalization
    centres = n.world_to_normalized(np.stack([v.c2w[:3, 3] for v in scene.views]))
    box_centre = n.aabb.mean(axis=0)
    if frustum_depth is None:
        frustum_depth = 0.15 * float(np.median(np.linalg.norm(centres - box_centre, axis=1)))
    fig = Figure(figsize=(8, 8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="3d")
    for seg in _box_edges(n.aabb):
        ax.plot(*seg.T, color="black", linewidth=1.0)
    if sparse is not None:
        points, box = n.world_to_normalized(sparse[0]), n.world_to_normalized(sparse[1])
        stride = max(1, len(points) // PLOT_MAX_POINTS)
        ax.scatter(*points[::stride].T, s=1, color="0.4", depthshade=False)
        for seg in _box_edges(box):
            ax.plot(*seg.T, color="tab:green", linewidth=1.0, linestyle="--")
    test_ids = set(scene.split.get("test", []))
    for idx, view in enumerate(scene.views):
        colour = "tab:orange" if idx in test_ids else "tab:blue"
        for seg in _frustum_lines(view, n, frustum_depth):
            ax.plot(*seg.T, color=colour, linewidth=0.6)
    pts = np.concatenate([centres, n.aabb])
    mid, half = (pts.max(0) + pts.min(0)) / 2, (pts.max(0) - pts.min(0)).max() / 2 * 1.05
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[1] - half, mid[1] + half)
    ax.set_zlim(mid[2] - half, mid[2] + half)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("z")
    ax.set_title(f"{scene.name}: {len(scene.views)} cameras (blue train, orange test), normalized frame")
    # The temporary file's suffix is not the plot's: name the format explicitly.
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=110, format=out_png.suffix.lower()[1:]))
    return out_png
