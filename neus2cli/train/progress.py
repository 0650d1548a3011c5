"""The training loop's progress: step counts with loss, PSNR and throughput.

A thin layer over ``neus2cli.progress.ProgressReporter`` (a live bar on a terminal, plain
lines every few seconds elsewhere). The loop calls ``update(step)`` every step (cheap) and
``update(step, loss=..., psnr=..., samples_per_s=...)`` when it has read its device figures:
every ``log_every`` steps, or sooner when ``due()`` says the figures on show are
``interval_s`` old, so slow runs still refresh::

    with TrainProgress(until_step, "train scan24", start=trainer.step) as bar:
        while ...:
            stats = train_step()
            if step % log_every == 0 or step == until_step or bar.due():
                ...read the sums (one sync)...
                bar.update(step, loss=loss, psnr=psnr, samples_per_s=rate)
            else:
                bar.update(step)
"""

from __future__ import annotations

import time

from rich.console import Console

from neus2cli.progress import DEFAULT_INTERVAL_S, Clock, ProgressReporter


def format_rate(samples_per_s: float) -> str:
    """``2.3M``, ``850k`` or ``950``: samples per second, short."""
    if samples_per_s >= 1e6:
        return f"{samples_per_s / 1e6:.1f}M"
    if samples_per_s >= 1e3:
        return f"{samples_per_s / 1e3:.0f}k"
    return f"{samples_per_s:.0f}"


def train_status(loss: float, psnr: float, samples_per_s: float | None = None) -> str:
    """The figures after the step count: ``loss 0.0123 PSNR 28.41 2.3M samples/s``."""
    text = f"loss {loss:.4f} PSNR {psnr:.2f}"
    if samples_per_s is not None:
        text += f" {format_rate(samples_per_s)} samples/s"
    return text


class TrainProgress:
    """Context manager over the steps ``start..total`` of one training run (see the module docstring).

    Args:
        total: the step at which the run ends.
        description: e.g. ``"train scan24"`` or ``"frame 0003"``.
        enabled: False prints nothing.
        console, interval_s, clock, start: as for ``ProgressReporter``.
    """

    def __init__(
        self,
        total: int,
        description: str,
        enabled: bool = True,
        console: Console | None = None,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Clock = time.monotonic,
        start: int = 0,
    ):
        self.reporter = ProgressReporter(
            total, description, enabled=enabled, console=console, interval_s=interval_s, clock=clock, start=start
        )
        self._updated = False

    def __enter__(self) -> TrainProgress:
        self.reporter.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.reporter.__exit__(*exc)

    def update(
        self,
        completed: int,
        *,
        loss: float | None = None,
        psnr: float | None = None,
        samples_per_s: float | None = None,
    ) -> None:
        """Step ``completed`` done; with ``loss`` and ``psnr`` (and the rate) the figures change too."""
        status = None if loss is None or psnr is None else train_status(loss, psnr, samples_per_s)
        self._updated = True
        self.reporter.update(completed, status)

    def advance_to(self, completed: int) -> None:
        """Step ``completed`` done. Before any ``update`` it is where the run starts (a resume), not work."""
        if self._updated:
            self.reporter.update(completed)
        else:
            self.reporter.start_from(completed)

    def due(self) -> bool:
        """True when the figures on show are ``interval_s`` old: read them and ``update`` with them."""
        return self.reporter.due()
