"""The epoch planner (`fhb.training.epoch.plan_epoch`): pure, deterministic, disjoint equal ranks."""

from __future__ import annotations

import pytest

from fhb.errors import FhbError
from fhb.nn.frames import conv_output_length
from fhb.training.epoch import PlanEntry, PlannedBatch, check_batching, plan_epoch

KW = dict(chunk_frames=64, frames_of=conv_output_length, batch_size=4, window_blocks=2)


def _entries(n_sources: int = 2, lengths: tuple[int, ...] = (16400,), per_source: int = 20) -> list[PlanEntry]:
    """``per_source`` utterances per source, contiguous in frames; sample counts cycle through ``lengths``."""
    out = []
    for s in range(n_sources):
        off = 0
        for i in range(per_source):
            n = lengths[i % len(lengths)]
            out.append(PlanEntry(s, off, conv_output_length(n), n))
            off += conv_output_length(n)
    return out


def _ids(rank: tuple[PlannedBatch, ...]) -> list[int]:
    return [u.utt for batch in rank for u in batch.utts]


def test_plan_is_pure_and_reads_blocks() -> None:
    entries = [PlanEntry(s, off, 50, 16400) for s in range(2) for off in range(0, 1000, 50)]
    kw = dict(chunk_frames=64, frames_of=conv_output_length, batch_size=4, window_blocks=2)
    a = plan_epoch(entries, seed=1, epoch=0, **kw)
    b = plan_epoch(entries, seed=1, epoch=0, **kw)
    assert a == b and a != plan_epoch(entries, seed=1, epoch=1, **kw)
    used = [u.utt for batch in a.ranks[0] for u in batch.utts]
    assert sorted(used) == list(range(len(entries)))
    # Utterances of one block come from one source and one 2-chunk frame range.
    blocks: dict[int, set[tuple[int, int]]] = {}
    for batch in a.ranks[0]:
        for u in batch.utts:
            e = entries[u.utt]
            blocks.setdefault(u.block, set()).add((e.source, e.frame_offset // 128))
    assert all(len(v) == 1 for v in blocks.values())


@pytest.mark.parametrize("seed, epoch", [(0, 0), (3, 7)])
def test_plan_is_a_function_of_seed_and_epoch(seed: int, epoch: int) -> None:
    entries = _entries(lengths=(16400, 32000, 8000))
    a = plan_epoch(entries, seed=seed, epoch=epoch, max_seconds=1.0, **KW)
    assert a == plan_epoch(list(entries), seed=seed, epoch=epoch, max_seconds=1.0, **KW)
    assert a != plan_epoch(entries, seed=seed + 1, epoch=epoch, max_seconds=1.0, **KW)
    assert a != plan_epoch(entries, seed=seed, epoch=epoch + 1, max_seconds=1.0, **KW)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_are_disjoint_and_equally_long(world_size: int) -> None:
    entries = _entries(n_sources=3)
    plan = plan_epoch(entries, seed=5, epoch=2, world_size=world_size, **KW)
    assert len(plan.ranks) == world_size
    assert len({len(r) for r in plan.ranks}) == 1
    seen = [set(_ids(r)) for r in plan.ranks]
    for i in range(world_size):
        for j in range(i + 1, world_size):
            assert not seen[i] & seen[j]
    used = set().union(*seen)
    assert len(used) + plan.dropped_utterances == len(entries)


def test_crops_stay_inside_the_utterance_on_frame_boundaries() -> None:
    entries = _entries(lengths=(48000, 16400))
    plan = plan_epoch(entries, seed=0, epoch=0, max_seconds=1.0, **KW)
    for batch in plan.ranks[0]:
        for u in batch.utts:
            e = entries[u.utt]
            assert u.num_samples == min(e.num_samples, 16000)
            assert u.sample_start % 320 == 0 and u.sample_start + u.num_samples <= e.num_samples
            assert u.num_frames == conv_output_length(u.num_samples)


def test_unshuffled_plan_keeps_every_utterance_once() -> None:
    entries = _entries()
    plan = plan_epoch(entries, seed=0, epoch=0, shuffle=False, **KW)
    assert sorted(_ids(plan.ranks[0])) == list(range(len(entries)))


def test_batching_arguments_checked() -> None:
    with pytest.raises(FhbError):
        check_batching(None, None)
    with pytest.raises(FhbError):
        check_batching(2, 10.0)
    with pytest.raises(FhbError):
        plan_epoch(_entries(), seed=0, epoch=0, world_size=0, **KW)
