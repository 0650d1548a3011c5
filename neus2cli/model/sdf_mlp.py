"""The SDF MLP with its input gradient in closed form (NeuS2's fused second-order derivative).

For a bias-free one-hidden-layer ReLU MLP ``out = W2 relu(W1 u)`` the input gradient of output
channel 0 is

    g = d out[:, 0] / d u = W1^T (m * w2),    m = 1[W1 u > 0],  w2 = W2[0],

which is piecewise constant in ``u``. So a loss L(out, g) (eikonal on |grad|, colour taking grad
as input, NeuS alpha through grad . dir) has exact gradients made of a few matmuls, with no
generic double backward through the MLP. With ``a = grad_out`` (N, O), ``b = grad_g`` (N, D),
``h = relu(W1 u)`` (N, H):

    from out:  dpre = (a W2) * m,   dL/du = dpre W1,   dL/dW1 = dpre^T u,   dL/dW2 = a^T h
    from g:    dL/dW1 += (m * w2)^T b,   dL/dw2 += sum_n m_n * (W1 b_n),   dL/du += 0 (a.e.)

The backward is written with differentiable ops (the mask is a constant), so it can itself be
differentiated (``gradgradcheck``); at the kinks W1 u = 0 the derivatives are those of PyTorch's
``relu`` (mask 0), which is the convention the generic double backward uses too.
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from neus2cli.backends import import_triton_kernels

Impl = Literal["torch", "triton"]


class _SDFMLPWithGradient(torch.autograd.Function):
    # Every g-path term comes from one (H, D) matrix M = m^T grad_g, since w2 only scales rows:
    #   sum_n m_nj w2_j b_nk = w2_j M_jk   and   sum_n m_nj (W1 b_n)_j = sum_k W1_jk M_jk,
    # and the forward uses g = m (w2[:, None] * W1): no (N, H) elementwise pass besides the mask.
    @staticmethod
    def forward(ctx, inp: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor):
        # F.linear, like nn.Linear: the same pre-activations (hence the same ReLU mask) as the
        # generic path, bit for bit.
        h = torch.relu(F.linear(inp, w1))
        mask = h.sign()  # 1 where the unit is active, else 0 (h >= 0), in h's dtype
        out = F.linear(h, w2)
        g = mask @ (w2[0, :, None] * w1)
        ctx.save_for_backward(inp, w1, w2, h, mask)
        ctx.set_materialize_grads(False)
        return out, g

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor | None, grad_g: torch.Tensor | None):
        inp, w1, w2, h, mask = ctx.saved_tensors  # mask is a constant: the ReLU's derivative a.e.
        need_inp, need_w1, need_w2 = ctx.needs_input_grad
        d_inp = d_w1 = d_w2 = None
        if grad_out is not None:
            d_pre = (grad_out @ w2) * mask
            if need_inp:
                d_inp = d_pre @ w1
            if need_w1:
                d_w1 = d_pre.t() @ inp
            if need_w2:
                if torch.is_grad_enabled():
                    # This backward is being differentiated (create_graph): h needs its graph to inp, w1.
                    h = torch.relu(F.linear(inp, w1))
                d_w2 = grad_out.t() @ h
        if grad_g is not None and (need_w1 or need_w2):
            m_g = mask.t() @ grad_g  # (H, D)
            if need_w1:
                term = w2[0, :, None] * m_g
                d_w1 = term if d_w1 is None else d_w1 + term
            if need_w2:
                term = F.pad((w1 * m_g).sum(dim=1)[None], (0, 0, 0, w2.shape[0] - 1))
                d_w2 = term if d_w2 is None else d_w2 + term
        return d_inp, d_w1, d_w2


def sdf_mlp_with_gradient(inp: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``out = W2 relu(W1 inp)`` and ``g = d out[:, 0] / d inp``, with closed-form derivatives.

    Args:
        inp: (N, D) MLP input.
        w1: (H, D) hidden-layer weight (``nn.Linear`` layout), no bias.
        w2: (O, H) output-layer weight, no bias; row 0 gives the differentiated channel.

    Returns:
        out (N, O) and g (N, D). Both are differentiable w.r.t. all three inputs, and so are
        their gradients (the backward is made of matmuls and a constant mask).
    """
    if inp.ndim != 2 or w1.ndim != 2 or w2.ndim != 2 or w1.shape[1] != inp.shape[1] or w2.shape[1] != w1.shape[0]:
        raise ValueError(
            f"expected inp (N, D), w1 (H, D), w2 (O, H); got {tuple(inp.shape)}, {tuple(w1.shape)}, {tuple(w2.shape)}"
        )
    return _SDFMLPWithGradient.apply(inp, w1, w2)


# --------------------------------------------------------------------------- split inputs, fused kernel


def _check_split(x: Tensor, features: Tensor, level_mask: Tensor, w1: Tensor, w2: Tensor) -> None:
    n = x.shape[0]
    if x.ndim != 2 or x.shape[1] != 3 or features.ndim != 2 or features.shape[0] != n:
        raise ValueError(f"expected x (N, 3) and features (N, F); got {tuple(x.shape)}, {tuple(features.shape)}")
    n_features = features.shape[1]
    if level_mask.shape != (n_features,):
        raise ValueError(f"level_mask must have shape ({n_features},), got {tuple(level_mask.shape)}")
    if w1.ndim != 2 or w1.shape[1] != 3 + n_features or w2.ndim != 2 or w2.shape[1] != w1.shape[0]:
        raise ValueError(f"expected w1 (H, {3 + n_features}) and w2 (O, H); got {tuple(w1.shape)}, {tuple(w2.shape)}")


def _triton_module(x: Tensor) -> ModuleType:
    return import_triton_kernels("neus2cli.model.sdf_mlp_triton", x.device)


class _FusedSDFMLP(torch.autograd.Function):
    """The Triton kernels behind an autograd node (first order: training never differentiates its backward)."""

    @staticmethod
    def forward(ctx, x: Tensor, features: Tensor, level_mask: Tensor, w1: Tensor, w2: Tensor):
        kernels = _triton_module(x)
        out, g_x, g_f = kernels.forward(x, features, level_mask, w1, w2, with_grad=True)
        ctx.save_for_backward(x, features, level_mask, w1, w2)
        ctx.set_materialize_grads(False)
        return out, g_x, g_f

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: Tensor | None, d_gx: Tensor | None, d_gf: Tensor | None):
        x, features, level_mask, w1, w2 = ctx.saved_tensors
        need_x, need_f, _, need_w1, need_w2 = ctx.needs_input_grad
        d_x, d_f, d_w1, d_w2 = _triton_module(x).backward(
            x, features, level_mask, w1, w2, d_out, d_gx, d_gf, need_x or need_f, need_w1 or need_w2
        )
        return (d_x if need_x else None, d_f if need_f else None, None, d_w1 if need_w1 else None,
                d_w2 if need_w2 else None)  # fmt: skip


def sdf_mlp_fused(
    x: Tensor, features: Tensor, level_mask: Tensor, w1: Tensor, w2: Tensor, *, impl: Impl = "torch"
) -> tuple[Tensor, Tensor, Tensor]:
    """The SDF MLP on ``u = [x - 0.5, features * level_mask]``, with its input gradient split by input.

    ``impl="torch"`` is the twin (``torch.cat`` + :func:`sdf_mlp_with_gradient`, differentiable to
    any order); ``impl="triton"`` runs ``neus2cli.model.sdf_mlp_triton``'s kernels (float32 weights,
    CUDA tensors; first-order derivatives), which never write the (N, hidden) activations or ``u``.

    Args:
        x: (N, 3) points in the normalized cube.
        features: (N, F) hash-grid features of ``x`` (float16 from tinycudann, or the weights' dtype).
        level_mask: (F,) progressive-training mask of the features (a constant: no gradient).
        w1: (H, 3 + F) hidden-layer weight, no bias.
        w2: (O, H) output-layer weight, no bias; row 0 is the differentiated (SDF) channel.
        impl: "torch" or "triton".

    Returns:
        out (N, O) in the weights' dtype; g_x (N, 3) = d out[:, 0] / d x through the MLP's direct
        input; g_features (N, F) = d out[:, 0] / d features (``level_mask`` included), both in the
        weights' dtype. The full d out[:, 0] / d x adds the hash grid's Jacobian applied to
        ``g_features``.
    """
    _check_split(x, features, level_mask, w1, w2)
    if impl == "triton":
        if w1.dtype != torch.float32 or w2.dtype != torch.float32 or x.dtype != torch.float32:
            raise ValueError(f"impl='triton' needs float32 x and weights, got {x.dtype}, {w1.dtype}, {w2.dtype}")
        return _FusedSDFMLP.apply(x.contiguous(), features.contiguous(), level_mask.contiguous(), w1, w2)
    if impl != "torch":
        raise ValueError(f"impl must be 'torch' or 'triton', got {impl!r}")
    out, g = sdf_mlp_with_gradient(torch.cat([x - 0.5, features.to(w1.dtype) * level_mask], dim=-1), w1, w2)
    return out, g[:, :3], g[:, 3:] * level_mask


def sdf_mlp_value(
    x: Tensor, features: Tensor, level_mask: Tensor, w1: Tensor, w2: Tensor, *, impl: Impl = "torch"
) -> Tensor:
    """``out`` (N, O) of :func:`sdf_mlp_fused` alone, for evaluation without gradients.

    ``impl="triton"`` runs the forward kernel only when autograd is off (``torch.no_grad``), and the
    twin otherwise, so that a caller that differentiates the value always gets a graph.
    """
    _check_split(x, features, level_mask, w1, w2)
    if impl == "triton" and not torch.is_grad_enabled() and w1.dtype == torch.float32 and x.dtype == torch.float32:
        out, _, _ = _triton_module(x).forward(
            x.contiguous(), features.contiguous(), level_mask.contiguous(), w1, w2, with_grad=False
        )
        return out
    if impl not in ("torch", "triton"):
        raise ValueError(f"impl must be 'torch' or 'triton', got {impl!r}")
    h = torch.relu(F.linear(torch.cat([x - 0.5, features.to(w1.dtype) * level_mask], dim=-1), w1))
    return F.linear(h, w2)
