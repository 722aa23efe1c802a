"""Stage 2 loader: batches of audio and teacher targets from a lake, decoded ahead of the step.

`LakeLoader` plans each epoch with `fhb.storage.epoch.plan_epoch` (pure, deterministic in
``(seed, epoch)``), then hands whole *windows* of the plan to DataLoader worker processes. A
worker reads every block of its window once -- one zarr slice per layer over the block's frame
range, i.e. whole chunks -- and cuts all of the window's batches out of those arrays into tensors
allocated in shared memory, so the hand-over to the training process copies nothing. Worker
``w`` of ``W`` takes windows ``w, w + W, ...``; the DataLoader returns them round-robin, which is
plan order, so batches do not depend on ``workers``.

Target dtype rule (never lossy beyond the lake's own encoding, and no widening copies):

=============  ==================
lake dtype     ``Batch.targets``
=============  ==================
float16        ``torch.float16`` (stored values, exact)
bfloat16       ``torch.bfloat16`` (stored bits, exact)
float32        ``torch.float32``
int8           ``torch.float32`` (dequantised ``q * scale + offset``)
=============  ==================

CNN features follow the same rule. Audio is ``int16 / 32768`` as float32.

Memory: at most ``workers * prefetch_factor + 1`` windows are alive, where
``prefetch_factor = ceil(prefetch / (workers * batches per window))`` (at least 1); a window is
about ``window_blocks * (block_chunks + 1)`` target chunks of every requested layer, plus its
assembled batches.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fhb.errors import FhbError
from fhb.nn.frames import HUBERT_CONV_LAYERS, conv_output_length, conv_output_lengths, parse_conv_layers
from fhb.storage.codecs import TargetCodec
from fhb.storage.epoch import EpochPlan, PlanEntry, PlannedBatch, check_batching, plan_epoch
from fhb.storage.format import AUDIO_ARRAY, CNN_ARRAY, layer_array_name, scale_array_name
from fhb.storage.reader import Lake, ShardView, UttEntry, open_lake

logger = logging.getLogger(__name__)

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "int8": torch.float32,
}


def target_dtype(lake_dtype: str) -> torch.dtype:
    """The dtype of `Batch.targets` / `Batch.cnn` for a lake of ``lake_dtype`` (see module doc)."""
    return _TORCH_DTYPES[lake_dtype]


@dataclass
class Batch:
    """One batch, zero-padded along time.

    ``wavs``: ``B x S`` float32 (int16 / 32768); ``wav_lengths``: ``B`` int64 samples;
    ``targets``: ``B x L x T x D`` (dtype per `target_dtype`; None for an audio-only loader);
    ``target_lengths``: ``B`` int64 frames (``conv_output_length(wav_lengths)``); ``cnn``:
    ``B x T x Dc`` when requested; ``utt_ids``: ``B`` utterance ids.
    """

    wavs: torch.Tensor
    wav_lengths: torch.Tensor
    targets: torch.Tensor | None
    target_lengths: torch.Tensor
    cnn: torch.Tensor | None
    utt_ids: list[str]

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """A copy with every tensor on ``device`` (``non_blocking`` pays off from pinned memory)."""
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Batch(
            wavs=move(self.wavs), wav_lengths=move(self.wav_lengths),  # type: ignore[arg-type]
            targets=move(self.targets), target_lengths=move(self.target_lengths),  # type: ignore[arg-type]
            cnn=move(self.cnn), utt_ids=list(self.utt_ids),
        )

    def pin_memory(self) -> Batch:
        """A copy in pinned memory (the DataLoader's pin thread calls this)."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in kw.items():
            if isinstance(v, torch.Tensor):
                kw[k] = v.pin_memory()
        return Batch(**kw)

    def __len__(self) -> int:
        return len(self.utt_ids)


@dataclass(frozen=True)
class _Source:
    """One (split, shard) the loader reads from."""

    split: str
    shard: str


@dataclass(frozen=True)
class _Item:
    """What one worker step builds: the batches ``first..first+len(batches)`` of one window."""

    first: int
    batches: tuple[PlannedBatch, ...]


class _WindowDataset(IterableDataset):  # type: ignore[type-arg]
    """Yields ``list[Batch]`` per window item; worker ``w`` of ``W`` takes items ``w::W``."""

    def __init__(self, reader: _WindowReader, items: Sequence[_Item]) -> None:
        self.reader = reader
        self.items = list(items)

    def __iter__(self) -> Iterator[list[Batch]]:
        info = get_worker_info()
        wid, n = (0, 1) if info is None else (info.id, info.num_workers)
        for item in self.items[wid::n]:
            yield self.reader.build(item)


class _WindowReader:
    """Reads a window's blocks (one slice per array per block) and assembles its batches.

    Picklable: holds the lake path and the plan inputs; the lake is opened lazily per process.
    """

    def __init__(
        self,
        lake_path: str,
        sources: Sequence[_Source],
        entries: Sequence[UttEntry],
        source_of: np.ndarray,
        layers: tuple[int, ...],
        cnn: bool,
        frames_of_conv: list[tuple[int, int, int]],
    ) -> None:
        self.lake_path = lake_path
        self.sources = list(sources)
        self.entries = list(entries)
        self.source_of = source_of
        self.layers = layers
        self.cnn = cnn
        self.conv = frames_of_conv
        self._lake: Lake | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_lake"] = None  # zarr handles are reopened in each worker
        return state

    def _shard(self, source: int) -> ShardView:
        if self._lake is None:
            self._lake = open_lake(self.lake_path)
        s = self.sources[source]
        return self._lake[s.split].shard(s.shard)

    def build(self, item: _Item) -> list[Batch]:
        """Decode the blocks ``item`` needs once, then cut out its batches."""
        # Frame/sample range per block actually used by these batches.
        ranges: dict[int, list[int]] = {}
        for batch in item.batches:
            for u in batch.utts:
                e = self.entries[u.utt]
                f0, f1 = e.frame_offset + u.frame_start, e.frame_offset + u.frame_start + u.num_frames
                s0 = e.sample_offset + u.sample_start
                s1 = s0 + u.num_samples
                r = ranges.get(u.block)
                if r is None:
                    ranges[u.block] = [f0, f1, s0, s1, int(self.source_of[u.utt])]
                else:
                    r[0], r[1] = min(r[0], f0), max(r[1], f1)
                    r[2], r[3] = min(r[2], s0), max(r[3], s1)
        data: dict[int, tuple[list[np.ndarray], np.ndarray | None, np.ndarray]] = {}
        for block, (f0, f1, s0, s1, source) in ranges.items():
            shard = self._shard(source)
            targets = [_read_range(shard, layer_array_name(k), f0, f1) for k in self.layers]
            cnn = _read_range(shard, CNN_ARRAY, f0, f1) if self.cnn else None
            audio = np.asarray(shard.array(AUDIO_ARRAY)[s0:s1])
            data[block] = (targets, cnn, audio)
        return [self._assemble(b, ranges, data) for b in item.batches]

    def _assemble(
        self,
        batch: PlannedBatch,
        ranges: dict[int, list[int]],
        data: dict[int, tuple[list[np.ndarray], np.ndarray | None, np.ndarray]],
    ) -> Batch:
        utts = batch.utts
        nb = len(utts)
        s_max = max(u.num_samples for u in utts)
        t_max = max(u.num_frames for u in utts)
        wavs = _shared_empty((nb, s_max), torch.float32)
        wav_np = wavs.numpy()
        tgt = tgt_np = cnn = cnn_np = None
        any_block = data[utts[0].block]
        if self.layers:
            d = any_block[0][0].shape[1]
            tgt = _shared_empty((nb, len(self.layers), t_max, d), _torch_dtype_of(any_block[0][0]))
            tgt_np = _numpy_view(tgt)
        if self.cnn:
            assert any_block[1] is not None
            cnn = _shared_empty((nb, t_max, any_block[1].shape[1]), _torch_dtype_of(any_block[1]))
            cnn_np = _numpy_view(cnn)
        ids: list[str] = []
        for b, u in enumerate(utts):
            e = self.entries[u.utt]
            ids.append(e.utt_id)
            f0_block, _, s0_block, _, _ = ranges[u.block]
            targets, cnn_block, audio = data[u.block]
            f = e.frame_offset + u.frame_start - f0_block
            s = e.sample_offset + u.sample_start - s0_block
            n, t = u.num_samples, u.num_frames
            np.multiply(audio[s : s + n], np.float32(1.0 / 32768.0), out=wav_np[b, :n],
                        casting="unsafe")
            wav_np[b, n:] = 0
            if tgt_np is not None:
                for li, arr in enumerate(targets):
                    tgt_np[b, li, :t] = arr[f : f + t]
                tgt_np[b, :, t:] = 0
            if cnn_np is not None:
                assert cnn_block is not None
                cnn_np[b, :t] = cnn_block[f : f + t]
                cnn_np[b, t:] = 0
        return Batch(
            wavs=wavs,
            wav_lengths=torch.tensor([u.num_samples for u in utts], dtype=torch.int64),
            targets=tgt,
            target_lengths=torch.tensor([u.num_frames for u in utts], dtype=torch.int64),
            cnn=cnn,
            utt_ids=ids,
        )


def _read_range(shard: ShardView, name: str, start: int, stop: int) -> np.ndarray:
    """Frames ``start:stop`` of target array ``name``: one zarr slice (whole chunks decoded).

    float16/float32 come back as stored; bfloat16 as its uint16 bit patterns; int8 dequantised
    to float32 (see the module's dtype rule).
    """
    codec: TargetCodec = shard.codec
    data = np.asarray(shard.array(name)[start:stop])
    if not codec.has_scales:
        return data
    b = codec.scale_block_frames or codec.chunk_frames
    scales = np.asarray(shard.array(scale_array_name(name))[start // b : (stop - 1) // b + 1])
    return codec.decode(data, scales, first_frame=start)


def _torch_dtype_of(a: np.ndarray) -> torch.dtype:
    if a.dtype == np.uint16:  # bfloat16 bit patterns
        return torch.bfloat16
    return {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}[a.dtype]


def _numpy_view(t: torch.Tensor) -> np.ndarray:
    """A numpy view of ``t`` (bfloat16 viewed as its uint16 bit patterns)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _shared_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker it lives in shared memory from the start,
    so sending it to the main process copies nothing (what torch's default collate does)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = math.prod(shape)
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty(0, dtype=dtype).new(storage).view(shape)


class LakeLoader:
    """Batches of a lake's splits for stage 2 (see the module docstring and `plan_epoch`).

    ``layers``: teacher layer numbers to load (None = all stored; ``[]`` = audio only).
    Exactly one of ``batch_size`` / ``batch_seconds`` (padded audio seconds per batch).
    ``max_seconds`` crops longer utterances (random, frame-aligned). ``rank``/``world_size``:
    DDP; every rank gets the same number of batches (trailing extras dropped). ``workers``: decode
    processes (0 = in-process). ``prefetch``: batches to keep decoded ahead (rounded up to whole
    windows). ``window_blocks``: blocks per shuffle window.

    Resumable: ``state_dict()`` after ``k`` batches, then ``load_state_dict`` in a new loader (same
    lake, splits, seed, batching and world size) and ``__iter__`` yields batches ``k..`` of that
    epoch without decoding the first ``k``.
    """

    def __init__(
        self,
        lake: str | Path,
        splits: Sequence[str],
        layers: Sequence[int] | None,
        batch_size: int | None = None,
        batch_seconds: float | None = None,
        max_seconds: float | None = None,
        seed: int = 0,
        workers: int = 2,
        prefetch: int = 4,
        rank: int = 0,
        world_size: int = 1,
        cnn_features: bool = False,
        shuffle: bool = True,
        drop_last: bool = False,
        pin_memory: bool = False,
        window_blocks: int = 8,
    ) -> None:
        check_batching(batch_size, batch_seconds)
        if not 0 <= rank < world_size:
            raise FhbError(
                f"loader rank: expected 0 <= rank < world_size, found rank={rank}, "
                f"world_size={world_size}; pass the DDP rank and world size"
            )
        if workers < 0 or prefetch < 1 or window_blocks < 1:
            raise FhbError(
                f"loader: expected workers >= 0, prefetch >= 1, window_blocks >= 1, found "
                f"{workers}, {prefetch}, {window_blocks}; fix the loader arguments"
            )
        if isinstance(splits, str):
            splits = [splits]
        self.lake_path = str(lake)
        self.lake = open_lake(lake)
        meta = self.lake.meta
        missing_splits = [s for s in splits if s not in self.lake]
        if missing_splits or not splits:
            raise FhbError(
                f"lake {self.lake_path}: expected splits {list(splits)}, found only "
                f"{self.lake.splits} (missing {missing_splits}); extract the missing splits "
                f"with `fhb extract` or pick listed ones"
            )
        self.layers: tuple[int, ...] = meta.layers if layers is None else tuple(int(k) for k in layers)
        missing = [k for k in self.layers if k not in meta.layers]
        if missing:
            raise FhbError(
                f"lake {self.lake_path}: expected teacher layers {list(self.layers)}, found only "
                f"{list(meta.layers)} stored (missing {missing}); re-extract with "
                f"`--layers {','.join(str(k) for k in sorted(set(meta.layers) | set(self.layers)))}` "
                f"or request stored layers"
            )
        if cnn_features and not meta.cnn_features:
            raise FhbError(
                f"lake {self.lake_path}: expected CNN features (cnn_features=True requested), "
                f"found none stored; re-extract with CNN features or pass cnn_features=False"
            )
        self.target_dtype = target_dtype(meta.dtype)
        conv_spec = meta.teacher.config.get("conv_feature_layers")
        self._conv = parse_conv_layers(conv_spec) if conv_spec else list(HUBERT_CONV_LAYERS)
        self.splits = list(splits)

        sources: list[_Source] = []
        entries: list[UttEntry] = []
        src_idx: list[int] = []
        for split in splits:
            view = self.lake[split]
            where = {name: len(sources) + i for i, name in enumerate(view.shards)}
            sources.extend(_Source(split, name) for name in view.shards)
            for e in view.entries():
                entries.append(e)
                src_idx.append(where[e.shard])
        self._entries = entries
        self._plan_entries = [
            PlanEntry(s, e.frame_offset, e.num_frames, e.num_samples) for s, e in zip(src_idx, entries)
        ]
        self._check_frames(max_seconds)
        self._reader = _WindowReader(
            self.lake_path, sources, entries, np.asarray(src_idx, dtype=np.int64), self.layers,
            cnn_features, self._conv,
        )
        self.chunk_frames = meta.target_codec.chunk_frames
        self.batch_size, self.batch_seconds, self.max_seconds = batch_size, batch_seconds, max_seconds
        self.seed, self.workers, self.prefetch = int(seed), int(workers), int(prefetch)
        self.rank, self.world_size = int(rank), int(world_size)
        self.cnn_features, self.shuffle, self.drop_last = cnn_features, shuffle, drop_last
        self.pin_memory, self.window_blocks = pin_memory, int(window_blocks)
        self.sample_rate = meta.sample_rate
        self.samples_per_frame = meta.samples_per_frame
        self._epoch = 0
        self._batches_done = 0
        self._resumed = False
        self._plan_cache: tuple[int, EpochPlan] | None = None
        self._active: Iterator[Any] | None = None
        logger.info(
            "loader over %s %s: %d utterances in %d shards, layers %s (%s targets), rank %d/%d",
            self.lake_path, self.splits, len(entries), len(sources), list(self.layers),
            self.target_dtype, rank, world_size,
        )

    # -- planning -----------------------------------------------------------------------------

    def _check_frames(self, max_seconds: float | None) -> None:
        """Frames in the index must follow the conv arithmetic (crops rely on it)."""
        if not self._entries:
            return
        samples = torch.tensor([e.num_samples for e in self._entries], dtype=torch.int64)
        stored = torch.tensor([e.num_frames for e in self._entries], dtype=torch.int64)
        bad = torch.nonzero(conv_output_lengths(samples, self._conv) != stored).flatten()
        if bad.numel():
            e = self._entries[int(bad[0])]
            msg = (
                f"lake {self.lake_path}: utterance {e.utt_id!r} expected "
                f"conv_output_length({e.num_samples}) = "
                f"{conv_output_length(e.num_samples, self._conv)} frames, found {e.num_frames} "
                f"({bad.numel()} utterances differ)"
            )
            if max_seconds is not None:
                raise FhbError(msg + "; crops need the conv frame rule: re-extract the lake")
            logger.warning("%s; targets may be misaligned with audio", msg)

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The `EpochPlan` of ``epoch`` (default: the current one), for every rank."""
        epoch = self._epoch if epoch is None else int(epoch)
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        plan = plan_epoch(
            self._plan_entries,
            chunk_frames=self.chunk_frames,
            seed=self.seed,
            epoch=epoch,
            frames_of=lambda n: conv_output_length(n, self._conv),
            batch_size=self.batch_size,
            batch_seconds=self.batch_seconds,
            max_seconds=self.max_seconds,
            world_size=self.world_size,
            window_blocks=self.window_blocks,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            sample_rate=self.sample_rate,
            samples_per_frame=self.samples_per_frame,
        )
        self._plan_cache = (epoch, plan)
        return plan

    def utt_id(self, index: int) -> str:
        """Utterance id of entry ``index`` (as in `PlannedUtt.utt`)."""
        return self._entries[index].utt_id

    # -- the public loop ----------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The current epoch (set with `set_epoch`)."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Plan epoch ``epoch`` next; a different epoch than the current one starts at batch 0."""
        if int(epoch) != self._epoch:
            self._epoch = int(epoch)
            self._batches_done = 0
            self._resumed = False

    def __len__(self) -> int:
        return len(self.plan())

    def __iter__(self) -> Iterator[Batch]:
        plan = self.plan()
        batches = plan.ranks[self.rank]
        if self._batches_done >= len(batches) and not self._resumed:
            self._batches_done = 0  # iterating the same epoch again: start over
        self._resumed = False
        start = self._batches_done
        items = _items(batches, start)
        if not items:
            return
        per_item = max(1.0, (len(batches) - start) / len(items))
        loader = self._data_loader(items, per_item)
        self._active = it = iter(loader)
        try:
            for window in it:
                for batch in window:
                    self._batches_done += 1
                    yield batch
        finally:
            self._shutdown(it)

    def _data_loader(self, items: list[_Item], per_item: float) -> DataLoader | list[list[Batch]]:
        dataset = _WindowDataset(self._reader, items)
        if self.workers == 0:
            gen = (self._reader.build(item) for item in items)
            if self.pin_memory and torch.cuda.is_available():
                return (_pin(w) for w in gen)  # type: ignore[return-value]
            return gen  # type: ignore[return-value]
        workers = min(self.workers, len(items))
        factor = max(1, math.ceil(self.prefetch / (workers * per_item)))
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            prefetch_factor=factor,
            persistent_workers=False,  # the dataset (the plan) changes every epoch
            pin_memory=self.pin_memory and torch.cuda.is_available(),
        )

    def _shutdown(self, it: Any) -> None:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        if self._active is it:
            self._active = None

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "batches_done", "seed", "world_size", "rank", "num_batches"}``."""
        return {
            "epoch": self._epoch,
            "batches_done": self._batches_done,
            "seed": self.seed,
            "world_size": self.world_size,
            "rank": self.rank,
            "num_batches": len(self),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next `__iter__` yields the batches after ``state["batches_done"]``."""
        for key in ("epoch", "batches_done", "seed"):
            if key not in state:
                raise FhbError(
                    f"loader state: expected key {key!r}, found keys {sorted(state)}; pass a dict "
                    f"from LakeLoader.state_dict()"
                )
        if int(state["seed"]) != self.seed or int(state.get("world_size", self.world_size)) != self.world_size:
            raise FhbError(
                f"loader state: expected seed {self.seed} and world_size {self.world_size}, found "
                f"seed {state['seed']} and world_size {state.get('world_size')}; build the loader "
                f"with the checkpoint's seed and world size"
            )
        self._epoch = int(state["epoch"])
        self._batches_done = int(state["batches_done"])
        self._resumed = True
        n = len(self)
        if "num_batches" in state and int(state["num_batches"]) != n:
            raise FhbError(
                f"loader state: expected {n} batches in epoch {self._epoch}, found "
                f"{state['num_batches']} in the checkpoint; the lake, splits or batching differ: "
                f"use the checkpoint's settings"
            )
        if not 0 <= self._batches_done <= n:
            raise FhbError(
                f"loader state: expected 0 <= batches_done <= {n}, found {self._batches_done}; "
                f"pass a dict from LakeLoader.state_dict()"
            )

    def close(self) -> None:
        """Stop the worker processes of an unfinished iteration (idempotent)."""
        if self._active is not None:
            self._shutdown(self._active)

    def __enter__(self) -> LakeLoader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _items(batches: Sequence[PlannedBatch], start: int) -> list[_Item]:
    """Group batches ``start..`` into one item per window (consecutive batches share it)."""
    items: list[_Item] = []
    i = start
    while i < len(batches):
        j = i
        while j < len(batches) and batches[j].window == batches[i].window:
            j += 1
        items.append(_Item(i, tuple(batches[i:j])))
        i = j
    return items


def _pin(window: list[Batch]) -> list[Batch]:
    return [b.pin_memory() for b in window]
