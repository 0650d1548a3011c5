"""One Compute decides every GPU-or-CPU choice: ``--backend torch`` is pure PyTorch down to compositing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import neus2cli.render.renderer as renderer
from neus2cli.compute import Compute, resolve_compute
from neus2cli.config import resolve_config
from neus2cli.data.images import load_images
from neus2cli.data.loader import load_scene
from neus2cli.train.outputs import TrainedField, render_views
from neus2cli.train.pixels import PixelBank
from neus2cli.train.trainer import NeuSTrainer
from tests.conftest import REPO_ROOT, requires_cuda
from tests.scenes import static_scene

TINY = ["backend=torch", "sampling.grid_resolution=16", "sampling.target_samples=2048", "train.steps=3"]


def test_torch_backend_never_probes_and_composites_with_the_twin():
    compute = resolve_compute("torch")
    assert compute.backend == "torch" and compute.composite_impl == "torch"
    assert Compute("tcnn", torch.device("cuda")).composite_impl == "nerfacc"
    with pytest.raises(ValueError, match="CUDA"):
        Compute("tcnn", torch.device("cpu"))


def test_the_choice_reaches_compositing(tmp_path, monkeypatch):
    # Every compositing call, in training and in rendering, gets the Compute's implementation ...
    scene = load_scene(static_scene(tmp_path / "scene", views=4, size=16))
    cfg = resolve_config("fast", TINY)
    compute = Compute.cpu()
    seen = []
    real = renderer.render_weight_from_alpha

    def spy(*args, impl, **kwargs):
        seen.append(impl)
        return real(*args, impl=impl, **kwargs)

    monkeypatch.setattr(renderer, "render_weight_from_alpha", spy)
    images = load_images(scene.train_views, progress=False)
    trainer = NeuSTrainer(cfg, compute, PixelBank(scene.train_views, images, scene.normalization, compute.device))
    trainer.run(3, progress=False)
    field = TrainedField(trainer.model, trainer.grid, cfg, compute)
    render_views(field, scene.test_views[:1], load_images(scene.test_views[:1], progress=False), scene.normalization)
    assert len(seen) > 3 and set(seen) == {"torch"}
    # ... and not the tensors' device: asking for nerfacc with CPU tensors reaches volrend, which refuses.
    rays_o, rays_d = torch.full((4, 3), 0.5), torch.nn.functional.normalize(torch.ones(4, 3), dim=-1)
    trainer.grid.binaries.fill_(True)
    with pytest.raises(ValueError, match="nerfacc"):
        renderer.render_rays(
            trainer.model, trainer.grid, rays_o, rays_d, step_size=0.05, bg_color=torch.ones(3), impl="nerfacc"
        )


@pytest.mark.gpu
@requires_cuda
def test_backend_torch_on_cuda_imports_neither_gpu_package(tmp_path):
    # nerfacc and tinycudann made unimportable: the whole static run must still work on the GPU.
    scene = static_scene(tmp_path / "scene", views=8, size=32)
    out = tmp_path / "run"
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["nerfacc"] = None  # importing either now raises ImportError
        sys.modules["tinycudann"] = None
        from neus2cli.cli import main
        main(["train", {str(scene)!r}, "--config", "fast", "--backend", "torch", "--out", {str(out)!r},
              "--no-progress", "--set", "train.steps=20", "--set", "output.mesh_resolution=32"])
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backend"] == "torch" and metrics["peak_gpu_memory_bytes"] is not None  # it ran on CUDA
