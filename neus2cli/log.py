"""Warnings and notes for the user, on stderr (stdout stays clean for --json output)."""

from __future__ import annotations

from rich.console import Console

_console = Console(stderr=True)


def console() -> Console:
    """The stderr console that warnings, notes and progress (``neus2cli.progress``) share."""
    return _console


def warn(message: str) -> None:
    _console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def info(message: str) -> None:
    _console.print(message, highlight=False, soft_wrap=True)
