"""``neus2 [COMMAND] --help`` at 80 columns: nothing cut, no ``<bool>``, every help text in full."""

from __future__ import annotations

import re

import pytest
import typer.main

from neus2cli.cli import _register_commands, app
from tests.cli_table import run_cli

WIDTH = 80


def _group():
    _register_commands()
    return typer.main.get_command(app)


COMMANDS = sorted(_group().commands)


def _normalised(text: str) -> str:
    """Whitespace collapsed, and a line break after a hyphen ("per-\\nframe") undone, as a reader does."""
    return re.sub(r"- ", "-", " ".join(text.split()))


@pytest.fixture
def columns(monkeypatch):
    # Click sizes help from the terminal, which it reads from COLUMNS (shutil.get_terminal_size).
    monkeypatch.setenv("COLUMNS", str(WIDTH))


def _help(argv: list[str]) -> str:
    result = run_cli([*argv, "--help"])
    assert result.code == 0, result.err
    return result.out


def _assert_readable(text: str) -> None:
    assert "…" not in text, text
    assert "<bool>" not in text, text
    too_wide = [line for line in text.splitlines() if len(line) > WIDTH]
    assert not too_wide, too_wide


def test_every_command_is_covered():
    # The commands the README documents: a new one must show up here (and in the tables).
    assert set(COMMANDS) == {
        "train",
        "train-dynamic",
        "export-mesh",
        "evaluate",
        "inspect",
        "convert-neus",
        "doctor",
        "prepare",
    }


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help_is_whole_at_80_columns(name, columns):
    text = _help([name])
    _assert_readable(text)
    flat = _normalised(text)
    command = _group().commands[name]
    for paragraph in (command.help or "").split("\n\n"):
        assert _normalised(paragraph) in flat, f"{name}: the description is cut:\n{paragraph}"
    helped = [p for p in command.params if getattr(p, "help", None)]
    assert helped, name
    for param in helped:
        label = "/".join(param.opts)
        assert _normalised(param.help) in flat, f"{name} {label}: help text cut or garbled:\n{text}"
        if getattr(param, "is_flag", False):
            # A flag is listed bare: "--force  Overwrite ...", never with a type.
            assert re.search(rf"^\s+{re.escape(param.opts[0])}\s{{2,}}\S", text, re.M), (label, text)


def test_command_list_is_whole_at_80_columns(columns):
    text = _help([])
    _assert_readable(text)
    flat = _normalised(text)
    commands = text.split("Commands:", 1)[1]
    for name, command in _group().commands.items():
        assert command.short_help, f"{name} needs a short_help: click cuts the docstring's first line with '...'"
        assert _normalised(f"{name} {command.short_help}") in flat, name
    assert "..." not in commands, commands


def test_bracketed_help_prints_literally(columns):
    # Help strings are plain text: "[default: ...]" and "a:b[:step]" are not read as markup or emoji codes.
    assert "[default: NeuS2's DTU test views" in _normalised(_help(["convert-neus"]))
    assert "a:b[:step]" in _help(["train-dynamic"])
