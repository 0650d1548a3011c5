"""Progress reporting: plain lines off a terminal (start, every interval, end), live bars on one, nothing when off."""

from __future__ import annotations

import io

from rich.console import Console

from neus2cli.progress import ProgressReporter, format_duration
from neus2cli.train.progress import TrainProgress, format_rate


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=80), out


def test_plain_line_carries_counts_figures_elapsed_and_eta():
    console, out = _plain_console()
    clock = FakeClock()
    with TrainProgress(15000, "train scan24", console=console, clock=clock, interval_s=5.0) as bar:
        clock.now += 14.0
        bar.update(1200, loss=0.0123, psnr=28.41, samples_per_s=2.3e6)
    lines = out.getvalue().splitlines()
    # 1200 steps in 14 s -> 13800 more take 13800 * 14 / 1200 = 161 s = 0:02:41.
    assert lines[-1] == (
        "train scan24: 1200/15000 (8%) loss 0.0123 PSNR 28.41 2.3M samples/s elapsed 0:00:14 ETA 0:02:41"
    )
    # Wider than the console's 80 columns, yet one line: log readers grep for it.
    assert len(lines) == 2 and lines[0].startswith("train scan24: 0/15000 (0%) elapsed 0:00:00")


def test_lines_only_when_the_interval_passed_plus_start_and_end():
    console, out = _plain_console()
    clock = FakeClock()
    with ProgressReporter(100, "loading images", console=console, clock=clock, interval_s=5.0) as p:
        for _ in range(100):
            clock.now += 0.4  # 40 s in all: a line at 5.2, 10.4, ... s -> 7 interval lines
            p.advance()
            if p.completed == 50:
                assert not p.due()  # 20 s in; the last line (item 39, at 15.6 s) is 4.4 s old
    lines = out.getvalue().splitlines()
    assert lines[0] == "loading images: 0/100 (0%) elapsed 0:00:00 ETA -:--:--"
    counts = [int(line.split(": ")[1].split("/")[0]) for line in lines]
    # Start (0), every 13th item (13 x 0.4 s = 5.2 s >= 5 s; 12 x 0.4 s = 4.8 s is not), end (100).
    assert counts == [0, 13, 26, 39, 52, 65, 78, 91, 100]
    assert lines[-1] == "loading images: 100/100 (100%) elapsed 0:00:40 ETA 0:00:00"


def test_no_duplicate_end_line_and_due_follows_the_clock():
    console, out = _plain_console()
    clock = FakeClock()
    with ProgressReporter(10, "meshing", console=console, clock=clock, interval_s=3.0) as p:
        assert not p.due()
        clock.now += 2.9
        assert not p.due()
        clock.now += 0.1
        assert p.due()
        p.update(10)  # prints (due) with the final count
        assert not p.due()
    lines = out.getvalue().splitlines()
    assert [line.split(" elapsed")[0] for line in lines] == ["meshing: 0/10 (0%)", "meshing: 10/10 (100%)"]


def test_slow_steps_refresh_figures_through_due():
    """The trainer's pattern: figures read every log_every steps or when due; slow steps still refresh."""
    console, out = _plain_console()
    clock = FakeClock()
    log_every, reads = 1000, []
    with TrainProgress(30, "train slow", console=console, clock=clock, interval_s=5.0) as bar:
        for step in range(1, 31):
            clock.now += 2.0  # 2 s per step: log_every alone would never refresh within 30 steps
            if step % log_every == 0 or step == 30 or bar.due():
                reads.append(step)
                bar.update(step, loss=0.1, psnr=20.0 + step, samples_per_s=500.0)
            else:
                bar.update(step)
    # Due 5 s after the last line: steps 3 (6 s), 6, 9, ... and the last one.
    assert reads == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + len(reads)
    assert lines[1].startswith("train slow: 3/30 (10%) loss 0.1000 PSNR 23.00 500 samples/s elapsed 0:00:06")


def test_resumed_run_eta_counts_only_new_steps():
    console, out = _plain_console()
    clock = FakeClock()
    with TrainProgress(2000, "train", console=console, clock=clock, interval_s=1.0) as bar:
        bar.advance_to(1000)  # where the checkpoint left off: not work done now
        clock.now += 10.0
        bar.update(1100, loss=0.5, psnr=20.0, samples_per_s=1e5)
    # 100 steps in 10 s -> 900 more take 90 s.
    assert out.getvalue().splitlines()[-1].endswith("elapsed 0:00:10 ETA 0:01:30")


def test_disabled_prints_nothing_and_is_never_due():
    console, out = _plain_console()
    clock = FakeClock()
    with TrainProgress(100, "train", enabled=False, console=console, clock=clock) as bar:
        clock.now += 60.0
        assert not bar.due()
        bar.update(50, loss=0.1, psnr=20.0, samples_per_s=1.0)
        bar.advance_to(60)
    assert out.getvalue() == ""


def test_terminal_bars_nest_and_leave_final_lines():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    with ProgressReporter(2, "frames", console=console, interval_s=0.0) as frames:
        for k in range(2):
            with TrainProgress(10, f"frame {k:04d}", console=console) as bar:
                assert bar.reporter.live
                bar.update(10, loss=0.01, psnr=30.0, samples_per_s=2e6)
            frames.advance()
    text = out.getvalue()
    assert "frame 0000: 10/10 (100%) loss 0.0100 PSNR 30.00 2.0M samples/s" in text
    assert "frame 0001: 10/10 (100%)" in text and "frames: 2/2 (100%)" in text
    assert ProgressReporter._live == {}  # the shared display is gone once the last phase ends


def test_fraction_callback_and_unknown_total():
    console, out = _plain_console()
    clock = FakeClock()
    with ProgressReporter(100, "evaluating", console=console, clock=clock, interval_s=0.0) as p:
        clock.now += 1.0
        p.report_fraction("nearest neighbours", 0.4)
    assert "evaluating: 40/100 (40%) nearest neighbours elapsed 0:00:01" in out.getvalue()
    console, out = _plain_console()
    with ProgressReporter(None, "scanning", console=console, clock=clock) as p:
        p.advance(7)
    assert out.getvalue().splitlines()[-1] == "scanning: 7 elapsed 0:00:00"


def test_formats():
    assert format_duration(161.4) == "0:02:41" and format_duration(3 * 3600 + 5) == "3:00:05"
    assert format_duration(float("nan")) == "-:--:--"
    assert (format_rate(2.34e6), format_rate(8.5e5), format_rate(950.0)) == ("2.3M", "850k", "950")
