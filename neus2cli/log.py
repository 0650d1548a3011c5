"""Warnings and notes for the user, on stderr (stdout stays clean for --json output).

Messages are printed exactly as written: they hold user paths (``scan[v2]``, ``runs/[/x]``) and
project hints (``pip install 'neus2cli[gpu]'``, ``--frames a:b[:step]``), which rich would read as
markup (dropping the brackets, or failing with a MarkupError) or emoji codes. Only the
``warning:`` label is styled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.text import Text

_console = Console(stderr=True)
_prefix = ""  # e.g. "rank 1: " while a multi-process launch runs (``prefixed``)


def console() -> Console:
    """The stderr console that warnings, notes and progress (``neus2cli.progress``) share."""
    return _console


@contextlib.contextmanager
def prefixed(prefix: str) -> Iterator[None]:
    """Within the block, every warning and note starts with ``prefix`` (the rank of a multi-process launch:
    N processes share one terminal or log file)."""
    global _prefix
    previous, _prefix = _prefix, prefix
    try:
        yield
    finally:
        _prefix = previous


def warn(message: str) -> None:
    _console.print(Text.assemble(_prefix, ("warning:", "yellow"), " ", message), highlight=False, soft_wrap=True)


def info(message: str) -> None:
    _console.print(Text.assemble(_prefix, message), highlight=False, soft_wrap=True)
