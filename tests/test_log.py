"""The printing helpers print user text and project hints as written, never as rich markup or emoji codes."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from neus2cli import log
from neus2cli.progress import ProgressReporter

# Each would be changed by rich markup: "[v2]" and "[gpu]" dropped as unknown styles, "[/x]" a
# MarkupError (closing a tag never opened), "[bold]" a style, ":b:" and ":smile:" emoji codes.
AWKWARD = [
    "scans/scan[v2]/cameras.npz",
    "runs/[/x]/checkpoint.pt",
    "pip install 'neus2cli[gpu]'",
    "--frames a:b:step or a:b[:step]",
    "[bold]not bold[/bold] :smile:",
]


@pytest.fixture
def captured(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(log, "_console", Console(file=out, force_terminal=False, width=40))
    return out


@pytest.mark.parametrize("text", AWKWARD)
def test_warn_prints_the_message_as_written(captured, text):
    log.warn(f"{text} is odd")
    # Width 40 is narrower than some lines: soft wrapping keeps them whole (paths stay copyable).
    assert captured.getvalue() == f"warning: {text} is odd\n"


@pytest.mark.parametrize("text", AWKWARD)
def test_info_prints_the_message_as_written(captured, text):
    log.info(text)
    assert captured.getvalue() == f"{text}\n"


@pytest.mark.parametrize("text", AWKWARD)
def test_progress_descriptions_print_as_written(text):
    # On a terminal the live bar formats the description into a column: it must not parse it either.
    for terminal in (False, True):
        out = io.StringIO()
        console = Console(file=out, force_terminal=terminal, width=200)
        with ProgressReporter(2, f"train {text}", console=console, interval_s=0.0) as bar:
            bar.advance()
            bar.advance()
        assert f"train {text}: 2/2" in out.getvalue(), (terminal, out.getvalue())
