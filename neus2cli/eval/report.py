"""Presenting evaluation results: rich tables for people, strict JSON for scripts.

The JSON is standard (RFC 8259): NaN and infinities, which ``json.dumps`` would
write as the non-standard ``NaN`` / ``Infinity``, become ``null``; numpy scalars
and arrays become plain numbers and lists.
"""

from __future__ import annotations

import json
import math
from typing import Any

from rich.table import Table
from rich.text import Text

from neus2cli.eval.geometry import GeometryMetrics, threshold_key


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy values made plain and non-finite floats replaced by None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy scalar or array
        return jsonable(obj.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return str(obj)


def to_json(obj: Any) -> str:
    """Strict JSON text of a result dict (see ``jsonable``)."""
    return json.dumps(jsonable(obj), indent=2, allow_nan=False)


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}g}"


def geometry_table(metrics: GeometryMetrics, title: str | None = None) -> Table:
    """A two-column table (metric, value) of a geometry evaluation, units in the header.

    Cells that hold user text (``--units``) are ``Text``: a str cell would be read as rich markup.
    """
    units = metrics.units
    table = Table(title=Text(title or f"Geometry ({metrics.protocol}; distances in {units})"), title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row(Text(f"accuracy (pred -> GT, {units})"), _fmt(metrics.accuracy))
    table.add_row(Text(f"completeness (GT -> pred, {units})"), _fmt(metrics.completeness))
    table.add_row(Text(f"Chamfer-L1 ({units})"), _fmt(metrics.chamfer))
    for t in metrics.thresholds:
        key = threshold_key(t)
        table.add_row(
            Text(f"F-score @ {key} {units}  (P / R)"),
            f"{_fmt(metrics.fscore[key])}  ({_fmt(metrics.precision[key])} / {_fmt(metrics.recall[key])})",
        )
    table.add_row("normal consistency", _fmt(metrics.normal_consistency))
    table.add_row("points (pred / GT)", f"{metrics.n_pred_points:,} / {metrics.n_gt_points:,}")
    return table


def images_table(result: dict, title: str = "Held-out views") -> Table:
    """A per-view table of ``evaluate_images`` output, with the mean as the last row (view names are
    the scene's file names: ``Text``, never markup)."""
    table = Table(title=title, title_justify="left")
    table.add_column("view")
    columns = [("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("lpips", "LPIPS")]
    has_mask = any(v.get("psnr_masked") is not None for v in result["views"])
    if has_mask:
        columns += [("psnr_masked", "PSNR mask"), ("ssim_masked", "SSIM mask")]
    for _, header in columns:
        table.add_column(header, justify="right")
    for view in result["views"]:
        table.add_row(Text(str(view["name"])), *(_fmt(view.get(k)) for k, _ in columns))
    table.add_section()
    table.add_row("mean", *(_fmt(result["mean"].get(k)) for k, _ in columns), style="bold")
    return table
