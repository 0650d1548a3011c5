"""Shared fixtures: the development data beside the repo, and GPU skipping."""

from __future__ import annotations

import os
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (as neus2cli sets for its own users, before torch loads):
# on a shared machine spinning threads made the CPU suite many times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# A fixed intra-op thread count: PyTorch's CPU reductions split their work by thread count, so the
# float results of the end-to-end tests (and whether a measured error lands under its bound) would
# otherwise depend on how many cores the machine running the suite has.
torch.set_num_threads(int(os.environ.get("NEUS2_TEST_THREADS", "2")))

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout; NEUS2_SHARED_DATA points elsewhere (e.g. a copy carried to a GPU machine).
SHARED_DATA = Path(os.environ.get("NEUS2_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# The call's parentheses matter: a bare function object is always truthy.
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with a clear message when absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"development data not found at {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture
def dtu_scan24() -> Path:
    return shared_path("dtu_scan24_quarter")


@pytest.fixture
def lego_half() -> Path:
    return shared_path("lego_half")


@pytest.fixture
def meshes_dir() -> Path:
    return shared_path("meshes")
