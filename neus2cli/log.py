"""Warnings and notes for the user, on stderr (stdout stays clean for --json output)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape

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
    _console.print(f"{escape(_prefix)}[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def info(message: str) -> None:
    _console.print(f"{escape(_prefix)}{message}", highlight=False, soft_wrap=True)
