"""The per-shard utterance index and shard attributes (what a shard group's zarr.json holds).

A shard's attributes are ``{"committed": bool, "fhb_shard": {...}}`` where ``fhb_shard`` holds the
index (one column per field, rows in manifest order), the skipped utterances, per-chunk
checksums and totals. Offsets are cumulative: utterance ``i`` owns frames
``frame_offset[i] : frame_offset[i] + num_frames[i]`` of every target array and samples
``sample_offset[i] : sample_offset[i] + num_samples[i]`` of ``audio``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fhb.errors import FhbError

logger = logging.getLogger(__name__)

SHARD_ATTR = "fhb_shard"
COMMITTED_ATTR = "committed"
INDEX_COLUMNS = (
    "utt_id",
    "speaker",
    "chapter",
    "transcript",
    "num_samples",
    "num_frames",
    "sample_offset",
    "frame_offset",
)
CHECKSUM_ALGORITHM = "crc32"
CHECKSUM_UNIT = "chunk"


def crc32(a: np.ndarray) -> int:
    """crc32 of an array's values as stored: little-endian, C order, in-bounds part of a chunk."""
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return zlib.crc32(memoryview(a).cast("B")) & 0xFFFFFFFF


@dataclass(frozen=True)
class ShardIndex:
    """Utterance index of one shard (rows in manifest order).

    Strings are lists; counts and offsets are int64 arrays of length ``n``.
    """

    utt_ids: tuple[str, ...]
    speakers: tuple[str, ...]
    chapters: tuple[str, ...]
    transcripts: tuple[str, ...]
    num_samples: np.ndarray
    num_frames: np.ndarray
    sample_offsets: np.ndarray
    frame_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.utt_ids)

    @property
    def total_frames(self) -> int:
        """Frames of all utterances (rows of every target array)."""
        return int(self.num_frames.sum())

    @property
    def total_samples(self) -> int:
        """Samples of all utterances (length of ``audio``)."""
        return int(self.num_samples.sum())

    def to_dict(self) -> dict[str, list[Any]]:
        """Column dict (JSON-able)."""
        return {
            "utt_id": list(self.utt_ids),
            "speaker": list(self.speakers),
            "chapter": list(self.chapters),
            "transcript": list(self.transcripts),
            "num_samples": self.num_samples.tolist(),
            "num_frames": self.num_frames.tolist(),
            "sample_offset": self.sample_offsets.tolist(),
            "frame_offset": self.frame_offsets.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> ShardIndex:
        """Parse the ``index`` column dict; columns must exist and have equal lengths."""
        missing = [c for c in INDEX_COLUMNS if c not in d]
        if missing:
            raise FhbError(
                f"{where}: index expected columns {list(INDEX_COLUMNS)}, missing {missing}; the "
                f"shard is damaged: re-extract it"
            )
        lengths = {c: len(d[c]) for c in INDEX_COLUMNS}
        if len(set(lengths.values())) != 1:
            raise FhbError(
                f"{where}: index columns expected equal lengths, found {lengths}; the shard is "
                f"damaged: re-extract it"
            )

        def ints(c: str) -> np.ndarray:
            return np.asarray(d[c], dtype=np.int64).reshape(-1)

        return cls(
            utt_ids=tuple(str(u) for u in d["utt_id"]),
            speakers=tuple(str(u) for u in d["speaker"]),
            chapters=tuple(str(u) for u in d["chapter"]),
            transcripts=tuple(str(u) for u in d["transcript"]),
            num_samples=ints("num_samples"),
            num_frames=ints("num_frames"),
            sample_offsets=ints("sample_offset"),
            frame_offsets=ints("frame_offset"),
        )

    def consistency_problems(self) -> list[str]:
        """Offsets contiguous from 0, counts non-negative, ids unique: problems as sentences."""
        problems = []
        for what, counts, offsets in (
            ("frame", self.num_frames, self.frame_offsets),
            ("sample", self.num_samples, self.sample_offsets),
        ):
            if (counts < 0).any():
                problems.append(f"negative num_{what}s at rows {np.flatnonzero(counts < 0)[:5].tolist()}")
            expected = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else counts
            bad = np.flatnonzero(offsets != expected)
            if bad.size:
                i = int(bad[0])
                problems.append(
                    f"{what}_offset of {self.utt_ids[i]!r} (row {i}): expected {int(expected[i])} "
                    f"(contiguous), found {int(offsets[i])}"
                )
        if len(set(self.utt_ids)) != len(self.utt_ids):
            seen: set[str] = set()
            dup = [u for u in self.utt_ids if u in seen or seen.add(u)]  # type: ignore[func-returns-value]
            problems.append(f"duplicate utterance ids {dup[:5]}")
        return problems


@dataclass
class IndexBuilder:
    """Accumulates index rows while a shard is written."""

    rows: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in INDEX_COLUMNS})
    frames: int = 0
    samples: int = 0

    def __len__(self) -> int:
        return len(self.rows["utt_id"])

    def append(
        self,
        utt_id: str,
        speaker: str,
        chapter: str,
        transcript: str,
        num_samples: int,
        num_frames: int,
    ) -> None:
        """Add one utterance after the previous ones."""
        r = self.rows
        r["utt_id"].append(utt_id)
        r["speaker"].append(str(speaker))
        r["chapter"].append(str(chapter))
        r["transcript"].append(transcript)
        r["num_samples"].append(int(num_samples))
        r["num_frames"].append(int(num_frames))
        r["sample_offset"].append(self.samples)
        r["frame_offset"].append(self.frames)
        self.samples += int(num_samples)
        self.frames += int(num_frames)

    def build(self) -> ShardIndex:
        """The finished `ShardIndex`."""
        return ShardIndex.from_dict(self.rows, "shard index")


@dataclass(frozen=True)
class ShardAttrs:
    """Parsed attributes of a shard group."""

    committed: bool
    split: str
    name: str
    index: ShardIndex
    skipped: tuple[dict[str, str], ...]
    checksums: dict[str, list[int]]
    extra: dict[str, Any]

    @property
    def num_utterances(self) -> int:
        """Utterances stored in the shard."""
        return len(self.index)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], where: str) -> ShardAttrs:
        """Parse a shard group's attributes (FhbError naming ``where`` if malformed)."""
        info = attrs.get(SHARD_ATTR)
        if not isinstance(info, Mapping):
            raise FhbError(
                f"{where}: expected attribute {SHARD_ATTR!r} (an fhb shard), found keys "
                f"{sorted(attrs)}; the shard is damaged or foreign: re-extract it"
            )
        for key in ("split", "name", "index", "skipped", "checksums"):
            if key not in info:
                raise FhbError(
                    f"{where}: expected {SHARD_ATTR}.{key}, missing; the shard is damaged: "
                    f"re-extract it"
                )
        sums = info["checksums"]
        if sums.get("algorithm") != CHECKSUM_ALGORITHM or sums.get("unit") != CHECKSUM_UNIT:
            raise FhbError(
                f"{where}: expected checksums crc32 per chunk, found "
                f"{sums.get('algorithm')!r}/{sums.get('unit')!r}; upgrade fhb"
            )
        return cls(
            committed=attrs.get(COMMITTED_ATTR) is True,
            split=str(info["split"]),
            name=str(info["name"]),
            index=ShardIndex.from_dict(info["index"], where),
            skipped=tuple(dict(s) for s in info["skipped"]),
            checksums={k: [int(c) for c in v] for k, v in sums["arrays"].items()},
            extra={k: v for k, v in info.items()
                   if k not in ("split", "name", "index", "skipped", "checksums")},
        )
