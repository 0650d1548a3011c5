"""User-facing errors.

A ``UserError`` is a mistake in the user's input (a missing file, a bad pose, an
unknown config key). The CLI prints its message as one paragraph and exits with
code 2, without a traceback. Library code raises it; it never calls ``sys.exit``.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """An input problem the user can fix. ``str(err)`` is the whole message.

    Args:
        message: what is wrong, in one or two sentences.
        path: the file or folder at fault, if any (named first in the message).
        hint: what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None, hint: str | None = None):
        self.path = Path(path) if path is not None else None
        self.hint = hint
        self.message = message
        parts = []
        if self.path is not None:
            parts.append(f"{self.path}:")
        parts.append(message.rstrip())
        if hint:
            parts.append(hint.rstrip())
        super().__init__(" ".join(parts))


class DependencyError(UserError):
    """An optional package (tinycudann, nerfacc, matplotlib) is missing or broken."""
