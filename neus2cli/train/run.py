"""Run folders: where a run writes, what may be resumed, and the config a new or resumed run uses.

A new run gets a fresh folder (``outputs/<scene>/<YYYY-mm-dd_HHMMSS>/`` by default) and the config
resolved from its request. A resumed run keeps its own ``config.json``; the options given with
``--resume`` change only what is safe to change mid-run (``neus2cli.config.RESUMABLE``), and every
change is recorded in ``resumes.json``; anything else is refused with a message naming the option.

A run exists from the moment its ``config.json`` is written (atomically, before any other file of
the run): a folder holding it resumes, whatever else is missing (no checkpoint yet: from the start).
``run.json`` records the scene's identity (``neus2cli.data.identity``); ``--resume`` with another
scene is refused.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from neus2cli import log
from neus2cli.config import Config, ConfigRequest, check_resumable, load_run_config, resolve_request, resume_config
from neus2cli.data.identity import same_scene
from neus2cli.errors import UserError
from neus2cli.io import atomic_write_text, check_writable, read_json

RESUMES_FILE = "resumes.json"
RUN_FILE = "run.json"


def default_run_dir(scene_name: str, root: Path = Path("outputs")) -> Path:
    return root / scene_name / datetime.now().strftime("%Y-%m-%d_%H%M%S")


def check_new_run_dir(out_dir: Path, force: bool) -> None:
    """``UserError`` unless a new run may be written in ``out_dir`` (``--out``); creates nothing.

    Refused: a file, a folder holding files (unless ``force``), a location that cannot be written.
    The commands call it before any long work (loading images); ``new_run_dir`` calls it again.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(
            "--out: is a file, not a folder; a run writes a folder of files.",
            path=out_dir,
            hint="Choose another --out (a new or empty folder).",
        )
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise UserError(
            "the output folder already holds files; runs never overwrite each other.",
            path=out_dir,
            hint="Pass --resume to continue that run, --force to overwrite it, or choose another --out.",
        )
    # An existing folder must take files itself; a new one is created in its nearest existing parent.
    check_writable(out_dir / "config.json" if out_dir.is_dir() else out_dir, "--out")


def new_run_dir(out_dir: Path, force: bool, owned: tuple[str, ...] = ()) -> Path:
    """Create ``out_dir`` for a new run; refused as ``check_new_run_dir`` says.

    With ``force``, the earlier run's ``config.json`` and the ``owned`` files (paths relative to
    ``out_dir``: its resume point, metrics, ...) are removed first: left there, an interruption before
    the new run's first checkpoint would leave a folder that resumes the old run.
    """
    check_new_run_dir(out_dir, force)
    out_dir.mkdir(parents=True, exist_ok=True)
    # config.json first: once it is gone, the folder no longer passes for a run that resumes.
    for name in ("config.json", *owned):
        (out_dir / name).unlink(missing_ok=True)
    return out_dir


def resumable_run_dir(out_dir: Path | None) -> Path:
    """The folder of a run to continue: one holding ``config.json`` (its resume point may not exist yet)."""
    if out_dir is None:
        raise UserError("--resume needs --out pointing at the run folder to continue.")
    if not (out_dir / "config.json").is_file():
        raise UserError(
            "--resume found no run here (no config.json): this is not a run folder, or its run was stopped "
            "before it started.",
            path=out_dir,
            hint="Point --out at the folder of the interrupted run, or run the command without --resume.",
        )
    return out_dir


def run_config(request: ConfigRequest, out_dir: Path | None, *, resume: bool) -> Config:
    """The config of a new run (``request`` resolved) or of a resumed one (the run's own, changed by ``request``)."""
    if not resume:
        return resolve_request(request)
    cfg, _ = resume_config(load_run_config(resumable_run_dir(out_dir) / "config.json"), request)
    return cfg


def resume_changes(out_dir: Path, cfg: Config) -> dict:
    """``{key: (old, new)}`` where ``cfg`` differs from the run's saved config; a ``UserError`` naming the
    first key that may not change on resume. Writes nothing."""
    return check_resumable(load_run_config(out_dir / "config.json"), cfg)


def resumed_config(out_dir: Path, cfg: Config, at: dict) -> dict:
    """Check ``cfg`` against the run's saved config, record what changed (``resumes.json``) and save it.

    ``at`` says where the run resumes (e.g. ``{"step": 700}``). Raises ``UserError`` naming the first
    key that may not change on resume. Returns the changes ``{key: (old, new)}``.
    """
    changes = resume_changes(out_dir, cfg)
    if changes:
        log.info("resuming with " + ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()))
        path = out_dir / RESUMES_FILE
        history = (
            read_json(path, hint=f"Move {path.name} away (it is only a record) and resume again.")
            if path.exists()
            else []
        )
        if not isinstance(history, list):
            raise UserError("is not a list of resumes.", path=path, hint=f"Move {path.name} away and resume again.")
        history.append(
            {
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **at,
                "changes": {k: {"from": old, "to": new} for k, (old, new) in changes.items()},
            }
        )
        atomic_write_text(path, json.dumps(history, indent=2) + "\n")
    cfg.save(out_dir / "config.json")
    return changes


def read_run_info(out_dir: Path) -> dict | None:
    """The run's ``run.json``, or None where it was not written (a run stopped right after its config)."""
    path = out_dir / RUN_FILE
    if not path.is_file():
        return None
    return read_json(path, hint="The run's record is damaged: start a new run (another --out, or --force).")


def check_same_scene(out_dir: Path, recorded: dict | None, given: dict) -> None:
    """Refuse to resume the run in ``out_dir`` on a scene other than its own.

    ``recorded`` is the run's scene identity (None: not recorded, accepted), ``given`` the identity of
    the scene passed with ``--resume`` (``neus2cli.data.identity``).
    """
    if recorded is None or same_scene(recorded, given):
        return
    if Path(recorded["path"]).resolve() == Path(given["path"]).resolve():
        what = "its camera files changed since the run started"
    else:
        what = "it is another scene"
    raise UserError(
        f"--resume was given the scene {given['path']} (sha256 {given['sha256'][:12]}), but this run was trained "
        f"on {recorded['path']} (sha256 {str(recorded.get('sha256') or 'not recorded')[:12]}); {what}.",
        path=out_dir,
        hint="Resume with the run's own scene, or start a new run (another --out) on this one.",
    )


def write_json(path: Path, data: dict) -> None:
    """``data`` as indented JSON, written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
