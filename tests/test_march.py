"""The (ray, step)-parallel marcher: closed forms, the nerfacc twin, the capped form, Triton = twin."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from neus2cli.render.march import march_rays, march_rays_capped, march_window, max_march_steps
from neus2cli.render.occupancy import march_through_grids
from tests.conftest import REPO_ROOT, requires_cuda

UNIT = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
# neus2cli's step: the unit cube's diagonal in 1024 steps.
NEUS2_STEP = math.sqrt(3) / 1024


def _march(rays_o, rays_d, binaries, step, near_plane=0.0, far_plane=1e10, jitter=None, impl="torch"):
    t_start, t_lo, t_hi = march_window(rays_o, rays_d, UNIT, step, near_plane, far_plane, jitter)
    return march_rays(rays_o, rays_d, t_start, t_lo, t_hi, binaries, UNIT, step, impl=impl)


def _x_ray(origin_x: float = -1.0, y: float = 0.53, z: float = 0.47, direction: float = 1.0):
    return torch.tensor([[origin_x, y, z]]), torch.tensor([[direction, 0.0, 0.0]])


def _f32_grid(t_start: float, step: float, k: np.ndarray) -> np.ndarray:
    """The documented step grid t_k = fl32(t_start + fl32(float32(k) * step))."""
    return np.float32(t_start) + k.astype(np.float32) * np.float32(step)


# --------------------------------------------------------------------------- closed forms


def test_axis_ray_through_full_grid_gives_every_step_in_the_box():
    # Step 1/64 is exact in binary, so t_k = k/64 exactly. The ray enters the unit cube at t = 1
    # and leaves at t = 2: sample k is kept iff (k + 1/2)/64 is in [1, 2), i.e. k = 64..127.
    rays_o, rays_d = _x_ray()
    full = torch.ones(16, 16, 16, dtype=torch.bool)
    ray_indices, t_starts, t_ends = _march(rays_o, rays_d, full, 1 / 64)
    k = torch.arange(64, 128)
    assert torch.equal(ray_indices, torch.zeros(64, dtype=torch.int64))
    assert torch.equal(t_starts, k / 64)
    assert torch.equal(t_ends, (k + 1) / 64)


def test_jittered_and_backward_rays_follow_the_f32_step_grid():
    # Jitter 0.3: t_start = 0.3/64, midpoints (k + 0.8)/64 in [1, 2) -> k = 64..127 again, and the
    # values are the documented float32 grid. Same for a ray going -x from x = 2 with a step that
    # is not a binary fraction (midpoint rule decides the count: k + 1/2 in [1/step, 2/step)).
    full = torch.ones(8, 8, 8, dtype=torch.bool)
    rays_o, rays_d = _x_ray()
    _, t_starts, _ = _march(rays_o, rays_d, full, 1 / 64, jitter=torch.tensor([0.3]))
    t0 = np.float32(0.3) * np.float32(1 / 64)
    np.testing.assert_array_equal(t_starts.numpy(), _f32_grid(t0, 1 / 64, np.arange(64, 128)))

    rays_o, rays_d = _x_ray(origin_x=2.0, direction=-1.0)
    step = 0.0137
    _, t_starts, t_ends = _march(rays_o, rays_d, full, step)
    # No midpoint is within float32 rounding of t = 1 or 2 for this step ((k+1/2)*step vs
    # 1, 2 differ by >= 1e-3), so the float64 count is exact.
    k = np.arange(0, 400)
    expected = k[((k + 0.5) * step >= 1.0) & ((k + 0.5) * step < 2.0)]
    np.testing.assert_array_equal(t_starts.numpy(), _f32_grid(0.0, step, expected))
    np.testing.assert_array_equal(t_ends.numpy(), t_starts.numpy() + np.float32(step))


def test_empty_grid_gives_no_samples():
    rays_o, rays_d = _x_ray()
    ray_indices, t_starts, t_ends = _march(rays_o, rays_d, torch.zeros(16, 16, 16, dtype=torch.bool), 1 / 64)
    assert ray_indices.shape == t_starts.shape == t_ends.shape == (0,)
    assert ray_indices.dtype == torch.int64 and t_starts.dtype == torch.float32


def test_single_occupied_cell_keeps_the_midpoints_inside_it():
    # Cell (5, 8, 7) of 16^3 spans x in [5/16, 6/16) = t in [1 + 20/64, 1 + 24/64): midpoints
    # (k + 1/2)/64 there are k = 84..87. The ray's y = 0.53, z = 0.47 lie in cells 8 and 7.
    grid = torch.zeros(16, 16, 16, dtype=torch.bool)
    grid[5, 8, 7] = True
    rays_o, rays_d = _x_ray()
    ray_indices, t_starts, _ = _march(rays_o, rays_d, grid, 1 / 64)
    assert torch.equal(t_starts, torch.arange(84, 88) / 64)
    # One cell off in y: the ray never visits it.
    grid = torch.zeros(16, 16, 16, dtype=torch.bool)
    grid[5, 9, 7] = True
    assert _march(rays_o, rays_d, grid, 1 / 64)[0].numel() == 0


def test_diagonal_ray_single_cell_matches_exact_midpoints():
    # A generic ray through one occupied cell of 8^3: the kept k are those whose exact (float64)
    # midpoint t0 + (k + 1/2) step lies in the cell's [t_enter, t_exit), except that midpoints
    # within 1e-5 of a face may go either way (float32 rounding of t and of the grid coordinate
    # is ~1e-7 here; 1e-5 is a safe margin that still leaves the test sharp: the cell is ~18
    # steps long, so ambiguous k are rare and excluded, not the rule).
    rays_o = torch.tensor([[-0.3, -0.2, -0.1]])
    rays_d = torch.nn.functional.normalize(torch.tensor([[1.0, 0.9, 0.8]]), dim=-1)
    cell = (3, 3, 3)
    grid = torch.zeros(8, 8, 8, dtype=torch.bool)
    grid[cell] = True
    step = 0.0071
    jitter = torch.tensor([0.6])
    t_start, _, _ = march_window(rays_o, rays_d, UNIT, step, jitter=jitter)
    _, t_starts, _ = _march(rays_o, rays_d, grid, step, jitter=jitter)
    o, d = rays_o[0].double(), rays_d[0].double()
    lo = (torch.tensor(cell, dtype=torch.float64) / 8 - o) / d
    hi = (torch.tensor(cell, dtype=torch.float64) / 8 + 1 / 8 - o) / d
    t_enter, t_exit = float(lo.max()), float(hi.min())
    step32 = float(np.float32(step))
    k = np.arange(0, 1000)
    mid = float(t_start[0]) + (k + 0.5) * step32
    inside = (mid >= t_enter) & (mid < t_exit)
    clear = (np.abs(mid - t_enter) > 1e-5) & (np.abs(mid - t_exit) > 1e-5)
    got_k = np.round((t_starts.double().numpy() - float(t_start[0])) / step32).astype(int)
    got = np.isin(k, got_k)
    assert inside.sum() >= 15  # the chord through the cell is ~0.12 long = ~18 steps
    np.testing.assert_array_equal(got[clear], inside[clear])


def test_windows_near_and_far_planes_and_misses():
    full = torch.ones(16, 16, 16, dtype=torch.bool)
    rays_o, rays_d = _x_ray()
    # Near plane 1.5 inside the box: the step grid starts there, midpoints 1.5 + (k + 1/2)/64 < 2.
    _, t_starts, _ = _march(rays_o, rays_d, full, 1 / 64, near_plane=1.5)
    assert torch.equal(t_starts, 1.5 + torch.arange(0, 32) / 64)
    # Far plane 1.25: midpoints in [1, 1.25) -> k = 64..79.
    _, t_starts, _ = _march(rays_o, rays_d, full, 1 / 64, far_plane=1.25)
    assert torch.equal(t_starts, torch.arange(64, 80) / 64)
    # Per-ray planes as tensors, and an origin inside the box (entry at t = -0.25 is clamped by t_start = 0).
    rays_o = torch.tensor([[-1.0, 0.53, 0.47], [0.25, 0.53, 0.47]])
    rays_d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    ray_indices, t_starts, _ = _march(rays_o, rays_d, full, 1 / 64, far_plane=torch.tensor([1.25, 1e10]))
    assert torch.equal(ray_indices, torch.cat([torch.zeros(16), torch.ones(48)]).long())
    assert torch.equal(t_starts, torch.cat([torch.arange(64, 80), torch.arange(0, 48)]) / 64)
    # A ray that misses the box, one pointing away from it, one whose far plane is before the box.
    rays_o = torch.tensor([[-1.0, 1.5, 0.5], [-1.0, 0.5, 0.5], [-1.0, 0.5, 0.5]])
    rays_d = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    t_start, t_lo, t_hi = march_window(rays_o, rays_d, UNIT, 1 / 64, far_plane=torch.tensor([9.0, 9.0, 0.5]))
    assert torch.equal(t_lo[:2], t_start[:2]) and torch.equal(t_hi[:2], t_start[:2])
    assert _march(rays_o, rays_d, full, 1 / 64, far_plane=torch.tensor([9.0, 9.0, 0.5]))[0].numel() == 0


def _random_scene(n_rays: int, res: int, seed: int, radius: float = 2.5, density: float = 0.3):
    """Rays from a sphere of cameras around the unit cube towards points near its centre, a
    random occupancy grid mixing a shell (long occupied runs) and noise (many faces), jitter."""
    gen = torch.Generator().manual_seed(seed)
    rays_o = 0.5 + torch.nn.functional.normalize(torch.randn(n_rays, 3, generator=gen), dim=-1) * radius
    target = 0.5 + 0.4 * torch.randn(n_rays, 3, generator=gen)
    rays_d = torch.nn.functional.normalize(target - rays_o, dim=-1)
    centres = (torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1) + 0.5) / res
    shell = ((centres - 0.5).norm(dim=-1) - 0.3).abs() < 0.08
    binaries = shell | (torch.rand(res, res, res, generator=gen) < density)
    jitter = torch.rand(n_rays, generator=gen)
    return rays_o, rays_d, binaries, jitter


def test_random_rays_sorted_packed_and_in_window():
    rays_o, rays_d, binaries, jitter = _random_scene(300, 32, seed=1)
    t_start, t_lo, t_hi = march_window(rays_o, rays_d, UNIT, NEUS2_STEP, jitter=jitter)
    ray_indices, t_starts, t_ends = march_rays(rays_o, rays_d, t_start, t_lo, t_hi, binaries, UNIT, NEUS2_STEP)
    assert ray_indices.numel() > 10_000
    key = ray_indices.double() * 100 + t_starts.double()  # t < 10 here: a strict order of (ray, t)
    assert bool((key[1:] > key[:-1]).all())
    assert torch.equal(t_ends, t_starts + torch.tensor(NEUS2_STEP, dtype=torch.float32))
    mid = t_starts + torch.tensor(NEUS2_STEP / 2, dtype=torch.float32)
    assert bool((mid >= t_lo[ray_indices]).all()) and bool((mid < t_hi[ray_indices]).all())
    # Every kept midpoint is in an occupied cell (recomputed in float64; the 1e-5 margin in
    # cell units skips the few midpoints within float32 rounding of a face).
    x = (rays_o[ray_indices].double() + rays_d[ray_indices].double() * mid.double()[:, None]) * 32
    clear = ((x - x.round()).abs() > 1e-5).all(-1)
    cells = x.floor().long().clamp(0, 31)
    assert bool(binaries[cells[:, 0], cells[:, 1], cells[:, 2]][clear].all())


def test_agrees_with_the_nerfacc_twin_up_to_its_float32_drift():
    # march_through_grids reproduces nerfacc: t_{k+1} = fl32(t_k + step), which drifts from the
    # exact t_0 + k * step by up to half an ulp of t per step; our grid has no drift (<= 1 ulp).
    # So (i) matched samples (same ray, same step index k) differ in t by at most the drift
    # bound (k/2 + 2) ulp(t_max); (ii) ours are within 1 ulp of exact; (iii) a sample kept by only
    # one of them has its midpoint within that bound (+1e-6 for the float32 grid coordinate) of
    # a window end or a cell face. Measured here (seed 0): 99.8% of samples in both sets, max
    # |dt| 7.9e-5 (t ~ 3, k ~ 1800). The share asserted, 99.5%, leaves room for other seeds.
    rays_o, rays_d, binaries, jitter = _random_scene(512, 64, seed=0)
    t_start, t_lo, t_hi = march_window(rays_o, rays_d, UNIT, NEUS2_STEP, jitter=jitter)
    ours = march_rays(rays_o, rays_d, t_start, t_lo, t_hi, binaries, UNIT, NEUS2_STEP)
    ref = march_through_grids(
        rays_o, rays_d, binaries[None], torch.tensor([UNIT]), t_start, torch.full_like(t_start, 1e10), NEUS2_STEP
    )
    step = float(np.float32(NEUS2_STEP))
    t0 = t_start.double()

    def step_index(ray_indices, t_starts):
        return torch.round((t_starts.double() - t0[ray_indices]) / step).long()

    k_ours, k_ref = step_index(ours[0], ours[1]), step_index(ref[0], ref[1])
    key_ours, key_ref = ours[0] * 1_000_000 + k_ours, ref[0] * 1_000_000 + k_ref
    in_ref = torch.isin(key_ours, key_ref)
    in_ours = torch.isin(key_ref, key_ours)
    assert in_ref.double().mean() >= 0.995 and in_ours.double().mean() >= 0.995

    t_max = float(t_hi[t_lo < t_hi].max())
    ulp = 2.0 ** (math.floor(math.log2(t_max)) - 23)
    bound = (k_ours.double() / 2 + 2) * ulp
    exact = t0[ours[0]] + k_ours.double() * step
    assert bool(((ours[1].double() - exact).abs() <= ulp).all())
    matched = torch.searchsorted(key_ref, key_ours[in_ref])
    assert bool(((ours[1][in_ref].double() - ref[1][matched].double()).abs() <= bound[in_ref]).all())

    def near_a_boundary(ray_indices, k):
        mid = t0[ray_indices] + (k.double() + 0.5) * step
        tol = (k.double() / 2 + 2) * ulp + 1e-6
        near_window = ((mid - t_lo[ray_indices].double()).abs() <= tol) | (
            (mid - t_hi[ray_indices].double()).abs() <= tol
        )
        g = (rays_o[ray_indices].double() + rays_d[ray_indices].double() * mid[:, None]) * 64
        gd = (rays_d[ray_indices].double() * 64).abs()
        near_face = ((g - g.round()).abs() / gd <= tol[:, None]).any(-1)
        return near_window | near_face

    assert bool(near_a_boundary(ours[0][~in_ref], k_ours[~in_ref]).all())
    assert bool(near_a_boundary(ref[0][~in_ours], k_ref[~in_ours]).all())


# --------------------------------------------------------------------------- capped form, errors


def test_capped_returns_a_prefix_and_the_true_count():
    rays_o, rays_d, binaries, jitter = _random_scene(64, 16, seed=2)
    window = march_window(rays_o, rays_d, UNIT, NEUS2_STEP, jitter=jitter)
    full = march_rays(rays_o, rays_d, *window, binaries, UNIT, NEUS2_STEP)
    n = full[0].numel()
    for capacity in (0, n // 3, n, n + 50):
        ray_indices, t_starts, t_ends, count = march_rays_capped(
            rays_o, rays_d, *window, binaries, UNIT, NEUS2_STEP, max_samples=capacity
        )
        kept = min(n, capacity)
        assert count.dtype == torch.int64 and count.ndim == 0 and int(count) == n
        assert ray_indices.shape == t_starts.shape == t_ends.shape == (capacity,)
        for got, want in zip((ray_indices, t_starts, t_ends), full, strict=True):
            assert torch.equal(got[:kept], want[:kept])
        assert bool((ray_indices[kept:] == 64).all()) and bool((t_starts[kept:] == 0).all())
        assert bool((t_ends[kept:] == 0).all())


def test_rejects_bad_inputs_and_non_unit_directions():
    rays_o, rays_d = _x_ray()
    full = torch.ones(4, 4, 4, dtype=torch.bool)
    window = march_window(rays_o, rays_d, UNIT, 0.01)
    with pytest.raises(ValueError, match="binaries"):
        march_rays(rays_o, rays_d, *window, full.float(), UNIT, 0.01)
    with pytest.raises(ValueError, match="t_lo"):
        march_rays(rays_o, rays_d, window[0], window[1][:0], window[2], full, UNIT, 0.01)
    with pytest.raises(ValueError, match="step"):
        march_rays(rays_o, rays_d, *window, full, UNIT, 0.0)
    with pytest.raises(ValueError, match="impl"):
        march_rays(rays_o, rays_d, *window, full, UNIT, 0.01, impl="cuda")
    with pytest.raises(ValueError, match="aabb"):
        march_rays(rays_o, rays_d, *window, full, [0, 0, 0, 1, 0, 1], 0.01)
    with pytest.raises(ValueError, match="near_plane"):
        march_window(rays_o, rays_d, UNIT, 0.01, near_plane=-1.0)
    # A half-length direction along the diagonal doubles the window (in t): more than
    # max_march_steps candidates, which march_rays refuses rather than silently cut.
    rays_o = torch.tensor([[-0.1, -0.1, -0.1]])
    rays_d = torch.full((1, 3), 0.5 / math.sqrt(3))
    window = march_window(rays_o, rays_d, UNIT, 0.01)
    assert max_march_steps(UNIT, 0.01) == math.ceil(math.sqrt(3) * (1 + 1e-5) / float(np.float32(0.01))) + 4
    with pytest.raises(ValueError, match="unit"):
        march_rays(rays_o, rays_d, *window, full, UNIT, 0.01)


# --------------------------------------------------------------------------- Triton = twin


def assert_triton_matches_twin(device: str, n_rays: int, res: int, seed: int, capacity_share: float = 0.5) -> None:
    """Triton and the twin on the same random scene: identical samples, full and capped.

    Run in a process where triton uses the interpreter for CPU tensors (``TRITON_INTERPRET=1``
    set before triton is imported) or on CUDA tensors.
    """
    rays_o, rays_d, binaries, jitter = _random_scene(n_rays, res, seed)
    # Include rays starting inside the box and a near plane cutting some windows.
    rays_o[: n_rays // 4] = 0.5 + 0.3 * torch.randn(n_rays // 4, 3, generator=torch.Generator().manual_seed(seed))
    near = torch.where(torch.arange(n_rays) % 3 == 0, 2.0, 0.0)
    rays_o, rays_d, binaries, jitter, near = (x.to(device) for x in (rays_o, rays_d, binaries, jitter, near))
    window = march_window(rays_o, rays_d, UNIT, NEUS2_STEP, near_plane=near, jitter=jitter)
    twin = march_rays(rays_o, rays_d, *window, binaries, UNIT, NEUS2_STEP, impl="torch")
    fast = march_rays(rays_o, rays_d, *window, binaries, UNIT, NEUS2_STEP, impl="triton")
    assert twin[0].numel() > 0
    for a, b in zip(twin, fast, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    capacity = int(twin[0].numel() * capacity_share)
    capped = march_rays_capped(rays_o, rays_d, *window, binaries, UNIT, NEUS2_STEP, capacity, impl="triton")
    capped_twin = march_rays_capped(rays_o, rays_d, *window, binaries, UNIT, NEUS2_STEP, capacity, impl="torch")
    for a, b in zip(capped_twin, capped, strict=True):
        assert torch.equal(a, b)


def test_triton_interpreter_matches_twin():
    # A child process: TRITON_INTERPRET must be set before triton is first imported, and this
    # process may already hold a compiled-mode triton. Tiny scene (the interpreter is slow).
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO_ROOT), "CUDA_VISIBLE_DEVICES": ""}
    code = "from tests.test_march import assert_triton_matches_twin as f; f('cpu', 12, 8, 3); print('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.gpu
@requires_cuda
def test_triton_matches_twin_on_cuda():
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1: the CUDA test needs compiled kernels")
    assert_triton_matches_twin("cuda", 4096, 128, seed=4)
    # The twin gives the same bits on the CPU (every step is one IEEE float32 operation).
    rays_o, rays_d, binaries, jitter = _random_scene(2048, 128, seed=5)
    window = march_window(rays_o, rays_d, UNIT, NEUS2_STEP, jitter=jitter)
    cpu = march_rays(rays_o, rays_d, *window, binaries, UNIT, NEUS2_STEP)
    cuda_inputs = [x.cuda() for x in (rays_o, rays_d, *window, binaries)]
    gpu = march_rays(*cuda_inputs[:5], cuda_inputs[5], UNIT, NEUS2_STEP, impl="triton")
    for a, b in zip(cpu, gpu, strict=True):
        assert torch.equal(a, b.cpu())


@pytest.mark.gpu
@requires_cuda
def test_triton_capped_march_replays_in_a_cuda_graph():
    # The capped form never waits on the GPU, so window + march capture into a CUDA graph; a
    # replay on new rays gives what an eager call gives.
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1: the CUDA test needs compiled kernels")
    box = torch.tensor(UNIT, device="cuda")
    first = [x.cuda() for x in _random_scene(1024, 128, seed=6)]
    second = [x.cuda() for x in _random_scene(1024, 128, seed=7)]
    static = [x.clone() for x in first]
    capacity = 1 << 19

    def step(rays_o, rays_d, binaries, jitter):
        window = march_window(rays_o, rays_d, box, NEUS2_STEP, jitter=jitter)
        return march_rays_capped(rays_o, rays_d, *window, binaries, UNIT, NEUS2_STEP, capacity, impl="triton")

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step(*static)  # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step(*static)
    for inputs in (first, second):
        for dst, src in zip(static, inputs, strict=True):
            dst.copy_(src)
        graph.replay()
        expected = step(*inputs)
        assert int(expected[3]) < capacity
        for a, b in zip(expected, outputs, strict=True):
            assert torch.equal(a, b)
