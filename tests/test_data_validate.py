"""Scene validation: every error names the file and the fix; content-bounds warnings."""

from __future__ import annotations

import json
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from neus2cli.data.loader import load_scene
from neus2cli.data.scene import Normalization
from neus2cli.data.validate import (
    content_warnings,
    estimate_content_bbox,
    fit_normalization,
    summarize_views,
    validate_scene,
)
from neus2cli.errors import UserError
from tests.conftest import REPO_ROOT
from tests.test_data_scenes import SIZE, SPHERE_R, write_blender_scene, write_neus2_scene, write_neus_folder


def _edit_json(path, fn):
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def test_good_scene_validates_without_warnings(tmp_path):
    scene = load_scene(write_blender_scene(tmp_path / "s"))
    assert validate_scene(scene, progress=False) == []


def test_missing_image_names_file(tmp_path):
    root = write_blender_scene(tmp_path / "s")
    (root / "rgb" / "v03.png").unlink()
    with pytest.raises(UserError, match=r"frame 3 .*v03.*not found") as info:
        load_scene(root)
    assert "transforms.json" in str(info.value)


def test_unreadable_image_names_file(tmp_path):
    root = write_blender_scene(tmp_path / "s", top={"w": SIZE, "h": SIZE})  # no header read at load
    (root / "rgb" / "v05.png").write_bytes(b"not a png at all")
    scene = load_scene(root)
    with pytest.raises(UserError, match=r"v05\.png.*cannot decode"):
        validate_scene(scene, progress=False)


def test_image_size_disagreeing_with_json(tmp_path):
    root = write_blender_scene(tmp_path / "s", top={"w": SIZE + 8, "h": SIZE})
    scene = load_scene(root)
    with pytest.raises(UserError, match=rf"v00.png is {SIZE}x{SIZE}, expected {SIZE + 8}x{SIZE}"):
        validate_scene(scene, progress=False)


def test_principal_point_outside_image(tmp_path):
    root = write_neus2_scene(tmp_path / "s")
    _edit_json(root / "transform_train.json", lambda m: m["frames"][2]["intrinsic_matrix"][0].__setitem__(2, 100.0))
    with pytest.raises(UserError, match=r"images/002.*principal point .*outside"):
        load_scene(root)


def test_mask_count_mismatch(tmp_path):
    root, _, _ = write_neus_folder(tmp_path / "n", n=4, n_masks=3)
    with pytest.raises(UserError, match="3 masks in mask/ but 4 images"):
        load_scene(root)


def test_scale_mats_must_agree_and_be_uniform(tmp_path):
    S = np.diag([2.0, 2.0, 2.0, 1.0])
    S2 = S.copy()
    S2[0, 3] = 1.0
    root, _, _ = write_neus_folder(tmp_path / "a", n=3, scale_mats=[S, S2, S])
    with pytest.raises(UserError, match="scale_mat_1 differs"):
        load_scene(root)
    aniso = np.diag([2.0, 3.0, 2.0, 1.0])
    root, _, _ = write_neus_folder(tmp_path / "b", n=3, scale_mats=[aniso] * 3)
    with pytest.raises(UserError, match="uniform scale"):
        load_scene(root)


@pytest.mark.parametrize("kind", ["nan", "scaled", "reflected"])
def test_bad_pose_names_frame(tmp_path, kind):
    root = write_blender_scene(tmp_path / "s")

    def corrupt(meta):
        m = np.array(meta["frames"][3]["transform_matrix"])
        if kind == "nan":
            m[1, 3] = np.nan
        elif kind == "scaled":
            m[:3, :3] *= 1.1
        else:
            m[:3, 0] *= -1
        meta["frames"][3]["transform_matrix"] = m.tolist()

    _edit_json(root / "transforms.json", corrupt)
    expected = {"nan": "NaN", "scaled": "not orthonormal", "reflected": "reflection"}[kind]
    with pytest.raises(UserError, match=rf"rgb/v03.*frame 3.*{expected}"):
        load_scene(root)


def test_empty_frame_list(tmp_path):
    root = write_blender_scene(tmp_path / "s")
    _edit_json(root / "transforms.json", lambda m: m.__setitem__("frames", []))
    with pytest.raises(UserError, match="no frames"):
        load_scene(root)


def test_cameras_not_looking_at_region(tmp_path):
    # offset 3 puts the cube centre at world (0.5 - 3) / 0.33 = -7.6 on each axis: behind or
    # far beside the ring cameras, which look at the origin.
    root = write_blender_scene(tmp_path / "s", top={"offset": [3.0, 3.0, 3.0]})
    with pytest.raises(UserError, match=r"reconstruction box .*(behind|outside the image).*rgb/v0") as info:
        load_scene(root)
    assert "from_na" in str(info.value)  # the hint names the likely causes


def test_content_outside_cube_warns_with_a_fitting_normalization(tmp_path):
    # scale 0.8: the unit-radius sphere becomes radius 0.8 around the cube centre, sticking out.
    root = write_blender_scene(tmp_path / "s", top={"scale": 0.8})
    warnings = validate_scene(load_scene(root), progress=False)
    assert len(warnings) == 1 and "outside the reconstruction box" in warnings[0]
    scene = load_scene(root)
    summaries = summarize_views(scene.views, progress=False)
    result = estimate_content_bbox(scene.views, summaries, scene.normalization)
    # The visual hull contains the sphere, up to the voxel-centre sampling (one voxel).
    assert np.all(result.bbox_world[0] <= -SPHERE_R + result.voxel_size)
    assert np.all(result.bbox_world[1] >= SPHERE_R - result.voxel_size)
    # ...and 8 views at 32 px carve it to within ~40% of the radius on every side.
    assert np.all(np.abs(result.bbox_world) < 1.4 * SPHERE_R)
    scale, offset = fit_normalization(result.bbox_world, scene.normalization.aabb)
    assert f"scale={scale:.6g}" in warnings[0]
    # With the suggested normalization the content fits with the 10% margin: no warning.
    _edit_json(root / "transforms.json", lambda m: m.update(scale=scale, offset=offset.tolist()))
    refit = load_scene(root)
    nb = refit.normalization.world_to_normalized(result.bbox_world)
    assert np.all(nb[0] >= 0.04) and np.all(nb[1] <= 0.96)  # 10% margin on the half-extent
    assert validate_scene(refit, progress=False) == []


def test_tiny_content_warns_and_maskless_scene_is_not_carved(tmp_path):
    scene = load_scene(write_blender_scene(tmp_path / "s", top={"scale": 0.05}))
    warnings = validate_scene(scene, progress=False)
    assert len(warnings) == 1 and "fills only" in warnings[0]
    root = write_blender_scene(tmp_path / "rgb", top={"scale": 0.8})
    for png in (root / "rgb").glob("*.png"):
        iio.imwrite(png, iio.imread(png)[..., :3])  # drop alpha: no mask information
    assert validate_scene(load_scene(root), progress=False) == []


def test_masks_disagreeing_with_cameras_warn(tmp_path):
    scene = load_scene(write_blender_scene(tmp_path / "s"))
    summaries = summarize_views(scene.views, progress=False)
    for s in summaries:  # flip every mask upside down: no consistent content remains
        s.small = np.zeros_like(s.small)
        s.small[:2] = True
    result = estimate_content_bbox(scene.views, summaries, scene.normalization)
    assert result.bbox_world is None
    assert "left nothing" in content_warnings(result, scene)[0]


def test_fit_normalization_closed_form():
    # Content [-2, 2] x [0, 1] x [0, 1]: centre (0, .5, .5), half-extent 2 -> 2.2 with margin;
    # unit cube half side 0.5: scale = 0.5 / 2.2, offset = 0.5 - centre * scale.
    scale, offset = fit_normalization(np.array([[-2.0, 0, 0], [2.0, 1, 1]]), Normalization().aabb)
    assert scale == pytest.approx(0.5 / 2.2)
    np.testing.assert_allclose(offset, 0.5 - np.array([0, 0.5, 0.5]) * scale)


def test_dtu_validates_clean(dtu_scan24):
    # Real masks and cameras agree, and the hull lies inside the unit sphere -> inside the cube.
    assert validate_scene(load_scene(dtu_scan24), progress=False) == []


def test_cli_error_is_one_paragraph_exit_2(tmp_path):
    root = write_blender_scene(tmp_path / "s")

    def scale_frame(meta):
        meta["frames"][3]["transform_matrix"][0][0] *= 2.0

    _edit_json(root / "transforms.json", scale_frame)
    proc = subprocess.run(
        [sys.executable, "-m", "neus2cli", "inspect", str(root)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error:") and "\n\n" not in err  # one paragraph
    flat = " ".join(err.split())  # wrapped at 100 columns
    assert "frame 3" in flat and "not orthonormal" in flat
