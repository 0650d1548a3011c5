"""NeuS2's networks: a hash-grid SDF network, a colour network and the learned sharpness.

Every position here is in the **normalized** unit cube [0, 1]^3 (see
``neus2cli.data.scene.Normalization``); the SDF is in normalized units too.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from neus2cli.compute import Compute
from neus2cli.config import ModelConfig
from neus2cli.model.background import BackgroundField, make_background
from neus2cli.model.encoding import HashGridConfig, TorchHashGrid, level_feature_mask, make_hash_grid
from neus2cli.model.mlp import make_mlp
from neus2cli.model.sdf_field import Impl as FieldImpl
from neus2cli.model.sdf_field import sdf_field_value, sdf_field_with_gradient
from neus2cli.model.sdf_mlp import Impl as MLPImpl
from neus2cli.model.sdf_mlp import sdf_mlp_fused
from neus2cli.model.sh import make_sh_encoding


def hash_grid_config(cfg: ModelConfig) -> HashGridConfig:
    return HashGridConfig(
        n_levels=cfg.n_levels,
        n_features_per_level=cfg.n_features_per_level,
        log2_hashmap_size=cfg.log2_hashmap_size,
        base_resolution=cfg.base_resolution,
        finest_resolution=cfg.finest_resolution,
    )


class SDFNetwork(nn.Module):
    """[x - 0.5, hash features] -> 64 ReLU -> ``sdf_outputs``, no biases.

    Output channel 0 plus ``sdf_bias`` is the SDF; all outputs feed the colour network.
    Geometric initialisation (SAL) makes the initial zero level set a sphere of radius
    ``-sdf_bias`` around the cube centre: with first-layer xyz weights ~ N(0, 2/64),
    E[sum_j relu(w_j . p)] = 64 * sqrt(2)/8 * |p| / sqrt(2 pi), and the constant output
    weight sqrt(pi)/8 turns that into exactly |p|.

    ``cfg.sdf_gradient`` picks how :meth:`sdf_and_gradient` differentiates: "closed_form" (the
    MLP's part in closed form, :mod:`neus2cli.model.sdf_mlp`) or "autograd" (the reference).
    ``mlp_impl`` runs that MLP as the PyTorch twin ("torch") or as Triton kernels ("triton",
    ``Compute.kernel_impl`` on the tcnn path).
    """

    def __init__(self, cfg: ModelConfig, backend: str, mlp_impl: MLPImpl = "torch"):
        super().__init__()
        self.grid_config = hash_grid_config(cfg)
        self.encoding = make_hash_grid(self.grid_config, backend)
        n_enc = self.encoding.n_output_dims
        self.n_levels = cfg.n_levels
        self.n_features_per_level = cfg.n_features_per_level
        self.sdf_bias = cfg.sdf_bias
        if cfg.sdf_gradient not in ("closed_form", "autograd"):
            raise ValueError(f"sdf_gradient must be 'closed_form' or 'autograd', got {cfg.sdf_gradient!r}")
        self.sdf_gradient = cfg.sdf_gradient
        if mlp_impl not in ("torch", "triton"):
            raise ValueError(f"mlp_impl must be 'torch' or 'triton', got {mlp_impl!r}")
        self.mlp_impl = mlp_impl
        self.hidden = nn.Linear(3 + n_enc, cfg.sdf_hidden, bias=False)
        self.out = nn.Linear(cfg.sdf_hidden, cfg.sdf_outputs, bias=False)
        self.register_buffer("level_mask", torch.ones(n_enc))
        self.geometric_init()

    @torch.no_grad()
    def geometric_init(self) -> None:
        width = self.hidden.out_features
        self.hidden.weight.zero_()
        self.hidden.weight[:, :3].normal_(0.0, math.sqrt(2.0) / math.sqrt(width))
        self.out.weight.normal_(0.0, 1e-4)
        self.out.weight[0].normal_(math.sqrt(math.pi) / math.sqrt(width), 1e-4)

    def set_active_levels(self, n_active: int) -> None:
        """Progressive training: features of levels >= ``n_active`` are zeroed (``level_feature_mask``)."""
        self.level_mask.copy_(level_feature_mask(self.grid_config, n_active, self.level_mask.device))

    @property
    def active_levels(self) -> int:
        return int(self.level_mask.reshape(self.n_levels, -1)[:, 0].sum().item())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, 3) normalized -> sdf (N,), outputs (N, sdf_outputs) (channel 0 without the bias)."""
        # The level mask multiplies the features before the MLP, so masked levels get no gradient.
        out = sdf_field_value(
            self.encoding, x, self.level_mask, self.hidden.weight, self.out.weight,
            impl=self._field_impl(x), mlp_impl=self.mlp_impl,
        )  # fmt: skip
        return out[:, 0] + self.sdf_bias, out

    def sdf_and_gradient(self, x: torch.Tensor, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, 3) normalized -> sdf (N,), grad (N, 3) = d sdf / d x, outputs (N, sdf_outputs).

        ``create_graph=True`` keeps the graph of ``grad`` for the loss's second backward. ``x`` keeps
        its own graph when it has one (the dynamic global transform learns through it).
        """
        if self.sdf_gradient == "closed_form" and self._fused_cpu_gradient(x):
            return self._sdf_and_gradient_fused(x, create_graph)
        if self.sdf_gradient == "autograd":
            with torch.enable_grad():
                if not x.requires_grad:
                    x = x.detach().requires_grad_(True)
                sdf, outputs = self(x)
                (grad,) = torch.autograd.grad(sdf, x, torch.ones_like(sdf), create_graph=create_graph)
            return sdf, grad, outputs
        outputs, grad = sdf_field_with_gradient(
            self.encoding, x, self.level_mask, self.hidden.weight, self.out.weight,
            create_graph=create_graph, impl=self._field_impl(x), mlp_impl=self.mlp_impl,
        )  # fmt: skip
        if not create_graph:
            grad = grad.detach()  # the fused node keeps a graph; the caller asked for none
        return outputs[:, 0] + self.sdf_bias, grad, outputs

    def _field_impl(self, x: torch.Tensor) -> FieldImpl:
        """Always the twin (the encoding module, autograd for its Jacobian, the MLP's kernels where
        ``mlp_impl`` says so). The fused field kernels (``impl="triton"``) are right and memcheck-clean on
        the H200 but slower there: with them the DTU step took 9.8 ms against 7.9 ms (their backward
        4.3 ms, their forwards 2.5 ms per step, where tinycudann's grid kernels and the MLP's take about
        4.1 ms together; bench/profile_step.py, 2026-12-03). They stay off until they beat that."""
        del x
        return "torch"

    def _fused_cpu_gradient(self, x: torch.Tensor) -> bool:
        """The PyTorch hash grid on the CPU, at points without a graph of their own (everything but a
        dynamic frame's learned transform): the grid's input Jacobian is then taken in closed form too."""
        enc = self.encoding
        return isinstance(enc, TorchHashGrid) and x.device.type == "cpu" and not x.requires_grad

    def _sdf_and_gradient_fused(
        self, x: torch.Tensor, create_graph: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``sdf_and_gradient`` with no autograd pass at all before the loss's backward: the MLP's input
        gradient in closed form (``sdf_mlp_fused``) and the hash grid's through its explicit
        vector-Jacobian product (``TorchHashGrid.forward_with_input_vjp``). ``x`` carries no gradient,
        so nothing is spent on d loss / d x either. Equal to the generic path up to float rounding
        (tests/test_sdf_closed_form.py)."""
        x = x.detach()
        with torch.enable_grad() if create_graph else torch.no_grad():
            raw, vjp = self.encoding.forward_with_input_vjp(x)
            # g_features is d out0 / d raw (the level mask included), the cotangent the grid's VJP takes.
            outputs, g_x, g_features = sdf_mlp_fused(
                x, raw, self.level_mask, self.hidden.weight, self.out.weight, impl=self.mlp_impl
            )
            grad = g_x + vjp(g_features).to(g_x.dtype)
        return outputs[:, 0] + self.sdf_bias, grad, outputs


class ColorNetwork(nn.Module):
    """[SDF-net outputs, SH(view dir), x - 0.5, grad SDF (unnormalized)] -> 64 -> 64 -> 3, sigmoid.

    The MLP (``make_mlp``) has no biases; the sigmoid is applied here, in float32.
    """

    def __init__(self, cfg: ModelConfig, backend: str):
        super().__init__()
        self.sh = make_sh_encoding(cfg.sh_degree, backend)
        n_in = cfg.sdf_outputs + cfg.sh_degree**2 + 3 + 3
        # Only first-order gradients flow through it, so the tcnn backend can fuse it.
        self.mlp = make_mlp(n_in, 3, cfg.color_hidden, cfg.color_layers, backend)

    def forward(
        self, sdf_outputs: torch.Tensor, dirs: torch.Tensor, x: torch.Tensor, grad: torch.Tensor
    ) -> torch.Tensor:
        """(N, sdf_outputs), (N, 3) unit ray directions, (N, 3) normalized points, (N, 3) -> rgb (N, 3) in [0, 1]."""
        sh = self.sh(dirs).float()
        return torch.sigmoid(self.mlp(torch.cat([sdf_outputs, sh, x - 0.5, grad], dim=-1)))


class NeuSModel(nn.Module):
    """SDF network, colour network and the sharpness s = exp(10 v) (``inv_s``), on ``compute.device``;
    with ``cfg.background`` set, also the field behind the object (``background``, else None), whose
    parameters then sit in the same state dict, EMA and optimiser as the rest."""

    def __init__(self, cfg: ModelConfig, compute: Compute):
        super().__init__()
        self.sdf_net = SDFNetwork(cfg, compute.backend, compute.kernel_impl)
        self.color_net = ColorNetwork(cfg, compute.backend)
        self.variance = nn.Parameter(torch.tensor(float(cfg.init_variance)))
        self.background: BackgroundField | None = make_background(cfg)
        self.to(compute.device)

    @property
    def inv_s(self) -> torch.Tensor:
        """Scalar sharpness s of the logistic CDF sigma(s f)."""
        return torch.exp(self.variance * 10.0)

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3) normalized -> (N,) SDF in normalized units."""
        return self.sdf_net(x)[0]

    def sdf_and_gradient(self, x: torch.Tensor, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3) -> sdf (N,), grad (N, 3) = d sdf / d x, outputs (N, sdf_outputs).

        ``create_graph=True`` keeps the graph of the gradient, so the eikonal loss can be
        differentiated w.r.t. the parameters (double backward).
        """
        return self.sdf_net.sdf_and_gradient(x, create_graph)

    def color(self, sdf_outputs: torch.Tensor, dirs: torch.Tensor, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return self.color_net(sdf_outputs, dirs, x, grad)

    def mlp_weights(self) -> list[nn.Parameter]:
        """Parameters that get the L2 penalty (MLP weights, not the hash tables)."""
        return [p for n, p in self.named_parameters() if "encoding" not in n and n != "variance" and ".sh" not in n]

    def encoding_params(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if "encoding" in n]
