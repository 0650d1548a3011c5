"""The few points where the ranks of a ``torchrun`` (or ``srun``) launch must agree, over ``torch.distributed``.

A launcher sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``); ``ranks_from_env`` reads them once, at the command boundary, into a ``Ranks`` value that
is passed down. Without them (or with a world of one) nothing here talks to anyone: the process runs
exactly as a plain command. Per-frame work never communicates; the ranks only exchange small Python
objects (the run's plan, the frames' records) and wait for each other around the run folder's creation
and its final writes, so the process group's backend hardly matters for speed:

* gloo on the CPU, and on GPUs shared by several ranks (NCCL refuses two ranks on one device);
* NCCL where every rank of a node has a GPU of its own (``cuda:LOCAL_RANK``).

A rank that dies (a crash, ``SIGKILL``, a node lost) breaks the group: the next collective of the others
fails, and they raise ``RankLost`` instead of a backend's traceback. Their own finished frames are saved.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from neus2cli import log
from neus2cli.compute import Compute
from neus2cli.errors import UserError

#: How long a collective waits for the other ranks. The final one waits for the slowest rank's whole share
#: of the sequence (hours on a long video), so the backends' defaults (10-30 minutes) would abort runs that
#: are fine; a dead rank is noticed through its closed connections, not through this timeout.
COLLECTIVE_TIMEOUT = timedelta(days=7)

_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class RankLost(Exception):
    """Another rank stopped (or could not set the run up) before the ranks met again; ``str`` says which step.

    ``run_dir``: the run folder the ranks were training, where known (what a resume needs).
    """

    def __init__(self, message: str, run_dir: Path | None = None):
        super().__init__(message)
        self.run_dir = run_dir


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in its launch.

    Attributes:
        rank: 0 .. world_size - 1; rank 0 creates the run folder and writes the run-level files.
        world_size: the number of processes of the launch (1: a plain command).
        local_rank: the process's index on its node; picks its GPU.
        local_world_size: processes on this node (to see whether they share GPUs).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size or not 0 <= self.local_rank < self.local_world_size:
            raise ValueError(f"inconsistent ranks {self}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when there are other ranks to agree with."""
        return self.world_size > 1

    @property
    def prefix(self) -> str:
        """What this rank's own log lines start with (nothing for a plain command)."""
        return f"rank {self.rank}: " if self.distributed else ""


SINGLE = Ranks()


def ranks_from_env(environ: Mapping[str, str] = os.environ) -> Ranks:
    """The launch's ``Ranks`` from ``torchrun``'s (or ``srun``'s) environment variables; ``SINGLE`` without them.

    A partial or malformed set (``RANK`` without ``MASTER_PORT``, ``RANK=3`` with ``WORLD_SIZE=2``) is a
    ``UserError`` naming the variables: guessing would start ranks that wait for each other forever.
    """
    given = {k: environ[k] for k in _LAUNCH_VARIABLES if environ.get(k, "") != ""}
    if not given or (set(given) <= {"LOCAL_RANK"}):  # LOCAL_RANK alone: some job wrappers set it, no launch
        return SINGLE
    if set(given) != set(_LAUNCH_VARIABLES):
        missing = [k for k in _LAUNCH_VARIABLES if k not in given]
        raise UserError(
            f"the environment sets {', '.join(sorted(given))} but not {', '.join(missing)}, so this process cannot "
            "join a multi-process launch.",
            hint="Start train-dynamic under torchrun (torchrun --nproc-per-node N -m neus2cli train-dynamic ...), "
            "under srun with all five variables exported, or unset them to run as one process.",
        )
    try:
        ranks = Ranks(
            rank=int(given["RANK"]),
            world_size=int(given["WORLD_SIZE"]),
            local_rank=int(given["LOCAL_RANK"]),
            local_world_size=int(environ.get("LOCAL_WORLD_SIZE") or given["WORLD_SIZE"]),
        )
    except ValueError:
        values = ", ".join(f"{k}={environ.get(k)!r}" for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"))
        raise UserError(
            f"the launch variables do not describe a rank of a launch ({values}).",
            hint="RANK < WORLD_SIZE and LOCAL_RANK < LOCAL_WORLD_SIZE, all non-negative integers; "
            "torchrun sets them for you.",
        ) from None
    return ranks


def device_for_rank(compute: Compute, ranks: Ranks) -> Compute:
    """``compute`` on this rank's GPU: ``cuda:(LOCAL_RANK mod GPUs)``, so several ranks may share one.

    A CPU compute, or a plain command, is returned as it is.
    """
    if compute.device.type != "cuda" or not ranks.distributed:
        return compute
    device = torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
    # tinycudann and nerfacc launch on the current device, not on their tensors' one.
    torch.cuda.set_device(device)
    return replace(compute, device=device)


def group_backend(compute: Compute, ranks: Ranks) -> str:
    """``"nccl"`` where every rank of the node has a GPU of its own, else ``"gloo"`` (see the module docstring)."""
    if compute.device.type == "cuda" and ranks.local_world_size <= torch.cuda.device_count():
        return "nccl"
    return "gloo"


@contextlib.contextmanager
def process_group(ranks: Ranks, compute: Compute) -> Iterator[None]:
    """Within the block, the launch's process group exists (nothing happens for a plain command).

    Also prefixes this rank's warnings and notes with its rank, so that the lines of N processes sharing a
    terminal or a log file say whose they are.
    """
    if not ranks.distributed:
        yield
        return
    kwargs: dict[str, Any] = {}
    backend = group_backend(compute, ranks)
    if backend == "nccl":
        kwargs["device_id"] = compute.device  # the collectives' device, known up front (no guessing, no hang)
    dist.init_process_group(backend, init_method="env://", timeout=COLLECTIVE_TIMEOUT, **kwargs)
    try:
        with log.prefixed(ranks.prefix):
            yield
    finally:
        dist.destroy_process_group()


def _collective(what: str, op, *args):
    try:
        return op(*args)
    except (RuntimeError, ConnectionError, OSError) as err:  # gloo: "Connection closed by peer", NCCL: abort
        # gloo's first line: "[.../pair.cc:553] Connection closed by peer [127.0.0.1]:11934. This is typically ..."
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        reason = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0]
        raise RankLost(f"another rank stopped before {what} ({reason})") from None


def broadcast(obj: Any, ranks: Ranks, what: str) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` of other ranks is ignored); ``what`` names the step for errors."""
    if not ranks.distributed:
        return obj
    box = [obj if ranks.is_main else None]
    _collective(what, dist.broadcast_object_list, box, 0)
    return box[0]


def gather(obj: Any, ranks: Ranks, what: str) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ranks.distributed:
        return [obj]
    out: list[Any] = [None] * ranks.world_size
    _collective(what, dist.all_gather_object, out, obj)
    return out


def barrier(ranks: Ranks, what: str) -> None:
    """Wait until every rank gets here."""
    if ranks.distributed:
        _collective(what, dist.barrier)


def leave(ranks: Ranks, code: int = 0) -> None:
    """End a rank of a multi-process launch with ``code`` once its work is done and written (returns for a
    plain command, which exits as usual).

    It skips the interpreter's finalization: there, after ``destroy_process_group`` and a clean run, torch's
    C++ threads intermittently abort the process ("terminate called without an active exception", SIGABRT;
    2 of about 12 CPU launches of the tests' 2-rank run with torch 2.13), and the launcher would report a
    complete run as failed. Everything the run writes is written atomically before this point.
    """
    if not ranks.distributed:
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
