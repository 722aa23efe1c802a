"""One lake builder for every test that needs a lake without running `fhb extract`.

``write_lake(path, meta, {split: {shard: [Utt, ...]}})`` writes and lists every shard through the
storage package's public writer (`LakeWriter`); tests describe utterances with `Utt`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fhb.storage import LakeMeta, LakeWriter, ShardWriter
from fhb.storage.fitted import FittedCodec


@dataclass
class Utt:
    """One utterance as a worker adds it: ``audio`` ``S`` int16, ``targets`` ``L x T x D``,
    ``cnn`` ``T x Dc`` (when the lake stores CNN features)."""

    utt_id: str
    speaker: str
    chapter: str
    transcript: str
    audio: np.ndarray
    targets: np.ndarray
    cnn: np.ndarray | None = None

    def add_to(self, w: ShardWriter) -> None:
        """``w.add(...)`` with this utterance."""
        w.add(self.utt_id, self.speaker, self.chapter, self.transcript, self.audio, self.targets, self.cnn)


def write_shard(lake: Path, split: str, shard: str, meta: LakeMeta, utts: Sequence[Utt],
                preallocate: bool = False, **kw: object) -> None:
    """Write and commit one shard with ``utts`` (``preallocate``: pass the exact totals)."""
    if preallocate:
        kw["expected_frames"] = sum(u.targets.shape[1] for u in utts)
        kw["expected_samples"] = sum(len(u.audio) for u in utts)
    with ShardWriter(lake, split, shard, meta, **kw) as w:  # type: ignore[arg-type]
        for u in utts:
            u.add_to(w)
        w.commit()


def write_lake(path: Path, meta: LakeMeta, plan: Mapping[str, Mapping[str, Sequence[Utt]]],
               fitted: Mapping[str, FittedCodec] | None = None, **shard_kw: object) -> Path:
    """Create the lake ``path`` with ``meta`` and write ``plan`` (splits and shards listed in order);
    ``fitted``: the codecs of a pca/pq lake (`fhb.storage.fitted.with_fitted`)."""
    with LakeWriter(path, meta, fitted=fitted) as lake:
        for split, shards in plan.items():
            for shard, utts in shards.items():
                write_shard(path, split, shard, lake.meta, utts, **shard_kw)
            lake.list_split(split, list(shards))
    return path
