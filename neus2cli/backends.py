"""Optional GPU packages (tinycudann, nerfacc): probe once, choose a backend, import lazily.

This is the only module that imports tinycudann or nerfacc, and it never does so at import
time: ``import neus2cli.backends`` works on a CPU machine without either package.

A broken native build can crash the interpreter (a tinycudann built against another
libstdc++ or torch segfaults on its first allocation), so the packages are first exercised
in a **child process** (``sys.executable -c ...``): it imports the package, runs a tiny
hash-grid forward/backward/double-backward and a fully fused MLP (tinycudann), or a
nerfacc occupancy-grid sampling plus a closed-form weight check (nerfacc; its first op
JIT-compiles the CUDA extension, ~90 s once). The parent survives whatever happens there.
The verdict is cached as JSON under ``$NEUS2_CACHE_DIR`` (default ``~/.cache/neus2cli``),
keyed by the Python executable, torch version, the packages' versions, paths and mtimes,
nvcc's path and the GPU name, so the probe runs once per environment. Without CUDA there is
no child process at all.

Backend vocabulary (the config's ``backend`` field): ``"tcnn"`` = tinycudann encodings and
networks plus nerfacc ray marching on CUDA; ``"torch"`` = the pure-PyTorch twins, any
device. ``"auto"`` picks ``"tcnn"`` when the probe passes, else ``"torch"`` with a warning.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch

from neus2cli.errors import DependencyError, UserError

Backend = Literal["tcnn", "torch"]
RequestedBackend = Literal["auto", "tcnn", "torch"]

log = logging.getLogger(__name__)

TCNN_INSTALL_HINT = (
    "Install tinycudann from source (it needs nvcc matching torch.version.cuda and a C++17 compiler; "
    "set TCNN_CUDA_ARCHITECTURES, e.g. 90 for an H100, if no GPU is visible while building): "
    "pip install --no-build-isolation "
    "git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"
)
NERFACC_INSTALL_HINT = (
    "Install nerfacc with `pip install nerfacc` (or `pip install 'neus2cli[gpu]'`, which adds ninja); "
    "it compiles its CUDA code with nvcc on first use (about 90 s, cached under TORCH_EXTENSIONS_DIR)."
)
CUDA_HINT = (
    "Use a machine with an NVIDIA GPU and a CUDA build of PyTorch (see https://pytorch.org/get-started/locally/)."
)
TORCH_FALLBACK_HINT = "Or choose the pure-PyTorch backend with --backend torch (slower)."

#: Child-process time limits. nerfacc's first use JIT-compiles ~5 CUDA files (about 90 s on
#: 16 cores, several minutes on a laptop); tinycudann only loads its kernels.
TCNN_PROBE_TIMEOUT_S = 180.0
NERFACC_PROBE_TIMEOUT_S = 300.0

# Bump when the probe scripts or the cache layout change: old verdicts are then ignored.
_PROBE_SCHEMA = 1
_MARKER = "NEUS2_PROBE_RESULT "
_ERROR_CHARS = 800  # keep cached error texts readable: the tail of a traceback is what matters

# The probe scripts run in a fresh interpreter. Each prints one marker line with a JSON verdict;
# a crash (signal) or a hang leaves no marker and the parent reports the exit status instead.
_PROBE_PRELUDE = textwrap.dedent(
    f"""
    import json, sys, traceback
    def _report(ok, **extra):
        print({_MARKER!r} + json.dumps(dict(ok=ok, **extra)), flush=True)
    """
)

_TCNN_PROBE = _PROBE_PRELUDE + textwrap.dedent(
    """
    try:
        import torch
        import tinycudann as tcnn
        dev = torch.device("cuda")
        grid = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2,
                "log2_hashmap_size": 14, "base_resolution": 16, "per_level_scale": 2.0}
        enc = tcnn.Encoding(3, grid)
        x = torch.rand(4096, 3, device=dev, requires_grad=True)
        y = enc(x)
        # The SDF's eikonal term needs d(dy/dx)/dparams: exercise the double backward too.
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)
        # Mean, not sum: tcnn scales fp16 gradients by 128 (loss scaling), and a sum over
        # thousands of rows overflows fp16 to inf in the weight gradients.
        (g.float().square().mean() + y.float().mean()).backward()
        mlp = {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None",
               "n_neurons": 64, "n_hidden_layers": 1}
        net = tcnn.Network(16, 4, mlp)
        out = net(torch.rand(4096, 16, device=dev))
        out.float().square().mean().backward()
        torch.cuda.synchronize()
        checks = {"encoding output": y, "input gradient": g, "encoding parameter gradient": enc.params.grad,
                  "MLP output": out, "MLP parameter gradient": net.params.grad}
        bad = [k for k, t in checks.items() if t is None or not bool(torch.isfinite(t).all())]
        if bad:
            raise RuntimeError("non-finite or missing values in the self-test: " + ", ".join(bad))
        _report(True)
    except BaseException as exc:
        traceback.print_exc()
        _report(False, error=f"{type(exc).__name__}: {exc}")
        sys.exit(1)
    """
)

_NERFACC_PROBE = _PROBE_PRELUDE + textwrap.dedent(
    """
    try:
        import torch
        import nerfacc
        dev = torch.device("cuda")
        # Closed form: w_i = alpha_i * prod_{j<i} (1 - alpha_j) along each ray (three rays here).
        alphas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9], device=dev)
        rays = torch.tensor([0, 0, 0, 1, 1, 2, 2], device=dev)
        expect = torch.tensor([0.4, 0.48, 0.012, 0.8, 0.02, 0.0, 0.9], device=dev)
        w, _ = nerfacc.render_weight_from_alpha(alphas, ray_indices=rays, n_rays=3)
        err = float((w - expect).abs().max())
        if not err < 1e-5:  # float32 products of three factors: ~1e-7 expected
            raise RuntimeError(f"render_weight_from_alpha is off by {err:.3g} from the closed form")
        est = nerfacc.OccGridEstimator([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], resolution=16).to(dev)
        est.binaries.fill_(True)
        origins = torch.zeros(8, 3, device=dev)
        dirs = torch.nn.functional.normalize(torch.randn(8, 3, device=dev), dim=-1)
        ray_indices, t0, t1 = est.sampling(origins, dirs, render_step_size=0.05)
        if ray_indices.numel() == 0:
            raise RuntimeError("OccGridEstimator.sampling returned no samples in a fully occupied grid")
        a = torch.full((ray_indices.numel(),), 0.1, device=dev, requires_grad=True)
        w, _ = nerfacc.render_weight_from_alpha(a, ray_indices=ray_indices, n_rays=8)
        acc = nerfacc.accumulate_along_rays(w, None, ray_indices=ray_indices, n_rays=8)
        acc.sum().backward()
        torch.cuda.synchronize()
        if not (bool(torch.isfinite(acc).all()) and bool(torch.isfinite(a.grad).all())):
            raise RuntimeError("non-finite values from accumulate_along_rays")
        _report(True, version=nerfacc.__version__)
    except BaseException as exc:
        traceback.print_exc()
        msg = f"{type(exc).__name__}: {exc}"
        if "NoneType" in msg:
            msg += (" (nerfacc's CUDA extension did not load: its JIT compile needs nvcc on PATH and "
                    "ninja; see the compiler output above)")
        _report(False, error=msg)
        sys.exit(1)
    """
)

# package import name -> (distribution name, probe script, time limit, install hint)
_PACKAGES: dict[str, tuple[str, str, float, str]] = {
    "tinycudann": ("tinycudann", _TCNN_PROBE, TCNN_PROBE_TIMEOUT_S, TCNN_INSTALL_HINT),
    "nerfacc": ("nerfacc", _NERFACC_PROBE, NERFACC_PROBE_TIMEOUT_S, NERFACC_INSTALL_HINT),
}
# Modules whose files identify an installation (tinycudann keeps its compiled code apart).
_FINGERPRINT_MODULES = {"tinycudann": ("tinycudann", "tinycudann_bindings"), "nerfacc": ("nerfacc",)}


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What the GPU probe found.

    Attributes:
        cuda_available: PyTorch sees a CUDA GPU.
        device_name: that GPU's name (``torch.cuda.get_device_name``), or None.
        torch_version: ``torch.__version__`` of the probing interpreter.
        tcnn_ok: tinycudann imported and passed its self-test on the GPU.
        tcnn_error: why not (one paragraph, the tail of the child's error), or None.
        nerfacc_ok: nerfacc imported, built its CUDA extension and passed its self-test.
        nerfacc_error: why not, or None.
        probed_at: when the verdict was made, ISO 8601 in UTC.
        from_cache: the verdict was read from the cache file, not made just now.
    """

    cuda_available: bool
    device_name: str | None
    torch_version: str
    tcnn_ok: bool
    tcnn_error: str | None
    nerfacc_ok: bool
    nerfacc_error: str | None
    probed_at: str
    from_cache: bool = False

    @property
    def gpu_ok(self) -> bool:
        """Everything the ``tcnn`` backend needs works."""
        return self.cuda_available and self.tcnn_ok and self.nerfacc_ok

    def reason(self) -> str:
        """One sentence saying why the ``tcnn`` backend is unavailable ('' when it is available)."""
        if not self.cuda_available:
            return _no_cuda_reason()
        parts = []
        if not self.tcnn_ok:
            parts.append(f"tinycudann: {_first_line(self.tcnn_error)}")
        if not self.nerfacc_ok:
            parts.append(f"nerfacc: {_first_line(self.nerfacc_error)}")
        return "; ".join(parts)

    def fix_hint(self) -> str:
        """What to do about :meth:`reason`, as one paragraph ('' when nothing is wrong)."""
        if not self.cuda_available:
            return f"{CUDA_HINT} Then: {TCNN_INSTALL_HINT}. {NERFACC_INSTALL_HINT}"
        hints = []
        if not self.tcnn_ok:
            hints.append(TCNN_INSTALL_HINT + ".")
        if not self.nerfacc_ok:
            hints.append(NERFACC_INSTALL_HINT)
        if hints:
            hints.append("`neus2 doctor` shows the full error; it re-checks after a fix.")
        return " ".join(hints)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("from_cache")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeResult:
        names = {f.name for f in dataclasses.fields(cls)} - {"from_cache"}
        return cls(**{k: data[k] for k in names}, from_cache=True)


# --------------------------------------------------------------------------------------------
# Seams (tests replace these with monkeypatch)


def _cuda_device_name() -> str | None:
    """Name of the current CUDA device, or None when PyTorch sees no usable GPU."""
    try:
        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_name(torch.cuda.current_device())
    except (RuntimeError, AssertionError):  # a CPU build asserts; a broken driver raises
        return None


def _run_probe_process(code: str, timeout_s: float) -> tuple[int | None, str, str]:
    """Run ``code`` in a fresh interpreter (``sys.executable -c``).

    Returns ``(returncode, stdout, stderr)``; returncode is None when it ran past ``timeout_s``
    and negative (``-signal``) when a signal killed it. The child gets its own process group
    so that a timeout also ends what it started (ninja and nvcc during nerfacc's JIT build).
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        out, err = proc.communicate()
        return None, out or "", err or ""
    return proc.returncode, out, err


def _package_fingerprint(module: str) -> dict[str, Any] | None:
    """Version, install paths and their mtimes of ``module`` without importing it; None if absent."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or []) or ([spec.origin] if spec.origin else [])
    dist = "tinycudann" if module.startswith("tinycudann") else module
    return {"version": _dist_version(dist), "paths": [[loc, _tree_mtime_ns(loc)] for loc in locations]}


# --------------------------------------------------------------------------------------------
# Probe and cache


def probe_gpu_stack(force: bool = False) -> ProbeResult:
    """Check, once per environment, whether tinycudann and nerfacc work on this machine's GPU.

    Without CUDA this returns at once (no child process, nothing cached). With CUDA, a cached
    verdict for the same environment is returned unless ``force``; otherwise each installed
    package is exercised in a child process (see the module docstring) and the verdict is
    cached, except after a timeout, which may be transient.
    """
    device_name = _cuda_device_name()
    if device_name is None:
        no_gpu = f"not checked: {_no_cuda_reason()}"
        return ProbeResult(
            cuda_available=False,
            device_name=None,
            torch_version=torch.__version__,
            tcnn_ok=False,
            tcnn_error=_not_installed_or(no_gpu, "tinycudann"),
            nerfacc_ok=False,
            nerfacc_error=_not_installed_or(no_gpu, "nerfacc"),
            probed_at=_now(),
        )

    key = _probe_key(device_name)
    path = probe_cache_path(key)
    if not force:
        cached = _load_cached(path, key)
        if cached is not None:
            return cached

    verdicts: dict[str, tuple[bool, str | None, bool]] = {}
    from rich.console import Console

    with Console(stderr=True).status(
        "Checking tinycudann and nerfacc on the GPU (once per environment; "
        "nerfacc may compile its CUDA code for a few minutes)..."
    ):
        for module in _PACKAGES:
            verdicts[module] = _probe_package(module, key["packages"][module])
    result = ProbeResult(
        cuda_available=True,
        device_name=device_name,
        torch_version=torch.__version__,
        tcnn_ok=verdicts["tinycudann"][0],
        tcnn_error=verdicts["tinycudann"][1],
        nerfacc_ok=verdicts["nerfacc"][0],
        nerfacc_error=verdicts["nerfacc"][1],
        probed_at=_now(),
    )
    if not any(transient for _, _, transient in verdicts.values()):
        _save_cached(path, key, result)
    return result


def probe_cache_dir() -> Path:
    """Folder of the cached verdicts: ``$NEUS2_CACHE_DIR`` or ``~/.cache/neus2cli``."""
    env = os.environ.get("NEUS2_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "neus2cli"


def probe_cache_path(key: dict[str, Any]) -> Path:
    """Cache file of the verdict for environment ``key`` (see :func:`probe_gpu_stack`)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return probe_cache_dir() / f"gpu_probe-{digest}.json"


def _probe_key(device_name: str) -> dict[str, Any]:
    return {
        "schema": _PROBE_SCHEMA,
        # A changed self-test makes old verdicts stale.
        "probe_code": hashlib.sha256((_TCNN_PROBE + _NERFACC_PROBE).encode()).hexdigest()[:16],
        "python": sys.executable,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpu": device_name,
        "nvcc": shutil.which("nvcc"),
        # nerfacc's compiled extension lives here; a new folder means a new (checked) build.
        "torch_extensions_dir": os.environ.get("TORCH_EXTENSIONS_DIR"),
        "packages": {name: _installation_fingerprint(name) for name in _PACKAGES},
    }


def _installation_fingerprint(package: str) -> dict[str, Any] | None:
    """Fingerprint of ``package`` and its companion modules; None when the package is absent."""
    prints = [_package_fingerprint(m) for m in _FINGERPRINT_MODULES[package]]
    if prints[0] is None:
        return None
    return {"version": prints[0]["version"], "paths": [p for fp in prints if fp for p in fp["paths"]]}


def _probe_package(module: str, fingerprint: dict[str, Any] | None) -> tuple[bool, str | None, bool]:
    """Exercise ``module`` in a child process: (ok, error, transient)."""
    _, code, timeout_s, _ = _PACKAGES[module]
    if fingerprint is None:
        return False, f"{module} is not installed in {sys.executable}.", False
    log.info("probing %s in a child process (limit %.0f s)", module, timeout_s)
    returncode, out, err = _run_probe_process(code, timeout_s)
    if returncode is None:
        hint = ""
        if module == "nerfacc":
            hint = (
                " Its first use compiles CUDA code; run `neus2 doctor` again to let it finish, and if a "
                "stale 'lock' file sits in TORCH_EXTENSIONS_DIR/nerfacc_cuda, delete it."
            )
        return False, f"the self-test did not finish within {timeout_s:.0f} s.{hint}", True
    verdict = _parse_marker(out)
    if verdict is not None and verdict.get("ok") and returncode == 0:
        return True, None, False
    if verdict is not None and verdict.get("error"):
        return False, _compose(verdict["error"], err), False
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode).name
        except ValueError:
            sig = f"signal {-returncode}"
        what = (
            f"the self-test process was killed by {sig} (a crash inside the compiled extension: usually a "
            "build against another torch, CUDA or C++ runtime; rebuild it in this environment)"
        )
        return False, _compose(what + ".", err), False
    return False, _compose(f"the self-test process exited with code {returncode}.", err), False


def _load_cached(path: Path, key: dict[str, Any]) -> ProbeResult | None:
    try:
        data = json.loads(path.read_text())
        if data.get("key") != key:  # a hash collision or a hand-edited file: probe again
            return None
        return ProbeResult.from_json(data["result"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("ignoring unreadable probe cache %s: %s", path, exc)
        return None


def _save_cached(path: Path, key: dict[str, Any], result: ProbeResult) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "result": result.to_json()}, indent=1))
        os.replace(tmp, path)  # atomic: concurrent probes never see half a file
    except OSError as exc:
        log.debug("could not write the probe cache %s: %s", path, exc)


# --------------------------------------------------------------------------------------------
# Backend choice and imports

_warned: set[str] = set()


def resolve_backend(requested: RequestedBackend = "auto", device: torch.device | str | None = None) -> Backend:
    """Turn the config's backend choice into the backend to use.

    Args:
        requested: ``"auto"``, ``"tcnn"`` or ``"torch"``.
        device: the device the model will run on; a non-CUDA device means ``"torch"``.

    Returns:
        ``"tcnn"`` or ``"torch"``. ``"auto"`` falls back to ``"torch"`` with one warning (why,
        and how to fix it) when CUDA, tinycudann or nerfacc is unavailable.

    Raises:
        ValueError: ``requested`` is not one of the three names.
        DependencyError: ``"tcnn"`` was requested but cannot be used here.
        UserError: ``"tcnn"`` was requested for a non-CUDA ``device``.
    """
    if requested not in ("auto", "tcnn", "torch"):
        raise ValueError(f"requested must be 'auto', 'tcnn' or 'torch', got {requested!r}")
    if requested == "torch":
        return "torch"
    if device is not None and torch.device(device).type != "cuda":
        if requested == "tcnn":
            raise UserError(
                f"The tcnn backend runs only on CUDA devices, but the device is {torch.device(device)}.",
                hint="Choose a CUDA device, or --backend torch.",
            )
        log.info("using the torch backend on device %s", torch.device(device))
        return "torch"
    probe = probe_gpu_stack()
    if probe.gpu_ok:
        return "tcnn"
    if requested == "tcnn":
        raise DependencyError(
            f"The tcnn backend cannot be used: {probe.reason()}.",
            hint=f"{probe.fix_hint()} {TORCH_FALLBACK_HINT}",
        )
    _warn_once(
        f"Using the slower pure-PyTorch backend: {probe.reason()}. "
        f"To fix: {_one_line_fix(probe)} Run `neus2 doctor` for details."
    )
    return "torch"


def import_tcnn() -> ModuleType:
    """Return the ``tinycudann`` module, after the probe said it works on this GPU.

    Raises:
        DependencyError: no CUDA, tinycudann missing, or broken here (with the install hint).
    """
    return _import_checked("tinycudann")


def import_nerfacc() -> ModuleType:
    """Return the ``nerfacc`` module, after the probe said it works (its CUDA extension is built).

    Raises:
        DependencyError: no CUDA, nerfacc missing, or broken here (with the install hint).
    """
    return _import_checked("nerfacc")


def import_triton_kernels(module: str, device: torch.device) -> ModuleType:
    """Import one of the project's Triton kernel modules (``neus2cli.render.march_triton``, ...), which
    import triton; for tensors on ``device``.

    Triton kernels run on CUDA tensors, or on CPU tensors through Triton's interpreter
    (``TRITON_INTERPRET=1``, which the CPU tests use).

    Raises:
        ValueError: CPU tensors without the interpreter (the caller asked for the wrong ``impl``).
        DependencyError: triton is not installed.
    """
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1), got {device}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyError(
            f"impl='triton' needs the triton package: {exc}.",
            hint="Install the triton that matches your torch (pip install triton), or use impl='torch'.",
        ) from exc


def _import_checked(module: str) -> ModuleType:
    if module in sys.modules:  # imported earlier, so it passed the checks below
        return sys.modules[module]
    hint = _PACKAGES[module][3]
    probe = probe_gpu_stack()
    if not probe.cuda_available:
        raise DependencyError(f"{module} needs a CUDA GPU: {_no_cuda_reason()}.", hint=f"{CUDA_HINT} {hint}")
    ok, error = _verdict(probe, module)
    if not ok:
        raise DependencyError(f"{module} is unavailable: {_first_line(error)}.", hint=f"{hint} {TORCH_FALLBACK_HINT}")
    try:
        return importlib.import_module(module)
    except Exception as exc:  # the probe passed, so this is an environment change since
        raise DependencyError(
            f"{module} failed to import: {exc}.", hint=f"Run `neus2 doctor` to re-check. {hint}"
        ) from exc


def _verdict(probe: ProbeResult, module: str) -> tuple[bool, str | None]:
    if module == "tinycudann":
        return probe.tcnn_ok, probe.tcnn_error
    return probe.nerfacc_ok, probe.nerfacc_error


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _one_line_fix(probe: ProbeResult) -> str:
    if not probe.cuda_available:
        return "run on a CUDA GPU with a CUDA build of PyTorch, tinycudann and nerfacc."
    fixes = []
    if not probe.tcnn_ok:
        fixes.append(
            "pip install --no-build-isolation git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"
        )
    if not probe.nerfacc_ok:
        fixes.append("pip install nerfacc ninja (needs nvcc)")
    return "; ".join(fixes) + "."


# --------------------------------------------------------------------------------------------
# Doctor


def doctor_report(force: bool = False) -> dict[str, Any]:
    """Everything ``neus2 doctor`` shows, as plain data (JSON-serialisable).

    Keys: python, python_executable, platform, torch, torch_cuda, cuda_available, gpu, nvcc,
    torch_extensions_dir, tinycudann and nerfacc (each: installed, version, location, ok,
    error), auto_backend, auto_reason, fix, probed_at, from_cache, probe_cache.
    """
    probe = probe_gpu_stack(force=force)
    device_name = probe.device_name
    packages = {}
    for module in _PACKAGES:
        fingerprint = _installation_fingerprint(module)
        ok, error = _verdict(probe, module)
        packages[module] = {
            "installed": fingerprint is not None,
            "version": fingerprint["version"] if fingerprint else None,
            "location": fingerprint["paths"][0][0] if fingerprint and fingerprint["paths"] else None,
            "ok": ok,
            "error": error,
        }
    auto: Backend = "tcnn" if probe.gpu_ok else "torch"
    if probe.gpu_ok:
        auto_reason = f"CUDA GPU {device_name}; tinycudann and nerfacc passed their self-tests"
    else:
        auto_reason = probe.reason()
    return {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": probe.cuda_available,
        "gpu": device_name,
        "nvcc": shutil.which("nvcc"),
        "torch_extensions_dir": os.environ.get("TORCH_EXTENSIONS_DIR"),
        "tinycudann": packages["tinycudann"],
        "nerfacc": packages["nerfacc"],
        "auto_backend": auto,
        "auto_reason": auto_reason,
        "fix": probe.fix_hint(),
        "probed_at": probe.probed_at,
        "from_cache": probe.from_cache,
        "probe_cache": str(probe_cache_path(_probe_key(device_name))) if device_name else None,
    }


def render_doctor_report(report: dict[str, Any], console: Any = None) -> None:
    """Print :func:`doctor_report`'s dict as a rich table (to stdout unless ``console`` is given)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    table = Table(title="neus2 doctor", show_header=False, title_justify="left")
    table.add_column("item", style="bold")
    table.add_column("value", overflow="fold")

    def row(item: str, value: str, style: str | None = None) -> None:
        # Values are plain text (paths, error messages with brackets): never parse them as markup.
        text = escape(value)
        table.add_row(item, f"[{style}]{text}[/{style}]" if style else text)

    row("python", f"{report['python']} ({report['python_executable']})")
    row("torch", f"{report['torch']} (CUDA {report['torch_cuda'] or 'none: CPU-only build'})")
    row("GPU", report["gpu"] or "none visible", None if report["gpu"] else "yellow")
    row("nvcc", report["nvcc"] or "not on PATH", None if report["nvcc"] else "yellow")
    for module in ("tinycudann", "nerfacc"):
        pkg = report[module]
        where = f"{pkg['version'] or '?'} at {pkg['location']}"
        if not pkg["installed"]:
            row(module, "not installed", "red")
        elif pkg["ok"]:
            row(module, f"ok: {where}", "green")
        else:
            row(module, f"broken: {where}\n{pkg['error'] or ''}".rstrip(), "red")
    good = report["auto_backend"] == "tcnn"
    row("auto backend", f"{report['auto_backend']}: {report['auto_reason']}", "green" if good else "yellow")
    if report["fix"]:
        row("fix", report["fix"])
    cached = " (cached)" if report["from_cache"] else ""
    row("probed", f"{report['probed_at']}{cached} {report['probe_cache'] or ''}".rstrip())
    console.print(table)


# --------------------------------------------------------------------------------------------
# Small helpers


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"PyTorch {torch.__version__} is a CPU-only build"
    return f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA GPU"


def _not_installed_or(message: str, module: str) -> str:
    return message if _installation_fingerprint(module) is not None else f"{module} is not installed."


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _tree_mtime_ns(path: str) -> int | None:
    """Newest mtime of a module file, or of the files directly in a package folder (a reinstall
    or rebuild rewrites them). Folders are left out, the package's own and its subpackages':
    importing writes ``__pycache__`` into them, which must not invalidate the verdict."""
    try:
        if not os.path.isdir(path):
            return os.stat(path).st_mtime_ns
        newest = 0
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime_ns)
        return newest
    except OSError:
        return None


def _parse_marker(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(_MARKER):
            try:
                return json.loads(line[len(_MARKER) :])
            except ValueError:
                return None
    return None


def _compose(headline: str, stderr: str, lines: int = 8) -> str:
    """Error text: the headline first (what reason() shows), then the end of the child's stderr."""
    headline = _shorten(headline.strip(), 400)
    tail = "\n".join(stderr.strip().splitlines()[-lines:])
    if len(tail) > _ERROR_CHARS:
        tail = "..." + tail[-_ERROR_CHARS:]
    return f"{headline}\n{tail}" if tail else headline


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return _shorten(lines[0], 240) if lines else "unknown error"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
