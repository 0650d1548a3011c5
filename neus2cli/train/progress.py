"""A rich progress bar with the figures a user watches while training."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainProgress:
    """Context manager: ``update(step, loss=..., psnr=..., samples_per_s=...)``."""

    def __init__(self, total: int, description: str, enabled: bool = True, console: Console | None = None):
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("PSNR {task.fields[psnr]}"),
            TextColumn("{task.fields[rate]} samples/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            disable=not enabled,
            transient=False,
        )
        self.task = self.progress.add_task(description, total=total, loss="-", psnr="-", rate="-")

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, completed: int, *, loss: float, psnr: float, samples_per_s: float) -> None:
        self.progress.update(
            self.task,
            completed=completed,
            loss=f"{loss:.4f}",
            psnr=f"{psnr:5.2f}",
            rate=f"{samples_per_s / 1e6:.2f}M" if samples_per_s >= 1e6 else f"{samples_per_s / 1e3:.0f}k",
        )

    def advance_to(self, completed: int) -> None:
        self.progress.update(self.task, completed=completed)
