"""``describe_scene`` / ``neus2 inspect``: sane bounds on real data, plots, JSON output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from neus2cli.data.inspect import describe_dynamic_scene, describe_scene, plot_cameras, render_description
from neus2cli.data.loader import load_dynamic_scene, load_scene
from tests.test_data_convert import run_cli
from tests.test_data_scenes import write_blender_scene, write_neus2_scene


def _assert_sane_object_scene(desc: dict) -> None:
    """Cameras outside the unit cube looking in; masked content inside [0, 1]^3."""
    assert desc["cameras_inside_box"] == 0
    # Outside the cube's circumscribed sphere (radius sqrt(3)/2 ~ 0.87 around its centre).
    assert desc["camera_distance_normalized"]["min"] > 0.87
    # Every optical axis passes close to the cube centre (object-centred captures).
    assert desc["max_axis_angle_deg"] < 15
    lo, hi = np.array(desc["content_bbox_normalized"])
    assert np.all(lo >= 0) and np.all(hi <= 1)
    # ...and the object is not a speck: it spans a good part of the cube.
    assert (hi - lo).max() > 0.4
    assert 0.05 < desc["mask_coverage"]["mean"] < 0.95
    assert not desc["warnings"]


def test_describe_dtu(dtu_scan24):
    desc = describe_scene(load_scene(dtu_scan24), max_views=12, progress=False)
    assert desc["format"] == "neus" and desc["n_views"] == 49 and desc["n_test"] == 7
    assert desc["resolutions"] == {"400x300": 49}
    # DTU cameras are ~0.65 m from the object; the unit sphere is the ~0.23 m bounding sphere.
    assert 500 < desc["camera_distance_world"]["mean"] < 800
    _assert_sane_object_scene(desc)


def test_describe_lego_subsampled(lego_half):
    desc = describe_scene(load_scene(lego_half), max_views=8, progress=False)
    assert desc["format"] == "blender" and (desc["n_train"], desc["n_test"]) == (100, 20)
    assert desc["mask_coverage"]["views_sampled"] == 8
    # NeRF-synthetic cameras sit on a sphere of radius ~4.03 around the origin.
    assert desc["camera_distance_world"]["min"] == pytest.approx(4.03, abs=0.01)
    _assert_sane_object_scene(desc)


def test_render_and_plot(tmp_path):
    scene = load_scene(write_blender_scene(tmp_path / "s", frame_extra={1: {"split": "test"}}))
    desc = describe_scene(scene, progress=False)
    console = Console(record=True, width=120)
    console.print(render_description(desc))
    text = console.export_text()
    assert "8 (7 train, 1 test)" in text and "content bbox" in text
    out = plot_cameras(scene, tmp_path / "plots" / "cams.png")
    assert out.stat().st_size > 1000  # a real PNG, not an empty file
    assert out.read_bytes().startswith(b"\x89PNG")
    # The format follows the suffix, although the temporary file's suffix is ".tmp".
    assert plot_cameras(scene, tmp_path / "plots" / "cams.svg").read_text().lstrip().startswith("<?xml")
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["cams.png", "cams.svg"]


def test_describe_dynamic(tmp_path):
    seq = write_neus2_scene(tmp_path / "seq", name="0000.json", test_name=None)
    (seq / "0001.json").write_text((seq / "0000.json").read_text())
    desc = describe_dynamic_scene(load_dynamic_scene(seq), max_views=4, progress=False)
    assert desc["dynamic"] and desc["n_frames"] == 2 and desc["frame_names"] == ["0000", "0001"]
    assert desc["views_per_frame"]["min"] == 8


def test_cli_inspect_json_and_plot(tmp_path, capsys):
    root = write_blender_scene(tmp_path / "s")
    code = run_cli(["inspect", str(root), "--json", "--plot", str(tmp_path / "c.png"), "--max-views", "4"])
    assert code == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["n_views"] == 8 and desc["plot"].endswith("c.png") and (tmp_path / "c.png").exists()
    assert run_cli(["inspect", str(root), "--check"]) == 0
    assert "content bbox" in capsys.readouterr().out
