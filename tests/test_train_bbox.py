"""``neus2 train --bbox``: the region to reconstruct overrides the scene's normalization (issue #13)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neus2cli.data.scene import Normalization
from tests.cli_table import Row, run_cli, run_row

# Rows that fail while parsing, before any scene is read: the scene path need not exist.
BAD = [
    Row("five", ("train", "{root}/s", "--bbox", "0,0,0,1,1"), ("--bbox", "six", "has 5")),
    Row("seven", ("train", "{root}/s", "--bbox", "0,0,0,1,1,1,1"), ("--bbox", "has 7")),
    Row("text", ("train", "{root}/s", "--bbox", "a,b,c,d,e,f"), ("--bbox", "not a list of numbers")),
    Row("nan", ("train", "{root}/s", "--bbox", "nan,0,0,1,1,1"), ("--bbox", "nan or infinite")),
    Row("min-above-max", ("train", "{root}/s", "--bbox", "0,2,0,1,1,1"), ("--bbox", "ymin 2 >= ymax 1")),
    Row("flat", ("train", "{root}/s", "--bbox", "0,0,0,0,1,1"), ("--bbox", "xmin 0 >= xmax 0")),
]


@pytest.mark.parametrize("row", BAD, ids=lambda r: r.id)
def test_bad_bbox_is_exit_2_with_one_paragraph(row, tmp_path):
    result = run_row(row, tmp_path)
    assert "scene not found" not in result.text  # refused before the scene is looked at


def test_fitting_box_maps_the_box_into_the_cube():
    """Closed form: the box [(-1, 0, 2), (3, 1, 4)] (longest side 4 along x) -> scale 1/4, its centre
    (1, 0.5, 3) to 0.5; x spans [0, 1] exactly, y and z fit inside around the centre."""
    box = np.array([[-1.0, 0.0, 2.0], [3.0, 1.0, 4.0]])
    norm = Normalization.fitting_box(box)
    assert norm.scale == 0.25
    np.testing.assert_allclose(norm.world_to_normalized(box), [[0.0, 0.375, 0.25], [1.0, 0.625, 0.75]], atol=1e-15)
    with pytest.raises(ValueError, match="positive extent"):
        Normalization.fitting_box(np.zeros((2, 3)))


def test_train_with_bbox_records_and_keeps_it(tmp_path):
    """A run trained with --bbox uses that box's normalization (checkpoint, run.json), and a resume with
    another box is refused naming both; a resume without one keeps it."""
    from neus2cli.train.checkpoint import load_checkpoint
    from tests.scenes import static_scene

    scene = static_scene(tmp_path / "lumpy", views=3, size=16)
    run = tmp_path / "run"
    tiny = ["--config", "fast", "--backend", "torch", "--steps", "2", "--no-progress"]
    tiny += ["--set", "output.mesh_resolution=16", "--set", "output.render_test_views=0", "--set", "remove_floaters=0"]
    result = run_cli(["train", str(scene), "--out", str(run), "--bbox", "-1.2,-1,-1,1.2,1,1", *tiny])
    assert result.code == 0, result.out + result.err
    expected = Normalization.fitting_box(np.array([[-1.2, -1.0, -1.0], [1.2, 1.0, 1.0]]))
    stored = load_checkpoint(run / "checkpoint.pt")["normalization"]
    assert stored["scale"] == pytest.approx(expected.scale) and stored["scale"] != pytest.approx(0.45)
    np.testing.assert_allclose(stored["offset"], expected.offset)
    assert json.loads((run / "run.json").read_text())["bbox"] == [[-1.2, -1.0, -1.0], [1.2, 1.0, 1.0]]
    again = run_cli(["train", str(scene), "--out", str(run), "--resume", "--bbox", "-1,-1,-1,1,1,1", *tiny])
    assert again.code == 2 and "--bbox -1,-1,-1,1,1,1 would change the normalization" in " ".join(again.err.split())
    assert "--bbox -1.2,-1,-1,1.2,1,1" in " ".join(again.err.split())
    same = run_cli(["train", str(scene), "--out", str(run), "--resume", *tiny])
    assert same.code == 0 and "already complete" in same.err + same.out
