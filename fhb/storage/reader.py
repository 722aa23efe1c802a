"""Reading a lake: `open_lake` -> `Lake` -> `SplitView` (per utterance) / `ShardView` (per range).

Only shards listed in the root attributes and carrying the commit marker are visible. Each
split's index is read once (when the split is first used) and kept in memory; array handles are
opened once per shard and cached, so a random read touches only the chunks that overlap it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.storage import LocalStore

from fhb.errors import FhbError
from fhb.storage.codecs import TargetCodec, blosc_decode_items, check_blosc_frame
from fhb.storage.fitted import FittedCodec
from fhb.storage.fitted_store import read_fitted
from fhb.storage import schema
from fhb.storage.schema import (
    AUDIO_ARRAY,
    CNN_ARRAY,
    ArraySpec,
    LakeMeta,
    ShardAttrs,
    ShardIndex,
    ctc_label_problem,
    is_committed,
    layer_array_name,
    scale_array_name,
    shard_arrays,
)
from fhb.files import check_regular_if_present, open_regular
from fhb.storage.layout import local_lake_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UttEntry:
    """Where one utterance lives: shard, row in the shard's index, frame and sample ranges."""

    utt_id: str
    shard: str
    row: int
    frame_offset: int
    num_frames: int
    sample_offset: int
    num_samples: int


class ShardView:
    """Read access to one committed shard (frame ranges may cross utterances)."""

    def __init__(self, store: Store, split: str, name: str, attrs: ShardAttrs, meta: LakeMeta,
                 fitted: dict[str, FittedCodec] | None = None):
        self._store = store
        self.fitted: dict[str, FittedCodec] = fitted or {}
        self.split = split
        self.name = name
        self.attrs = attrs
        self.meta = meta
        self.codec: TargetCodec = meta.codec
        self._arrays: dict[str, zarr.Array] = {}
        self._rows: dict[str, ArrayRows] = {}
        self._specs: dict[str, ArraySpec] | None = None

    @property
    def index(self) -> ShardIndex:
        """The shard's utterance index (manifest order)."""
        return self.attrs.index

    @property
    def num_frames(self) -> int:
        """Rows of every target array."""
        return self.index.total_frames

    @property
    def num_samples(self) -> int:
        """Length of the audio array."""
        return self.index.total_samples

    @property
    def chunk_frames(self) -> int:
        """Frames per chunk of the target arrays (read whole chunks for throughput)."""
        return self.codec.chunk_frames

    def array(self, name: str) -> zarr.Array:
        """The zarr array ``name`` of this shard (opened once, then cached)."""
        arr = self._arrays.get(name)
        if arr is None:
            _check_local_node(self._store, f"{self.split}/{self.name}/{name}",
                              f"shard {self.split}/{self.name}, array {name}:")
            try:
                arr = zarr.open_array(
                    store=self._store, path=f"{self.split}/{self.name}/{name}", mode="r",
                    zarr_format=3,
                )
            except (FileNotFoundError, KeyError, ValueError) as e:
                raise FhbError(
                    f"shard {self.split}/{self.name}: expected array {name!r}, found none ({e}); "
                    f"the shard is damaged: run `fhb verify` and re-extract it"
                ) from e
            self._check_array(name, arr)
            self._arrays[name] = arr
        return arr

    def _check_array(self, name: str, arr: zarr.Array) -> None:
        """The array is the one the contract describes (shape, chunks, dtype: every shard format)
        and, in shard format 2, its ``zarr.json`` is the one written (codec parameters too)."""
        if self._specs is None:
            self._specs = {a.name: a for a in shard_arrays(self.meta, self.num_frames, self.num_samples)}
        where = f"shard {self.split}/{self.name}, array {name}"
        fix = "the lake is damaged on disk: run `fhb verify` and re-extract the shard"
        spec = self._specs.get(name)
        found = (tuple(arr.shape), tuple(arr.chunks), _native_dtype(arr))
        if spec is None or found != (spec.shape, spec.chunks, spec.dtype):
            want = "no such array" if spec is None else f"shape {list(spec.shape)}, chunks {list(spec.chunks)}, dtype {spec.dtype}"
            raise FhbError(f"{where}: expected {want} (the lake's metadata and index), found shape "
                           f"{list(found[0])}, chunks {list(found[1])}, dtype {found[2]}; {fix}")
        if self.attrs.verifiable:
            raw = store_bytes(self._store, f"{self.split}/{self.name}/{name}/{schema.ZARR_JSON}")
            problem = self.attrs.metadata_problem(name, raw or b"")
            if problem:
                raise FhbError(f"{where}, {schema.ZARR_JSON}: {problem}; {fix}")

    def chunk_check(self, name: str) -> Callable[[int, bytes | np.ndarray], None] | None:
        """``check(i, stored)``: raises the one-line `FhbError` naming the shard, array ``name`` and
        chunk ``i`` unless ``stored`` (the chunk's bytes as read, before decoding) is what was written
        there; None for a legacy shard (format 1: no checksums of stored bytes)."""
        if not self.attrs.verifiable:
            return None
        attrs, where = self.attrs, f"shard {self.split}/{self.name}, array {name}"

        def check(i: int, stored: bytes | np.ndarray) -> None:
            problem = attrs.chunk_problem(name, i, stored)
            if problem:
                raise FhbError(f"{where}, chunk {i}: {problem}; the lake is damaged on disk: run `fhb verify` "
                               f"and re-extract the shard")

        return check

    def read_frames(
        self,
        start: int,
        stop: int,
        layers: Sequence[int] | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Targets of frames ``start:stop``: ``L x n x D`` (float32 unless ``out`` says otherwise).

        ``layers``: teacher layer numbers (None = all stored, in stored order). ``out``: an
        ``L x n x D`` float32/float16 array to decode into (e.g. shared memory).
        """
        names = [layer_array_name(k) for k in self._check_layers(layers)]
        n, d = stop - start, self.meta.teacher.dim
        if out is None:
            out = np.empty((len(names), n, d), dtype=np.float32)
        if out.shape != (len(names), n, d):
            raise FhbError(
                f"read_frames out: expected shape {[len(names), n, d]}, found {list(out.shape)}"
            )
        for i, name in enumerate(names):
            self._decode_into(name, start, stop, out[i])
        return out

    def read_cnn(self, start: int, stop: int) -> np.ndarray:
        """CNN features of frames ``start:stop``: ``n x Dc`` float32."""
        if not self.meta.cnn_features:
            raise FhbError(
                f"lake split {self.split}: expected CNN features, found none (cnn_features is "
                f"false); re-extract with CNN features to use the CNN loss"
            )
        out = np.empty((stop - start, int(self.meta.cnn_dim or 0)), dtype=np.float32)
        return self._decode_into(CNN_ARRAY, start, stop, out)

    def rows(self, name: str) -> ArrayRows:
        """A row-range reader of array ``name`` (see `ArrayRows`; opened once, then cached)."""
        key = f"rows:{name}"
        reader = self._rows.get(key)
        if reader is None:
            reader = self._rows[key] = ArrayRows(self._store, self.array(name), f"{self.split}/{self.name}/{name}",
                                                   self.chunk_check(name))
        return reader

    def read_audio(self, start: int, stop: int) -> np.ndarray:
        """Samples ``start:stop`` of the shard's audio: ``S`` int16 (verified, `read_checked`)."""
        if stop <= start:
            return np.empty(0, dtype=np.int16)
        return self.read_checked(AUDIO_ARRAY, start, stop)

    def _decode_into(self, name: str, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        if stop <= start:
            return out
        data = self.read_checked(name, start, stop)
        fitted = self.fitted.get(name)
        if fitted is not None:  # codes of the array's fitted codec (pca/pq lakes), decoded on the CPU
            return fitted.decode(data, out=out)
        scales = None
        if self.codec.has_scales:
            scales = self.read_checked(scale_array_name(name), *self.codec.scale_rows(start, stop))
        return self.codec.decode(data, scales, first_frame=start, out=out)

    def read_checked(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of array ``name`` as stored, verified (the random-access path).

        Shard format 2: through `rows` (each chunk file checked against its `chunk_checksum` before
        it is decoded, as in the loader). Legacy shards (format 1): whole chunks decoded by zarr,
        each checked against the `crc32` of its values.

        Raises:
            FhbError: naming the shard, array and chunk when a chunk does not decode, is missing
                or holds other bytes or values than were written there (damage on disk).
        """
        arr = self.array(name)
        if self.attrs.verifiable:
            key = f"checked:{name}"  # not the loader's `rows`: this one keeps nothing between reads
            rows = self._rows.get(key)
            if rows is None:
                rows = self._rows[key] = ArrayRows(self._store, arr, f"{self.split}/{self.name}/{name}",
                                                     self.chunk_check(name))
            out = np.empty((max(stop - start, 0), *rows.row_shape), dtype=rows.dtype)
            try:
                return rows.read_into(start, stop, out)
            finally:
                rows.release()
        c = int(arr.chunks[0])
        first, last = start // c, (stop - 1) // c
        lo, hi = first * c, min((last + 1) * c, int(arr.shape[0]))
        where = f"shard {self.split}/{self.name}, array {name}"
        fix = "the lake is damaged on disk: run `fhb verify` and re-extract the shard"
        try:
            data = np.asarray(arr[lo:hi])
        except FhbError:
            raise
        except Exception as exc:  # noqa: BLE001  (codec errors come as several types)
            raise FhbError(f"{where}, chunks {first}..{last}: do not decode ({type(exc).__name__}); {fix}") from None
        for i in range(first, last + 1):
            problem = self.attrs.value_problem(name, i, data[(i - first) * c : (i - first + 1) * c])
            if problem:
                raise FhbError(f"{where}, chunk {i}: {problem}; {fix}")
        return data[start - lo : stop - lo]

    def _check_layers(self, layers: Sequence[int] | None) -> tuple[int, ...]:
        if layers is None:
            return self.meta.layers
        wanted = tuple(int(k) for k in layers)
        missing = [k for k in wanted if k not in self.meta.layers]
        if missing:
            raise FhbError(
                f"lake layers: expected layers among the stored {list(self.meta.layers)}, found "
                f"requests for {missing}, which are not stored; request stored layers or "
                f"re-extract with them"
            )
        return wanted


_LOCAL = threading.local()


def _local_buffer(kind: str, nbytes: int) -> np.ndarray:
    """A per-thread scratch buffer of at least ``nbytes`` (reused: no fresh pages per read)."""
    buf = getattr(_LOCAL, kind, None)
    if buf is None or buf.size < nbytes:
        buf = np.empty(max(nbytes, 4 << 20), dtype=np.uint8)
        setattr(_LOCAL, kind, buf)
    return buf


def _spare_buffers() -> list[np.ndarray]:
    spare = getattr(_LOCAL, "spare", None)
    if spare is None:
        spare = _LOCAL.spare = []
    return spare


class ArrayRows:
    """Decodes row ranges of one array into caller-provided memory, chunk by chunk.

    `read_into` decodes the requested rows (a whole chunk through zarr where the direct path
    below does not apply, kept until `release`, which hands its buffer on for reuse);
    `decode_span` decodes rows of one chunk into a scratch buffer for a batch builder that copies
    them out at once (`fhb.training.loader`, which reads each chunk once per window).

    On a local lake whose arrays use the lake's codec chain (little-endian bytes + Blosc) the chunk
    files are read as they are and decoded with c-blosc directly: no zarr call per read, and a
    chunk whose rows are only partly wanted (at the edge of a block of utterances) decompresses
    only the Blosc blocks that hold them (`fhb.storage.codecs.blosc_decode_items`). Other stores
    and codecs go through zarr, one whole chunk at a time.

    ``check(i, stored)`` (`ShardView.chunk_check`; None for a legacy shard) is called on the bytes
    of chunk ``i`` as read, before anything of them is decoded, and raises if they are not the
    bytes written there: every chunk file is verified each time it is read, whole, also when only
    some of its Blosc blocks are then decoded.
    """

    def __init__(self, store: Store, array: zarr.Array, path: str,
                 check: Callable[[int, bytes | np.ndarray], None] | None = None) -> None:
        self.array = array
        self.path = path
        self._store = store
        self._check = check
        self.chunk_rows = int(array.chunks[0])
        self.rows = int(array.shape[0])
        self.row_shape = tuple(int(n) for n in array.shape[1:])
        self.row_items = int(np.prod(self.row_shape, dtype=np.int64)) if self.row_shape else 1
        self.dtype = _native_dtype(array)
        self._dir: Path | None = None
        codecs = getattr(array.metadata, "codecs", ())
        names = [type(c).__name__ for c in codecs]
        endian = getattr(codecs[0], "endian", None) if codecs else None
        chunked_rows_only = tuple(array.chunks[1:]) == self.row_shape
        if (isinstance(store, LocalStore) and names == ["BytesCodec", "BloscCodec"]
                and (endian is None or getattr(endian, "value", endian) == sys.byteorder)
                and chunked_rows_only):
            self._dir = Path(store.root) / path
        self._decoded: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}  # i -> (first row, rows, buffer)

    @property
    def direct(self) -> bool:
        """Whether chunk files are read and decoded without zarr."""
        return self._dir is not None

    def read_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Rows ``start:stop`` into ``out`` (C-contiguous, ``stop - start`` rows, stored dtype)."""
        c = self.chunk_rows
        pos = start
        while pos < stop:
            i = pos // c
            end = min(stop, (i + 1) * c)
            dest = out[pos - start : end - start]
            lo, hi = pos - i * c, end - i * c
            got = self._decoded.get(i)
            if got is None and self._dir is None:
                got = self._decode(i)
            if got is not None and got[0] <= lo and hi <= got[0] + len(got[1]):
                dest[...] = got[1][lo - got[0] : hi - got[0]]
            else:
                assert self._dir is not None
                blosc_decode_items(self._chunk_bytes(i), lo * self.row_items, dest)
            pos = end
        return out

    def decode_span(self, i: int, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` of chunk ``i`` (chunk-relative), decoded into a scratch buffer that the
        next call overwrites: copy out of it at once (it is still in the CPU cache then)."""
        nbytes = (hi - lo) * self.row_items * self.dtype.itemsize
        rows = _local_buffer("scratch", nbytes)[:nbytes].view(self.dtype).reshape(hi - lo, *self.row_shape)
        return self._decode_rows(i, lo, hi, rows)

    def release(self) -> None:
        """Forget what was decoded (the buffers are reused by later reads)."""
        spare = _spare_buffers()
        spare.extend(buf for _, _, buf in self._decoded.values())
        del spare[16:]  # keep a few for the next window; the rest goes back to the allocator
        self._decoded.clear()

    def _decode(self, i: int) -> tuple[int, np.ndarray, np.ndarray]:
        c = self.chunk_rows
        lo, hi = 0, min(c, self.rows - i * c)
        buf = self._buffer(c * self.row_items * self.dtype.itemsize)
        rows = buf[: (hi - lo) * self.row_items * self.dtype.itemsize].view(self.dtype).reshape(hi - lo, *self.row_shape)
        got = self._decoded[i] = (lo, self._decode_rows(i, lo, hi, rows), buf)
        return got

    def _decode_rows(self, i: int, lo: int, hi: int, rows: np.ndarray) -> np.ndarray:
        """Rows ``lo:hi`` of chunk ``i`` (chunk-relative) into ``rows``: zarr for other stores and
        codecs; c-blosc on the chunk file otherwise, the whole frame at once when all its rows are
        wanted, else only the Blosc blocks that hold them."""
        c = self.chunk_rows
        if self._dir is None:
            if self._check is not None:
                coords = (i,) + (0,) * (self.array.ndim - 1)
                stored = store_bytes(self._store, f"{self.path}/{self.array.metadata.encode_chunk_key(coords)}")
                if stored is None:
                    raise FhbError(f"{self.path}: expected chunk {i}, found none; the shard is damaged: run "
                                   f"`fhb verify` and re-extract it")
                self._check(i, stored)
            rows[...] = np.asarray(self.array[i * c + lo : i * c + hi])
        elif lo == 0 and hi == c:
            import numcodecs.blosc as nb

            src = self._chunk_bytes(i)
            check_blosc_frame(src, self.dtype.itemsize, rows.nbytes, rows.nbytes)
            nb.decompress(src, rows)
        else:
            blosc_decode_items(self._chunk_bytes(i), lo * self.row_items, rows)
        return rows

    def _chunk_bytes(self, i: int) -> np.ndarray:
        """The compressed bytes of chunk ``i`` (in a buffer reused by the next call)."""
        assert self._dir is not None
        coords = (i,) + (0,) * (self.array.ndim - 1)
        path = self._dir / self.array.metadata.encode_chunk_key(coords)
        try:
            fd, st = open_regular(path, f"{self.path}: chunk {i}", "the shard is damaged: run `fhb verify` and "
                                  "re-extract it")
            with open(fd, "rb", buffering=0) as f:
                size = st.st_size
                raw = _local_buffer("raw", size)
                got = f.readinto(memoryview(raw)[:size])
        except FileNotFoundError:
            raise FhbError(
                f"{self.path}: expected chunk {i} at {path}, found none; the shard is damaged: run "
                f"`fhb verify` and re-extract it"
            ) from None
        if got != size:
            raise FhbError(f"{self.path}: chunk {i} ({path}) changed while being read; retry")
        if self._check is not None:
            self._check(i, raw[:size])
        return raw[:size]

    def _buffer(self, size: int) -> np.ndarray:
        """A reused buffer of at least ``size`` bytes (fresh pages cost a page fault per 4 KiB)."""
        spare = _spare_buffers()
        for j, b in enumerate(spare):
            if b.size >= size:
                return spare.pop(j)
        return np.empty(size, dtype=np.uint8)


class SplitView:
    """One split: utterances in manifest order across its committed shards."""

    def __init__(self, store: Store, name: str, meta: LakeMeta, fitted: dict[str, FittedCodec] | None = None) -> None:
        self.name = name
        self.meta = meta
        info = meta.splits[name]
        self._shards: dict[str, ShardView] = {}
        entries: list[UttEntry] = []
        for shard in info.shards:
            attrs = _read_shard_attrs(store, name, shard)
            if attrs is None:
                continue
            view = ShardView(store, name, shard, attrs, meta, fitted)
            self._shards[shard] = view
            idx = attrs.index
            for row, utt in enumerate(idx.utt_ids):
                entries.append(
                    UttEntry(
                        utt, shard, row, int(idx.frame_offsets[row]), int(idx.num_frames[row]),
                        int(idx.sample_offsets[row]), int(idx.num_samples[row]),
                    )
                )
        self._entries = entries
        for dup in schema.duplicate_ids((n, v.index.utt_ids) for n, v in self._shards.items()):
            raise schema.duplicate_id_error(name, dup, "re-extract one of them")
        self._by_id: dict[str, UttEntry] = {e.utt_id: e for e in entries}

    # -- enumeration (for loaders) --------------------------------------------------------------

    @property
    def utterance_ids(self) -> list[str]:
        """Utterance ids in manifest order (shard listing order, then index order)."""
        return [e.utt_id for e in self._entries]

    @property
    def shards(self) -> list[str]:
        """Visible (committed) shard names in listing order."""
        return list(self._shards)

    def shard(self, name: str) -> ShardView:
        """The `ShardView` of shard ``name``."""
        try:
            return self._shards[name]
        except KeyError:
            raise FhbError(
                f"split {self.name!r}: expected one of its shards {self.shards[:5]}..., found "
                f"{name!r}; list shards with SplitView.shards"
            ) from None

    def entries(self) -> list[UttEntry]:
        """``(utt_id, shard, row, frame_offset, num_frames, sample_offset, num_samples)`` rows."""
        return list(self._entries)

    def entry(self, utt_id: str) -> UttEntry:
        """Where ``utt_id`` lives; `FhbError` if the split has no such utterance."""
        e = self._by_id.get(utt_id)
        if e is None:
            raise FhbError(
                f"split {self.name!r}: expected a known utterance id, found {utt_id!r}; see "
                f"SplitView.utterance_ids ({len(self)} utterances)"
            )
        return e

    def shard_of(self, utt_id: str) -> str:
        """Name of the shard holding ``utt_id``."""
        return self.entry(utt_id).shard

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, utt_id: object) -> bool:
        return utt_id in self._by_id

    def __iter__(self) -> Iterator[str]:
        return iter(self.utterance_ids)

    # -- per utterance -------------------------------------------------------------------------

    def audio(self, utt_id: str) -> np.ndarray:
        """Audio of ``utt_id``: ``S`` int16 (exactly as stored)."""
        e = self.entry(utt_id)
        return self._shards[e.shard].read_audio(e.sample_offset, e.sample_offset + e.num_samples)

    def targets(self, utt_id: str, layers: Iterable[int] | None = None) -> np.ndarray:
        """Teacher layers of ``utt_id``: ``L x T x D`` float32 (teacher numbering; None = all)."""
        e = self.entry(utt_id)
        lay = None if layers is None else list(layers)
        return self._shards[e.shard].read_frames(e.frame_offset, e.frame_offset + e.num_frames, lay)

    def cnn_features(self, utt_id: str) -> np.ndarray:
        """CNN features of ``utt_id``: ``T x Dc`` float32."""
        e = self.entry(utt_id)
        return self._shards[e.shard].read_cnn(e.frame_offset, e.frame_offset + e.num_frames)

    def num_frames(self, utt_id: str) -> int:
        """Target frames ``T`` of ``utt_id``."""
        return self.entry(utt_id).num_frames

    def num_samples(self, utt_id: str) -> int:
        """Audio samples ``S`` of ``utt_id``."""
        return self.entry(utt_id).num_samples

    def transcript(self, utt_id: str) -> str:
        """Transcript of ``utt_id``."""
        e = self.entry(utt_id)
        return self._shards[e.shard].index.transcripts[e.row]

    def ctc_labels(self, utt_id: str) -> tuple[int, ...] | None:
        """The CTC teacher's greedy labels of ``utt_id`` (ids of ``meta.teacher.ctc_vocab``); None in a
        lake whose teacher is not a CTC model."""
        e = self.entry(utt_id)
        labels = self._shards[e.shard].index.ctc_labels
        vocab = self.meta.teacher.ctc_vocab
        where = f"split {self.name!r}, shard {e.shard!r}"
        if labels is None and vocab is not None:
            raise FhbError(f"{where}: expected the column ctc_labels (the lake's teacher is a CTC model), found none; "
                           f"re-extract the shard")
        if labels is None or vocab is None:
            return None
        problem = ctc_label_problem(labels[e.row], len(vocab))
        if problem:
            raise FhbError(f"{where}: ctc_labels of {utt_id!r}: {problem}; the shard is damaged: run `fhb verify` and "
                           f"re-extract it")
        return labels[e.row]

    def speaker(self, utt_id: str) -> str:
        """Speaker id of ``utt_id`` (string)."""
        e = self.entry(utt_id)
        return self._shards[e.shard].index.speakers[e.row]

    def chapter(self, utt_id: str) -> str:
        """Chapter id of ``utt_id`` (string)."""
        e = self.entry(utt_id)
        return self._shards[e.shard].index.chapters[e.row]


class Lake:
    """An opened lake: metadata plus lazily built `SplitView`s."""

    def __init__(self, store: Store, location: str, attrs: dict[str, Any]) -> None:
        self._store = store
        self.location = location
        self.attrs = attrs
        self.meta = LakeMeta.from_dict(attrs, f"lake {location}")
        self._splits: dict[str, SplitView] = {}
        self._fitted: dict[str, FittedCodec] | None = None

    @property
    def fitted(self) -> dict[str, FittedCodec]:
        """``{array: FittedCodec}`` of a pca/pq lake (loaded once, sha256-checked); empty otherwise."""
        if self._fitted is None:
            self._fitted = read_fitted(self._store, self.meta)
        return self._fitted

    @property
    def splits(self) -> list[str]:
        """Split names listed in the lake."""
        return list(self.meta.splits)

    @property
    def codec(self) -> TargetCodec:
        """How targets are encoded and chunked."""
        return self.meta.codec

    def __contains__(self, split: object) -> bool:
        return split in self.meta.splits

    def __getitem__(self, split: str) -> SplitView:
        view = self._splits.get(split)
        if view is None:
            if split not in self.meta.splits:
                raise FhbError(
                    f"lake {self.location}: expected one of its splits {self.splits}, found "
                    f"{split!r}; extract that split first or pick a listed one"
                )
            view = self._splits[split] = SplitView(self._store, split, self.meta, self.fitted)
        return view

    def __repr__(self) -> str:
        return f"Lake({self.location!r}, splits={self.splits}, dtype={self.meta.dtype})"


def open_lake(path: str | os.PathLike[str] | Store) -> Lake:
    """Open a lake for reading: a local directory, or any zarr `Store` (e.g. fsspec)."""
    if isinstance(path, Store):
        store, location = path, str(path)
    else:
        p = local_lake_dir(path)
        store, location = LocalStore(Path(p), read_only=True), str(p)
    try:
        group = zarr.open_group(store=store, mode="r", zarr_format=3, use_consolidated=False)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise FhbError(
            f"lake {location}: expected a Zarr v3 group, found none ({e}); point at a lake "
            f"written by `fhb extract`"
        ) from e
    return Lake(store, location, dict(group.attrs))


def store_bytes(store: Store, key: str) -> bytes | None:
    """The bytes stored under ``key`` (None if there are none): a chunk or ``zarr.json`` exactly
    as stored, for checksums."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    buf = sync(store.get(key, prototype=default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def _native_dtype(arr: zarr.Array) -> np.dtype:
    return np.dtype(arr.dtype.to_native_dtype() if hasattr(arr.dtype, "to_native_dtype") else arr.dtype)


def _check_local_node(store: Store, node: str, where: str) -> None:
    """On a local lake, the ``zarr.json`` of ``node`` is a regular file if present (zarr would block
    on a FIFO in its place, or read a device without end)."""
    if isinstance(store, LocalStore):
        check_regular_if_present(Path(store.root) / node / schema.ZARR_JSON, where,
                                 "the lake is damaged: run `fhb verify` and re-extract the shard")


def _read_shard_attrs(store: Store, split: str, shard: str) -> ShardAttrs | None:
    where = f"shard {split}/{shard}"
    _check_local_node(store, f"{split}/{shard}", f"{where}:")
    try:
        group = zarr.open_group(
            store=store, path=f"{split}/{shard}", mode="r", zarr_format=3, use_consolidated=False
        )
    except (FileNotFoundError, KeyError, ValueError):
        logger.warning("%s is listed but missing; treating it as absent (run `fhb verify`)", where)
        return None
    raw = dict(group.attrs)
    if not is_committed(raw):
        logger.warning("%s has no commit marker; treating it as absent (run `fhb verify`)", where)
        return None
    attrs = ShardAttrs.from_attrs(raw, where)
    problem = attrs.location_problem(split, shard)
    if problem:
        raise FhbError(f"{where}: {problem}; the lake is damaged: run `fhb verify` and re-extract the shard")
    return attrs
