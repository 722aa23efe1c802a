"""Cutting each split into shards of about ``shard_hours`` of audio (deterministic, so reruns resume)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fhb.pipeline.audio import SAMPLE_RATE
from fhb.pipeline.corpus import CorpusProblem, Manifest, Utterance


@dataclass(frozen=True)
class ShardJob:
    """One shard: the utterances one task extracts and commits, and the files it must list as skipped."""

    split: str
    name: str
    utterances: tuple[Utterance, ...]
    problems: tuple[CorpusProblem, ...] = field(default=())

    @property
    def num_samples(self) -> int:
        """Audio samples of the usable utterances."""
        return sum(u.num_samples for u in self.utterances)

    @property
    def utt_ids(self) -> list[str]:
        """Utterance ids in storage order."""
        return [u.utt_id for u in self.utterances]


def shard_name(index: int) -> str:
    """``shard-00012``."""
    return f"shard-{index:05d}"


def _problem_split(problem: CorpusProblem, splits: Sequence[str]) -> str | None:
    parts = Path(problem.path).parts
    return next((s for s in splits if s in parts), None)


ORDERS = ("length", "manifest")
"""Storage order of a split's utterances: ``length`` (longest first, ties by id: the order the
published loader sorts into batches, so neighbouring rows have about equal lengths and the
training loader's batches are contiguous reads) or ``manifest`` (by id, fhb's order before)."""


def storage_order(utterances: Sequence[Utterance], order: str = "length") -> list[Utterance]:
    """``utterances`` in the storage ``order`` (see `ORDERS`)."""
    if order == "length":
        return sorted(utterances, key=lambda u: (-u.num_samples, u.utt_id))
    if order == "manifest":
        return list(utterances)
    raise ValueError(f"storage order {order!r}: expected one of {ORDERS}")


def plan_shards(manifest: Manifest, splits: Sequence[str], shard_hours: float,
                include_problems: bool, order: str = "length") -> dict[str, list[ShardJob]]:
    """Consecutive utterances (in storage ``order``) grouped into shards of about ``shard_hours``.

    A shard closes once it holds ``shard_hours`` of audio, so every shard but the last of a split
    holds at least that much. With ``include_problems`` the scan's problem files are attached to
    a shard (to be listed as skipped there): with manifest order the one whose id range they fall
    in, with length order the first.
    """
    budget = max(1, int(shard_hours * 3600 * SAMPLE_RATE))
    by_split = manifest.by_split()
    plans: dict[str, list[ShardJob]] = {}
    for split in splits:
        groups: list[list[Utterance]] = [[]]
        size = 0
        for utt in storage_order(by_split.get(split, []), order):
            if size >= budget:
                groups.append([])
                size = 0
            groups[-1].append(utt)
            size += utt.num_samples
        problems: list[list[CorpusProblem]] = [[] for _ in groups]
        if include_problems:
            firsts = [g[0].utt_id if g else "" for g in groups]
            for problem in manifest.problems:
                if _problem_split(problem, splits) != split:
                    continue
                stem = Path(problem.path).name.split(".")[0]
                index = max([i for i, first in enumerate(firsts) if first <= stem] or [0]) if order == "manifest" else 0
                problems[index].append(problem)
        plans[split] = [
            ShardJob(split, shard_name(i), tuple(g), tuple(p))
            for i, (g, p) in enumerate(zip(groups, problems))
            if g or p
        ]
    return plans
