"""Progress of a long phase (training, image loading, meshing, test renders, evaluation, frames).

On a terminal: a live rich bar. Anywhere else (CI logs, ``nohup``, a scheduler's log file): a
plain line such as ``train scan24: 1200/15000 (8%) loss 0.0123 PSNR 28.41 2.3M samples/s
elapsed 0:00:14 ETA 0:02:41``, printed when the phase starts, at most every ``interval_s``
seconds while it runs (checked on each ``update``), and when it ends.

``update`` is cheap (no I/O unless a line is due, never a device sync): callers pass figures
they already have. A caller whose figures cost something to read (the trainer's loss sums on
the GPU) reads them every N steps *or* when ``due()`` says a refresh is due, so the figures
shown are never older than ``interval_s`` even when steps are slow.

Reporters nest (frames k/N around each frame's training): on a terminal they share one live
display per console; each finished, non-transient phase leaves its final line above the bars.
All output goes to the stderr console of ``neus2cli.log`` unless a console is given (stdout
stays clean for ``--json``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import ClassVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from neus2cli import log

DEFAULT_INTERVAL_S = 5.0
"""Seconds between plain lines (and the longest a figure may go stale when callers use ``due``)."""

Clock = Callable[[], float]


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``-:--:--`` when unknown, e.g. before the first step)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class ProgressReporter:
    """Context manager reporting ``completed`` out of ``total`` for one phase named ``description``.

    Args:
        total: the count at completion (steps, images, chunks, views, frames), or None if unknown.
        description: what is running, e.g. ``"train scan24"``, ``"loading images"``.
        enabled: False prints nothing at all (``--no-progress``, ``--json``).
        console: where to draw; default ``neus2cli.log.console()`` (stderr).
        interval_s: seconds between plain lines; also what ``due`` measures.
        clock: seconds, monotonic (injectable for tests).
        transient: on a terminal, remove the bar at the end without a final line (short
            sub-phases); plain lines are printed either way.
        start: the count already done when the phase starts (a resumed run); not counted in the
            rate, so the ETA is right from the first update.
    """

    # Live displays by console: one rich Progress per console, shared by nested reporters.
    _live: ClassVar[dict[int, tuple[Progress, list[ProgressReporter]]]] = {}

    def __init__(
        self,
        total: int | None,
        description: str,
        *,
        enabled: bool = True,
        console: Console | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Clock = time.monotonic,
        transient: bool = False,
        start: int = 0,
    ):
        if total is not None and total < 0:
            raise ValueError(f"total must be >= 0 or None, got {total}")
        if not interval_s >= 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self.total = total
        self.description = description
        self.enabled = enabled
        self.console = console if console is not None else log.console()
        self.interval_s = float(interval_s)
        self.clock = clock
        self.transient = transient
        self.completed = start
        self.status = ""
        self._rate_base = (start, 0.0)  # (count, time) the rate is measured from
        self._t_enter = 0.0
        self._t_refresh = 0.0  # last plain line, or last figures on a terminal
        self._printed: tuple | None = None  # (completed, status) of the last plain line
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    # ----------------------------------------------------------------- lifecycle
    @property
    def live(self) -> bool:
        """True when drawing a live bar (enabled, on a terminal)."""
        return self.enabled and self.console.is_terminal

    def __enter__(self) -> ProgressReporter:
        now = self.clock()
        self._t_enter = self._t_refresh = now
        self._rate_base = (self.completed, now)
        if not self.enabled:
            return self
        if self.live:
            self._bar = self._join_live()
            self._task = self._bar.add_task(self.description, total=self.total, completed=self.completed, status="")
        else:
            self._print_line(now)
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if self.live:
            self._leave_live()
        elif self._printed != (self.completed, self.status):
            self._print_line(now)

    # ----------------------------------------------------------------- updates
    def update(self, completed: int | None = None, status: str | None = None) -> None:
        """Set the count (None: unchanged) and, if given, the figures shown after it (``"loss 0.0123"``).

        Prints a plain line when one is due; otherwise only stores the values.
        """
        if completed is not None:
            self.completed = completed
        if status is not None:
            self.status = status
        if not self.enabled:
            return
        now = self.clock()
        if self._bar is not None:
            if status is not None:
                self._t_refresh = now
            self._bar.update(self._task, completed=self.completed, status=self.status)
        elif now - self._t_refresh >= self.interval_s:
            self._print_line(now)

    def advance(self, n: int = 1) -> None:
        """One more item (or ``n``) done."""
        self.update(self.completed + n)

    def start_from(self, completed: int) -> None:
        """Set the count without counting it as work done (where a resumed run starts)."""
        self.completed = completed
        self._rate_base = (completed, self.clock())
        if self._bar is not None:
            self._bar.reset(self._task, completed=completed)  # also forgets rich's speed samples

    def report_fraction(self, stage: str, fraction: float) -> None:
        """``on_progress(stage, fraction)`` callback (``neus2cli.eval``): ``fraction`` of ``total``, stage as status."""
        self.update(round(fraction * (self.total or 0)), stage)

    def due(self) -> bool:
        """True when ``interval_s`` has passed since the figures were last shown: refresh them now.

        Always False when disabled, so a caller never pays for figures nobody sees.
        """
        return self.enabled and self.clock() - self._t_refresh >= self.interval_s

    # ----------------------------------------------------------------- text
    def line(self, now: float | None = None) -> str:
        """The plain progress line as of ``now`` (default: the clock)."""
        now = self.clock() if now is None else now
        parts = [f"{self.description}:"]
        if self.total:
            parts.append(f"{self.completed}/{self.total} ({100 * self.completed // self.total}%)")
        else:
            parts.append(f"{self.completed}" if self.total is None else f"{self.completed}/{self.total}")
        if self.status:
            parts.append(self.status)
        parts.append(f"elapsed {format_duration(now - self._t_enter)}")
        if self.total:
            parts.append(f"ETA {format_duration(self._eta(now))}")
        return " ".join(parts)

    def _eta(self, now: float) -> float:
        done, t0 = self._rate_base
        if self.completed >= self.total:
            return 0.0
        if self.completed <= done or now <= t0:
            return math.nan
        return (self.total - self.completed) * (now - t0) / (self.completed - done)

    def _print_line(self, now: float) -> None:
        # A Text: the description (a scene or frame name) is neither markup nor emoji codes (":b:").
        self.console.print(Text(self.line(now)), highlight=False, soft_wrap=True)
        self._printed = (self.completed, self.status)
        self._t_refresh = now

    # ----------------------------------------------------------------- shared live display
    def _join_live(self) -> Progress:
        key = id(self.console)
        if key not in self._live:
            bar = Progress(
                # Descriptions name scenes and frames (user text): shown as they are, not as markup.
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}", markup=False),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,  # finished phases leave their plain line instead (see _leave_live)
                get_time=self.clock,
            )
            bar.start()
            self._live[key] = (bar, [])
        bar, members = self._live[key]
        members.append(self)
        return bar

    def _leave_live(self) -> None:
        key = id(self.console)
        bar, members = self._live[key]
        bar.remove_task(self._task)
        members.remove(self)
        if not self.transient:
            bar.console.print(Text(self.line()), highlight=False, soft_wrap=True)
        if not members:
            bar.stop()
            del self._live[key]
        self._bar = self._task = None
