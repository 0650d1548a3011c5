"""The chunk plan of a dynamic run and the launch environment of its ranks (no training, no process group)."""

from __future__ import annotations

import pytest

from neus2cli.config import ConfigRequest, resolve_config, resume_config
from neus2cli.errors import UserError
from neus2cli.train.chunks import Chunk, ChunkPlan, check_plan, plan_chunks, single_chunk_plan
from neus2cli.train.distributed import SINGLE, Ranks, ranks_from_env


def spans(plan: ChunkPlan) -> list[tuple[int, int]]:
    return [(c.start, c.stop) for c in plan.chunks]


def test_the_default_splits_evenly_over_the_ranks():
    # 10 frames over 4 ranks: 10 = 3 + 3 + 2 + 2, the longer chunks first, contiguous and covering all.
    assert spans(plan_chunks(10, 4)) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert spans(plan_chunks(8, 2)) == [(0, 4), (4, 8)]
    # A plain command: one chunk, the whole sequence, resumed from state/last.pt as before chunks existed.
    plan = plan_chunks(7, 1)
    assert spans(plan) == [(0, 7)] and plan.state_path(plan.chunks[0]) == "state/last.pt"
    assert plan == single_chunk_plan(7)


def test_chunk_frames_fixes_the_chunk_length_and_ranks_take_chunks_round_robin():
    plan = plan_chunks(10, 2, chunk_frames=3)
    assert spans(plan) == [(0, 3), (3, 6), (6, 9), (9, 10)]  # the last one is shorter
    assert [c.index for c in plan.for_rank(0, 2)] == [0, 2] and [c.index for c in plan.for_rank(1, 2)] == [1, 3]
    # Resumed by three ranks instead of two: the same chunks, dealt again.
    assert [c.index for c in plan.for_rank(0, 3)] == [0, 3] and [c.index for c in plan.for_rank(2, 3)] == [2]
    assert plan.state_path(plan.chunks[2]) == "state/chunk_0002.pt"


def test_more_ranks_than_frames_leaves_ranks_idle():
    plan = plan_chunks(3, 5)
    assert spans(plan) == [(0, 1), (1, 2), (2, 3)]
    assert [len(plan.for_rank(r, 5)) for r in range(5)] == [1, 1, 1, 0, 0]


def test_overlap_reaches_back_into_the_chunk_before_and_is_clipped_at_the_start():
    plan = plan_chunks(10, 1, chunk_frames=3, chunk_overlap=2)
    assert [c.overlap for c in plan.chunks] == [0, 2, 2, 2]
    assert [c.train_start for c in plan.chunks] == [0, 1, 4, 7]
    # An overlap longer than the chunk before reaches further back, never before the first frame.
    assert [c.train_start for c in plan_chunks(4, 1, chunk_frames=1, chunk_overlap=3).chunks] == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        Chunk(1, 2, 4, overlap=3)


def test_the_plan_round_trips_through_run_json():
    plan = plan_chunks(11, 3, chunk_frames=4, chunk_overlap=1)
    assert ChunkPlan.from_dict(plan.to_dict()) == plan


def test_resume_keeps_the_plan(tmp_path):
    plan = plan_chunks(8, 2)
    check_plan(plan, 0, 0, 8, tmp_path)  # the run's own settings, any number of ranks
    with pytest.raises(UserError, match=r"dynamic.chunk_frames is 3.*2 chunks.*any number of ranks") as info:
        check_plan(plan, 3, 0, 8, tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(UserError, match="dynamic.chunk_overlap"):
        check_plan(plan, 0, 1, 8, tmp_path)
    with pytest.raises(UserError, match="covers 8 frames"):
        check_plan(plan, 0, 0, 9, tmp_path)


def test_resume_refuses_another_chunk_length_on_the_command_line():
    stored = resolve_config("fast", ["dynamic.chunk_frames=4"])
    with pytest.raises(UserError, match=r"chunk_frames.*\(4 -> 2\).*fixed when it starts"):
        resume_config(stored, ConfigRequest(None, ("dynamic.chunk_frames=2",)))
    cfg, changes = resume_config(stored, ConfigRequest(None, ("dynamic.chunk_frames=4",)))  # unchanged: fine
    assert cfg.dynamic.chunk_frames == 4 and changes == {}


LAUNCH = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_ranks_come_from_the_launcher_s_environment():
    assert ranks_from_env({}) is SINGLE and not SINGLE.distributed and SINGLE.prefix == ""
    assert ranks_from_env({"LOCAL_RANK": "0"}) is SINGLE  # some job wrappers set it alone: no launch
    ranks = ranks_from_env({**LAUNCH, "LOCAL_WORLD_SIZE": "2"})
    assert ranks == Ranks(rank=1, world_size=2, local_rank=1, local_world_size=2)
    assert ranks.distributed and not ranks.is_main and ranks.prefix == "rank 1: "


@pytest.mark.parametrize(
    "env, message",
    [
        ({k: v for k, v in LAUNCH.items() if k != "MASTER_PORT"}, "but not MASTER_PORT"),
        ({**LAUNCH, "RANK": "2"}, "do not describe a rank"),
        ({**LAUNCH, "WORLD_SIZE": "two"}, "do not describe a rank"),
    ],
    ids=["partial", "rank-too-large", "not-a-number"],
)
def test_a_broken_launch_environment_is_a_user_error(env, message):
    with pytest.raises(UserError, match=message):
        ranks_from_env(env)
