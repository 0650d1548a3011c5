"""The SDF network's field, hash grid and MLP together, with the SDF's gradient with respect to x.

For ``u = [x - 0.5, lm * enc(x)]`` (``lm`` the progressive level mask) and the bias-free ReLU MLP
``out = W2 relu(W1 u)``, the SDF's input gradient is

    grad = g_x + J^T g_features,   g = W1^T (m * w2),  m = 1[W1 u > 0],  g_x = g[:3],
    g_features = lm * g[3:],       J = d enc / d x  (n_levels * F, 3).

``g`` is piecewise constant (``neus2cli.model.sdf_mlp``) and trilinear interpolation makes ``J``
linear in the table, so a loss L(out, grad) has these exact gradients, with ``a = d L / d out`` and
``v = d L / d grad``:

    table entry of corner c (level l):  w_c d_features[l] + (grad_x w_c . v) g_features[l],
        d_features = lm * (W1_f^T ((a W2) * m)),
    W1, W2: the MLP's closed form with g's cotangent [v, lm * J v].

Two implementations behind one signature (``impl``):

* ``"torch"``, the twin: the encoding module's own forward (tinycudann's grid or the PyTorch one),
  its input Jacobian by autograd (with ``create_graph`` its second-order term too), and the MLP's
  closed form (``sdf_mlp_fused``, whose own ``impl`` is ``mlp_impl``). Differentiable with respect to
  x as well: the dynamic global transform learns through it.
* ``"triton"``: ``neus2cli.model.sdf_field_triton``'s two kernels, reading the encoding's float32
  ``params`` in its tinycudann layout. Points must not need a gradient (``x.requires_grad`` False);
  the table and the two weights get theirs.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from neus2cli.backends import import_triton_kernels
from neus2cli.model.encoding import GridLayout, HashGrid
from neus2cli.model.sdf_mlp import Impl as MLPImpl
from neus2cli.model.sdf_mlp import sdf_mlp_fused, sdf_mlp_value

Impl = Literal["torch", "triton"]
_KERNELS = "neus2cli.model.sdf_field_triton"


def _check(encoding: HashGrid, x: Tensor, level_mask: Tensor, w1: Tensor, w2: Tensor, impl: str) -> None:
    n_features = encoding.n_output_dims
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"x must be (N, 3) normalized points, got {tuple(x.shape)}")
    if level_mask.shape != (n_features,):
        raise ValueError(f"level_mask must have shape ({n_features},), got {tuple(level_mask.shape)}")
    if w1.ndim != 2 or w1.shape[1] != 3 + n_features or w2.ndim != 2 or w2.shape[1] != w1.shape[0]:
        raise ValueError(f"expected w1 (H, {3 + n_features}) and w2 (O, H); got {tuple(w1.shape)}, {tuple(w2.shape)}")
    if impl not in ("torch", "triton"):
        raise ValueError(f"impl must be 'torch' or 'triton', got {impl!r}")
    if impl == "triton":
        tensors = {"x": x, "params": encoding.params, "w1": w1, "w2": w2}
        bad = [name for name, t in tensors.items() if t.dtype != torch.float32]
        if bad:
            raise ValueError(f"impl='triton' needs float32 {', '.join(bad)}")
        if x.requires_grad and torch.is_grad_enabled():
            raise ValueError("impl='triton' gives points no gradient: use impl='torch' for x that requires grad")


@functools.lru_cache(maxsize=16)
def _constants(layout: GridLayout, device: torch.device) -> Tensor:
    return import_triton_kernels(_KERNELS, device).column_constants(layout, device)


def _column_constants(encoding: HashGrid, device: torch.device) -> Tensor:
    # Once per (layout, device): a GridLayout is frozen, so its constants never go stale.
    return _constants(encoding.layout, torch.device(device))


class _FusedSDFField(torch.autograd.Function):
    """The kernels behind an autograd node (first order: training never differentiates its backward)."""

    @staticmethod
    def forward(ctx, x: Tensor, params: Tensor, consts: Tensor, n_features_per_level: int, level_mask: Tensor,
                w1: Tensor, w2: Tensor):  # fmt: skip
        kernels = import_triton_kernels(_KERNELS, x.device)
        out, grad = kernels.forward(x, params, consts, n_features_per_level, level_mask, w1, w2, with_grad=True)
        ctx.save_for_backward(x, params, consts, level_mask, w1, w2)
        ctx.n_features_per_level = n_features_per_level
        ctx.set_materialize_grads(False)
        return out, grad

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: Tensor | None, d_grad: Tensor | None):
        x, params, consts, level_mask, w1, w2 = ctx.saved_tensors
        _, need_params, _, _, _, need_w1, need_w2 = ctx.needs_input_grad
        d_params, d_w1, d_w2 = import_triton_kernels(_KERNELS, x.device).backward(
            x, params, consts, ctx.n_features_per_level, level_mask, w1, w2, d_out, d_grad,
            need_params, need_w1 or need_w2,
        )  # fmt: skip
        return None, d_params, None, None, None, d_w1 if need_w1 else None, d_w2 if need_w2 else None


def sdf_field_with_gradient(
    encoding: HashGrid,
    x: Tensor,
    level_mask: Tensor,
    w1: Tensor,
    w2: Tensor,
    *,
    create_graph: bool,
    impl: Impl = "torch",
    mlp_impl: MLPImpl = "torch",
) -> tuple[Tensor, Tensor]:
    """The MLP's outputs and ``grad = d out[:, 0] / d x`` at ``x`` (module docstring).

    Args:
        encoding: the hash grid (its ``params`` and ``layout``; ``impl="torch"`` calls it).
        x: (N, 3) points in the normalized cube.
        level_mask: (n_levels * F,) progressive-training mask, a constant.
        w1: (H, 3 + n_levels * F) hidden-layer weight; w2: (O, H) output weight, row 0 the SDF.
        create_graph: keep ``grad``'s graph, so that a loss on it reaches the parameters (with
            ``impl="triton"`` the autograd node always does, when autograd is on).
        impl: "torch" (the twin) or "triton" (the fused kernels).
        mlp_impl: the MLP's ``impl`` on the twin's path.

    Returns:
        out (N, O) and grad (N, 3), float32 (the weights' dtype on the twin).
    """
    _check(encoding, x, level_mask, w1, w2, impl)
    if impl == "triton":
        consts = _column_constants(encoding, x.device)
        args = (x.contiguous(), encoding.params, consts, encoding.n_features_per_level, level_mask.contiguous(), w1, w2)
        if not torch.is_grad_enabled():
            return import_triton_kernels(_KERNELS, x.device).forward(*args, with_grad=True)
        return _FusedSDFField.apply(*args)
    with torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        features = encoding(x)
        out, g_x, g_features = sdf_mlp_fused(x, features, level_mask, w1, w2, impl=mlp_impl)
        if not create_graph:
            g_x, g_features = g_x.detach(), g_features.detach()
        # allow_unused: tcnn's encoding of zero points does not read x.
        (grad_features,) = torch.autograd.grad(
            features, x, g_features.to(features.dtype), create_graph=create_graph, allow_unused=True
        )
    grad = g_x if grad_features is None else g_x + grad_features.to(g_x.dtype)
    return out, grad


def sdf_field_value(
    encoding: HashGrid, x: Tensor, level_mask: Tensor, w1: Tensor, w2: Tensor, *, impl: Impl = "torch",
    mlp_impl: MLPImpl = "torch",
) -> Tensor:  # fmt: skip
    """``out`` (N, O) of :func:`sdf_field_with_gradient` alone.

    ``impl="triton"`` runs the forward kernel alone where autograd is off (``torch.no_grad``: the
    pre-pass, occupancy updates, meshing); elsewhere the twin, so that a caller that differentiates
    the value always gets a graph.
    """
    if impl == "triton" and not torch.is_grad_enabled():
        _check(encoding, x, level_mask, w1, w2, impl)
        out, _ = import_triton_kernels(_KERNELS, x.device).forward(
            x.contiguous(), encoding.params, _column_constants(encoding, x.device), encoding.n_features_per_level,
            level_mask.contiguous(), w1, w2, with_grad=False,
        )  # fmt: skip
        return out
    _check(encoding, x, level_mask, w1, w2, "torch")
    return sdf_mlp_value(x, encoding(x), level_mask, w1, w2, impl=mlp_impl)
