"""Multiresolution hash-grid encoding (Instant-NGP / NeuS2) with two interchangeable backends.

Both backends follow tiny-cuda-nn's ``HashGrid`` exactly, so a ``params`` tensor trained
with one loads into the other:

* ``"tcnn"``: :class:`TcnnHashGrid`, a thin wrapper over ``tinycudann.Encoding`` (fast,
  CUDA only, fp16 inside by default).
* ``"torch"``: :class:`TorchHashGrid`, a pure-PyTorch twin (CPU path and reference;
  supports float64, ``gradcheck`` and the eikonal double backward).

Conventions (learned from tiny-cuda-nn ``include/tiny-cuda-nn/encodings/grid.h`` and
``include/tiny-cuda-nn/common_device.h``):

* Input ``x`` is ``(N, 3)`` in the **normalized** unit cube ``[0, 1]^3``.
* Level ``l`` has ``scale_l = 2^(l * log2(per_level_scale)) * base_resolution - 1``
  (float32 arithmetic) and ``resolution_l = ceil(scale_l) + 1`` vertices per axis.
  The vertex-space position is ``pos = x * scale_l + 0.5`` (one fused multiply-add);
  the 0.5 staggers the levels. A point uses the cell ``floor(pos)`` and trilinear
  weights of ``pos - floor(pos)``.
* Level ``l`` holds ``size_l = min(next_multiple(resolution_l^3, 8), 2^log2_hashmap_size)``
  entries. If ``resolution_l^3 <= size_l`` a vertex ``(i, j, k)`` uses the dense index
  ``i + j*res + k*res^2``, otherwise the coherent prime hash
  ``i*1 ^ j*2654435761 ^ k*805459861``; both in uint32 arithmetic, then ``% size_l``
  (so coordinates equal to ``res`` wrap around on dense levels, as in tcnn).
* ``params`` is one flat float32 vector: level ``l``'s entries start at entry
  ``offset_l = sum(size_0..size_{l-1})``, and entry ``e`` stores its
  ``n_features_per_level`` features contiguously at ``params[(offset_l + e) * F + f]``.
* Output ``(N, n_levels * F)`` float32, level-major: ``out[:, l * F + f]``.
* Initial values are uniform in ``[-1e-4, 1e-4]`` (tcnn's init; its RNG differs, so the
  two backends start from different values unless ``params`` is copied).

Progressive training (NeuS2 enables levels coarse-to-fine) masks levels **outside** the
encoding: the caller multiplies the features by :func:`level_feature_mask`, so both
backends share one mechanism (tcnn's own ``max_level`` is not exposed to PyTorch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from neus2cli.backends import Backend, import_tcnn

# tcnn's coherent prime hash factors for x, y, z (the first is 1 so neighbouring x
# vertices stay neighbours in memory).
HASH_PRIMES = (1, 2654435761, 805459861)
_UINT32 = 0xFFFFFFFF
# tcnn computes the dense stride res^3 in uint32 only while res <= 0x659 (1625**3 < 2^32);
# finer grids are always hashed.
_MAX_DENSE_RESOLUTION_3D = 0x659
_INIT_RANGE = 1e-4
_BACKENDS = ("tcnn", "torch")


@dataclass
class HashGridConfig:
    """Hyper-parameters of the hash grid; the defaults are NeuS2's."""

    n_levels: int = 14
    """Number of resolution levels (tcnn allows at most 128)."""
    n_features_per_level: int = 2
    """Features stored per table entry: 1, 2, 4 or 8 (what tcnn compiles)."""
    log2_hashmap_size: int = 19
    """log2 of the maximum entries per level; coarse levels that fit are stored densely."""
    base_resolution: int = 16
    """Vertices per axis of the coarsest level (its cells number base_resolution - 1)."""
    finest_resolution: int = 2048
    """Nominal resolution of the finest level; sets per_level_scale when that is None."""
    per_level_scale: float | None = None
    """Growth factor between levels; None derives exp(ln(finest/base) / (n_levels - 1))."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field."""
        if not 1 <= int(self.n_levels) <= 128:
            raise ValueError(f"n_levels must be in [1, 128], got {self.n_levels}")
        if self.n_features_per_level not in (1, 2, 4, 8):
            raise ValueError(f"n_features_per_level must be 1, 2, 4 or 8, got {self.n_features_per_level}")
        if not 1 <= int(self.log2_hashmap_size) <= 30:
            raise ValueError(f"log2_hashmap_size must be in [1, 30], got {self.log2_hashmap_size}")
        if int(self.base_resolution) < 2:
            raise ValueError(f"base_resolution must be >= 2, got {self.base_resolution}")
        if self.per_level_scale is None and int(self.finest_resolution) < int(self.base_resolution):
            raise ValueError(
                f"finest_resolution must be >= base_resolution ({self.base_resolution}), got {self.finest_resolution}"
            )
        if self.per_level_scale is not None and not float(self.per_level_scale) >= 1.0:
            raise ValueError(f"per_level_scale must be >= 1, got {self.per_level_scale}")

    @property
    def resolved_per_level_scale(self) -> float:
        """``per_level_scale``, or the factor taking base_resolution to finest_resolution."""
        if self.per_level_scale is not None:
            return float(self.per_level_scale)
        if self.n_levels == 1:
            return 1.0
        return math.exp(math.log(self.finest_resolution / self.base_resolution) / (self.n_levels - 1))

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features_per_level

    def to_tcnn_dict(self) -> dict[str, Any]:
        """tinycudann's encoding config for ``tcnn.Encoding(3, cfg.to_tcnn_dict())``."""
        return {
            "otype": "HashGrid",
            "n_levels": int(self.n_levels),
            "n_features_per_level": int(self.n_features_per_level),
            "log2_hashmap_size": int(self.log2_hashmap_size),
            "base_resolution": int(self.base_resolution),
            "per_level_scale": self.resolved_per_level_scale,
            "interpolation": "Linear",
            "hash": "CoherentPrime",
        }


@dataclass(frozen=True)
class GridLayout:
    """Per-level geometry and parameter layout, computed exactly as tcnn does.

    Attributes:
        scales: per-level ``scale_l`` (float32 values), vertex-space units per unit of x.
        resolutions: vertices per axis, ``ceil(scale_l) + 1``.
        sizes: table entries per level.
        offsets: first entry of each level, plus the total entry count last (n_levels + 1).
        hashed: whether the level uses the hash (else the dense index).
        n_features_per_level: features per entry.
    """

    scales: tuple[float, ...]
    resolutions: tuple[int, ...]
    sizes: tuple[int, ...]
    offsets: tuple[int, ...]
    hashed: tuple[bool, ...]
    n_features_per_level: int

    @property
    def n_levels(self) -> int:
        return len(self.sizes)

    @property
    def n_entries(self) -> int:
        return self.offsets[-1]

    @property
    def n_params(self) -> int:
        """Length of the flat ``params`` vector."""
        return self.offsets[-1] * self.n_features_per_level


def grid_layout(cfg: HashGridConfig) -> GridLayout:
    """The level scales, resolutions, table sizes and offsets tcnn uses for ``cfg``."""
    cfg.validate()
    f32 = np.float32
    # tcnn keeps per_level_scale as a float and evaluates
    # exp2f(level * log2f(per_level_scale)) * base_resolution - 1.0f in float32.
    log2_scale = np.log2(f32(cfg.resolved_per_level_scale))
    max_entries = 1 << int(cfg.log2_hashmap_size)
    scales, resolutions, sizes, offsets, hashed = [], [], [], [], []
    offset = 0
    for level in range(int(cfg.n_levels)):
        scale = np.exp2(f32(level) * log2_scale) * f32(cfg.base_resolution) - f32(1.0)
        res = int(np.ceil(scale)) + 1
        dense = res**3
        # tcnn rounds the dense size up to a multiple of 8 (aligned loads), then caps it.
        size = min(-(-dense // 8) * 8, max_entries)
        scales.append(float(scale))
        resolutions.append(res)
        sizes.append(size)
        offsets.append(offset)
        hashed.append(res > _MAX_DENSE_RESOLUTION_3D or size < dense)
        offset += size
    offsets.append(offset)
    return GridLayout(
        scales=tuple(scales),
        resolutions=tuple(resolutions),
        sizes=tuple(sizes),
        offsets=tuple(offsets),
        hashed=tuple(hashed),
        n_features_per_level=int(cfg.n_features_per_level),
    )


def level_feature_mask(
    cfg: HashGridConfig, n_active_levels: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Progressive-training mask ``(n_levels * F,)`` float32: 1 for levels < n_active_levels, else 0.

    Multiply the encoding's output by it (both backends): masked levels then get neither
    values nor gradients.
    """
    n_active = max(0, min(int(n_active_levels), cfg.n_levels))
    mask = torch.zeros(cfg.n_levels, cfg.n_features_per_level, device=device)
    mask[:n_active] = 1.0
    return mask.reshape(-1)


def _check_points(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a (N, 3) tensor of normalized positions, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")


class _CornerSums(torch.autograd.Function):
    """``out[k, m] = sum_c weights[k, m, c] * table[bags[m, c]]`` for constant ``weights``: K weighted
    sums of the same 8 corners (the fused CPU path's features and input Jacobian), differentiable once
    with respect to ``table``.

    ``embedding_bag`` computes each sum in one pass; its own backward sorts the indices for every sum,
    which on a CPU cost 3x the forward, so the K cotangents are combined per corner first and added
    into the table with one ``index_add_`` (sequential on the CPU: deterministic).
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, bags: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(bags, weights)
        ctx.n_entries = table.shape[0]
        emb = torch.nn.functional.embedding_bag
        return torch.stack([emb(bags, table, per_sample_weights=w, mode="sum") for w in weights])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        bags, weights = ctx.saved_tensors
        coef = weights[0][..., None] * grad[0][:, None, :]  # (M, 8, F)
        for k in range(1, weights.shape[0]):
            coef += weights[k][..., None] * grad[k][:, None, :]
        d_table = grad.new_zeros(ctx.n_entries, grad.shape[-1])
        d_table.index_add_(0, bags.reshape(-1).long(), coef.reshape(-1, grad.shape[-1]))  # int64: 2x faster
        return d_table, None, None


class HashGrid(nn.Module):
    """Common interface of both backends.

    Attributes:
        cfg: the configuration.
        layout: the per-level layout (:func:`grid_layout`).
        n_levels, n_features_per_level: from ``cfg``.
        n_output_dims: ``n_levels * n_features_per_level``.
        params: 1-D ``nn.Parameter`` of ``layout.n_params`` float32 values (tcnn's layout).

    ``forward(x (N, 3) in [0, 1]^3, normalized cube) -> (N, n_output_dims)`` float32
    (float64 for float64 input on the torch backend), level-major.
    """

    params: nn.Parameter

    def __init__(self, cfg: HashGridConfig):
        super().__init__()
        if not isinstance(cfg, HashGridConfig):
            raise ValueError(f"cfg must be a HashGridConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.layout = grid_layout(cfg)
        self.n_levels = int(cfg.n_levels)
        self.n_features_per_level = int(cfg.n_features_per_level)
        self.n_output_dims = self.n_levels * self.n_features_per_level

    def extra_repr(self) -> str:
        return (
            f"n_levels={self.n_levels}, n_features_per_level={self.n_features_per_level}, "
            f"resolutions={self.layout.resolutions[0]}..{self.layout.resolutions[-1]}, "
            f"n_params={self.layout.n_params}"
        )


class TorchHashGrid(HashGrid):
    """Pure-PyTorch hash grid with tcnn's exact semantics (see the module docstring).

    All levels are evaluated at once: temporaries take about 5 KB per point, so chunk
    very large queries. Differentiable twice (input gradients, eikonal double backward),
    in float32 or float64 (``.double()``), on CPU or CUDA.

    Args:
        cfg: grid hyper-parameters.
        seed: seed of the uniform(-1e-4, 1e-4) initialisation.
    """

    def __init__(self, cfg: HashGridConfig, seed: int = 1337):
        super().__init__(cfg)
        lay = self.layout
        gen = torch.Generator().manual_seed(int(seed))
        init = torch.empty(lay.n_params).uniform_(-_INIT_RANGE, _INIT_RANGE, generator=gen)
        self.params = nn.Parameter(init)
        # Per-level constants as non-persistent buffers: they follow .to(device) but the
        # state dict holds only `params`, as on the tcnn backend. The scales are exact
        # float32 values kept in float64 (used to emulate tcnn's single-rounding fmaf).
        strides = [HASH_PRIMES if h else (1, r, r * r) for h, r in zip(lay.hashed, lay.resolutions, strict=True)]
        self.register_buffer("_scales", torch.tensor(lay.scales, dtype=torch.float64), persistent=False)
        self.register_buffer("_strides", torch.tensor(strides, dtype=torch.int64), persistent=False)
        self.register_buffer("_sizes", torch.tensor(lay.sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("_offsets", torch.tensor(lay.offsets[:-1], dtype=torch.int64), persistent=False)
        self.register_buffer("_hashed", torch.tensor(lay.hashed, dtype=torch.bool), persistent=False)
        self._all_hashed = all(lay.hashed)
        self._all_dense = not any(lay.hashed)

    def vertex_index(self, level: int, vertices: torch.Tensor) -> torch.Tensor:
        """Table entry of integer vertices ``(M, 3)`` at ``level``, in ``[0, size_level)``.

        Add ``layout.offsets[level]`` for the entry in the flat table; its features are
        ``params[entry * F : (entry + 1) * F]``.
        """
        if not 0 <= level < self.n_levels:
            raise ValueError(f"level must be in [0, {self.n_levels}), got {level}")
        if vertices.ndim != 2 or vertices.shape[1] != 3:
            raise ValueError(f"vertices must be (M, 3) integers, got {tuple(vertices.shape)}")
        v = vertices.to(device=self._strides.device, dtype=torch.int64)
        terms = v * self._strides[level]
        if self.layout.hashed[level]:
            idx = terms[:, 0] ^ terms[:, 1] ^ terms[:, 2]
        else:
            idx = terms.sum(dim=1)
        # int64 two's complement keeps the low 32 bits of tcnn's uint32 arithmetic.
        return (idx & _UINT32) % self.layout.sizes[level]

    def _corners(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
        """The 8 corner entries of every point and level and the fractional positions.

        Returns ``idx`` (N, L, 8) int64 entries of the flat table (level offsets added; corner
        c = bx + 2 by + 4 bz, tcnn's order), ``frac`` (N, L, 3) = pos - floor(pos) (differentiable
        in ``x``, d frac / dx = scale_l) and the dtype of the computation (float64 for float64 input).
        """
        n = x.shape[0]
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        # The scales are float32 values, so a .float() cast of the module keeps them exact.
        scales = self._scales.to(torch.float64)
        if self._scales.dtype not in (torch.float32, torch.float64):  # e.g. after .half(): rebuild
            scales = torch.tensor(self.layout.scales, dtype=torch.float64, device=x.device)
        if dtype == torch.float64:
            pos = x[:, None, :] * scales[None, :, None] + 0.5
        else:
            # tcnn computes fmaf(scale, x, 0.5f): one rounding. The float64 product of two
            # float32 numbers is exact, so rounding the float64 sum once to float32
            # reproduces it, and the cell choice at boundaries agrees with tcnn.
            pos = (x.to(torch.float64)[:, None, :] * scales[None, :, None] + 0.5).to(dtype)
        cell = torch.floor(pos)  # (N, L, 3); floor has zero gradient
        frac = pos - cell  # exact; d frac / dx = scale
        base = cell.to(torch.int64)

        # Per axis, the index terms of the lower and upper vertex: (N, L, 3, 2).
        strides = self._strides[None, :, :]
        lo = base * strides
        terms = torch.stack([lo, lo + strides], dim=-1)
        tx, ty, tz = terms.unbind(dim=2)
        # Corner c = bx + 2 by + 4 bz (tcnn's corner order), laid out as (bz, by, bx).
        tz, ty, tx = tz[..., :, None, None], ty[..., None, :, None], tx[..., None, None, :]
        if self._all_hashed:
            idx = tx ^ ty ^ tz
        elif self._all_dense:
            idx = tx + ty + tz
        else:
            idx = torch.where(self._hashed[None, :, None, None, None], tx ^ ty ^ tz, tx + ty + tz)
        idx = idx.reshape(n, self.n_levels, 8)
        idx = (idx & _UINT32) % self._sizes[None, :, None] + self._offsets[None, :, None]
        return idx, frac, dtype

    def _fused_entries(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
        """``_corners`` with the same integer results, computed in fewer and smaller passes (the fused
        CPU path). Hashed levels hold ``2^log2_hashmap_size`` entries, so ``(a ^ b ^ c) % size`` equals
        ``(a % size) ^ (b % size) ^ (c % size)``: the reduction is applied to the (N, L, 3, 2) per-axis
        terms and the corners combine in int32. Dense levels (the coarse ones, always first, since the
        resolution grows with the level) keep the generic int64 sum, wrap-around included."""
        lay = self.layout
        n_dense = sum(1 for h in lay.hashed if not h)
        if (
            any(lay.hashed[:n_dense])
            or lay.n_entries >= 2**31
            or any(lay.sizes[level] & (lay.sizes[level] - 1) for level in range(n_dense, self.n_levels))
        ):
            return self._corners(x)  # a layout outside these assumptions: the generic computation
        n = x.shape[0]
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        scales = self._scales.to(device=x.device, dtype=torch.float64)
        if dtype == torch.float64:
            pos = x[:, None, :] * scales[None, :, None] + 0.5
        else:
            pos = (x.to(torch.float64)[:, None, :] * scales[None, :, None] + 0.5).to(dtype)  # tcnn's fmaf
        cell = torch.floor(pos)
        frac = pos - cell
        base = cell.to(torch.int64)
        parts = []
        if n_dense:
            strides = self._strides[None, :n_dense, :]
            lo = base[:, :n_dense] * strides
            tx, ty, tz = torch.stack([lo, lo + strides], dim=-1).unbind(dim=2)
            idx = tz[..., :, None, None] + ty[..., None, :, None] + tx[..., None, None, :]
            idx = (idx.reshape(n, n_dense, 8) & _UINT32) % self._sizes[None, :n_dense, None]
            parts.append((idx + self._offsets[None, :n_dense, None]).to(torch.int32))
        if n_dense < self.n_levels:
            strides = self._strides[None, n_dense:, :]
            lo = base[:, n_dense:] * strides
            size_mask = self._sizes[None, n_dense:, None, None] - 1
            terms = (torch.stack([lo, lo + strides], dim=-1) & size_mask).to(torch.int32)  # (N, Lh, 3, 2)
            tx, ty, tz = terms.unbind(dim=2)
            idx = (tz[..., :, None, None] ^ ty[..., None, :, None]) ^ tx[..., None, None, :]
            offsets = self._offsets[None, n_dense:, None].to(torch.int32)
            parts.append(idx.reshape(n, self.n_levels - n_dense, 8) + offsets)
        idx = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return idx, frac, dtype

    def _table(self, dtype: torch.dtype) -> torch.Tensor:
        return self.params.to(dtype).view(-1, self.n_features_per_level)

    @staticmethod
    def _axis_weights(frac: torch.Tensor) -> torch.Tensor:
        """(N, L, 3) fractions -> (N, L, 3, 2) per-axis weights of the lower and upper vertex."""
        return torch.stack([1.0 - frac, frac], dim=-1)

    def uses_fused_cpu_path(self, x: torch.Tensor) -> bool:
        """Whether ``forward`` takes the fused CPU path (``embedding_bag``): CPU tensors whose value
        needs no derivative with respect to ``x`` (none is asked for, so none of second order either).

        ``embedding_bag`` gathers the 8 corners and sums them weighted in one pass (about 9x faster on
        a CPU than the gather of (N, L, 8, F) corner features and the sum); it is differentiable once,
        with respect to the table, which is all such a call needs. The values agree with the generic
        path to float rounding (the corner sum may round in another order). CUDA tensors always take
        the generic path, unchanged.
        """
        return x.device.type == "cpu" and not (x.requires_grad and torch.is_grad_enabled())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``x (N, 3)`` in the normalized cube -> ``(N, n_levels * F)``, level-major.

        float32 (or half) input gives float32 output; float64 input gives float64. Like
        tcnn, points outside [0, 1]^3 are not clamped: their vertices wrap (dense levels) or
        hash with the same uint32 arithmetic. Differentiable twice with respect to ``x`` and the
        table (the generic path, the reference); on the CPU, where no derivative with respect to
        ``x`` can be asked for, the fused path (``uses_fused_cpu_path``).
        """
        _check_points(x)
        n = x.shape[0]
        if self.uses_fused_cpu_path(x):
            return self.forward_with_input_vjp(x, with_vjp=False)[0]
        idx, frac, dtype = self._corners(x)
        w = self._axis_weights(frac)  # (N, L, 3, 2)
        wx, wy, wz = w.unbind(dim=2)
        weights = (wz[..., :, None, None] * wy[..., None, :, None] * wx[..., None, None, :]).reshape(
            n, self.n_levels, 8
        )
        corner_features = self._table(dtype)[idx]  # (N, L, 8, F)
        out = (weights[..., None] * corner_features).sum(dim=2)
        return out.reshape(n, self.n_output_dims)

    def forward_with_input_vjp(
        self, x: torch.Tensor, with_vjp: bool = True
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor] | None]:
        """The fused CPU path: features of ``x`` (N, 3) and ``vjp(v) = (d features / d x)^T v``.

        ``x`` is a constant here (it must not require a gradient: ``uses_fused_cpu_path``), so the
        input Jacobian of trilinear interpolation is known in closed form: per level and axis a,
        ``d feat / d x_a = scale_l * sum_c (d w_c / d frac_a) T[idx_c]``, with ``d w_c / d frac_a``
        the product of the other two axes' weights, signed by the corner's side on axis a. So
        ``vjp(v) (N, 3) = sum_l scale_l sum_f v[n, l, f] * E_a[n, l, f]``, where E_a is one more
        weighted corner sum (``embedding_bag``), differentiable with respect to the table and ``v``
        (first order: what the eikonal loss's gradient with respect to the parameters needs). This
        replaces the generic double backward through the (N, L, 8, F) gather. The features are
        differentiable with respect to the table.

        Args:
            x: (N, 3) normalized positions, CPU, not requiring a gradient.
            with_vjp: False computes the features only (``vjp`` is then None).

        Returns:
            features (N, n_levels * F) and ``vjp``: (N, n_levels * F) -> (N, 3).
        """
        _check_points(x)
        if x.device.type != "cpu" or (x.requires_grad and torch.is_grad_enabled()):
            raise ValueError("forward_with_input_vjp takes CPU points that do not require a gradient")
        n, n_levels = x.shape[0], self.n_levels
        with torch.no_grad():
            idx, frac, dtype = self._fused_entries(x)
            w = self._axis_weights(frac)
            wx, wy, wz = (a[..., None, None, :] for a in w.unbind(dim=2))  # (N, L, 1, 1, 2)
            wy, wz = wy.transpose(-1, -2), wz.transpose(-1, -3)  # (.., 1, 2, 1), (.., 2, 1, 1)
            weights = (wz * wy * wx).reshape(n * n_levels, 8)
        table = self._table(dtype)
        bags = idx.reshape(n * n_levels, 8)
        if not with_vjp:
            return _CornerSums.apply(table, bags, weights[None])[0].reshape(n, self.n_output_dims), None
        with torch.no_grad():
            side = torch.tensor([-1.0, 1.0], dtype=dtype)  # d w / d frac of the lower, upper vertex
            ds = (side * self._scales.to(dtype)[None, :, None])[..., None, None, :]  # (1, L, 1, 1, 2)
            all_weights = torch.stack(
                [
                    weights,
                    (wz * wy * ds).reshape(n * n_levels, 8),
                    (wz * ds.transpose(-1, -2) * wx).reshape(n * n_levels, 8),
                    (ds.transpose(-1, -3) * wy * wx).reshape(n * n_levels, 8),
                ]
            )
        # The features and d features / d x_a (a = x, y, z) in one call, so one backward pass.
        sums = _CornerSums.apply(table, bags, all_weights).reshape(4, n, self.n_output_dims)
        features, jacobian = sums[0], sums[1:]

        def vjp(v: torch.Tensor) -> torch.Tensor:
            if v.shape != (n, self.n_output_dims):
                raise ValueError(f"v must have shape {(n, self.n_output_dims)}, got {tuple(v.shape)}")
            return (jacobian * v.to(dtype)).sum(dim=-1).t()

        return features, vjp


class TcnnHashGrid(HashGrid):
    """tinycudann's HashGrid behind the common interface (CUDA only).

    The tcnn module is kept out of the submodule tree so that the state dict holds one
    entry, ``params``, exactly as on the torch backend; ``params`` is the same
    ``nn.Parameter`` object tcnn reads.

    Args:
        cfg: grid hyper-parameters.
        seed: seed of tcnn's uniform(-1e-4, 1e-4) initialisation.
        dtype: tcnn's internal precision: None (tcnn's choice, fp16 on modern GPUs, the
            fast path) or ``torch.float32``. The output is float32 either way.
    """

    def __init__(self, cfg: HashGridConfig, seed: int = 1337, dtype: torch.dtype | None = None):
        super().__init__(cfg)
        tcnn = import_tcnn()
        kwargs = {} if dtype is None else {"dtype": dtype}
        enc = tcnn.Encoding(3, cfg.to_tcnn_dict(), seed=int(seed), **kwargs)
        if int(enc.n_output_dims) != self.n_output_dims or enc.params.numel() != self.layout.n_params:
            raise RuntimeError(
                f"tinycudann's HashGrid has {enc.params.numel()} params and {enc.n_output_dims} outputs; "
                f"expected {self.layout.n_params} and {self.n_output_dims} (unsupported tinycudann version?)"
            )
        object.__setattr__(self, "_tcnn", enc)
        self.params = enc.params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``x (N, 3)`` in the normalized cube (CUDA) -> ``(N, n_levels * F)`` float32."""
        _check_points(x)
        if not x.is_cuda:
            raise ValueError(f"x must be a CUDA tensor on the tcnn backend, got device {x.device}")
        if x.shape[0] == 0:
            return self.params.new_zeros((0, self.n_output_dims)).float()
        enc = self._tcnn
        if enc.params is not self.params:  # `params` was reassigned (e.g. a new Parameter)
            enc.params = self.params
        return enc(x.float().contiguous()).float()


def make_hash_grid(cfg: HashGridConfig | None = None, backend: Backend = "torch", seed: int = 1337) -> HashGrid:
    """Build the hash grid for ``backend`` ("tcnn": tinycudann on CUDA; "torch": pure PyTorch).

    Both return a :class:`HashGrid`: ``forward(x (N, 3) in [0, 1]^3) -> (N, n_levels * F)``
    float32, ``params`` 1-D with the same layout, ``n_output_dims``, ``n_levels``,
    ``n_features_per_level``. Progressive training masks levels outside, with
    :func:`level_feature_mask`. ``backend="tcnn"`` raises ``DependencyError`` when
    tinycudann is unavailable.
    """
    cfg = HashGridConfig() if cfg is None else cfg
    if backend == "torch":
        return TorchHashGrid(cfg, seed=seed)
    if backend == "tcnn":
        return TcnnHashGrid(cfg, seed=seed)
    raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
