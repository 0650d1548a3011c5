"""The ``neus2`` command line: parse, validate, call library functions.

Each command group lives in its own module and registers itself on ``app``.
Library code raises ``UserError`` for bad input; ``main`` turns that into one
paragraph on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import sys
import textwrap

import typer
from rich.console import Console
from rich.text import Text

from neus2cli.errors import UserError

app = typer.Typer(
    name="neus2",
    help="Fast neural surface reconstruction (NeuS2): posed, masked images in, coloured mesh out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain (click) help, not typer's rich panels. The panels give the help text only the width
    # left after the widest type column (``<incremental|per-frame>``) and cut any word longer than
    # that with "…" (paths, ``xmin,ymin,...``), list every flag as ``<bool>``, and read help
    # strings as markup (``[default: ...]`` vanished, ``:b:`` became an emoji). Click wraps at word
    # boundaries to the terminal width (at most 80 columns), shows flags bare and prints text as it is.
    rich_markup_mode=None,
)

err_console = Console(stderr=True)


def _register_commands() -> None:
    # Imported for their side effect of adding commands to ``app``.
    from neus2cli.cli import data_cmds, eval_cmds, prepare_cmds, train_cmds  # noqa: F401


def report_user_error(err: UserError) -> None:
    """Print ``err`` as one wrapped paragraph on stderr."""
    # Never break inside a word or at a hyphen: the paths in the message must stay copyable.
    text = textwrap.fill(str(err), width=100, break_long_words=False, break_on_hyphens=False)
    # The message names user paths and gives hints: a Text prints "scan[v2]" and "neus2cli[gpu]" as
    # they are, where a str would be read as rich markup.
    err_console.print(Text.assemble(("error:", "bold red"), " ", text), highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``neus2``)."""
    _register_commands()
    try:
        app(args=argv, prog_name="neus2")
    except UserError as err:
        report_user_error(err)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:  # commands without their own handling (training has its own): no traceback
        err_console.print("[yellow]Interrupted.[/yellow]", highlight=False)
        sys.exit(130)
