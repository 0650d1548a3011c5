"""Interrupted runs: SIGINT and SIGTERM at any moment leave a run folder that resumes and finishes.

The signal tests run ``neus2 train`` in a subprocess through a small driver that pauses the run at a
chosen moment (image loading, or a given training step) and says so by creating a marker file, so that
the signal lands at that moment on any machine, however loaded; the pause is a ``time.sleep``, which a
signal handler that raises interrupts exactly as it interrupts training.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from neus2cli.config import ConfigRequest, resolve_config
from neus2cli.data.identity import scene_identity
from neus2cli.errors import UserError
from neus2cli.signals import sigterm_as_interrupt
from neus2cli.train import static
from neus2cli.train.checkpoint import load_checkpoint, save_checkpoint
from neus2cli.train.run import run_config
from neus2cli.train.static import train_static
from neus2cli.train.trainer import NeuSTrainer, TrainingInterrupted
from tests.scenes import static_scene
from tests.test_data_convert import run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]

# As small as training gets while still producing a mesh: 4 hash levels, a 16^3 occupancy grid,
# ~1k samples per step, a 16^3 meshing lattice and no test-view renders.
TINY = [
    "backend=torch",
    "model.n_levels=4",
    "model.log2_hashmap_size=12",
    "model.finest_resolution=64",
    "train.progressive_start_levels=4",
    "sampling.grid_resolution=16",
    "sampling.target_samples=1024",
    "sampling.initial_rays=128",
    "sampling.max_rays=512",
    "sampling.step_size=0.02",
    "output.mesh_resolution=16",
    "output.render_test_views=0",
    "train.checkpoint_every=1000",  # no periodic checkpoint: the one on disk is the interruption's
]
STEPS = 8


def tiny_config(steps: int = STEPS):
    return resolve_config("fast", TINY, **{"train.steps": steps})


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    # A space and a non-ASCII letter in the path: the printed resume command must still paste.
    return static_scene(tmp_path_factory.mktemp("scenes") / "scène lumpy", views=8, size=32)


# ----------------------------------------------------------------------------- SIGTERM as Ctrl-C
def test_sigterm_raises_keyboard_interrupt_once_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here, at once
    assert signal.getsignal(signal.SIGTERM) is before
    with sigterm_as_interrupt():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        os.kill(os.getpid(), signal.SIGTERM)  # a repeat while cleaning up is ignored
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) is before


# ----------------------------------------------------------------------------- signals, end to end
DRIVER = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path

    # What a terminal gives: Ctrl-C raises (a shell may start background jobs with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    marker, moment = Path(os.environ["MARKER"]), os.environ["MOMENT"]

    def pause():
        marker.touch()
        time.sleep(120)  # the test's signal interrupts this
        raise SystemExit("no signal arrived")

    import neus2cli.train.static as static
    from neus2cli.train.trainer import NeuSTrainer

    if moment == "loading":
        static.load_images = lambda *args, **kwargs: pause()
    else:
        real_step, stop = NeuSTrainer.train_step, int(moment)

        def train_step(self):
            if self.step == stop:
                pause()
            return real_step(self)

        NeuSTrainer.train_step = train_step
    from neus2cli.cli import main

    main(sys.argv[1:])
    """
)


def _interrupt_cli_run(argv: list[str], moment: str, sig: int, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``neus2 ARGV`` until it reaches ``moment``, send ``sig``, and return the finished process."""
    marker = tmp_path / "paused"
    env = {**os.environ, "MARKER": str(marker), "MOMENT": moment, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300  # generous: a loaded 2-core machine takes seconds to import torch
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the run never reached {moment}: rc={proc.returncode}\n{out}\n{err}")
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _continue_command(stderr: str) -> list[str]:
    """The ``Continue with: ...`` command the run printed, as argv (after the shell's own splitting)."""
    (line,) = [ln for ln in stderr.splitlines() if "Continue with: " in ln]
    argv = shlex.split(line.split("Continue with: ", 1)[1])
    assert argv[:2] == ["neus2", "train"], argv
    return argv[1:]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("moment", ["loading", "5"], ids=["while-loading-images", "at-step-5"])
def test_signal_then_resume_finishes(scene, tmp_path, sig, moment, capsys):
    out = tmp_path / "rün 1"
    argv = ["train", str(scene), "--out", str(out), "--no-progress", "--steps", str(STEPS)]
    argv += [f"--set={kv}" for kv in TINY]
    proc = _interrupt_cli_run(argv, moment, sig, tmp_path)
    # The same message and exit status for Ctrl-C and SIGTERM, and no traceback.
    assert proc.returncode == 130, proc.stderr
    assert "Interrupted." in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (out / "mesh.ply").exists()
    if moment == "loading":  # before the first checkpoint: the folder is a run without one
        assert "before its first checkpoint" in proc.stderr
        assert sorted(p.name for p in out.iterdir()) == ["config.json", "run.json"]
    else:
        assert load_checkpoint(out / "checkpoint.pt")["trainer"]["step"] == 5

    # The printed command, pasted as it is (a space and non-ASCII letters in both paths), finishes the run.
    resume = _continue_command(proc.stderr)
    assert resume == ["train", str(scene), "--out", str(out), "--resume"]
    assert run_cli(resume) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == STEPS and load_checkpoint(out / "checkpoint.pt")["trainer"]["step"] == STEPS
    assert (out / "mesh.ply").stat().st_size > 0


# ----------------------------------------------------------------------------- resumption, in-process
def test_metrics_accumulate_over_segments_and_a_complete_run_resumes_as_a_no_op(scene, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_step = NeuSTrainer.train_step

    def stop_at(step):
        def train_step(self):
            if self.step == step:
                raise KeyboardInterrupt
            return real_step(self)

        return train_step

    monkeypatch.setattr(NeuSTrainer, "train_step", stop_at(3))
    with pytest.raises(TrainingInterrupted):
        train_static(scene, tiny_config(), out, progress=False)
    # Stand-in for a long first segment: its recorded time must reach metrics.json.
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["trainer"]["step"] == 3 and ckpt["trainer"]["train_seconds"] > 0
    ckpt["trainer"]["train_seconds"] = 1000.0
    save_checkpoint(out / "checkpoint.pt", {k: v for k, v in ckpt.items() if k not in ("version", "path")})

    # Interrupted again after training finished, while meshing: the folder resumes straight to the outputs.
    monkeypatch.setattr(NeuSTrainer, "train_step", real_step)
    real_mesh = static.mesh_of_field
    monkeypatch.setattr(static, "mesh_of_field", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    t0 = time.perf_counter()
    with pytest.raises(TrainingInterrupted) as info:
        train_static(scene, tiny_config(), out, resume=True, progress=False)
    second = time.perf_counter() - t0
    assert info.value.checkpoint_path == out / "checkpoint.pt" and info.value.run_dir == out
    trained = load_checkpoint(out / "checkpoint.pt")["trainer"]
    assert trained["step"] == STEPS and not (out / "metrics.json").exists()
    assert 1000.0 < trained["train_seconds"] < 1000.0 + second

    monkeypatch.setattr(static, "mesh_of_field", real_mesh)
    monkeypatch.setattr(NeuSTrainer, "train_step", lambda self: pytest.fail("a finished run trained again"))
    _, metrics = train_static(scene, tiny_config(), out, resume=True, progress=False)
    # Steps and seconds of both segments, not of the last (empty) one.
    assert metrics["steps"] == STEPS and metrics["train_seconds"] == trained["train_seconds"]
    assert metrics["samples_per_second"] > 0 and metrics["final_train_psnr"] == metrics["final_train_psnr"]  # not NaN
    saved = (out / "metrics.json").read_bytes()

    # Complete: resuming changes nothing, reads no image, says so.
    capsys.readouterr()
    monkeypatch.setattr(static, "load_images", lambda *a, **k: pytest.fail("a complete run loaded images"))
    _, again = train_static(scene, tiny_config(), out, resume=True, progress=False)
    assert again == json.loads(saved) and (out / "metrics.json").read_bytes() == saved
    assert "already complete" in capsys.readouterr().err


def test_a_run_with_only_its_config_resumes_from_step_0(scene, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    tiny_config(4).save(out / "config.json")  # a run stopped right after writing its config
    cfg = run_config(ConfigRequest(None, ()), out, resume=True)
    _, metrics = train_static(scene, cfg, out, resume=True, progress=False)
    assert metrics["steps"] == 4 and (out / "mesh.ply").exists()
    assert json.loads((out / "run.json").read_text())["scene_identity"] == scene_identity(scene)


# ----------------------------------------------------------------------------- scene identity
def test_resume_with_another_scene_is_refused(scene, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    tiny_config().save(out / "config.json")
    identity = scene_identity(scene)
    (out / "run.json").write_text(json.dumps({"scene": identity["path"], "scene_identity": identity}))
    other = shutil.copytree(scene, tmp_path / "other scene")
    train_json = other / "transform_train.json"
    cameras = json.loads(train_json.read_text())
    cameras["frames"] = cameras["frames"][:-1]  # another capture: one view fewer
    train_json.write_text(json.dumps(cameras))

    with pytest.raises(UserError) as info:
        train_static(other, tiny_config(), out, resume=True, progress=False)
    message = str(info.value)
    assert str(scene.resolve()) in message and str(other.resolve()) in message
    assert identity["sha256"][:12] in message and scene_identity(other)["sha256"][:12] in message

    # The same through the CLI: one paragraph, exit 2; nothing of the run was touched.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert run_cli(["train", str(other), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "another scene" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_moved_scene_is_still_the_run_s_scene(scene, tmp_path):
    from neus2cli.data.identity import same_scene

    moved = shutil.copytree(scene, tmp_path / "moved")
    assert same_scene(scene_identity(scene), scene_identity(moved))  # the digest, not the path, decides
    assert not same_scene({"path": str(scene)}, scene_identity(moved))  # without a digest: the path


# ----------------------------------------------------------------------------- the printed command
def test_the_resume_hint_is_shell_quoted(tmp_path, capsys):
    from neus2cli.cli.train_cmds import _interrupted

    run_dir = tmp_path / "my runs" / "naïve 'quoted' [v2]"
    command = ["neus2", "train", str(tmp_path / "scène $HOME"), "--out", str(run_dir), "--resume"]
    with pytest.raises(SystemExit) as info:
        _interrupted(TrainingInterrupted(run_dir / "checkpoint.pt"), command)
    assert info.value.code == 130
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "Continue with: " in ln]
    assert shlex.split(line.split("Continue with: ", 1)[1]) == command
    assert str(run_dir / "checkpoint.pt") in line  # rich markup left the brackets alone


# ----------------------------------------------------------------------------- dynamic runs
def test_dynamic_run_interrupted_in_its_first_frame_resumes_from_it(tmp_path, monkeypatch, capsys):
    from neus2cli.train.dynamic import train_dynamic
    from tests.scenes import dynamic_scene

    sequence = dynamic_scene(tmp_path / "seq", frames=3, views=8, size=32)
    cfg = resolve_config(
        "fast",
        [*TINY, "output.mesh_resolution=24", "first_frame_steps=6", "next_frame_steps=4", "global_movement_steps=2"],
    )
    out = tmp_path / "run"
    real_step = NeuSTrainer.train_step

    def stop_in_frame_0(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(NeuSTrainer, "train_step", stop_in_frame_0)
    with pytest.raises(TrainingInterrupted) as info:
        train_dynamic(sequence, cfg, out, progress=False)
    # No frame finished: no resume point yet, and the run folder says so instead of naming a missing file.
    assert info.value.checkpoint_path is None and info.value.run_dir == out
    assert not (out / "state" / "last.pt").exists()

    monkeypatch.setattr(NeuSTrainer, "train_step", real_step)
    _, metrics = train_dynamic(sequence, cfg, out, resume=True, progress=False)
    assert [f["index"] for f in metrics["frames"]] == [0, 1, 2]
    saved = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    _, again = train_dynamic(sequence, cfg, out, resume=True, progress=False)
    assert (out / "metrics.json").read_bytes() == saved and again["n_frames"] == 3
    assert "already complete" in capsys.readouterr().err


# ----------------------------------------------------------------------------- random moments
# A Ctrl-C at a moment drawn from a seeded generator (the suite stays deterministic): the call of one
# of the run's phases, counted from the start of the run, raises KeyboardInterrupt. Whatever the
# moment, the folder then resumes (or, stopped before it became a run, a plain re-run succeeds) and
# finishes with every step and every frame.
STATIC_PHASES = ("load_images", "train_step", "mesh_of_field", "render_views", "save_checkpoint")
DYNAMIC_PHASES = ("load_images", "train_step", "mesh_of_field", "store_field", "render_views", "save_checkpoint")


def _interrupt_at(monkeypatch, module, phase: str, call: int) -> None:
    """Raise KeyboardInterrupt at the ``call``-th call (1-based) of ``phase`` during the run."""
    owner, name = (NeuSTrainer, "train_step") if phase == "train_step" else (module, phase)
    real = getattr(owner, name)
    count = [0]

    def wrapper(*args, **kwargs):
        count[0] += 1
        if count[0] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def _finish(run, out: Path):
    """Resume ``out`` where it became a run, else start it again (what the CLI tells the user to do)."""
    return run(resume=(out / "config.json").exists())


# Every phase once, training twice more; the step (and, for a sequence, the frame) is drawn at random.
STATIC_MOMENTS = [(phase, 0) for phase in STATIC_PHASES] + [("train_step", 1), ("train_step", 2)]
DYNAMIC_MOMENTS = [(phase, 0) for phase in DYNAMIC_PHASES] + [("train_step", 1)]


@pytest.mark.parametrize(("phase", "seed"), STATIC_MOMENTS, ids=[f"{p}-{s}" for p, s in STATIC_MOMENTS])
def test_a_static_run_interrupted_at_a_random_moment_resumes_and_finishes(scene, tmp_path, monkeypatch, phase, seed):
    import random

    rng = random.Random(f"{phase}-{seed}")
    call = rng.randint(1, STEPS) if phase == "train_step" else 1
    out = tmp_path / "run"
    cfg = resolve_config("fast", [*TINY, "output.render_test_views=1"], **{"train.steps": STEPS})
    with monkeypatch.context() as patch:
        _interrupt_at(patch, static, phase, call)
        with pytest.raises((KeyboardInterrupt, TrainingInterrupted)):
            train_static(scene, cfg, out, progress=False)
    _, metrics = _finish(lambda resume: train_static(scene, cfg, out, resume=resume, force=True, progress=False), out)
    assert metrics["steps"] == STEPS, (phase, call)
    assert load_checkpoint(out / "checkpoint.pt")["trainer"]["step"] == STEPS
    assert (out / "mesh.ply").stat().st_size > 0 and (out / "metrics.json").is_file()


@pytest.mark.parametrize(("phase", "seed"), DYNAMIC_MOMENTS, ids=[f"{p}-{s}" for p, s in DYNAMIC_MOMENTS])
def test_a_dynamic_run_interrupted_at_a_random_moment_resumes_and_finishes(tmp_path, monkeypatch, phase, seed):
    import random

    import neus2cli.train.dynamic as dynamic
    from tests.scenes import dynamic_scene

    rng = random.Random(f"dynamic-{phase}-{seed}")
    first, later, frames = 6, 4, 3
    call = rng.randint(1, first + later * (frames - 1)) if phase == "train_step" else rng.randint(1, frames)
    sequence = dynamic_scene(tmp_path / "seq", frames=frames, views=8, size=32)
    cfg = resolve_config(
        "fast",
        [
            *TINY,
            "output.mesh_resolution=24",
            "output.render_test_views=1",
            f"first_frame_steps={first}",
            f"next_frame_steps={later}",
            "global_movement_steps=2",
        ],
    )
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _interrupt_at(patch, dynamic, phase, call)
        with pytest.raises((KeyboardInterrupt, TrainingInterrupted)):
            dynamic.train_dynamic(sequence, cfg, out, progress=False)
    _, metrics = _finish(
        lambda resume: dynamic.train_dynamic(sequence, cfg, out, resume=resume, force=True, progress=False), out
    )
    assert [f["index"] for f in metrics["frames"]] == list(range(frames)), (phase, call)
    for k in range(frames):
        assert (out / "frames" / f"{k:04d}" / "mesh.ply").stat().st_size > 0, (phase, call, k)
