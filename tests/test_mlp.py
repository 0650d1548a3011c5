"""The backend-neutral MLP: tcnn's parameter layout, the canonical state dict, and tcnn vs torch."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from neus2cli import backends
from neus2cli.compute import Compute
from neus2cli.config import ModelConfig
from neus2cli.model.fields import ColorNetwork, NeuSModel
from neus2cli.model.mlp import (
    MLPShape,
    TcnnMLP,
    TorchMLP,
    canonical_state_keys,
    canonical_to_tcnn_params,
    make_mlp,
    tcnn_padding_mask,
    tcnn_params_to_canonical,
)
from tests.conftest import requires_cuda

COLOR = MLPShape(n_in=38, n_out=3, hidden=64, n_hidden_layers=2)  # NeuS2's colour network


def _old_color_mlp(n_in: int, hidden: int, n_layers: int) -> nn.Sequential:
    """ColorNetwork.mlp as it was built before make_mlp (the checkpoint layout to keep)."""
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers += [nn.Linear(n_in if i == 0 else hidden, hidden, bias=False), nn.ReLU()]
    layers.append(nn.Linear(hidden, 3, bias=False))
    return nn.Sequential(*layers)


def _random_canonical(shape: MLPShape, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(o, i, generator=gen) for o, i in shape.canonical_shapes]


# ---------------------------------------------------------------------------------------------
# TorchMLP is today's nn.Sequential


def test_torch_mlp_equals_the_old_sequential_exactly():
    torch.manual_seed(3)
    old = _old_color_mlp(38, 64, 2)
    torch.manual_seed(3)
    new = make_mlp(38, 3, 64, 2, "torch")
    # Same modules in the same order draw the same default init from the global RNG.
    assert list(new.state_dict()) == list(old.state_dict()) == ["0.weight", "2.weight", "4.weight"]
    for key, value in old.state_dict().items():
        assert torch.equal(new.state_dict()[key], value), key
    x = torch.rand(50, 38) * 2 - 1
    assert torch.equal(new(x), old(x))  # the same float32 ops: bitwise equal
    assert new(x).dtype == torch.float32


def test_color_network_keys_unchanged_and_old_checkpoints_load():
    cfg = ModelConfig()
    net = ColorNetwork(cfg, "torch")
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items() if k.startswith("mlp.")}
    assert shapes == {"mlp.0.weight": (64, 38), "mlp.2.weight": (64, 64), "mlp.4.weight": (3, 64)}
    old = _old_color_mlp(38, 64, 2)
    net.mlp.load_state_dict(old.state_dict(), strict=True)
    for key, value in old.state_dict().items():
        assert torch.equal(net.mlp.state_dict()[key], value)


def test_color_mlp_weights_get_the_l2_penalty():
    model = NeuSModel(ModelConfig(), Compute.cpu())
    penalised = {id(p) for p in model.mlp_weights()}
    assert all(id(p) in penalised for p in model.color_net.mlp.parameters())


def test_torch_mlp_rejects_wrong_input_width():
    with pytest.raises(ValueError, match=r"\(N, 38\)"):
        make_mlp(38, 3, 64, 2, "torch")(torch.zeros(4, 37))


def test_mlp_shape_and_backend_validation():
    with pytest.raises(ValueError, match="n_hidden_layers"):
        MLPShape(38, 3, 64, 0)
    with pytest.raises(ValueError, match="backend"):
        make_mlp(38, 3, 64, 2, "jax")


# ---------------------------------------------------------------------------------------------
# tcnn's parameter layout (pure functions, CPU)


def test_tcnn_layout_of_the_color_network():
    # FullyFusedMLP (src/fully_fused_mlp.cu, constructor): matrices [width, input_width],
    # (n_hidden_layers - 1) x [width, width], [padded_output_width, width], with
    # padded_output_width = next_multiple(3, 16) = 16; the input width is 38 rounded up to 16
    # (network_with_input_encoding.h: the encoding is aligned to FullyFusedMLP's 16).
    assert COLOR.tcnn_n_in == 48
    assert COLOR.tcnn_n_out == 16
    assert COLOR.tcnn_shapes == [(64, 48), (64, 64), (16, 64)]
    assert COLOR.tcnn_n_params == 64 * 48 + 64 * 64 + 16 * 64 == 8192
    # Padding: 10 input columns of 64 rows, 13 output rows of 64 columns.
    assert int(tcnn_padding_mask(COLOR).sum()) == 64 * 10 + 13 * 64


def test_tcnn_layout_hand_computed_tiny_example():
    """2 inputs -> 16 -> 16 -> 1: entries placed by hand from my reading of tcnn.

    tcnn (src/fully_fused_mlp.cu, FullyFusedMLP constructor and set_params_impl) stores the
    weight matrices back to back in layer order, each a GPUMatrix<T, RM>(rows = fan-out,
    cols = fan-in) (gpu_matrix.h: fan_out() = rows, fan_in() = cols; RM = row-major, stride
    = cols). NetworkWithInputEncoding::set_params_impl puts the network first and the
    Identity encoding (no params) after it. So W_k[r, c] sits at offset_k + r * cols_k + c,
    with cols_0 = 16 (2 inputs padded to 16) and rows_last = 16 (1 output padded to 16).
    """
    shape = MLPShape(n_in=2, n_out=1, hidden=16, n_hidden_layers=2)
    w0 = torch.arange(16 * 2, dtype=torch.float32).view(16, 2) + 1  # W0[r, c] = 2r + c + 1
    w1 = torch.arange(16 * 16, dtype=torch.float32).view(16, 16) + 1000  # W1[r, c] = 16r + c + 1000
    w2 = torch.arange(16, dtype=torch.float32).view(1, 16) + 5000  # W2[0, c] = c + 5000
    flat = canonical_to_tcnn_params([w0, w1, w2], shape)
    assert flat.shape == (16 * 16 + 16 * 16 + 16 * 16,) and flat.dtype == torch.float32
    # Input layer, offset 0, 16 columns per row (2 real + 14 padding).
    assert flat[0] == 1 and flat[1] == 2 and flat[2] == 0 and flat[15] == 0
    assert flat[16] == 3 and flat[17] == 4  # row 1
    assert flat[15 * 16 + 1] == 32  # W0[15, 1] = 2*15 + 1 + 1
    # Hidden layer, offset 256, no padding.
    assert flat[256] == 1000 and flat[256 + 1] == 1001 and flat[256 + 16] == 1016
    assert flat[256 + 15 * 16 + 15] == 1255
    # Output layer, offset 512: row 0 is W2, rows 1..15 are padding.
    assert flat[512] == 5000 and flat[512 + 15] == 5015
    assert torch.all(flat[512 + 16 :] == 0)
    expected_pad = torch.zeros(768, dtype=torch.bool)
    expected_pad[:256].view(16, 16)[:, 2:] = True
    expected_pad[512 + 16 :] = True
    assert torch.equal(tcnn_padding_mask(shape), expected_pad)


def test_canonical_tcnn_round_trip_and_padding_is_zero():
    weights = _random_canonical(COLOR)
    flat = canonical_to_tcnn_params(weights, COLOR)
    pad = tcnn_padding_mask(COLOR)
    assert torch.all(flat[pad] == 0)
    assert torch.all(flat[~pad] != 0)  # every real weight landed somewhere (randn is never 0 here)
    back = tcnn_params_to_canonical(flat, COLOR)
    assert len(back) == 3
    for w, b in zip(weights, back, strict=True):
        assert torch.equal(w, b)  # pure copies: exact
    # And the other way, for any flat vector whose padding is zero.
    other = torch.randn(COLOR.tcnn_n_params).masked_fill(pad, 0.0)
    assert torch.equal(canonical_to_tcnn_params(tcnn_params_to_canonical(other, COLOR), COLOR), other)


def test_conversion_rejects_wrong_shapes():
    weights = _random_canonical(COLOR)
    with pytest.raises(ValueError, match=r"weight matrix 0 must be \[out, in\] = \[64, 38\]"):
        canonical_to_tcnn_params([weights[0].T, *weights[1:]], COLOR)
    with pytest.raises(ValueError, match="expected 3 weight matrices"):
        canonical_to_tcnn_params(weights[:2], COLOR)
    with pytest.raises(ValueError, match="8192 entries"):
        tcnn_params_to_canonical(torch.zeros(8191), COLOR)


# ---------------------------------------------------------------------------------------------
# TcnnMLP's wrapper logic on the CPU, with a stand-in for tinycudann's Network (no forward)


class _FakeTcnnNetwork(nn.Module):
    """tcnn.Network's constructor contract: float32 ``params`` of the FullyFusedMLP's size, tcnn's own init."""

    calls: list[tuple] = []

    def __init__(self, n_input_dims, n_output_dims, network_config, seed=1337):
        super().__init__()
        _FakeTcnnNetwork.calls.append((n_input_dims, n_output_dims, dict(network_config)))
        width, n_hidden = network_config["n_neurons"], network_config["n_hidden_layers"]
        padded_out = -(-n_output_dims // 16) * 16
        n = width * n_input_dims + width * width * (n_hidden - 1) + padded_out * width
        self.params = nn.Parameter(torch.rand(n, generator=torch.Generator().manual_seed(seed)) + 1.0)


@pytest.fixture
def fake_tcnn(monkeypatch):
    _FakeTcnnNetwork.calls = []
    monkeypatch.setattr(backends, "import_tcnn", lambda: types.SimpleNamespace(Network=_FakeTcnnNetwork))
    return _FakeTcnnNetwork


def test_tcnn_mlp_builds_the_padded_network_and_overrides_tcnns_init(fake_tcnn):
    torch.manual_seed(7)
    tc = make_mlp(38, 3, 64, 2, "tcnn")
    torch.manual_seed(7)
    ref = make_mlp(38, 3, 64, 2, "torch")
    assert isinstance(tc, TcnnMLP)
    # tcnn is given the zero-padded width, so its Identity encoding pads nothing with ones.
    assert fake_tcnn.calls == [(48, 3, COLOR.tcnn_config())]
    assert COLOR.tcnn_config() == {
        "otype": "FullyFusedMLP",
        "activation": "ReLU",
        "output_activation": "None",
        "n_neurons": 64,
        "n_hidden_layers": 2,
    }
    # Seeded runs start from the same weights on both backends (nn.Linear's default init).
    for a, b in zip(tc.canonical_weights(), ref.canonical_weights(), strict=True):
        assert torch.equal(a, b)
    assert torch.all(tc.params.detach()[tcnn_padding_mask(COLOR)] == 0)
    # `params` is tcnn's own Parameter (what the optimiser and the L2 penalty see), float32.
    assert tc.params is tc._tcnn.params and tc.params.dtype == torch.float32
    assert [n for n, _ in tc.named_parameters()] == ["params"]


def test_tcnn_mlp_state_dict_is_canonical_both_ways(fake_tcnn):
    torch.manual_seed(1)
    ref = TorchMLP(COLOR)
    ref.load_canonical_weights(_random_canonical(COLOR, seed=5))
    tc = TcnnMLP(COLOR)
    sd = tc.state_dict()
    assert list(sd) == list(ref.state_dict()) == canonical_state_keys(COLOR)
    # torch -> tcnn
    tc.load_state_dict(ref.state_dict(), strict=True)
    assert torch.equal(tc.params.detach(), canonical_to_tcnn_params(ref.canonical_weights(), COLOR))
    # tcnn -> torch
    fresh = TorchMLP(COLOR)
    fresh.load_state_dict(tc.state_dict(), strict=True)
    for a, b in zip(fresh.canonical_weights(), ref.canonical_weights(), strict=True):
        assert torch.equal(a, b)
    # Nested under a prefix, as ColorNetwork.mlp.
    outer = nn.Module()
    outer.mlp = TcnnMLP(COLOR)
    outer.load_state_dict({f"mlp.{k}": v for k, v in ref.state_dict().items()}, strict=True)
    assert list(outer.state_dict()) == ["mlp.0.weight", "mlp.2.weight", "mlp.4.weight"]


def test_tcnn_mlp_strict_load_reports_missing_unexpected_and_wrong_shapes(fake_tcnn):
    tc = TcnnMLP(COLOR)
    before = tc.params.detach().clone()
    sd = TorchMLP(COLOR).state_dict()
    result = tc.load_state_dict({"0.weight": sd["0.weight"], "params": torch.zeros(8192)}, strict=False)
    assert sorted(result.missing_keys) == ["2.weight", "4.weight"]
    assert torch.equal(tc.params.detach(), before)  # nothing half-loaded
    with pytest.raises(RuntimeError, match=r"size mismatch for 0\.weight"):
        tc.load_state_dict({**sd, "0.weight": torch.zeros(64, 48)}, strict=True)
    assert torch.equal(tc.params.detach(), before)
    # Like nn.Module, a strict load raises on an unexpected key (after loading the known ones).
    with pytest.raises(RuntimeError, match="Unexpected key"):
        tc.load_state_dict({**sd, "params": torch.zeros(8192)}, strict=True)


def test_tcnn_mlp_rejects_unsupported_width_and_cpu_input(fake_tcnn):
    with pytest.raises(ValueError, match="hidden widths"):
        make_mlp(38, 3, 48, 2, "tcnn")
    with pytest.raises(ValueError, match="CUDA"):
        TcnnMLP(COLOR)(torch.zeros(4, 38))


# ---------------------------------------------------------------------------------------------
# GPU: the real tinycudann against the float64 PyTorch twin


def _safe_batch(ref64: TorchMLP, n: int, margin: float, seed: int) -> torch.Tensor:
    """(M, n_in) float32 CUDA rows whose float64 hidden pre-activations are all >= margin from 0.

    fp16 rounding moves pre-activations by up to ~1e-3 (an fp16 emulation of this network:
    2^-11 rounding of inputs, weights and activations, 16-wide fp16 accumulation), which
    flips the ReLU of a few units per thousand rows; each flip changes one full entry of the
    backpropagated gradient (~2% of its norm over 1000 rows). Keeping rows with every
    |pre-activation| >= 2e-3 (about a third of them) removes the flips, so what is left is
    the fp16 arithmetic error and any layout error.
    """
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.rand(n, ref64.shape.n_in, device="cuda", generator=gen) * 2 - 1  # colour inputs are O(1)
    keep = torch.ones(n, dtype=torch.bool, device="cuda")
    h = x.double()
    layers = list(ref64.children())
    for k in range(ref64.shape.n_hidden_layers):
        z = layers[2 * k](h)
        keep &= (z.abs() >= margin).all(dim=1)
        h = torch.relu(z)
    return x[keep].contiguous()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.gpu
@requires_cuda
def test_tcnn_mlp_matches_torch_forward_and_gradients():
    torch.manual_seed(0)
    tc = TcnnMLP(COLOR)
    ref = TorchMLP(COLOR).cuda().double()
    ref.load_canonical_weights(tc.canonical_weights())
    x = _safe_batch(ref, 4000, margin=2e-3, seed=1)
    if x.shape[0] % 256 == 0:  # exercise tcnn's batch padding (to a multiple of 256) too
        x = x[:-1]
    n = x.shape[0]
    assert n > 500, f"only {n} rows left"
    x_tc = x.clone().requires_grad_(True)
    x_ref = x.double().requires_grad_(True)
    out_tc = tc(x_tc)
    out_ref = ref(x_ref)
    assert out_tc.dtype == torch.float32 and out_tc.shape == (n, 3)
    # tcnn's FullyFusedMLP computes in fp16 with fp16 accumulators (kernel_mlp_fused<..., __half>;
    # CUTLASS TypeAccumulator = half_t for the weight gradients). The fp16 emulation gives a max
    # forward error of ~2e-4 on outputs of magnitude ~0.2; allow 10x for the hardware's own
    # accumulation order.
    err = float((out_tc.double() - out_ref).abs().max())
    assert err < 2e-3, f"forward max abs error {err:.3g}"

    # Mean-style cotangent (as in training): tcnn multiplies it by its loss scale 128 in fp16,
    # so a sum over thousands of rows would overflow; the bindings divide the gradients by 128
    # again, so params.grad and x.grad are true gradients.
    gen = torch.Generator(device="cuda").manual_seed(2)
    cot = torch.randn(n, 3, device="cuda", generator=gen) / n
    (out_tc * cot).sum().backward()
    (out_ref * cot.double()).sum().backward()
    # Emulated fp16 gradient errors (no ReLU flips): ~6e-4 (inputs), ~2e-3 (weights) of the
    # norm; 1e-2 allows 5x. A layout error (transposed, shifted or unpadded matrices) is O(1).
    rel = _rel(x_tc.grad, x_ref.grad)
    assert rel < 1e-2, f"input gradient relative error {rel:.3g}"
    grad = tc.params.grad
    assert grad.dtype == torch.float32
    # Zero inputs in the padded columns and zero cotangent on the sliced-off outputs: the
    # padded entries get exactly zero gradient, so they stay zero under Adam and weight decay.
    assert torch.all(grad[tcnn_padding_mask(COLOR).cuda()] == 0)
    grads_tc = tcnn_params_to_canonical(grad, COLOR)
    linears = [m for m in ref.children() if isinstance(m, nn.Linear)]
    for k, (g_tc, layer) in enumerate(zip(grads_tc, linears, strict=True)):
        rel = _rel(g_tc, layer.weight.grad)
        assert rel < 1e-2, f"weight gradient of layer {k}: relative error {rel:.3g}"


@pytest.mark.gpu
@requires_cuda
def test_tcnn_mlp_state_dict_moves_between_backends_on_gpu():
    torch.manual_seed(4)
    tc = TcnnMLP(COLOR)
    torch.manual_seed(4)
    ref = TorchMLP(COLOR).cuda()
    for a, b in zip(tc.canonical_weights(), ref.canonical_weights(), strict=True):  # same init
        assert torch.equal(a, b)
    x = torch.rand(1000, 38, device="cuda") * 2 - 1
    # tcnn -> torch: the torch twin reproduces tcnn's outputs (fp16 tolerance as above).
    with torch.no_grad():
        tc.params.add_(torch.randn_like(tc.params).masked_fill(tcnn_padding_mask(COLOR).cuda(), 0.0) * 0.05)
    loaded = TorchMLP(COLOR).cuda()
    loaded.load_state_dict(tc.state_dict(), strict=True)
    with torch.no_grad():
        assert float((loaded(x) - tc(x)).abs().max()) < 2e-3
        # torch -> tcnn
        other = TcnnMLP(COLOR)
        other.load_state_dict(ref.state_dict(), strict=True)
        assert float((other(x) - ref(x)).abs().max()) < 2e-3
    # The whole colour network, strictly (MLP and SH encoding).
    cfg = ModelConfig()
    net_torch = ColorNetwork(cfg, "torch").cuda()
    net_tcnn = ColorNetwork(cfg, "tcnn")
    net_tcnn.load_state_dict(net_torch.state_dict(), strict=True)
    assert isinstance(net_tcnn.mlp, TcnnMLP)


@pytest.mark.gpu
@requires_cuda
def test_tcnn_model_penalises_the_fused_mlp_params():
    model = NeuSModel(ModelConfig(), Compute("tcnn", "cuda"))
    assert isinstance(model.color_net.mlp, TcnnMLP)
    assert any(p is model.color_net.mlp.params for p in model.mlp_weights())
    assert all(p.dtype == torch.float32 for p in model.mlp_weights())
