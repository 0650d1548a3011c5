"""Warnings and notes for the user, on stderr (stdout stays clean for --json output).

Messages are printed exactly as written: they hold user paths (``scan[v2]``, ``runs/[/x]``) and
project hints (``pip install 'neus2cli[gpu]'``, ``--frames a:b[:step]``), which rich would read as
markup (dropping the brackets, or failing with a MarkupError) or emoji codes. Only the
``warning:`` label is styled.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

_console = Console(stderr=True)


def console() -> Console:
    """The stderr console that warnings, notes and progress (``neus2cli.progress``) share."""
    return _console


def warn(message: str) -> None:
    _console.print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False, soft_wrap=True)


def info(message: str) -> None:
    _console.print(Text(message), highlight=False, soft_wrap=True)
