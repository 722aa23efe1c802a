"""One lake builder for every test that needs a lake without running `fhb extract`.

``write_lake(path, meta, {split: {shard: [Utt, ...]}})`` writes and lists every shard through the
storage package's public writer (`LakeWriter`); tests describe utterances with `Utt`.
``make_legacy(path)`` turns a lake into one written before stored-bytes checksums (shard format 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import zarr

from fhb.storage import LakeMeta, LakeWriter, ShardWriter
from fhb.storage.fitted import FittedCodec
from fhb.storage.layout import read_node_attrs
from fhb.storage.schema import LEGACY_SHARD_FORMAT, ShardAttrs, crc32, shard_arrays


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


def make_legacy(lake: Path) -> None:
    """Rewrite every listed shard of ``lake`` as fhb wrote shards before stored-bytes checksums
    (shard format 1): crc32 of each chunk's decoded values, no array-metadata or index checksums.
    The arrays are untouched: what an old lake holds."""
    meta = LakeMeta.from_dict(read_node_attrs(lake) or {}, str(lake))
    for split, info in meta.splits.items():
        for shard in info.shards:
            d = lake / split / shard
            sa = ShardAttrs.from_attrs(read_node_attrs(d) or {}, shard)
            sums: dict[str, list[int]] = {}
            for spec in shard_arrays(meta, sa.index.total_frames, sa.index.total_samples):
                arr = zarr.open_array(str(d / spec.name), mode="r")
                c = spec.chunks[0]
                sums[spec.name] = [crc32(np.asarray(arr[i:i + c])) for i in range(0, spec.shape[0], c)]
            legacy = replace(sa, format_version=LEGACY_SHARD_FORMAT, checksums=sums, metadata_checksums={})
            zarr.open_group(str(d), mode="r+").attrs.update(legacy.to_attrs())
