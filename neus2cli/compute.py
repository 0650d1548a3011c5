"""Where a command computes: the backend, the device and the compositing implementation, chosen once.

A ``Compute`` is resolved at the command boundary (``resolve_compute``) and passed down; every
choice between the GPU packages and their PyTorch twins reads it, never a tensor's device:

* ``backend="tcnn"``: tinycudann encodings, nerfacc's occupancy grid and nerfacc's compositing,
  on a CUDA device;
* ``backend="torch"``: the pure-PyTorch twins everywhere (model, occupancy grid, compositing), on
  any device. On a CUDA machine that is the GPU, and neither tinycudann nor nerfacc is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from neus2cli.backends import Backend, RequestedBackend, resolve_backend

CompositeImpl = Literal["nerfacc", "torch"]
MarchImpl = Literal["triton", "torch"]
KernelImpl = Literal["triton", "torch"]


@dataclass(frozen=True)
class Compute:
    """The resolved compute path.

    Attributes:
        backend: ``"tcnn"`` (tinycudann + nerfacc, CUDA only) or ``"torch"`` (pure PyTorch).
        device: where models, grids and pixels live.
    """

    backend: Backend
    device: torch.device

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))
        if self.backend not in ("tcnn", "torch"):
            raise ValueError(f"backend must be 'tcnn' or 'torch', got {self.backend!r}")
        if self.backend == "tcnn" and self.device.type != "cuda":
            raise ValueError(f"the tcnn backend runs only on CUDA devices, got {self.device}")

    @property
    def composite_impl(self) -> CompositeImpl:
        """Compositing implementation (``render.volrend``'s ``impl``): nerfacc's with tcnn, else the twin."""
        return "nerfacc" if self.backend == "tcnn" else "torch"

    @property
    def kernel_impl(self) -> KernelImpl:
        """The project's own kernels (the ray marcher ``render.march``, the SDF MLP ``model.sdf_mlp``,
        the fused SDF field ``model.sdf_field``): Triton with tcnn (Triton ships with PyTorch's CUDA
        builds), else their PyTorch twins."""
        return "triton" if self.backend == "tcnn" else "torch"

    @property
    def batch_composite_impl(self) -> KernelImpl:
        """The training batch's NeuS compositing (``render.composite``): the twin on every device. Its
        Triton kernels walk one ray per lane; inside the captured step on an H200 they cost 1.5 ms per
        step (0.65 forward, 0.88 backward) where the twin's ~120 small kernels cost about 0.6 ms
        (bench/profile_step.py, DTU 24, 2026-12-03), so they are not the default until they are faster."""
        return "torch"

    @property
    def march_impl(self) -> MarchImpl:
        """Ray marcher (``render.march``): ``kernel_impl``."""
        return self.kernel_impl

    @classmethod
    def cpu(cls) -> Compute:
        """Pure PyTorch on the CPU (the reference path)."""
        return cls("torch", torch.device("cpu"))


def resolve_compute(requested: RequestedBackend = "auto") -> Compute:
    """The config's ``backend`` choice -> a ``Compute``.

    ``"torch"`` never probes the GPU packages and runs on CUDA when PyTorch sees a GPU, else on the CPU.
    ``"tcnn"`` and ``"auto"`` follow ``backends.resolve_backend`` (``"auto"`` falls back to ``"torch"``
    with one warning; ``"tcnn"`` where it cannot run is a ``DependencyError``).
    """
    backend = resolve_backend(requested)
    device = torch.device("cuda" if backend == "tcnn" or torch.cuda.is_available() else "cpu")
    return Compute(backend, device)
