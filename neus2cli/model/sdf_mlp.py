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

import torch
import torch.nn.functional as F


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
