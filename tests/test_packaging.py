"""The built wheel carries every package and every preset (presets are package data, not source files)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO_ROOT

SOURCES = ("pyproject.toml", "README.md", "neus2cli", "configs", "data_tools")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    # Built from a copy, so the checkout gets no build/ or egg-info; offline (no isolation, no deps).
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        copy = shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copy2
        copy(
            REPO_ROOT / name,
            src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("neus2cli-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_holds_every_preset(wheel):
    names = set(wheel.namelist())
    presets = sorted(p.name for p in (REPO_ROOT / "configs").glob("*.json"))
    assert {"base.json", "dtu.json", "demo.json", "fast.json"} <= set(presets)
    for preset in presets:
        assert f"neus2cli/presets/{preset}" in names, preset
        assert wheel.read(f"neus2cli/presets/{preset}") == (REPO_ROOT / "configs" / preset).read_bytes()


def test_wheel_holds_every_module(wheel):
    # pyproject.toml lists the packages by hand (for the presets mapping): a new one must be added there.
    names = set(wheel.namelist())
    for root in ("neus2cli", "data_tools"):
        for module in (REPO_ROOT / root).rglob("*.py"):
            assert module.relative_to(REPO_ROOT).as_posix() in names, module
    assert "data_tools/demo_scene/transform_train.json" in names
