"""GPU path end to end on the real development data (run on a CUDA machine with tinycudann and nerfacc).

Numbers the H100 gave (BENCHMARKS.md) set the bounds, with margin: these tests catch a broken GPU
path (a wrong convention, a parity bug that only shows in training), not small regressions.
"""

from __future__ import annotations

import pytest

from neus2cli.config import resolve_config
from neus2cli.train.static import train_static
from tests.conftest import requires_cuda, shared_path


def _gpu_ready() -> bool:
    from neus2cli import backends

    try:
        return backends.resolve_backend("auto") == "tcnn"
    except Exception:
        return False


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(
    "scene, preset, steps, min_psnr",
    [
        # DTU scan 24 (quarter resolution): 2000 steps gave 26.0 dB on the 8 held-out views (H100).
        ("dtu_scan24_quarter", "dtu", 2000, 23.0),
        # NeRF-synthetic lego (half resolution): white background, 20 test views; the bound is loose.
        ("lego_half", "dtu", 2000, 22.0),
    ],
)
def test_gpu_training_reaches_psnr(scene, preset, steps, min_psnr, tmp_path):
    if not _gpu_ready():
        pytest.skip("tinycudann + nerfacc not usable here")
    path = shared_path(scene)
    cfg = resolve_config(preset, ["output.mesh_resolution=256"], **{"train.steps": steps})
    run_dir, metrics = train_static(path, cfg, tmp_path / scene, progress=False)
    assert metrics["backend"] == "tcnn"
    assert metrics["psnr_test"] > min_psnr, metrics
    assert (run_dir / "mesh.ply").stat().st_size > 10_000


@pytest.mark.gpu
@requires_cuda
def test_gpu_dynamic_tracks_a_rigid_motion(tmp_path):
    # The GPU path of incremental training: a 3-frame sequence, 15 degrees and a tenth of the object per
    # frame; the accumulated transforms recover the motion and every frame's mesh is close to its truth.
    import json

    import numpy as np
    import trimesh

    from bench.common import chamfer_fraction
    from neus2cli.train.dynamic import train_dynamic
    from neus2cli.train.rigid import rotation_angle_deg
    from tests.scenes import dynamic_scene

    if not _gpu_ready():
        pytest.skip("tinycudann + nerfacc not usable here")
    # The CPU test's object, with larger images and more views.
    seq = dynamic_scene(tmp_path / "seq", views=16, size=320, height=240, rotation_deg=15.0, translation=0.1)
    cfg = resolve_config("base", ["first_frame_steps=1500", "next_frame_steps=800", "output.mesh_resolution=256"])
    run_dir, metrics = train_dynamic(seq, cfg, tmp_path / "run", progress=False)
    assert metrics["backend"] == "tcnn"
    motion = json.loads((seq / "gt" / "motion.json").read_text())
    for item in motion["frames"]:
        k = item["index"]
        fdir = run_dir / "frames" / f"{k:04d}"
        w2c = np.asarray(json.loads((fdir / "transform.json").read_text())["world_to_canonical"])
        truth = np.linalg.inv(np.asarray(item["world_from_canonical"]))
        assert rotation_angle_deg(w2c[:3, :3] @ truth[:3, :3].T) < 2.0, k
        centre = trimesh.load(seq / "gt" / f"mesh_{k:04d}.ply").vertices.mean(axis=0)
        trans_err = np.linalg.norm((w2c[:3, :3] - truth[:3, :3]) @ centre + w2c[:3, 3] - truth[:3, 3])
        assert trans_err < 0.02 * 2 * motion["object_radius"], k
        q = chamfer_fraction(fdir / "mesh.ply", seq / "gt" / f"mesh_{k:04d}.ply", motion["object_radius"], 50_000)
        assert q["chamfer_fraction_of_radius"] < 0.03, (k, q)  # catches a broken path, not a regression
