"""Backend choice, the GPU probe's verdict cache, and the doctor report (CPU, fast).

The probe's child process is replaced by a fake runner where the test is about the verdict
logic; two tests run real children (a self-inflicted SIGSEGV, a hang) to show the parent
survives. The ``gpu`` test at the end runs the real probe on a CUDA machine.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import pytest
import torch

from neus2cli import backends
from neus2cli.errors import DependencyError, UserError
from tests.conftest import requires_cuda

TCNN_PIP = "pip install --no-build-isolation git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"
OK_LINE = backends._MARKER + json.dumps({"ok": True})


class FakeRunner:
    """Stands in for ``_run_probe_process``: one scripted outcome per package, calls counted."""

    def __init__(self, tcnn=(0, OK_LINE, ""), nerfacc=(0, OK_LINE, "")):
        self.outcomes = {"tinycudann": tcnn, "nerfacc": nerfacc}
        self.calls: list[str] = []

    def __call__(self, code: str, timeout_s: float):
        package = "tinycudann" if "import tinycudann" in code else "nerfacc"
        self.calls.append(package)
        return self.outcomes[package]


@pytest.fixture
def no_cuda(monkeypatch):
    """A machine without CUDA, whatever this one has; any child process is a test failure."""
    monkeypatch.setattr(backends, "_cuda_device_name", lambda: None)

    def forbidden(code, timeout_s):
        raise AssertionError("the probe must not start a child process without CUDA")

    monkeypatch.setattr(backends, "_run_probe_process", forbidden)
    backends._warned.clear()


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """A CUDA machine with both packages 'installed', a private cache folder and a fake runner."""
    monkeypatch.setenv("NEUS2_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(backends, "_cuda_device_name", lambda: "Fake GPU 80GB")
    installed = {"tinycudann": 1000, "tinycudann_bindings": 1000, "nerfacc": 2000}  # name -> mtime

    def fingerprint(module):
        mtime = installed.get(module)
        return None if mtime is None else {"version": "1.0", "paths": [[f"/site/{module}", mtime]]}

    monkeypatch.setattr(backends, "_package_fingerprint", fingerprint)
    backends._warned.clear()
    runner = FakeRunner()
    monkeypatch.setattr(backends, "_run_probe_process", runner)
    return runner, installed


# -- backend choice without CUDA ------------------------------------------------------------


def test_auto_without_cuda_falls_back_to_torch_with_one_warning(no_cuda, caplog):
    with caplog.at_level(logging.WARNING, logger="neus2cli.backends"):
        assert backends.resolve_backend("auto") == "torch"
        assert backends.resolve_backend("auto") == "torch"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "the fallback warning is shown once per process"
    assert "pure-PyTorch backend" in warnings[0] and "CUDA" in warnings[0]
    assert "\n" not in warnings[0]


def test_torch_requested_is_always_torch(no_cuda):
    assert backends.resolve_backend("torch") == "torch"
    assert backends.resolve_backend("torch", torch.device("cuda")) == "torch"


def test_explicit_tcnn_without_cuda_raises_with_install_hints(no_cuda):
    with pytest.raises(DependencyError) as info:
        backends.resolve_backend("tcnn")
    text = str(info.value)
    assert "CUDA" in text
    assert TCNN_PIP in text
    assert "pip install nerfacc" in text
    assert "--backend torch" in text


def test_tcnn_on_a_cpu_device_is_a_user_error(fake_gpu):
    with pytest.raises(UserError, match="only on CUDA"):
        backends.resolve_backend("tcnn", device="cpu")
    assert backends.resolve_backend("auto", device="cpu") == "torch"
    assert fake_gpu[0].calls == [], "an explicit CPU device needs no probe"


def test_unknown_backend_name_is_a_value_error(no_cuda):
    with pytest.raises(ValueError, match="requested"):
        backends.resolve_backend("cuda")  # type: ignore[arg-type]


def test_imports_without_cuda_raise_dependency_error(no_cuda):
    with pytest.raises(DependencyError, match="tinycudann needs a CUDA GPU"):
        backends.import_tcnn()
    with pytest.raises(DependencyError, match="nerfacc needs a CUDA GPU"):
        backends.import_nerfacc()


def test_module_import_pulls_in_neither_package(tmp_path):
    code = (
        "import sys, neus2cli.backends as b; b.probe_gpu_stack(); b.doctor_report(); "
        "print(sorted(m for m in ('tinycudann', 'nerfacc') if m in sys.modules))"
    )
    # Hide any GPU (the no-CUDA fast path: no probe child) and keep the user's cache untouched.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "NEUS2_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, env=env
    )
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert not any(tmp_path.iterdir()), "no verdict is cached without CUDA"


# -- probe verdicts and their cache ---------------------------------------------------------


def test_verdict_is_cached_once_per_environment(fake_gpu):
    runner, _ = fake_gpu
    first = backends.probe_gpu_stack()
    assert first.gpu_ok and not first.from_cache
    assert runner.calls == ["tinycudann", "nerfacc"]
    files = list(backends.probe_cache_dir().glob("gpu_probe-*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["key"]["gpu"] == "Fake GPU 80GB" and saved["key"]["python"] == sys.executable

    second = backends.probe_gpu_stack()
    assert runner.calls == ["tinycudann", "nerfacc"], "a cached verdict starts no child"
    assert second.from_cache
    assert second.to_json() == first.to_json()
    assert backends.resolve_backend("auto") == "tcnn"

    backends.probe_gpu_stack(force=True)
    assert runner.calls == ["tinycudann", "nerfacc"] * 2


@pytest.mark.parametrize("change", ["reinstall", "torch", "gpu"])
def test_cache_key_changes_invalidate(fake_gpu, monkeypatch, change):
    runner, installed = fake_gpu
    backends.probe_gpu_stack()
    if change == "reinstall":
        installed["tinycudann_bindings"] += 1  # a rebuilt extension has a new mtime
    elif change == "torch":
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    else:
        monkeypatch.setattr(backends, "_cuda_device_name", lambda: "Other GPU")
    result = backends.probe_gpu_stack()
    assert not result.from_cache
    assert len(runner.calls) == 4
    assert len(list(backends.probe_cache_dir().glob("gpu_probe-*.json"))) == 2


def test_segfaulting_tcnn_is_reported_and_auto_falls_back(fake_gpu, monkeypatch, caplog):
    runner, _ = fake_gpu
    runner.outcomes["tinycudann"] = (-int(signal.SIGSEGV), "", "Fatal Python error: Segmentation fault")
    result = backends.probe_gpu_stack()
    assert result.cuda_available and not result.tcnn_ok and result.nerfacc_ok
    assert "SIGSEGV" in result.tcnn_error and "Segmentation fault" in result.tcnn_error
    assert backends.probe_gpu_stack().from_cache, "a crash is a definite verdict: cached"

    with caplog.at_level(logging.WARNING, logger="neus2cli.backends"):
        assert backends.resolve_backend("auto") == "torch"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "tinycudann" in warning and "SIGSEGV" in warning and "neus2 doctor" in warning
    assert TCNN_PIP.removeprefix("pip install ") in warning and "\n" not in warning

    with pytest.raises(DependencyError, match="SIGSEGV") as info:
        backends.resolve_backend("tcnn")
    assert TCNN_PIP in str(info.value)
    with pytest.raises(DependencyError, match="tinycudann is unavailable"):
        backends.import_tcnn()


def test_failing_nerfacc_keeps_the_childs_error(fake_gpu):
    runner, _ = fake_gpu
    line = backends._MARKER + json.dumps({"ok": False, "error": "RuntimeError: nvcc fatal"})
    stderr = "Traceback (most recent call last):\n  ...\nRuntimeError: nvcc fatal"
    runner.outcomes["nerfacc"] = (1, line, stderr)
    result = backends.probe_gpu_stack()
    assert result.tcnn_ok and not result.nerfacc_ok
    assert result.nerfacc_error.splitlines()[0] == "RuntimeError: nvcc fatal"
    assert "nerfacc: RuntimeError: nvcc fatal" in result.reason()
    assert "pip install nerfacc" in result.fix_hint()


def test_timeout_is_not_cached(fake_gpu):
    runner, _ = fake_gpu
    runner.outcomes["nerfacc"] = (None, "", "")
    first = backends.probe_gpu_stack()
    assert not first.nerfacc_ok and "did not finish" in first.nerfacc_error
    backends.probe_gpu_stack()
    assert runner.calls.count("nerfacc") == 2, "a timeout may be a slow first compile: probe again"


def test_missing_package_needs_no_child(fake_gpu):
    runner, installed = fake_gpu
    del installed["nerfacc"]
    result = backends.probe_gpu_stack()
    assert runner.calls == ["tinycudann"]
    assert not result.nerfacc_ok and "not installed" in result.nerfacc_error


def test_unreadable_cache_is_ignored(fake_gpu):
    runner, _ = fake_gpu
    backends.probe_gpu_stack()
    (path,) = backends.probe_cache_dir().glob("gpu_probe-*.json")
    path.write_text("{ not json")
    assert not backends.probe_gpu_stack().from_cache
    assert len(runner.calls) == 4


def test_fingerprint_ignores_bytecode_but_sees_a_rebuild(tmp_path, monkeypatch):
    package = tmp_path / "neus2_fake_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_C.so").write_bytes(b"")
    os.utime(package / "_C.so", ns=(10**18, 10**18))
    monkeypatch.syspath_prepend(str(tmp_path))
    before = backends._package_fingerprint("neus2_fake_pkg")
    assert before is not None and before["paths"][0][0] == str(package)
    (package / "sub").mkdir()
    before = backends._package_fingerprint("neus2_fake_pkg")
    # What the first import (in the probe's child) does: bytecode in the package and subpackages.
    for folder in (package, package / "sub"):
        (folder / "__pycache__").mkdir()
        (folder / "__pycache__" / "__init__.cpython.pyc").write_bytes(b"")
    assert backends._package_fingerprint("neus2_fake_pkg") == before
    os.utime(package / "_C.so", ns=(2 * 10**18, 2 * 10**18))  # a rebuilt extension
    assert backends._package_fingerprint("neus2_fake_pkg") != before
    assert backends._package_fingerprint("neus2_no_such_pkg") is None


# -- the real child-process runner ----------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_runner_survives_a_segfaulting_child():
    code = "import os, signal; print('before', flush=True); os.kill(os.getpid(), signal.SIGSEGV)"
    returncode, out, _ = backends._run_probe_process(code, timeout_s=60)
    assert returncode == -signal.SIGSEGV
    assert out.strip() == "before"


def test_runner_stops_a_hanging_child():
    returncode, _, _ = backends._run_probe_process("import time; time.sleep(60)", timeout_s=1.0)
    assert returncode is None


# -- doctor ----------------------------------------------------------------------------------

DOCTOR_KEYS = {
    "python",
    "python_executable",
    "platform",
    "torch",
    "torch_cuda",
    "cuda_available",
    "gpu",
    "nvcc",
    "torch_extensions_dir",
    "tinycudann",
    "nerfacc",
    "auto_backend",
    "auto_reason",
    "fix",
    "probed_at",
    "from_cache",
    "probe_cache",
}


def test_doctor_report_without_cuda(no_cuda):
    from rich.console import Console

    report = backends.doctor_report()
    assert set(report) == DOCTOR_KEYS
    assert set(report["tinycudann"]) == {"installed", "version", "location", "ok", "error"}
    assert report["auto_backend"] == "torch" and report["cuda_available"] is False
    json.dumps(report)  # plain data
    console = Console(record=True, width=200)
    backends.render_doctor_report(report, console=console)
    text = console.export_text()
    assert "auto backend" in text and "torch" in text and "neus2cli[gpu]" in text


def test_doctor_report_shows_a_broken_package(fake_gpu):
    from rich.console import Console

    runner, _ = fake_gpu
    runner.outcomes["tinycudann"] = (-int(signal.SIGSEGV), "", "boom [in brackets]")
    report = backends.doctor_report()
    assert report["auto_backend"] == "torch"
    assert report["tinycudann"]["installed"] and not report["tinycudann"]["ok"]
    assert report["nerfacc"]["ok"]
    assert report["probe_cache"].endswith(".json")
    console = Console(record=True, width=200)
    backends.render_doctor_report(report, console=console)
    text = console.export_text()
    assert "broken" in text and "SIGSEGV" in text and "boom [in brackets]" in text


# -- on a GPU machine -------------------------------------------------------------------------


@pytest.mark.gpu
@requires_cuda
def test_real_probe_passes_on_the_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUS2_CACHE_DIR", str(tmp_path))
    result = backends.probe_gpu_stack(force=True)
    assert result.tcnn_ok, result.tcnn_error
    assert result.nerfacc_ok, result.nerfacc_error
    assert backends.probe_gpu_stack().from_cache
    assert backends.resolve_backend("auto") == "tcnn"
    assert hasattr(backends.import_tcnn(), "Encoding")
    assert hasattr(backends.import_nerfacc(), "OccGridEstimator")
