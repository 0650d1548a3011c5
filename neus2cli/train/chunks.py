"""The chunk plan of a dynamic run: which contiguous frames train together, from one from-scratch start.

Incremental training is sequential, so a long sequence is spread over processes by cutting it into
contiguous chunks. Each chunk starts from scratch (the first-frame schedule) and trains its later frames
incrementally, independently of every other chunk; its first written frame is a keyframe of the frame
store, so any frame rebuilds from its own chunk alone.

* ``dynamic.chunk_frames`` frames per chunk (the last one may be shorter), or, when 0, the frames split
  evenly over the launch's ranks (chunk lengths differ by at most one; never more chunks than frames).
* ``dynamic.chunk_overlap`` frames before a chunk's start (from the chunk before) are trained first and
  not written: the chunk's first frame then starts from a state fitted to its neighbours instead of from
  scratch. The chunk's canonical frame is then the first overlap frame.
* Chunk ``c`` runs on rank ``c mod world_size``: with more chunks than ranks, a rank takes every
  ``world_size``-th chunk, so long and short chunks mix.

Positions are indices into the run's frame list (``run.json``'s ``frames``), not frame numbers. The plan
is fixed when the run starts and saved in ``run.json``; a resume follows it with any number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neus2cli.errors import UserError

SINGLE_STATE = "state/last.pt"  # the resume point of a one-chunk run (every run before chunks existed)


@dataclass(frozen=True)
class Chunk:
    """Frames ``start .. stop - 1`` (positions) written by one chunk, after ``overlap`` frames trained before them.

    Attributes:
        index: the chunk's number, 0 first.
        start: position of the chunk's first written frame.
        stop: one past its last frame.
        overlap: frames before ``start`` trained (from scratch at ``start - overlap``) but not written.
    """

    index: int
    start: int
    stop: int
    overlap: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.overlap <= self.start < self.stop:
            raise ValueError(f"invalid chunk {self}")

    @property
    def train_start(self) -> int:
        """Position of the frame that trains from scratch (the chunk's canonical frame)."""
        return self.start - self.overlap


@dataclass(frozen=True)
class ChunkPlan:
    """The chunks of a run and the config values that made them (checked on resume)."""

    chunk_frames: int
    chunk_overlap: int
    chunks: tuple[Chunk, ...]

    def for_rank(self, rank: int, world_size: int) -> list[Chunk]:
        """The chunks rank ``rank`` of ``world_size`` trains, in order (round robin)."""
        return [c for c in self.chunks if c.index % world_size == rank]

    def state_path(self, chunk: Chunk) -> str:
        """The chunk's resume point, relative to the run folder; a one-chunk run keeps ``state/last.pt``."""
        return SINGLE_STATE if len(self.chunks) == 1 else f"state/chunk_{chunk.index:04d}.pt"

    def to_dict(self) -> dict:
        return {
            "chunk_frames": self.chunk_frames,
            "chunk_overlap": self.chunk_overlap,
            "chunks": [[c.start, c.stop, c.overlap] for c in self.chunks],
        }

    @classmethod
    def from_dict(cls, data: dict) -> ChunkPlan:
        chunks = tuple(Chunk(i, int(a), int(b), int(o)) for i, (a, b, o) in enumerate(data["chunks"]))
        return cls(int(data["chunk_frames"]), int(data["chunk_overlap"]), chunks)


def plan_chunks(n_frames: int, world_size: int, chunk_frames: int = 0, chunk_overlap: int = 0) -> ChunkPlan:
    """Cut ``n_frames`` positions into contiguous chunks (see the module docstring).

    ``chunk_frames`` 0 splits evenly over ``world_size`` ranks; ``chunk_overlap`` is clipped at the start
    of the sequence (the first chunk has none).
    """
    if n_frames < 1 or world_size < 1 or chunk_frames < 0 or chunk_overlap < 0:
        raise ValueError(f"cannot plan {n_frames} frames over {world_size} ranks in chunks of {chunk_frames}")
    if chunk_frames > 0:
        bounds = list(range(0, n_frames, chunk_frames)) + [n_frames]
    else:
        n_chunks = min(world_size, n_frames)
        size, extra = divmod(n_frames, n_chunks)
        bounds = [0]
        for i in range(n_chunks):
            bounds.append(bounds[-1] + size + (1 if i < extra else 0))
    chunks = tuple(
        Chunk(i, a, b, min(chunk_overlap, a)) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
    )
    return ChunkPlan(chunk_frames, chunk_overlap, chunks)


def single_chunk_plan(n_frames: int) -> ChunkPlan:
    """The plan of a run started before chunks existed: every frame in one chunk."""
    return plan_chunks(n_frames, 1)


def check_plan(plan: ChunkPlan, chunk_frames: int, chunk_overlap: int, n_frames: int, run_dir: Path) -> None:
    """Refuse to resume the run in ``run_dir`` (its saved ``plan``) with other chunk settings.

    The frames already trained belong to the saved chunks (their keyframes, canonical frames and resume
    points), so a resumed run keeps them: any number of ranks can resume it, but not another cut.
    """
    if plan.chunks[-1].stop != n_frames:
        raise UserError(
            f"run.json's chunk plan covers {plan.chunks[-1].stop} frames, but the run has {n_frames}.",
            path=run_dir / "run.json",
            hint="The run folder was edited or is damaged; start a new run (another --out).",
        )
    for key, given, saved in (
        ("dynamic.chunk_frames", chunk_frames, plan.chunk_frames),
        ("dynamic.chunk_overlap", chunk_overlap, plan.chunk_overlap),
    ):
        if given != saved:
            raise UserError(
                f"{key} is {given}, but the run being resumed was cut into {len(plan.chunks)} chunks with "
                f"{key}={saved} (run.json's plan); a resumed run keeps its chunks.",
                path=run_dir,
                hint=f"Resume without changing {key} (any number of ranks can resume the run), or start a new "
                "run (another --out) with the new value.",
            )
