"""Atomic file writes (a crash or Ctrl-C never leaves a half-written output), and a check that
an output location is writable before any expensive work."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from neus2cli.errors import UserError

# Failures of the storage, not of the program: the user can fix them (free space, a quota, a mount).
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then move the temporary file over ``path`` in one step.

    A storage failure (full disk, quota, read-only or vanished mount, permissions) is a ``UserError``
    naming ``path``; the temporary file is removed and ``path`` keeps what it held, so a training run
    stopped this way resumes from its last checkpoint.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix + ".tmp", dir=path.parent)
        os.close(fd)
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in _STORAGE_ERRORS:
            raise UserError(
                f"could not be written: {err.strerror or err}. Nothing was replaced: the file keeps what it "
                "held before.",
                path=path,
                hint="Free space (or fix the permissions or mount) and run the command again; an interrupted "
                "training run continues with --resume.",
            ) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def read_json(path: Path, hint: str | None = None):
    """The JSON document in ``path``; a damaged or unreadable file is a ``UserError`` naming it (with ``hint``)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot be read as JSON ({err}).", path=path, hint=hint) from None


def check_writable(path: Path, what: str) -> None:
    """``UserError`` unless a file or folder could be created at ``path``; creates nothing that stays.

    Walks up to the nearest existing ancestor (the folders that would be created) and
    creates and removes a temporary file there: permission bits alone do not tell (root
    ignores them; read-only mounts and full disks do not show in them). ``what`` names
    the option or argument in the message ("--plot", "DST").
    """
    path = Path(path)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(
            f"{what}: cannot create it, because {ancestor} is a file, not a folder.",
            path=path,
            hint="Choose a location whose parent folders are folders.",
        )
    try:
        fd, tmp = tempfile.mkstemp(prefix=".neus2-write-check.", suffix=".tmp", dir=ancestor)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise UserError(
            f"{what}: cannot write in {ancestor} ({err.strerror or err}).",
            path=path,
            hint="Choose a writable location.",
        ) from None
