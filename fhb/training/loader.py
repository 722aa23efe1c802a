"""Stage 2 loader: batches of audio and teacher targets from a lake, decoded ahead of the step.

`LakeLoader` plans each epoch with `fhb.training.epoch.plan_epoch` (pure, deterministic in
``(seed, epoch)``), then hands whole *windows* of the plan to worker processes. A worker lays out
the window's batches first, then decodes every chunk the window needs once, over just the rows
its utterances use (c-blosc on the chunk file, only the Blosc blocks that hold those rows: see
`fhb.storage.reader.ArrayRows`), into a scratch buffer that is still in the CPU cache when its
rows are copied into the batches. A chunk shared by two blocks in different windows is therefore
not decoded whole twice: only the Blosc block (1 MiB) holding the boundary is; measured, the
decoded frames are 1.12-1.16x the valid ones (whole-chunk reads of each block were 1.5x).
Batches are built in shared-memory buffers that each worker reuses once the training process has
dropped the batch, so handing a batch over copies nothing and touches no fresh pages. The workers are started once per loader (on the first
iteration) and serve every epoch; ``close()`` (or leaving a ``with`` block) stops them. Worker
``w`` of ``W`` takes windows ``w, w + W, ...`` and answers in order, so batches do not depend on
``workers``.

Target dtype rule (never lossy beyond the lake's own encoding, and no widening copies):

=============  ==================
lake dtype     ``Batch.targets``
=============  ==================
float16        ``torch.float16`` (stored values, exact)
bfloat16       ``torch.bfloat16`` (stored bits, exact)
float32        ``torch.float32``
int8           ``torch.float32`` (dequantised ``q * scale + offset``)
pca            ``torch.int8`` codes ``B x L x T x W``: decode with ``batch.float_targets(device)``
pq             ``torch.uint8`` codes ``B x L x T x W``: decode with ``batch.float_targets(device)``
klt            ``torch.uint8`` codes ``B x L x T x W``: decode with ``batch.float_targets(device)``
=============  ==================

pca/pq/klt lakes (fitted codecs, `fhb.storage.fitted`): the codes are copied into the batch as stored
(no CPU expansion: ``W`` bytes per frame and layer instead of ``2 D``) and ``Batch.decoder`` (a
`fhb.training.target_decoder.TargetDecoder`, set by the loader) reconstructs the targets on the
training device (`Batch.float_targets`).

CNN features follow the same rule. Audio is ``int16 / 32768`` as float32.

Memory: at most ``workers * prefetch_factor + 1`` windows are alive, where
``prefetch_factor = ceil(prefetch / (workers * batches per window))`` (at least 1); a window holds
the compressed chunk files of its blocks (about ``window_blocks * (block_chunks + 1)`` chunks of
every requested layer) while it is being built, plus its assembled batches.
"""

from __future__ import annotations

import logging
import os
import sys
import math
import queue
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fhb.errors import FhbError
from fhb.nn.frames import conv_output_length, conv_output_lengths
from fhb.storage.codecs import TargetCodec
from fhb.training.target_decoder import TargetDecoder
from fhb.training.epoch import EpochPlan, PlanEntry, PlannedBatch, check_batching, plan_epoch
from fhb.storage.schema import AUDIO_ARRAY, CNN_ARRAY, LakeMeta, layer_array_name, scale_array_name
from fhb.storage.reader import ArrayRows, Lake, ShardView, UttEntry, open_lake

logger = logging.getLogger(__name__)

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "int8": torch.float32,
    "pca": torch.int8,
    "pq": torch.uint8,
    "klt": torch.uint8,
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
    ``B x T x Dc`` when requested; ``utt_ids``: ``B`` utterance ids. ``decoder``: for pca/pq
    lakes, ``targets`` holds codes (``B x L x T x W``) and the decoder reconstructs them on the
    step's device (`float_targets`); None otherwise.
    """

    wavs: torch.Tensor
    wav_lengths: torch.Tensor
    targets: torch.Tensor | None
    target_lengths: torch.Tensor
    cnn: torch.Tensor | None
    utt_ids: list[str]
    decoder: TargetDecoder | None = None

    def float_targets(self, device: torch.device | str) -> torch.Tensor:
        """``B x L x T x D`` float32 targets on ``device`` (codes are decoded there, not on the CPU)."""
        assert self.targets is not None, "an audio-only batch has no targets"
        if self.decoder is None:
            return self.targets.to(device, torch.float32, non_blocking=True)
        return self.decoder(self.targets.to(device, non_blocking=True), self.target_lengths)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """A copy with every tensor on ``device`` (``non_blocking`` pays off from pinned memory)."""
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Batch(
            wavs=move(self.wavs), wav_lengths=move(self.wav_lengths),  # type: ignore[arg-type]
            targets=move(self.targets), target_lengths=move(self.target_lengths),  # type: ignore[arg-type]
            cnn=move(self.cnn), utt_ids=list(self.utt_ids), decoder=self.decoder,
        )

    def pin_memory(self) -> Batch:
        """A copy in pinned memory (the loader calls this when ``pin_memory``)."""
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


_ALIGN = 64
_NP_OF: dict[torch.dtype, np.dtype] = {
    torch.float16: np.dtype(np.float16),
    torch.bfloat16: np.dtype(np.uint16),  # bit patterns; viewed back as bfloat16
    torch.float32: np.dtype(np.float32),
    torch.int8: np.dtype(np.int8),  # pca codes
    torch.uint8: np.dtype(np.uint8),  # pq / klt codes
}


@dataclass(frozen=True)
class _Field:
    """One tensor of a batch inside its buffer: byte offset, shape, dtype."""

    name: str
    offset: int
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class _BatchSpec:
    """A batch laid out in one buffer (``slot`` names the buffer in a worker's pool)."""

    slot: int
    fields: tuple[_Field, ...]
    wav_lengths: tuple[int, ...]
    target_lengths: tuple[int, ...]
    utt_ids: tuple[str, ...]


def _layout(fields: Sequence[tuple[str, tuple[int, ...], torch.dtype]]) -> tuple[tuple[_Field, ...], int]:
    out, pos = [], 0
    for name, shape, dtype in fields:
        out.append(_Field(name, pos, shape, dtype))
        nbytes = math.prod(shape) * _NP_OF[dtype].itemsize
        pos += -(-nbytes // _ALIGN) * _ALIGN
    return tuple(out), max(pos, _ALIGN)


def _views(buf: np.ndarray, fields: Sequence[_Field]) -> dict[str, np.ndarray]:
    """numpy views of ``fields`` inside the uint8 buffer ``buf`` (bfloat16 as uint16 bits)."""
    views = {}
    for f in fields:
        dt = _NP_OF[f.dtype]
        n = math.prod(f.shape) * dt.itemsize
        views[f.name] = buf[f.offset : f.offset + n].view(dt).reshape(f.shape)
    return views


def _tensor(view: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(view)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


def _to_batch(spec: _BatchSpec, views: dict[str, np.ndarray]) -> Batch:
    dtypes = {f.name: f.dtype for f in spec.fields}
    tensors = {name: _tensor(v, dtypes[name]) for name, v in views.items()}
    return Batch(
        wavs=tensors["wavs"],
        wav_lengths=torch.tensor(spec.wav_lengths, dtype=torch.int64),
        targets=tensors.get("targets"),
        target_lengths=torch.tensor(spec.target_lengths, dtype=torch.int64),
        cnn=tensors.get("cnn"),
        utt_ids=list(spec.utt_ids),
    )


class _SlotPool:
    """Batch buffers, reused once every tensor of the batch they hold has been dropped.

    Fresh memory costs a page fault per 4 KiB on first touch (about as much as decoding the
    bytes); a loader that reuses its buffers pays that only while the pool grows. ``shared``
    buffers live in shared memory (for worker processes).
    """

    def __init__(self, shared: bool = False) -> None:
        self.shared = shared
        self.buffers: list[torch.Tensor] = []
        self.free_slots: set[int] = set()
        self.new: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    def alloc(self, nbytes: int) -> tuple[int, np.ndarray]:
        with self._lock:
            best = None
            for i in self.free_slots:
                if self.buffers[i].numel() >= nbytes and (best is None or self.buffers[i].numel() < self.buffers[best].numel()):
                    best = i
            if best is not None:
                self.free_slots.discard(best)
                return best, self.buffers[best].numpy()
            # At least as large as the largest buffer so far: after the first few windows every
            # free buffer fits every batch, and the pool stops growing.
            largest = max((b.numel() for b in self.buffers), default=0)
            cap = max(largest, -(-int(nbytes * 1.1) // (1 << 20)) * (1 << 20))
            if self.shared:  # allocated in shared memory (share_memory_() would copy into it)
                buf = torch.empty(0, dtype=torch.uint8).new(torch.UntypedStorage._new_shared(cap))
            else:  # numpy asks for transparent huge pages: cheaper first touch
                buf = torch.from_numpy(np.empty(cap, dtype=np.uint8))
            self.buffers.append(buf)
            self.new[len(self.buffers) - 1] = buf
            return len(self.buffers) - 1, buf.numpy()

    def free(self, slots: Sequence[int]) -> None:
        with self._lock:
            self.free_slots.update(slots)


def _tracked_batch(spec: _BatchSpec, views: dict[str, np.ndarray], release: Callable[[list[int]], None]) -> Batch:
    """A `Batch` over ``views``; ``release([spec.slot])`` runs once all of its tensors are gone."""
    left = [len(views)]
    slot = spec.slot

    def gone() -> None:
        left[0] -= 1
        if left[0] == 0:
            release([slot])

    for v in views.values():
        weakref.finalize(v, gone)  # the tensor's storage holds v: fires when no view of it is left
    return _to_batch(spec, views)


class _WindowReader:
    """Builds a window's batches: each utterance's rows are decoded straight into its batch row.

    Picklable: holds the lake path and the plan inputs; the lake is opened lazily per process.
    Per window, every chunk file the window touches is read once (compressed bytes), and each
    utterance decodes only the Blosc blocks of its own frames (`fhb.storage.reader.ArrayRows`),
    so a chunk shared by two blocks (or two windows) is not decoded twice.
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
        self._used: list[ArrayRows] = []
        self._scratch = np.empty(0, dtype=np.uint8)  # int8 codes and scales of a window (`_queue_quantised`)
        self._local: _SlotPool | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_lake"] = None  # zarr handles are reopened in each worker
        state["_used"], state["_scratch"], state["_local"] = [], np.empty(0, dtype=np.uint8), None
        return state

    def _shard(self, source: int) -> ShardView:
        if self._lake is None:
            self._lake = open_lake(self.lake_path)
        s = self.sources[source]
        return self._lake[s.split].shard(s.shard)

    def _rows(self, shard: ShardView, name: str) -> ArrayRows:
        rows = shard.rows(name)
        if not self._used or self._used[-1] is not rows:
            self._used.append(rows)
        return rows

    def build(self, item: _Item) -> list[Batch]:
        """The batches of ``item``, in private memory (buffers reused once a batch is dropped)."""
        if self._local is None:
            self._local = _SlotPool()
        local = self._local
        return [_tracked_batch(spec, _views(buf, spec.fields), local.free)
                for spec, buf in self.build_specs(item, local.alloc)]

    def build_specs(
        self, item: _Item, alloc: Callable[[int], tuple[int, np.ndarray]]
    ) -> list[tuple[_BatchSpec, np.ndarray]]:
        """Decode ``item``'s batches into buffers from ``alloc(nbytes) -> (slot, uint8 array)``.

        Chunk-major: the batch buffers are laid out first, then every chunk the window needs is
        decoded once (only the rows wanted from it, into a scratch buffer that stays in the CPU
        cache) and scattered at once into the batch rows of the utterances that use it.
        """
        try:
            built = [self._layout_batch(b, alloc) for b in item.batches]
            pieces: dict[tuple[int, str], list[tuple[int, int, np.ndarray]]] = {}
            quantised: list[_Quantised] = []
            for batch, (_, _, views) in zip(item.batches, built):
                self._fill(batch, views, pieces, quantised)
            decodes = self._queue_quantised(quantised, pieces)
            for (source, name), wanted in pieces.items():
                self._scatter(self._rows(self._shard(source), name), wanted)
            for codec, q, scales, first, out in decodes:  # int8: codes and scales are in, dequantise
                codec.decode(q, scales, first_frame=first, out=out)
            for _, _, views in built:  # the int16 samples scattered above, as float waveforms
                np.multiply(views["wavs"], np.float32(1.0 / 32768.0), out=views["wavs"])
            return [(spec, buf) for spec, buf, _ in built]
        finally:
            for rows in set(self._used):
                rows.release()
            self._used.clear()

    def _layout_batch(
        self, batch: PlannedBatch, alloc: Callable[[int], tuple[int, np.ndarray]]
    ) -> tuple[_BatchSpec, np.ndarray, dict[str, np.ndarray]]:
        utts = batch.utts
        nb = len(utts)
        s_max = max(u.num_samples for u in utts)
        t_max = max(u.num_frames for u in utts)
        meta = self._shard(int(self.source_of[utts[0].utt])).meta
        fields: list[tuple[str, tuple[int, ...], torch.dtype]] = [("wavs", (nb, s_max), torch.float32)]
        if self.layers:
            width = _code_width(meta, self.layers) if meta.fitted else meta.teacher.dim
            fields.append(("targets", (nb, len(self.layers), t_max, width), target_dtype(meta.dtype)))
        if self.cnn:
            fields.append(("cnn", (nb, t_max, int(meta.cnn_dim or 0)), target_dtype(meta.dtype)))
        layout, nbytes = _layout(fields)
        slot, buf = alloc(nbytes)
        spec = _BatchSpec(slot, layout, tuple(u.num_samples for u in utts), tuple(u.num_frames for u in utts),
                          tuple(self.entries[u.utt].utt_id for u in utts))
        return spec, buf, _views(buf, layout)

    def _fill(self, batch: PlannedBatch, views: dict[str, np.ndarray],
              pieces: dict[tuple[int, str], list[tuple[int, int, np.ndarray]]], quantised: list[_Quantised]) -> None:
        """Padding now; audio and stored-as-is targets queued in ``pieces`` (each chunk is then
        read, verified and decoded once for the whole window, `_scatter`), int8 targets in
        ``quantised`` (`_queue_quantised`)."""
        wav_np, tgt_np, cnn_np = views["wavs"], views.get("targets"), views.get("cnn")
        names = [layer_array_name(k) for k in self.layers]
        for b, u in enumerate(batch.utts):
            e = self.entries[u.utt]
            source = int(self.source_of[u.utt])
            shard = self._shard(source)
            f0 = e.frame_offset + u.frame_start
            s0 = e.sample_offset + u.sample_start
            n, t = u.num_samples, u.num_frames
            pieces.setdefault((source, AUDIO_ARRAY), []).append((s0, s0 + n, wav_np[b, :n]))  # int16 values
            wav_np[b, n:] = 0
            targets = [(name, _stored_columns(shard, name, tgt_np[b, li])) for li, name in enumerate(names)] \
                if tgt_np is not None else []
            if cnn_np is not None:
                targets.append((CNN_ARRAY, cnn_np[b]))
            for name, dest in targets:
                if shard.codec.has_scales:
                    quantised.append(_Quantised(source, name, f0, dest[:t]))
                else:
                    pieces.setdefault((source, name), []).append((f0, f0 + t, dest[:t]))
                dest[t:] = 0

    @staticmethod
    def _scatter(rows: ArrayRows, wanted: list[tuple[int, int, np.ndarray]]) -> None:
        """Decode each chunk of ``rows`` once (the union of the wanted rows) and copy the pieces."""
        c = rows.chunk_rows
        by_chunk: dict[int, list[tuple[int, int, np.ndarray]]] = {}
        for start, stop, dest in wanted:
            pos = start
            while pos < stop:
                i = pos // c
                end = min(stop, (i + 1) * c)
                by_chunk.setdefault(i, []).append((pos - i * c, end - i * c, dest[pos - start : end - start]))
                pos = end
        for i in sorted(by_chunk):
            parts = by_chunk[i]
            lo, hi = min(p[0] for p in parts), max(p[1] for p in parts)
            span = rows.decode_span(i, lo, hi)
            for a, b, dest in parts:
                dest[...] = span[a - lo : b - lo]

    def _queue_quantised(
        self, quantised: Sequence[_Quantised], pieces: dict[tuple[int, str], list[tuple[int, int, np.ndarray]]]
    ) -> list[tuple[TargetCodec, np.ndarray, np.ndarray, int, np.ndarray]]:
        """int8 lakes: queue each target's codes (``T x D`` int8) and the rows of its scale array
        (``S x 2 x D`` float32) in ``pieces``, into one scratch buffer reused by every window, so
        their chunks are read, verified and decoded once per window like the others'. Returns the
        dequantisations to run once they are scattered: ``(codec, q, scales, first frame, out)``."""
        plans = []
        pos = 0
        for r in quantised:
            codec: TargetCodec = self._shard(r.source).codec
            t, d = r.out.shape
            s0, s1 = codec.scale_rows(r.start, r.start + t)
            q_at = pos
            pos += -(-t * d // _ALIGN) * _ALIGN
            plans.append((r, codec, s0, s1, q_at, pos))
            pos += -(-(s1 - s0) * 2 * d * 4 // _ALIGN) * _ALIGN
        if pos > self._scratch.size:
            self._scratch = np.empty(max(pos, 1 << 20), dtype=np.uint8)
        decodes = []
        for r, codec, s0, s1, q_at, s_at in plans:
            t, d = r.out.shape
            q = self._scratch[q_at : q_at + t * d].view(np.int8).reshape(t, d)
            scales = self._scratch[s_at : s_at + (s1 - s0) * 2 * d * 4].view(np.float32).reshape(s1 - s0, 2, d)
            pieces.setdefault((r.source, r.name), []).append((r.start, r.start + t, q))
            pieces.setdefault((r.source, scale_array_name(r.name)), []).append((s0, s1, scales))
            decodes.append((codec, q, scales, r.start, r.out))
        return decodes


@dataclass(frozen=True)
class _Quantised:
    """An int8 target of a batch row: rows ``start:start + len(out)`` of array ``name`` of
    source ``source``, to be dequantised into ``out`` (``T x D`` float32, a view of the batch)."""

    source: int
    name: str
    start: int
    out: np.ndarray


def _code_width(meta: LakeMeta, layers: Sequence[int]) -> int:
    """Widest code of ``layers`` in a pca/pq lake (the batch's ``W``)."""
    return max(meta.fitted[layer_array_name(k)].width for k in layers)


def _stored_columns(shard: ShardView, name: str, dest: np.ndarray) -> np.ndarray:
    """The columns of a batch row that array ``name`` fills: all, or a fitted code's first ``width``."""
    spec = shard.meta.fitted.get(name)
    return dest if spec is None else dest[:, : spec.width]


# ---------------------------------------------------------------------------------------------
# Worker processes: started once per loader, batch buffers in shared memory reused.


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies.

    A training process killed with SIGKILL (a pre-emption, the OOM killer) cannot stop its
    workers; without this they would wait on their task queue forever, holding shared memory.
    Elsewhere the parent's normal shutdown stops them.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def _worker_main(reader: _WindowReader, tasks: Any, results: Any) -> None:
    """A worker: builds the windows it is sent into shared-memory slots it reuses.

    A slot (one shared-memory buffer per batch) is sent to the main process once, with its first
    batch; later batches in the same slot send only its number. The main process returns a slot
    (message ``("free", [slot, ...])``) when every tensor of its batch has been garbage collected,
    so fresh shared memory (whose first touch costs a page fault per 4 KiB, as much as decoding
    the bytes) is only allocated while the pool grows.
    """
    import gc

    _die_with_parent()
    # Everything inherited from the parent goes to the permanent generation: otherwise every
    # full collection walks (and writes to) the parent's whole heap, a copy-on-write page fault
    # per page; measured as most of a worker's time before this.
    gc.freeze()
    torch.set_num_threads(1)
    reader._lake = None  # fresh zarr handles in this process
    try:
        import numcodecs.blosc as nb

        nb.set_nthreads(1)
        nb.use_threads = False
    except ImportError:  # pragma: no cover
        pass
    pool = _SlotPool(shared=True)

    while True:
        msg = tasks.get()
        if msg is None:
            break
        if msg[0] == "free":
            pool.free(msg[1])
            continue
        _, gen, seq, item = msg
        taken: list[int] = []

        def alloc(nbytes: int) -> tuple[int, np.ndarray]:
            slot, buf = pool.alloc(nbytes)
            taken.append(slot)
            return slot, buf

        try:
            specs = [spec for spec, _ in reader.build_specs(item, alloc)]
        except BaseException as exc:  # noqa: BLE001  # reported to the main process
            import traceback

            pool.free(taken)  # nothing of this window was sent: its slots are free again
            if isinstance(exc, FhbError):  # a user error (e.g. a damaged chunk): its one line, as is
                results.put(("user-error", gen, seq, str(exc), {}))
                continue
            results.put(("error", gen, seq, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", {}))
            continue
        results.put(("ok", gen, seq, specs, dict(pool.new)))
        pool.new.clear()


class _Pool:
    """``workers`` processes started once and kept across epochs (see `_worker_main`).

    Window ``k`` of an iteration goes to worker ``k % workers``; each worker answers in order on
    its own queue, so batches come back in plan order whatever the timing.
    """

    def __init__(self, reader: _WindowReader, workers: int) -> None:
        import multiprocessing as mp

        import torch.multiprocessing  # noqa: F401  # registers tensor (shared memory) pickling

        methods = mp.get_all_start_methods()
        ctx = mp.get_context("fork" if "fork" in methods else "spawn")
        self.tasks = [ctx.Queue() for _ in range(workers)]
        self.results = [ctx.Queue() for _ in range(workers)]
        self.procs = [
            ctx.Process(target=_worker_main, args=(reader, self.tasks[w], self.results[w]),
                        name=f"fhb-loader-{w}", daemon=True)
            for w in range(workers)
        ]
        for p in self.procs:
            p.start()
        self.slots: dict[tuple[int, int], np.ndarray] = {}
        self.gen = 0
        self._closed = False
        self._finalizer = weakref.finalize(self, _Pool._stop, self.procs, self.tasks, self.results)

    def __len__(self) -> int:
        return len(self.procs)

    def submit(self, seq: int, item: _Item) -> None:
        self.tasks[seq % len(self.procs)].put(("build", self.gen, seq, item))

    def receive(self, seq: int) -> list[Batch]:
        """The batches of window ``seq`` of the current iteration (blocks until built)."""
        w = seq % len(self.procs)
        while True:
            try:
                kind, gen, got, payload, new = self.results[w].get(timeout=5.0)
            except queue.Empty:
                if not self.procs[w].is_alive():
                    raise FhbError(
                        f"loader worker {w} died (exit code {self.procs[w].exitcode}); out of memory? "
                        f"lower prefetch/window_blocks or use fewer workers"
                    ) from None
                continue
            for slot, tensor in new.items():
                self.slots[(w, slot)] = tensor.numpy()
            if gen != self.gen:  # a window of an abandoned iteration: give its slots back
                if kind == "ok":
                    self._free(w, [spec.slot for spec in payload])
                continue
            if kind == "user-error":
                raise FhbError(payload)
            if kind == "error":
                raise FhbError(f"loader worker {w} failed on window {got}: {payload}")
            assert got == seq, f"worker {w}: expected window {seq}, got {got}"
            return [self._batch(w, spec) for spec in payload]

    def _batch(self, w: int, spec: _BatchSpec) -> Batch:
        views = _views(self.slots[(w, spec.slot)], spec.fields)
        return _tracked_batch(spec, views, lambda slots: self._free(w, slots))

    def _free(self, w: int, slots: list[int]) -> None:
        if self._closed:
            return
        try:
            self.tasks[w].put(("free", slots))
        except (ValueError, OSError):  # queue closed while shutting down
            pass

    def new_iteration(self) -> None:
        """Later results of windows submitted so far are discarded (their slots returned)."""
        self.gen += 1

    def close(self) -> None:
        self._closed = True
        self._finalizer()

    @staticmethod
    def _stop(procs: list[Any], tasks: list[Any], results: list[Any]) -> None:
        for q in tasks:
            try:
                q.put(None)
            except (ValueError, OSError):
                pass
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for q in tasks + results:
            q.close()
            q.cancel_join_thread()


class LakeLoader:
    """Batches of a lake's splits for stage 2 (see the module docstring and `plan_epoch`).

    ``layers``: teacher layer numbers to load (None = all stored; ``[]`` = audio only).
    Exactly one of ``batch_size`` / ``batch_seconds`` (padded audio seconds per batch).
    ``max_seconds`` crops longer utterances (random, frame-aligned). ``rank``/``world_size``:
    DDP; every rank gets the same number of batches (trailing extras dropped). ``workers``: decode
    processes (0 = in-process). ``prefetch``: batches to keep decoded ahead (rounded up to whole
    windows). ``window_blocks``: blocks (or groups of batches) per shuffle window. ``bucketing``:
    ``window`` or ``sorted`` (the published fixed batches over the whole length-sorted set; see
    `fhb.training.epoch`).

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
        bucketing: str = "window",
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
        self.decoder: TargetDecoder | None = (
            TargetDecoder(self.lake.fitted, self.layers) if meta.fitted and self.layers else None
        )
        self._conv = meta.teacher.conv_layers  # the lake's frame rule (fhb.storage.schema)
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
        self.chunk_frames = meta.codec.chunk_frames
        self.batch_size, self.batch_seconds, self.max_seconds = batch_size, batch_seconds, max_seconds
        self.seed, self.workers, self.prefetch = int(seed), int(workers), int(prefetch)
        self.rank, self.world_size = int(rank), int(world_size)
        self.cnn_features, self.shuffle, self.drop_last = cnn_features, shuffle, drop_last
        self.pin_memory, self.window_blocks, self.bucketing = pin_memory, int(window_blocks), bucketing
        self.sample_rate = meta.sample_rate
        self.samples_per_frame = meta.samples_per_frame
        self._epoch = 0
        self._batches_done = 0
        self._resumed = False
        self._plan_cache: tuple[int, EpochPlan] | None = None
        self._pool: _Pool | None = None
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
            bucketing=self.bucketing,
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
        windows: Iterator[list[Batch]]
        if self.workers == 0:
            windows = (self._reader.build(item) for item in items)
        else:
            windows = self._pooled(items, per_item)
        pin = self.pin_memory and torch.cuda.is_available()
        while True:
            # Hold no reference to a batch once it is handed out (nor to its window while the
            # next one is built): a dropped batch's buffer is reused for a later one.
            window = next(windows, None)
            if window is None:
                return
            if pin:
                window = _pin(window)
            window.reverse()
            while window:
                batch = window.pop()
                batch.decoder = self.decoder
                self._batches_done += 1
                yield batch
                del batch

    def _pooled(self, items: list[_Item], per_item: float) -> Iterator[list[Batch]]:
        """Windows built by the worker pool (started on first use, kept across epochs)."""
        if self._pool is None:
            self._pool = _Pool(self._reader, self.workers)
        pool = self._pool
        pool.new_iteration()
        ahead = len(pool) * max(1, math.ceil(self.prefetch / (len(pool) * per_item)))
        submitted = 0
        for k in range(len(items)):
            while submitted < len(items) and submitted < k + ahead:
                pool.submit(submitted, items[submitted])
                submitted += 1
            yield pool.receive(k)

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
        """Stop the worker processes (idempotent; a later iteration starts new ones). Batches
        already handed out stay valid."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> LakeLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
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
