"""Table-driven CLI tests: one ``Row`` per bad input, run in-process through ``neus2cli.cli.main``.

Each row builds its input under a fresh folder (``setup``), runs ``neus2 ARGV`` and checks
the exit code, that the output names the cause (``phrases``), that no traceback is
printed, that a ``UserError`` is one paragraph, and any post-condition (``check``: for
instance that nothing already written was lost). Shared by every command's table:

    ROWS = [Row("missing scene", ("inspect", "{root}/nope"), ("scene not found",)), ...]

    @pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
    def test_bad_input(row, tmp_path):
        run_row(row, tmp_path)
"""

from __future__ import annotations

import contextlib
import io
from collections import ChainMap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from neus2cli.cli import main


@dataclass(frozen=True)
class Row:
    """One command line and what it must print.

    Attributes:
        id: the pytest id (short, unique in its table).
        argv: the arguments after ``neus2``; ``{name}`` placeholders are filled from the
            dict that ``setup`` returns, then from ``run_row``'s ``shared`` inputs, and
            ``{root}`` is always the row's folder.
        phrases: each must appear in stdout + stderr (case-insensitive, whitespace
            collapsed, since rich wraps long paragraphs).
        setup: builds the input under the row's folder; returns placeholder values.
        code: the expected exit code (2: bad input; 0 for the odd success row that
            checks the printing of awkward names).
        check: called with the placeholder values after the run (post-conditions).
    """

    id: str
    argv: tuple[str, ...]
    phrases: tuple[str, ...]
    setup: Callable[[Path], dict[str, str]] | None = None
    code: int = 2
    check: Callable[[dict[str, str]], None] | None = None


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        """stdout + stderr, lower case, whitespace collapsed (rich wraps at the terminal width)."""
        return " ".join((self.out + "\n" + self.err).split()).lower()


def run_cli(argv: list[str]) -> CliResult:
    """Run ``neus2 ARGV`` in-process (the console script's own entry point), capturing its output.

    Rich consoles look up ``sys.stdout``/``sys.stderr`` when they print, so redirecting
    them captures the error paragraph too.
    """
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


def run_row(row: Row, root: Path, shared: Mapping[str, str] | None = None) -> CliResult:
    """Build ``row``'s input under ``root``, run it, and assert everything the row promises.

    ``shared``: inputs several rows use as they are (a trained run, say), looked up only for the
    placeholders a row names, so that a lazy mapping builds only what the rows run need.
    """
    root.mkdir(parents=True, exist_ok=True)
    values = ChainMap({"root": str(root), **(row.setup(root) if row.setup is not None else {})}, shared or {})
    argv = [arg.format_map(values) for arg in row.argv]
    result = run_cli(argv)
    context = f"neus2 {' '.join(argv)}\n--- stdout ---\n{result.out}\n--- stderr ---\n{result.err}"
    assert "Traceback" not in result.out + result.err, context
    assert result.code == row.code, context
    for phrase in row.phrases:
        assert " ".join(phrase.split()).lower() in result.text, f"missing {phrase!r} in:\n{context}"
    if result.err.lstrip().startswith("error:"):  # a UserError: one paragraph, one error
        assert "\n\n" not in result.err.strip() and result.err.count("error:") == 1, context
    if row.check is not None:
        row.check(values)
    return result
