"""Run folders: where a run writes, what may be resumed, and the config a new or resumed run uses.

A new run gets a fresh folder (``outputs/<scene>/<YYYY-mm-dd_HHMMSS>/`` by default) and the config
resolved from its request. A resumed run keeps its own ``config.json``; the options given with
``--resume`` change only what is safe to change mid-run (``neus2cli.config.RESUMABLE``), and every
change is recorded in ``resumes.json``; anything else is refused with a message naming the option.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from neus2cli import log
from neus2cli.config import Config, ConfigRequest, check_resumable, load_run_config, resolve_request, resume_config
from neus2cli.errors import UserError
from neus2cli.io import atomic_write_text

RESUMES_FILE = "resumes.json"


def default_run_dir(scene_name: str, root: Path = Path("outputs")) -> Path:
    return root / scene_name / datetime.now().strftime("%Y-%m-%d_%H%M%S")


def new_run_dir(out_dir: Path, force: bool) -> Path:
    """Create ``out_dir`` for a new run; a folder holding files is refused unless ``force``."""
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise UserError(
            "the output folder already holds files; runs never overwrite each other.",
            path=out_dir,
            hint="Pass --resume to continue that run, --force to overwrite it, or choose another --out.",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def resumable_run_dir(out_dir: Path | None, resume_point: str, what: str) -> Path:
    """The folder of a run to continue; it must hold ``resume_point`` (relative path) and ``config.json``."""
    if out_dir is None:
        raise UserError("--resume needs --out pointing at the run folder to continue.")
    if not (out_dir / resume_point).exists() or not (out_dir / "config.json").exists():
        raise UserError(
            f"--resume needs {what} ({resume_point}) and config.json in the run folder.",
            path=out_dir,
            hint="Point --out at the folder of the interrupted run.",
        )
    return out_dir


def run_config(request: ConfigRequest, out_dir: Path | None, *, resume: bool) -> Config:
    """The config of a new run (``request`` resolved) or of a resumed one (the run's own, changed by ``request``)."""
    if not resume:
        return resolve_request(request)
    if out_dir is None:
        raise UserError("--resume needs --out pointing at the run folder to continue.")
    path = out_dir / "config.json"
    if not path.exists():
        raise UserError("--resume needs the run's config.json in the run folder.", path=out_dir)
    cfg, _ = resume_config(load_run_config(path), request)
    return cfg


def resumed_config(out_dir: Path, cfg: Config, at: dict) -> Config:
    """Check ``cfg`` against the run's saved config, record what changed (``resumes.json``) and save it.

    ``at`` says where the run resumes (e.g. ``{"step": 700}``). Raises ``UserError`` naming the first
    key that may not change on resume.
    """
    stored = load_run_config(out_dir / "config.json")
    changes = check_resumable(stored, cfg)
    if changes:
        log.info("resuming with " + ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()))
        path = out_dir / RESUMES_FILE
        history = json.loads(path.read_text()) if path.exists() else []
        history.append(
            {
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **at,
                "changes": {k: {"from": old, "to": new} for k, (old, new) in changes.items()},
            }
        )
        atomic_write_text(path, json.dumps(history, indent=2) + "\n")
    cfg.save(out_dir / "config.json")
    return cfg


def write_json(path: Path, data: dict) -> None:
    """``data`` as indented JSON, written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
