"""Real spherical-harmonics encoding of view directions, matching tinycudann's.

Output ``k = l*l + l + m`` (band ``l < degree``, ``-l <= m <= l``) is the real SH

* ``m > 0``: ``sqrt(2) K_l^m P_l^m(z) cos(m phi)``
* ``m = 0``: ``K_l^0 P_l(z)``
* ``m < 0``: ``sqrt(2) K_l^|m| P_l^|m|(z) sin(|m| phi)``

with ``K_l^m = sqrt((2l+1)/(4 pi) (l-m)!/(l+m)!)`` and the Condon-Shortley phase in
``P_l^m``; e.g. ``Y_1 = (-c y, c z, -c x)`` with ``c = sqrt(3/(4 pi))``. These are the
signs and order of tiny-cuda-nn's ``SphericalHarmonics`` encoding
(``include/tiny-cuda-nn/common_device.h``, ``sh_enc``). Like tcnn, each term is evaluated
as a polynomial in x, y, z (``sin^m(theta) cos(m phi) = Re (x + iy)^m``), without
normalising the input, so both backends agree for any input; pass unit vectors.

tcnn takes its input in ``[0, 1]^3`` and maps it back with ``2 u - 1``; the tcnn backend
here feeds ``dirs * 0.5 + 0.5`` so callers always pass directions.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch
from numpy.polynomial import legendre as npleg
from numpy.polynomial import polynomial as nppoly
from torch import nn

from neus2cli.backends import Backend, import_tcnn

MAX_SH_DEGREE = 8  # tcnn implements degrees 1..8 (up to band 7)
_BACKENDS = ("tcnn", "torch")


def _check_degree(degree: int) -> int:
    if isinstance(degree, bool) or int(degree) != degree or not 1 <= int(degree) <= MAX_SH_DEGREE:
        raise ValueError(f"degree must be an integer in [1, {MAX_SH_DEGREE}], got {degree!r}")
    return int(degree)


@cache
def _sh_tables(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients of every output as ``poly(z) * trig``.

    Returns:
        coeffs: (degree**2, degree) float64, output k's polynomial in z (ascending powers),
            normalisation and sign included.
        trig: (degree**2,) int64 index into ``[C_0..C_{d-1}, S_0..S_{d-1}]`` where
            ``C_m + i S_m = (x + i y)^m``.
    """
    coeffs = np.zeros((degree * degree, degree))
    trig = np.zeros(degree * degree, dtype=np.int64)
    for band in range(degree):
        # d^m/dz^m of the Legendre polynomial P_l, for each order m.
        p_l = npleg.leg2poly([0.0] * band + [1.0])
        for m in range(-band, band + 1):
            am = abs(m)
            k_lm = math.sqrt((2 * band + 1) / (4 * math.pi) * math.factorial(band - am) / math.factorial(band + am))
            q = nppoly.polyder(p_l, am) if am else p_l
            # P_l^m(z) = (-1)^m (1 - z^2)^(m/2) d^m P_l / dz^m; the (1 - z^2)^(m/2) factor
            # joins cos/sin(m phi) to form C_m / S_m.
            factor = k_lm if m == 0 else math.sqrt(2.0) * k_lm * (-1.0) ** am
            k = band * band + band + m
            coeffs[k, : len(q)] = factor * np.asarray(q)
            trig[k] = am if m >= 0 else degree + am
    return coeffs, trig


def sh_encode(dirs: torch.Tensor, degree: int = 4) -> torch.Tensor:
    """Real spherical harmonics of directions, tinycudann's convention.

    Args:
        dirs: (N, 3) unit direction vectors (any frame; the encoding is the caller's).
        degree: number of bands, 1..8; outputs degree**2 values.

    Returns:
        (N, degree**2) in the dtype of ``dirs`` (float32 for half input), differentiable.
    """
    degree = _check_degree(degree)
    if not isinstance(dirs, torch.Tensor) or dirs.ndim != 2 or dirs.shape[1] != 3:
        shape = tuple(dirs.shape) if isinstance(dirs, torch.Tensor) else type(dirs).__name__
        raise ValueError(f"dirs must be a (N, 3) tensor of unit vectors, got {shape}")
    if not dirs.is_floating_point():
        raise ValueError(f"dirs must be a floating-point tensor, got {dirs.dtype}")
    dtype = torch.float64 if dirs.dtype == torch.float64 else torch.float32
    d = dirs.to(dtype)
    x, y, z = d.unbind(dim=1)
    coeffs_np, trig_np = _sh_tables(degree)
    coeffs = torch.as_tensor(coeffs_np, dtype=dtype, device=d.device)
    trig_idx = torch.as_tensor(trig_np, device=d.device)

    z_pows = [torch.ones_like(z)]
    c_m, s_m = [torch.ones_like(x)], [torch.zeros_like(x)]
    for _ in range(1, degree):
        z_pows.append(z_pows[-1] * z)
        c_prev, s_prev = c_m[-1], s_m[-1]
        c_m.append(x * c_prev - y * s_prev)
        s_m.append(x * s_prev + y * c_prev)
    poly = torch.stack(z_pows, dim=1) @ coeffs.T  # (N, degree**2)
    trig = torch.stack(c_m + s_m, dim=1)[:, trig_idx]  # (N, degree**2)
    return poly * trig


class TorchSHEncoding(nn.Module):
    """PyTorch SH encoding: ``forward(dirs (N, 3) unit) -> (N, degree**2)`` float32."""

    def __init__(self, degree: int = 4):
        super().__init__()
        self.degree = _check_degree(degree)
        self.n_output_dims = self.degree**2

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        return sh_encode(dirs, self.degree)

    def extra_repr(self) -> str:
        return f"degree={self.degree}"


class TcnnSHEncoding(nn.Module):
    """tinycudann's SphericalHarmonics: ``forward(dirs (N, 3) unit, CUDA) -> (N, degree**2)`` float32.

    Has no parameters (like the torch twin), so checkpoints load on either backend.

    Args:
        degree: number of bands, 1..8.
        dtype: tcnn's internal precision (None: tcnn's choice, fp16 on modern GPUs).
    """

    def __init__(self, degree: int = 4, dtype: torch.dtype | None = None):
        super().__init__()
        tcnn = import_tcnn()
        self.degree = _check_degree(degree)
        self.n_output_dims = self.degree**2
        kwargs = {} if dtype is None else {"dtype": dtype}
        enc = tcnn.Encoding(3, {"otype": "SphericalHarmonics", "degree": self.degree}, **kwargs)
        # Kept out of the submodule tree: its empty `params` would make the state dict differ
        # from the torch backend's (which has none).
        object.__setattr__(self, "encoding", enc)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        if not isinstance(dirs, torch.Tensor) or dirs.ndim != 2 or dirs.shape[1] != 3:
            shape = tuple(dirs.shape) if isinstance(dirs, torch.Tensor) else type(dirs).__name__
            raise ValueError(f"dirs must be a (N, 3) tensor of unit vectors, got {shape}")
        if not dirs.is_cuda:
            raise ValueError(f"dirs must be a CUDA tensor on the tcnn backend, got device {dirs.device}")
        if dirs.shape[0] == 0:
            return dirs.new_zeros((0, self.n_output_dims), dtype=torch.float32)
        # tcnn expects [0, 1]^3 and undoes this with 2 u - 1.
        return self.encoding((dirs.float() * 0.5 + 0.5).contiguous()).float()

    def extra_repr(self) -> str:
        return f"degree={self.degree}"


def make_sh_encoding(degree: int = 4, backend: Backend = "torch") -> nn.Module:
    """SH encoding for ``backend``: ``forward(dirs (N, 3) unit) -> (N, degree**2)`` float32.

    Both backends give the same values (tcnn computes in fp16 by default). Attributes:
    ``degree``, ``n_output_dims``. ``backend="tcnn"`` raises ``DependencyError`` when
    tinycudann is unavailable.
    """
    if backend == "torch":
        return TorchSHEncoding(degree)
    if backend == "tcnn":
        return TcnnSHEncoding(degree)
    raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
