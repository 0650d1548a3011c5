"""Bias-free ReLU MLPs with two interchangeable backends and one checkpoint layout.

* ``"torch"``: :class:`TorchMLP`, ``nn.Linear(bias=False)`` + ReLU layers in float32 (the
  CPU path and reference; float64 after ``.double()``).
* ``"tcnn"``: :class:`TcnnMLP`, tinycudann's ``FullyFusedMLP`` (CUDA, fp16 inside).

Both map ``(N, n_in)`` float32 to ``(N, n_out)`` float32 with no output activation, and
share the **canonical layout**: one float32 weight matrix ``[out, in]`` per linear layer,
as in ``nn.Linear``, under the ``state_dict`` keys an ``nn.Sequential`` of Linear/ReLU
gives them (``0.weight``, ``2.weight``, ..., ``{2k}.weight`` for layer ``k``), so a
checkpoint saved on one backend loads on the other (and older ``nn.Sequential``
checkpoints load on both). Both start from ``nn.Linear``'s default initialisation, drawn
from PyTorch's global RNG in the same order, so a seeded run starts from the same weights
on either backend.

tinycudann's parameter layout (read from its source: ``src/fully_fused_mlp.cu``,
``include/tiny-cuda-nn/networks/fully_fused_mlp.h``,
``include/tiny-cuda-nn/network_with_input_encoding.h``, ``src/cpp_api.cu``,
``include/tiny-cuda-nn/gpu_matrix.h``, ``bindings/torch/tinycudann/modules.py``):

* ``tcnn.Network`` is a ``NetworkWithInputEncoding`` with an ``Identity`` encoding. That
  encoding pads its output to a multiple of the MLP's alignment (16 for FullyFusedMLP) and
  writes **1.0** into the padded inputs, which would make the padded weight columns a
  learnable bias. :class:`TcnnMLP` therefore pads the input with **zeros** itself (to
  ``next_multiple(n_in, 16)``) and tells tcnn that width, so the padded columns never act
  and never receive gradient.
* The flat ``params`` vector holds the network's matrices first (the Identity encoding has
  none), in layer order: input layer ``[hidden, padded_in]``, then ``n_hidden_layers - 1``
  matrices ``[hidden, hidden]``, then the output layer ``[padded_out, hidden]`` with
  ``padded_out = next_multiple(n_out, 16)``. Each is a row-major ``GPUMatrix<T, RM>`` with
  ``rows = fan_out``, ``cols = fan_in``: exactly ``nn.Linear``'s ``[out, in]``.
* Unused padding: columns ``n_in..padded_in-1`` of the input layer and rows
  ``n_out..padded_out-1`` of the output layer (:func:`tcnn_padding_mask`). They are kept
  zero; tcnn computes the padded outputs and the bindings slice them off, so they get zero
  gradient too.
* ``params`` is a float32 ``nn.Parameter`` (the master weights); each forward casts it to
  fp16. Gradients come back already divided by the loss scale (128 in fp16).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from neus2cli import backends

if TYPE_CHECKING:
    from neus2cli.backends import Backend

#: FullyFusedMLP's ``REQUIRED_ALIGNMENT()`` (16x16x16 tensor-core tiles): the padding of its
#: input width (through the encoding's alignment) and of its output width.
TCNN_ALIGNMENT = 16
#: Widths FullyFusedMLP is compiled for.
TCNN_WIDTHS = (16, 32, 64, 128)
_BACKENDS = ("tcnn", "torch")


def _next_multiple(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class MLPShape:
    """Widths of a bias-free MLP: ``n_in -> hidden (x n_hidden_layers, ReLU) -> n_out``."""

    n_in: int
    n_out: int
    hidden: int
    n_hidden_layers: int

    def __post_init__(self) -> None:
        for name in ("n_in", "n_out", "hidden", "n_hidden_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def canonical_shapes(self) -> list[tuple[int, int]]:
        """``(out, in)`` of each linear layer, input layer first (``n_hidden_layers + 1`` of them)."""
        ins = [self.n_in] + [self.hidden] * self.n_hidden_layers
        outs = [self.hidden] * self.n_hidden_layers + [self.n_out]
        return list(zip(outs, ins, strict=True))

    @property
    def tcnn_n_in(self) -> int:
        """Input width tcnn is given: ``n_in`` rounded up to a multiple of 16."""
        return _next_multiple(self.n_in, TCNN_ALIGNMENT)

    @property
    def tcnn_n_out(self) -> int:
        """tcnn's ``padded_output_width``: ``n_out`` rounded up to a multiple of 16."""
        return _next_multiple(self.n_out, TCNN_ALIGNMENT)

    @property
    def tcnn_shapes(self) -> list[tuple[int, int]]:
        """``(rows, cols)`` of tcnn's row-major matrices in ``params`` order (canonical, padded)."""
        shapes = self.canonical_shapes
        shapes[0] = (shapes[0][0], self.tcnn_n_in)
        shapes[-1] = (self.tcnn_n_out, shapes[-1][1])
        return shapes

    @property
    def tcnn_n_params(self) -> int:
        return sum(rows * cols for rows, cols in self.tcnn_shapes)

    def tcnn_config(self) -> dict[str, Any]:
        """tinycudann's network config for ``tcnn.Network(tcnn_n_in, n_out, config)``."""
        return {
            "otype": "FullyFusedMLP",
            "activation": "ReLU",
            "output_activation": "None",
            "n_neurons": self.hidden,
            "n_hidden_layers": self.n_hidden_layers,
        }


def canonical_state_keys(shape: MLPShape) -> list[str]:
    """State-dict keys of the canonical weights: ``{2k}.weight`` (``nn.Sequential`` indices)."""
    return [f"{2 * k}.weight" for k in range(len(shape.canonical_shapes))]


def _check_canonical(weights: Sequence[torch.Tensor], shape: MLPShape) -> None:
    expected = shape.canonical_shapes
    if len(weights) != len(expected):
        raise ValueError(f"expected {len(expected)} weight matrices for {shape}, got {len(weights)}")
    for k, (w, want) in enumerate(zip(weights, expected, strict=True)):
        if tuple(w.shape) != want:
            raise ValueError(f"weight matrix {k} must be [out, in] = {list(want)}, got {list(w.shape)}")


def canonical_to_tcnn_params(weights: Sequence[torch.Tensor], shape: MLPShape) -> torch.Tensor:
    """Canonical ``[out, in]`` matrices -> tcnn's flat ``params`` ``(shape.tcnn_n_params,)`` float32.

    Each matrix is zero-padded to tcnn's ``(rows, cols)`` and flattened row-major, in layer
    order; the padding (:func:`tcnn_padding_mask`) is exactly zero.
    """
    _check_canonical(weights, shape)
    blocks = []
    for w, (rows, cols) in zip(weights, shape.tcnn_shapes, strict=True):
        block = torch.zeros(rows, cols, dtype=torch.float32, device=w.device)
        block[: w.shape[0], : w.shape[1]] = w.detach()
        blocks.append(block.reshape(-1))
    return torch.cat(blocks)


def tcnn_params_to_canonical(flat: torch.Tensor, shape: MLPShape) -> list[torch.Tensor]:
    """tcnn's flat ``params`` (or its gradient) -> canonical ``[out, in]`` float32 matrices.

    The padding entries are dropped. Works on any device; the results are new tensors.
    """
    if flat.ndim != 1 or flat.numel() != shape.tcnn_n_params:
        raise ValueError(f"params must be 1-D with {shape.tcnn_n_params} entries for {shape}, got {tuple(flat.shape)}")
    weights, offset = [], 0
    for (rows, cols), (n_out, n_in) in zip(shape.tcnn_shapes, shape.canonical_shapes, strict=True):
        block = flat[offset : offset + rows * cols].view(rows, cols)
        weights.append(block[:n_out, :n_in].to(torch.float32).clone())
        offset += rows * cols
    return weights


def tcnn_padding_mask(shape: MLPShape) -> torch.Tensor:
    """``(shape.tcnn_n_params,)`` bool: True on the entries of tcnn's ``params`` that are padding."""
    ones = [torch.ones(n_out, n_in) for n_out, n_in in shape.canonical_shapes]
    return canonical_to_tcnn_params(ones, shape) == 0


class MLP(nn.Module):
    """Common interface of both backends.

    ``forward(x (N, n_in)) -> (N, n_out)`` float32 (no output activation). The state dict
    holds the canonical weights under :func:`canonical_state_keys`.
    """

    def __init__(self, shape: MLPShape):
        super().__init__()
        if not isinstance(shape, MLPShape):
            raise ValueError(f"shape must be an MLPShape, got {type(shape).__name__}")
        self.shape = shape

    def canonical_weights(self) -> list[torch.Tensor]:
        """Detached copies of the weights, canonical layout: float32 ``[out, in]`` per layer."""
        raise NotImplementedError

    def load_canonical_weights(self, weights: Sequence[torch.Tensor]) -> None:
        """Set the weights from canonical ``[out, in]`` matrices (any device, copied)."""
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.shape.n_in:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a (N, {self.shape.n_in}) tensor, got {got}")

    def extra_repr(self) -> str:
        s = self.shape
        return f"n_in={s.n_in}, n_out={s.n_out}, hidden={s.hidden}, n_hidden_layers={s.n_hidden_layers}"


class TorchMLP(MLP):
    """Pure-PyTorch MLP: child modules ``0, 1, 2, ...`` = Linear, ReLU, ..., Linear (no biases).

    Identical to ``nn.Sequential(Linear, ReLU, ..., Linear)``: same modules, same default
    initialisation from the global RNG, same state-dict keys.
    """

    def __init__(self, shape: MLPShape):
        super().__init__(shape)
        index = 0
        for k, (n_out, n_in) in enumerate(shape.canonical_shapes):
            self.add_module(str(index), nn.Linear(n_in, n_out, bias=False))
            index += 1
            if k < shape.n_hidden_layers:
                self.add_module(str(index), nn.ReLU())
                index += 1

    def _linears(self) -> list[nn.Linear]:
        return [m for m in self.children() if isinstance(m, nn.Linear)]

    def canonical_weights(self) -> list[torch.Tensor]:
        return [layer.weight.detach().to(torch.float32).clone() for layer in self._linears()]

    @torch.no_grad()
    def load_canonical_weights(self, weights: Sequence[torch.Tensor]) -> None:
        _check_canonical(weights, self.shape)
        for layer, w in zip(self._linears(), weights, strict=True):
            layer.weight.copy_(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, n_in)`` -> ``(N, n_out)`` in the module's dtype (float32 unless ``.double()``)."""
        self._check_input(x)
        for layer in self.children():
            x = layer(x)
        return x


class TcnnMLP(MLP):
    """tinycudann ``FullyFusedMLP`` behind the common interface (CUDA only).

    ``params`` is tcnn's flat float32 parameter (the same ``nn.Parameter`` object tcnn
    reads; the tcnn module is kept out of the submodule tree). The state dict converts it
    to and from the canonical layout. Construction loads ``nn.Linear``'s default init
    (drawn on the CPU from the global RNG, as :class:`TorchMLP` does), replacing tcnn's own.

    Args:
        shape: the widths; ``hidden`` must be 16, 32, 64 or 128.
        seed: seed of tcnn's own initialisation (overwritten; kept for tcnn's constructor).
    """

    def __init__(self, shape: MLPShape, seed: int = 1337):
        super().__init__(shape)
        if shape.hidden not in TCNN_WIDTHS:
            raise ValueError(f"FullyFusedMLP supports hidden widths {TCNN_WIDTHS}, got {shape.hidden}")
        tcnn = backends.import_tcnn()
        net = tcnn.Network(shape.tcnn_n_in, shape.n_out, shape.tcnn_config(), seed=int(seed))
        if net.params.numel() != shape.tcnn_n_params:
            raise RuntimeError(
                f"tinycudann's FullyFusedMLP has {net.params.numel()} params; expected {shape.tcnn_n_params} "
                f"for {shape} (unsupported tinycudann version?)"
            )
        object.__setattr__(self, "_tcnn", net)
        self.params = net.params
        self.load_canonical_weights(TorchMLP(shape).canonical_weights())

    def canonical_weights(self) -> list[torch.Tensor]:
        return tcnn_params_to_canonical(self.params.detach(), self.shape)

    @torch.no_grad()
    def load_canonical_weights(self, weights: Sequence[torch.Tensor]) -> None:
        flat = canonical_to_tcnn_params([w.to(self.params.device) for w in weights], self.shape)
        self.params.copy_(flat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, n_in)`` CUDA -> ``(N, n_out)`` float32 (tcnn's fp16 output, cast)."""
        self._check_input(x)
        if not x.is_cuda:
            raise ValueError(f"x must be a CUDA tensor on the tcnn backend, got device {x.device}")
        if x.shape[0] == 0:
            return x.new_zeros((0, self.shape.n_out), dtype=torch.float32)
        net = self._tcnn
        if net.params is not self.params:  # `params` was reassigned (e.g. a new Parameter)
            net.params = self.params
        x = x.float()
        pad = self.shape.tcnn_n_in - self.shape.n_in
        if pad:
            # Zeros, not tcnn's ones: the padded weight columns must not act as a bias.
            x = nn.functional.pad(x, (0, pad))
        return net(x.contiguous()).float()

    # The state dict holds the canonical matrices instead of `params`.
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        for key, w in zip(canonical_state_keys(self.shape), self.canonical_weights(), strict=True):
            destination[prefix + key] = w

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        keys = [prefix + k for k in canonical_state_keys(self.shape)]
        missing = [k for k in keys if k not in state_dict]
        missing_keys.extend(missing)
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k not in keys)
        if missing:
            return
        weights = [state_dict[k] for k in keys]
        for key, w, want in zip(keys, weights, self.shape.canonical_shapes, strict=True):
            if tuple(w.shape) != want:
                error_msgs.append(
                    f"size mismatch for {key}: copying a param with shape {tuple(w.shape)} from checkpoint, "
                    f"the shape in current model is {want}."
                )
                return
        self.load_canonical_weights(weights)


def make_mlp(n_in: int, n_out: int, hidden: int, n_hidden_layers: int, backend: Backend = "torch") -> MLP:
    """Bias-free ReLU MLP for ``backend`` ("tcnn": tinycudann FullyFusedMLP; "torch": nn.Linear).

    Both give ``forward(x (N, n_in) float32) -> (N, n_out) float32``, no output activation,
    ``nn.Linear``'s default init from the global RNG, and the canonical state-dict layout.
    ``backend="tcnn"`` raises ``DependencyError`` when tinycudann is unavailable.
    """
    shape = MLPShape(n_in, n_out, hidden, n_hidden_layers)
    if backend == "torch":
        return TorchMLP(shape)
    if backend == "tcnn":
        return TcnnMLP(shape)
    raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
