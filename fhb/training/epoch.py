"""Epoch planning for the stage 2 loader: a pure, deterministic function of ``(seed, epoch)``.

The plan decides, before any byte is read, which utterances (and which crop of each) form which
batch on which DDP rank, in which order:

1. **Blocks.** Utterances of one shard whose *start* frame lies in the same group of
   ``block_chunks`` target chunks form a block; a block's frames are one contiguous range that
   covers ``block_chunks`` chunks plus at most one chunk shared with the next block. Reading a
   block is one zarr slice per layer.
2. **Shuffle** the blocks (seeded).
3. **Ranks.** Blocks are dealt to ranks in shuffled order, each to the rank with the least audio
   so far, so ranks read disjoint chunks and get about the same amount of audio.
4. **Windows.** Per rank, ``window_blocks`` consecutive blocks (plus the previous window's
   carry) form a window: its utterances are shuffled, a random remainder is carried to the next
   window, the rest is sorted by (cropped) length and cut into batches (``batch_size``
   utterances, or at most ``batch_seconds`` of padded audio), and the window's batches are
   shuffled. This is WebDataset's shuffle buffer with length bucketing; a worker decodes one
   window's blocks once and assembles all of its batches from them.
5. **Equal length.** Every rank keeps ``min`` over ranks of its batch count; the extra trailing
   batches of the longer ranks are dropped for this epoch (a different random set each epoch),
   so DDP ranks step in lockstep. Nothing is repeated.

**Sorted bucketing** (``bucketing="sorted"``, what ``fhb distill`` uses by default): the published
loader's batches. The whole set is sorted by (cropped) length, longest first (ties in storage
order), and cut into fixed batches of ``batch_size`` consecutive utterances (or at most
``batch_seconds`` of padded audio); only the batch order is random. Consecutive batches whose first
utterance lies in the same block form a *group*; groups take the place of blocks in steps 2-4
(shuffled, dealt to ranks, ``window_blocks`` groups per window, batch order shuffled within the
window), so on a lake written in length order (``fhb extract`` does so) the batches of a window
are contiguous rows and the loader reads as sequentially as with window bucketing. On a lake in
another order the batches are the same, only the reads are scattered.

``max_seconds`` crops longer utterances to a random window starting on a frame boundary (a
multiple of ``samples_per_frame``); the crop of ``C`` samples starting at frame ``k`` owns target
frames ``k : k + conv_output_length(C)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fhb.errors import FhbError

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_CHUNKS = 2
"""Target chunks per block: a block re-reads at most one chunk of its neighbour, so the decode
overhead is at most ``1 / DEFAULT_BLOCK_CHUNKS`` of the epoch's bytes."""


@dataclass(frozen=True)
class PlanEntry:
    """What the planner needs of one utterance (``source`` numbers its (split, shard))."""

    source: int
    frame_offset: int
    num_frames: int
    num_samples: int


@dataclass(frozen=True)
class PlannedUtt:
    """One utterance of a batch: ``utt`` indexes the loader's entry list; the crop is relative.

    Samples ``sample_start : sample_start + num_samples`` and frames
    ``frame_start : frame_start + num_frames`` of the utterance (uncropped: 0 and the full sizes).
    """

    utt: int
    block: int
    sample_start: int
    num_samples: int
    frame_start: int
    num_frames: int


@dataclass(frozen=True)
class PlannedBatch:
    """One batch: its window (batches of one window share the decoded blocks) and utterances."""

    window: int
    utts: tuple[PlannedUtt, ...]


@dataclass(frozen=True)
class EpochPlan:
    """The batches of every rank (equal counts) and what was dropped to equalise them."""

    ranks: tuple[tuple[PlannedBatch, ...], ...]
    dropped_batches: int
    dropped_utterances: int

    def __len__(self) -> int:
        return len(self.ranks[0]) if self.ranks else 0

    def padded_frames_share(self) -> float:
        """Padding's share of the target frames of every rank's batches (``B x max T`` each)."""
        padded = total = 0
        for rank in self.ranks:
            for b in rank:
                frames = [u.num_frames for u in b.utts]
                total += len(frames) * max(frames)
                padded += len(frames) * max(frames) - sum(frames)
        return padded / total if total else 0.0


def plan_epoch(
    entries: Sequence[PlanEntry],
    *,
    chunk_frames: int,
    seed: int,
    epoch: int,
    frames_of: Callable[[int], int],
    batch_size: int | None = None,
    batch_seconds: float | None = None,
    max_seconds: float | None = None,
    world_size: int = 1,
    window_blocks: int = 8,
    shuffle: bool = True,
    drop_last: bool = False,
    sample_rate: int = 16000,
    samples_per_frame: int = 320,
    block_chunks: int = DEFAULT_BLOCK_CHUNKS,
    bucketing: str = "window",
) -> EpochPlan:
    """Plan one epoch (see the module docstring); deterministic in ``(seed, epoch)``.

    ``entries``: utterances in storage order (consecutive entries of one ``source`` are
    contiguous in frames). ``frames_of``: samples -> frames of the teacher's conv stack.
    ``shuffle=False`` keeps storage order (blocks, windows and batches unshuffled; length
    bucketing still applies inside a window). ``bucketing``: ``window`` (steps 1-5) or ``sorted``
    (the published fixed batches over the whole set, see the module docstring).
    """
    check_batching(batch_size, batch_seconds)
    if bucketing not in BUCKETINGS:
        raise FhbError(f"bucketing: expected one of {list(BUCKETINGS)}, found {bucketing!r}; pass one of them")
    if world_size < 1 or window_blocks < 1 or block_chunks < 1 or chunk_frames < 1:
        raise FhbError(
            f"epoch plan: expected world_size, window_blocks, block_chunks, chunk_frames >= 1, "
            f"found {world_size}, {window_blocks}, {block_chunks}, {chunk_frames}; fix the loader "
            f"arguments"
        )
    root = np.random.SeedSequence([int(seed), int(epoch)])
    crop_seq, block_seq, *rank_seqs = root.spawn(2 + world_size)
    n = len(entries)
    samples = np.fromiter((e.num_samples for e in entries), dtype=np.int64, count=n)
    frames = np.fromiter((e.num_frames for e in entries), dtype=np.int64, count=n)

    # Crops: start on a frame boundary, frames from the conv arithmetic.
    crop_samples = samples.copy()
    crop_frames = frames.copy()
    crop_start = np.zeros(n, dtype=np.int64)
    if max_seconds is not None:
        max_samples = int(max_seconds * sample_rate)
        if frames_of(max_samples) < 1:
            raise FhbError(
                f"max_seconds: expected a crop of at least one frame, found {max_seconds} s "
                f"({max_samples} samples); use max_seconds >= 0.025"
            )
        long = np.flatnonzero(samples > max_samples)
        if long.size:
            hi = (samples[long] - max_samples) // samples_per_frame
            starts = np.random.default_rng(crop_seq).integers(0, hi + 1)
            crop_start[long] = starts
            crop_samples[long] = max_samples
            crop_frames[long] = frames_of(max_samples)
            assert (crop_start + crop_frames <= frames).all(), "crop beyond the utterance's frames"

    # Blocks: consecutive utterances of one source whose start frame is in the same chunk group.
    span = chunk_frames * block_chunks
    blocks: list[list[int]] = []
    block_of = np.empty(n, dtype=np.int64)
    last_key: tuple[int, int] | None = None
    for i, e in enumerate(entries):
        key = (e.source, e.frame_offset // span)
        if key != last_key:
            blocks.append([])
            last_key = key
        blocks[-1].append(i)
        block_of[i] = len(blocks) - 1
    budget = None if batch_seconds is None else int(batch_seconds * sample_rate)
    units: list[list[int]] = blocks  # what is shuffled and dealt: blocks, or groups of sorted batches
    fixed: list[list[list[int]]] | None = None  # sorted bucketing: each group's batches
    if bucketing == "sorted":
        fixed = _sorted_groups(entries, crop_samples, batch_size, budget, drop_last, span)
        units = [[i for bt in g for i in bt] for g in fixed]
    order = (
        np.random.default_rng(block_seq).permutation(len(units)) if shuffle
        else np.arange(len(units))
    )

    # Ranks: deal blocks to the rank with the least audio so far.
    rank_blocks: list[list[int]] = [[] for _ in range(world_size)]
    load = np.zeros(world_size, dtype=np.int64)
    for b in order:
        r = int(np.argmin(load))
        rank_blocks[r].append(int(b))
        load[r] += int(crop_samples[units[b]].sum())

    def planned(i: int) -> PlannedUtt:
        return PlannedUtt(
            utt=i, block=int(block_of[i]), sample_start=int(crop_start[i]) * samples_per_frame,
            num_samples=int(crop_samples[i]), frame_start=int(crop_start[i]),
            num_frames=int(crop_frames[i]),
        )

    ranks: list[list[PlannedBatch]] = []
    for r in range(world_size):
        rng = np.random.default_rng(rank_seqs[r])
        out: list[PlannedBatch] = []
        carry: list[int] = []
        mine = rank_blocks[r]
        num_windows = -(-len(mine) // window_blocks)
        for w in range(num_windows):
            if fixed is not None:
                batches = [bt for g in mine[w * window_blocks : (w + 1) * window_blocks] for bt in fixed[g]]
                if shuffle:
                    batches = [batches[j] for j in rng.permutation(len(batches))]
                out.extend(PlannedBatch(w, tuple(planned(i) for i in bt)) for bt in batches)
                continue
            pool = carry + [i for b in mine[w * window_blocks : (w + 1) * window_blocks]
                            for i in blocks[b]]
            if shuffle:
                pool = [pool[j] for j in rng.permutation(len(pool))]
            last = w == num_windows - 1
            batches, carry = _cut(pool, crop_samples, batch_size, budget, last)
            if last and carry:
                if not drop_last:
                    batches.append(carry)
                carry = []
            if shuffle:
                batches = [batches[j] for j in rng.permutation(len(batches))]
            out.extend(PlannedBatch(w, tuple(planned(i) for i in bt)) for bt in batches)
        ranks.append(out)

    keep = min(len(x) for x in ranks)
    dropped = [x[keep:] for x in ranks]
    dropped_batches = sum(len(x) for x in dropped)
    dropped_utts = sum(len(b.utts) for x in dropped for b in x)
    if dropped_batches:
        logger.info(
            "epoch %d: dropped %d trailing batches (%d utterances) so all %d ranks have %d",
            epoch, dropped_batches, dropped_utts, world_size, keep,
        )
    return EpochPlan(tuple(tuple(x[:keep]) for x in ranks), dropped_batches, dropped_utts)


BUCKETINGS = ("window", "sorted")
"""``window``: length-sorted batches within shuffled windows (fhb's streaming default);
``sorted``: the published fixed batches over the whole length-sorted set."""


def _sorted_groups(entries: Sequence[PlanEntry], lengths: np.ndarray, batch_size: int | None, budget: int | None,
                   drop_last: bool, span: int) -> list[list[list[int]]]:
    """The published batches (longest first), grouped by the block of each batch's first utterance."""
    order = sorted(range(len(entries)), key=lambda i: (-int(lengths[i]), i))
    batches: list[list[int]] = []
    if batch_size is not None:
        batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
        if drop_last and batches and len(batches[-1]) < batch_size:
            batches.pop()
    else:
        assert budget is not None
        batches = pack_by_padded_size(order, lengths, budget)
    groups: list[list[list[int]]] = []
    last_key: tuple[int, int] | None = None
    for bt in batches:
        e = entries[bt[0]]
        key = (e.source, e.frame_offset // span)
        if key != last_key:
            groups.append([])
            last_key = key
        groups[-1].append(bt)
    return groups


def check_batching(batch_size: int | None, batch_seconds: float | None) -> None:
    """Exactly one of ``batch_size`` (> 0) and ``batch_seconds`` (> 0); `FhbError` otherwise."""
    if (batch_size is None) == (batch_seconds is None):
        raise FhbError(
            f"loader batching: expected exactly one of batch_size and batch_seconds, found "
            f"batch_size={batch_size}, batch_seconds={batch_seconds}; pass one of them"
        )
    if (batch_size is not None and batch_size < 1) or (
        batch_seconds is not None and not batch_seconds > 0
    ):
        raise FhbError(
            f"loader batching: expected a positive batch_size or batch_seconds, found "
            f"batch_size={batch_size}, batch_seconds={batch_seconds}; pass a positive value"
        )


def _cut(
    pool: list[int], lengths: np.ndarray, batch_size: int | None, budget: int | None, last: bool
) -> tuple[list[list[int]], list[int]]:
    """Split a shuffled pool into length-sorted batches and a carry (the random remainder)."""
    if batch_size is not None:
        r = len(pool) % batch_size
        carry, rest = pool[:r], pool[r:]
        rest.sort(key=lambda i: int(lengths[i]))
        return [rest[k : k + batch_size] for k in range(0, len(rest), batch_size)], carry
    assert budget is not None
    batches = pack_by_padded_size(sorted(pool, key=lambda i: int(lengths[i])), lengths, budget)
    # The last, under-full batch is carried into the next window (emitted at the end).
    return batches, batches.pop() if batches else []


def pack_by_padded_size(order: Sequence[int], lengths: Sequence[int] | np.ndarray, budget: int) -> list[list[int]]:
    """Consecutive runs of ``order`` whose padded size (count x longest length) stays within
    ``budget``; an item longer than the budget gets a batch of its own.

    The one length-bucketing rule of fhb: the loader's windows (ascending order), the published
    batches (descending) and the teacher's batches at extraction (descending) all pack with it.
    """
    batches: list[list[int]] = []
    longest = 0
    for i in order:
        n = int(lengths[i])
        if batches and (len(batches[-1]) + 1) * max(longest, n) <= budget:
            batches[-1].append(i)
            longest = max(longest, n)
        else:
            batches.append([i])
            longest = n
    return batches
