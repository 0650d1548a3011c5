"""Issue #13's acceptance: a COLMAP model written from a generated scene (``data_tools.colmap``) trains to
the same mesh as the scene itself, within the run-to-run spread, on the CPU.

Both runs see the same views, pixels and masks; they differ in how the scene reaches the trainer (NeuS2
JSON vs binary COLMAP model: quaternions, shared PINHOLE camera) and in the normalization (the JSON's
sphere-based one vs the loader's box around the sparse points: a slightly different scale and centre,
so a different hash-grid lattice over the object).
"""

from __future__ import annotations

import time

import pytest
import torch

from neus2cli.config import resolve_config
from neus2cli.train.static import train_static
from tests.scenes import lumpy_ellipsoid

# The `fast` preset sized for a CPU (as tests/test_train_e2e.py), no test renders (the scene has no test
# split: a COLMAP model trains on every image, so both runs get the same 24 views).
SETTINGS = ["backend=torch", "sampling.grid_resolution=32", "output.render_test_views=0", "train.seed=0"]
# 150 steps keep the two trainings at ~40 s each on two busy cores (400 steps reach 2.4%, 300 steps 3.0%).
STEPS = 150


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from data_tools.colmap import export_colmap
    from data_tools.generate import generate_static_scene
    from data_tools.render_mesh import Shading

    root = tmp_path_factory.mktemp("colmap_e2e")
    scene = generate_static_scene(
        lumpy_ellipsoid(), root / "lumpy", n_views=24, n_test=0, width=64, height=64,
        shading=Shading(supersample=1), progress=False,
    )  # fmt: skip
    colmap = export_colmap(scene, root / "lumpy_colmap")
    meshes, seconds = {}, {}
    for name, path in (("native", scene), ("colmap", colmap)):
        torch.manual_seed(0)
        cfg = resolve_config("fast", SETTINGS, **{"train.steps": STEPS})
        start = time.perf_counter()
        run_dir, _ = train_static(path, cfg, root / f"run_{name}", progress=False)
        seconds[name] = time.perf_counter() - start
        meshes[name] = run_dir / "mesh.ply"
    return scene / "gt_mesh.ply", meshes, seconds


@pytest.mark.slow
def test_colmap_model_of_a_generated_scene_trains_to_the_same_mesh(runs):
    from bench.common import chamfer_fraction

    truth, meshes, seconds = runs

    def chamfer(a, b) -> float:
        return chamfer_fraction(a, b, radius=1.0, n_points=20_000)["chamfer_fraction_of_radius"]

    native, colmap = chamfer(meshes["native"], truth), chamfer(meshes["colmap"], truth)
    between = chamfer(meshes["colmap"], meshes["native"])
    print(
        f"{STEPS} steps: Chamfer to the truth {100 * native:.2f} % (native) and {100 * colmap:.2f} % (COLMAP) of "
        f"the radius, {100 * between:.2f} % between the two meshes; "
        f"{seconds['native']:.0f} s + {seconds['colmap']:.0f} s of training"
    )
    # Measured (these settings, two busy CPU cores; CPU training here is deterministic for a seed: a rerun
    # of train.seed=0 gave the same mesh): native train.seed=0 3.75 %, train.seed=1 3.74 % of the radius
    # from the truth, and the two seeds' meshes 1.6 % apart (MEASURED_BELOW); the COLMAP model, seed 0:
    # 3.8 % from the truth, 1.7 % from the native mesh.
    # Bounds: both meshes as close to the truth as test_train_e2e's bound for a short run allows
    # (4.5 %: two lattice cells of 2.3 % of the radius); their Chamfer distances to the truth agree to
    # within 0.5 % (ten times the seeds' 0.02 % difference, still a fifth of a cell); and the meshes are no
    # farther apart than 1.5x the two seeds' meshes are.
    assert native < 0.045 and colmap < 0.045, (native, colmap)
    assert abs(colmap - native) < 0.005, (native, colmap)
    assert between < 1.5 * SEED_SPREAD, between


#: Chamfer (fraction of the radius) between the native scene's meshes trained with train.seed=0 and 1.
SEED_SPREAD = 0.016
