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
    # Measured (these settings, two busy CPU cores; CPU training is deterministic for a seed here: a rerun of
    # train.seed=0 gave the same mesh). Chamfer to the truth, % of the radius: native seeds 0-3: 3.75, 3.74,
    # 3.76, 4.20; COLMAP seeds 0-2: 4.15, 4.20, 5.49. Between meshes: native seed pairs 3.25-3.63; COLMAP
    # seed 0 to native seed 0: 3.54-3.56 (to native seeds 0-3: 3.46-3.62). So the seed-0 COLMAP mesh is as far
    # from the native one as two native seeds are from each other.
    # Bounds: both under 5 % of the radius (the worst native seed plus a third of a 2.3 % lattice cell);
    # their distances to the truth within 0.75 % of each other (the native seeds' range is 0.46 %, the
    # measured difference 0.40 %); the two meshes no farther apart than the farthest native seed pair
    # (SEED_SPREAD) plus 10 %.
    assert native < 0.05 and colmap < 0.05, (native, colmap)
    assert abs(colmap - native) < 0.0075, (native, colmap)
    assert between < 1.1 * SEED_SPREAD, between


#: Chamfer (fraction of the radius) between the farthest pair of the native meshes of train.seed=0-3.
SEED_SPREAD = 0.0363
