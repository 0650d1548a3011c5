"""Issue #13's synthetic acceptance on the CPU: an unmasked scene (the lumpy object inside a textured
environment sphere, RGB images without alpha) trained with the NeRF++ background reconstructs the
object, and no background surface is attached to it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from neus2cli.config import resolve_config
from neus2cli.train.static import train_static
from tests.scenes import lumpy_ellipsoid

# The `fast` preset sized for a CPU (as tests/test_train_e2e.py) with a small background field: 16
# samples per ray and a 32-wide MLP (the `unmasked` preset's 32 and 64 are sized for a GPU batch).
SETTINGS = [
    "backend=torch",
    "sampling.grid_resolution=32",
    "model.background=nerfpp",
    "model.background_samples=16",
    "model.background_hidden=32",
    "output.render_test_views=1",
]
STEPS = 500


@pytest.fixture(scope="module")
def unmasked_run(tmp_path_factory):
    from data_tools.background import EnvironmentSphere
    from data_tools.generate import generate_static_scene
    from data_tools.render_mesh import Shading

    scene = generate_static_scene(
        lumpy_ellipsoid(), tmp_path_factory.mktemp("scene") / "lumpy_room", n_views=24, n_test=1, width=64,
        height=64, shading=Shading(supersample=1), progress=False, background=EnvironmentSphere(8.0),
    )  # fmt: skip
    torch.manual_seed(0)
    cfg = resolve_config("fast", SETTINGS, **{"train.steps": STEPS})
    run_dir, metrics = train_static(scene, cfg, tmp_path_factory.mktemp("runs") / "run", progress=False)
    return scene, run_dir, metrics


@pytest.mark.slow
def test_unmasked_scene_reconstructs_the_object_and_only_it(unmasked_run):
    from bench.common import chamfer_fraction

    scene, run_dir, metrics = unmasked_run
    q = chamfer_fraction(run_dir / "mesh.ply", scene / "gt_mesh.ply", radius=1.0, n_points=20_000)
    mesh, truth = trimesh.load(run_dir / "mesh.ply"), trimesh.load(scene / "gt_mesh.ply")
    overshoot = float(np.maximum(truth.bounds[0] - mesh.bounds[0], mesh.bounds[1] - truth.bounds[1]).max())
    print(
        f"unmasked, {STEPS} steps: Chamfer {100 * q['chamfer_fraction_of_radius']:.2f} % of the radius "
        f"(accuracy {100 * q['accuracy_fraction_of_radius']:.2f} %, completeness "
        f"{100 * q['completeness_fraction_of_radius']:.2f} %), mesh beyond the object's box by {overshoot:.3f}, "
        f"test PSNR {metrics['psnr_test']:.2f} dB, {metrics['train_seconds']:.0f} s of training"
    )
    # The export lattice (96^3 over the unit cube, the radius mapped to 0.45) has cells of 2.3% of the
    # radius. With masks, 400 steps of this preset reach 2.4% (tests/test_train_e2e.py); without them the
    # silhouette comes from colour contrast alone: this setting measured 4.2% and 4.9% in two runs (CPU
    # threads sum in varying order; 3.4-5.8% over the background sizes and the 400-800 steps tried).
    # 6.5% (2.8 cells) holds the object; without the background model the same scene gives 63% (the SDF
    # fills the cube with the room's colours).
    assert q["chamfer_fraction_of_radius"] < 0.065, q
    # Nothing attached: the mesh stays within the object's box plus 0.1 radius (4 lattice cells; measured
    # under 0.01). Without the background, surfaces reach the cube's faces: 0.67 radius beyond the box.
    assert overshoot < 0.1, (mesh.bounds, truth.bounds)
    assert mesh.is_watertight
