"""Writing a lake: `create_lake` (client), `ShardWriter` (one per shard, in a worker), and
`update_split_listing` (client, after shards commit).

Who writes what:

- The client process (holding `LakeLock`) creates the lake and is the only writer of the root
  attributes (`create_lake`, `update_split_listing`).
- Each worker writes its shard straight into the store with a `ShardWriter`; nothing funnels
  through the client. A shard is written under ``<split>/_tmp_<shard>_<hex>``, then renamed to
  ``<split>/<shard>`` and marked ``committed: true`` (the marker is written last).

A `ShardWriter` stages frames into whole chunks and hands each full chunk to a background
thread that encodes and writes it, then checksums the chunk file as stored, so the caller's next teacher step overlaps with
compression and I/O. Chunks are written once each, never rewritten.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from fhb.errors import FhbError
from fhb.storage.codecs import TargetCodec
from fhb.storage.fitted import FittedCodec
from fhb.storage.fitted_store import read_fitted, write_fitted
from fhb.storage.schema import (
    AUDIO_ARRAY,
    CNN_ARRAY,
    COMMITTED_ATTR,
    FORMAT_NAME,
    INDEX_COLUMNS,
    CTC_LABELS_COLUMN,
    LOCK_FILE,
    TEACHER_DIR,
    TMP_PREFIX,
    TRASH_PREFIX,
    ZARR_JSON,
    LakeMeta,
    ctc_label_problem,
    ShardAttrs,
    ShardIndex,
    SplitInfo,
    check_name,
    chunk_checksum,
    duplicate_id_error,
    duplicate_ids,
    is_committed,
    layer_array_name,
    metadata_checksum,
    scale_array_name,
    shard_arrays,
    writing_attrs,
)
from fhb.storage.layout import is_committed_dir, leftovers_of, read_node_attrs, remove_tree
from fhb.storage.lock import READERS_DIR

logger = logging.getLogger(__name__)

_ARRAY_CONFIG = {"write_empty_chunks": True}  # every chunk exists on disk: a missing one is damage


# ---------------------------------------------------------------------------------------------
# Client side: create the lake, list committed shards.


def create_lake(path: str | os.PathLike[str], meta: LakeMeta, overwrite: bool = False,
                fitted: Mapping[str, FittedCodec] | None = None) -> LakeMeta:
    """Create the lake at ``path`` (a local directory) or reopen it to resume.

    An existing lake with the same layout (teacher sha256, layers, dtype, codec, CNN, rates) is
    reopened as is (its split listings kept; splits named in ``meta`` but absent are added
    empty). A different layout raises `FhbError` unless ``overwrite``, which deletes the lake's
    contents first. A non-empty directory that is not an fhb lake is never deleted. Split
    listings in a fresh lake start empty; `update_split_listing` fills them.

    ``fitted``: the fitted codecs of a pca/pq lake (``{array: FittedCodec}``, whose specs are
    ``meta.fitted``); their parameters are written under ``_codecs/`` when the lake is created.

    Returns the metadata now stored in the lake.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise FhbError(f"lake {p}: expected a directory, found a file; choose another path")
    attrs = read_node_attrs(p) if (p / ZARR_JSON).is_file() else None
    if attrs is not None and attrs.get("format") != FORMAT_NAME:
        raise FhbError(
            f"lake {p}: expected an fhb lake or an empty directory, found a Zarr group that is "
            f"not an fhb lake; choose another path (fhb never deletes foreign data)"
        )
    if attrs is not None:
        try:
            existing = LakeMeta.from_dict(attrs, f"lake {p}")
            diffs = meta.layout_differences(existing)
        except FhbError as e:
            if not overwrite:
                raise FhbError(
                    f"lake {p}: cannot resume it ({e}); use a new lake path, or pass "
                    f"overwrite=True (--overwrite) to delete it and start over"
                ) from e
            diffs = ["unreadable metadata"]
        if not diffs:
            missing = {s: SplitInfo() for s in meta.splits if s not in existing.splits}
            if missing:
                merged = existing
                for s, info in missing.items():
                    merged = merged.with_split(s, info)
                write_root_attrs(p, merged)
                existing = merged
            for s in existing.splits:
                _ensure_split_group(p, s)
            logger.info("reopening lake %s (%d splits; its committed shards are kept)", p, len(existing.splits))
            return existing
        if not overwrite:
            raise FhbError(
                f"lake {p} exists with a different layout (requested != stored: "
                f"{'; '.join(diffs)}); expected the same teacher, layers and dtype to resume: use "
                f"a new lake path, or pass overwrite=True (--overwrite) to delete it and start over"
            )
        logger.warning("overwriting lake %s (%s)", p, "; ".join(diffs))
        _wipe(p)
    elif p.exists():
        # A kill while zarr wrote the new lake's first zarr.json leaves only its temporary file.
        for leftover in p.glob(f"{ZARR_JSON.split('.')[0]}.*.partial"):
            leftover.unlink(missing_ok=True)
        entries = sorted(e.name for e in p.iterdir() if e.name != LOCK_FILE)
        if entries:
            raise FhbError(
                f"lake {p}: expected an empty or missing directory, found a directory that is "
                f"not an fhb lake (contains {entries[:5]}); choose another path"
            )
    p.mkdir(parents=True, exist_ok=True)
    fresh = replace(meta, splits={s: SplitInfo() for s in meta.splits})
    if meta.fitted and (fitted is None or {k: v.spec() for k, v in fitted.items()} != meta.fitted):
        raise ValueError("create_lake: pass the FittedCodecs whose specs are meta.fitted")
    zarr.create_group(store=LocalStore(p), attributes=fresh.to_dict(), zarr_format=3)
    if fitted:
        write_fitted(p, fitted)
    for s in fresh.splits:
        _ensure_split_group(p, s)
    logger.info("created lake %s (layers %s, %s)", p, list(meta.layers), meta.dtype)
    return fresh


def update_split_listing(
    lake_path: str | os.PathLike[str], split: str, shard_names: Sequence[str]
) -> SplitInfo:
    """Set the listing of ``split`` to ``shard_names`` (manifest order) in the root attributes.

    Every shard must be committed; totals are recomputed from the shards' indexes; utterance
    ids must be unique across the split. Call from the single client process only.
    """
    p = Path(lake_path)
    check_name("split", split)
    meta = _read_meta(p)
    utterances = samples = frames = 0
    shards: list[ShardAttrs] = []
    for shard in shard_names:
        check_name("shard", shard)
        d = p / split / shard
        attrs = read_node_attrs(d)
        if not is_committed(attrs):
            raise FhbError(
                f"shard {split}/{shard} of lake {p}: expected a committed shard, found "
                f"{'nothing' if attrs is None else 'an uncommitted shard'}; re-run extraction "
                f"for it before listing it"
            )
        sa = ShardAttrs.from_attrs(attrs or {}, f"shard {split}/{shard}")
        shards.append(sa)
        utterances += sa.num_utterances
        samples += sa.index.total_samples
        frames += sa.index.total_frames
    for dup in duplicate_ids((name, sa.index.utt_ids) for name, sa in zip(shard_names, shards)):
        raise duplicate_id_error(split, dup, "fix the shard plan (each utterance in one shard)")
    info = SplitInfo(tuple(shard_names), utterances, samples, frames)
    write_root_attrs(p, meta.with_split(split, info))
    _ensure_split_group(p, split)
    logger.info(
        "split %s: %d shards, %d utterances, %.2f h", split, len(shard_names), utterances,
        samples / meta.sample_rate / 3600,
    )
    return info


def _read_meta(p: Path) -> LakeMeta:
    attrs = read_node_attrs(p)
    if attrs is None:
        raise FhbError(
            f"lake {p}: expected a lake (zarr.json with fhb attributes), found "
            f"{'nothing' if not p.exists() else 'no readable zarr.json'}; create it with "
            f"create_lake (fhb extract) first"
        )
    return LakeMeta.from_dict(attrs, f"lake {p}")


def write_root_attrs(p: Path, meta: LakeMeta) -> None:
    """Write ``meta`` as the root attributes (the client holding the lock only; Zarr's
    ``LocalStore`` replaces ``zarr.json`` atomically)."""
    group = zarr.open_group(LocalStore(p), mode="r+", zarr_format=3, use_consolidated=False)
    group.attrs.update(meta.to_dict())


def _ensure_split_group(p: Path, split: str) -> None:
    check_name("split", split)
    if (p / split / ZARR_JSON).is_file():
        return
    try:
        zarr.create_group(store=LocalStore(p), path=split, zarr_format=3)
    except Exception:  # noqa: BLE001  # a concurrent worker created it first
        if not (p / split / ZARR_JSON).is_file():
            raise


def _own_lake_entry(e: Path) -> bool:
    """Whether ``e`` (a lake root or split entry) is something fhb writes there; symlinks never are."""
    if e.is_symlink():
        return False
    if e.name == ZARR_JSON or e.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
        return True
    return e.is_dir() and (e.name == TEACHER_DIR or (e / ZARR_JSON).is_file())


def foreign_lake_entries(p: Path) -> list[str]:
    """Entries of the lake ``p`` (its root and split groups) that fhb did not write there."""
    foreign: list[str] = []
    for e in sorted(p.iterdir()):
        if e.name in (LOCK_FILE, READERS_DIR):
            continue
        if not _own_lake_entry(e):
            foreign.append(e.name)
        elif e.is_dir() and e.name != TEACHER_DIR and (e / ZARR_JSON).is_file():
            foreign += [f"{e.name}/{c.name}" for c in sorted(e.iterdir()) if not _own_lake_entry(c)]
    return foreign


def _wipe(p: Path) -> None:
    """Delete the lake's own entries (never a user's files, never through a symlink)."""
    foreign = foreign_lake_entries(p)
    if foreign:
        raise FhbError(
            f"lake {p}: --overwrite deletes only what fhb wrote, found other entries {foreign[:5]}; "
            "move them out of the lake (or choose another --out) and rerun"
        )
    for e in p.iterdir():
        if e.name in (LOCK_FILE, READERS_DIR):
            continue
        if e.is_dir():
            remove_tree(e)
        else:
            e.unlink()


# ---------------------------------------------------------------------------------------------
# Worker side: one shard.


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
        ctc_labels: Sequence[int] | None = None,
    ) -> None:
        """Add one utterance after the previous ones (``ctc_labels``: every utterance or none)."""
        r = self.rows
        if ctc_labels is not None:
            r.setdefault(CTC_LABELS_COLUMN, []).append([int(k) for k in ctc_labels])
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


class _Stream:
    """Stages rows of ``K`` parallel arrays (``K x n x ...``) into chunks of ``chunk`` rows.

    Full chunks are handed to ``emit(chunk_index, stage, rows)``; the stage buffer is then
    replaced (the emitted one belongs to the consumer).
    """

    def __init__(
        self,
        k: int,
        chunk: int,
        row_shape: tuple[int, ...],
        dtype: np.dtype,
        emit: Callable[[int, np.ndarray, int], None],
    ) -> None:
        self.k, self.chunk, self.row_shape, self.dtype, self.emit = k, chunk, row_shape, dtype, emit
        self.stage = self._new()
        self.fill = 0
        self.next_chunk = 0
        self.total = 0

    def _new(self) -> np.ndarray:
        return np.empty((self.k, self.chunk, *self.row_shape), dtype=self.dtype)

    def push(self, x: np.ndarray) -> None:
        """Append ``x`` (``K x n x ...``)."""
        n = x.shape[1]
        pos = 0
        while pos < n:
            take = min(n - pos, self.chunk - self.fill)
            self.stage[:, self.fill : self.fill + take] = x[:, pos : pos + take]
            self.fill += take
            pos += take
            if self.fill == self.chunk:
                self._emit()
        self.total += n

    def flush(self) -> None:
        """Emit the partial last chunk (if any)."""
        if self.fill:
            self._emit()

    def _emit(self) -> None:
        stage, rows = self.stage, self.fill
        self.stage, self.fill = self._new(), 0
        self.emit(self.next_chunk, stage, rows)
        self.next_chunk += 1


class ShardWriter:
    """Writes one shard of one split, then commits it atomically.

    Usage (in a worker)::

        with ShardWriter(lake, "train-clean-100", "shard-00003", meta,
                         expected_frames=..., expected_samples=...) as w:
            for utt in shard_utterances:
                w.add(utt.id, utt.speaker, utt.chapter, utt.text, audio, targets, cnn)
            w.commit()

    Leaving the block without `commit` (or with an exception) discards the shard. Creating a
    writer removes what earlier attempts at the same shard left (temporary or uncommitted
    directories); a committed shard is replaced only when the new one commits. One writer per
    shard at a time.

    ``expected_frames`` / ``expected_samples`` (totals from the manifest) preallocate the arrays
    at their exact size; without them arrays grow chunk by chunk. ``background`` writes chunks
    on a thread (at most ``max_pending`` chunks in flight) so encoding and I/O overlap the
    caller's compute; ``threads`` encode the layers of a chunk in parallel (default: up to 8).
    """

    def __init__(
        self,
        lake_path: str | os.PathLike[str],
        split: str,
        shard_name: str,
        meta: LakeMeta,
        *,
        expected_frames: int | None = None,
        expected_samples: int | None = None,
        background: bool = True,
        max_pending: int = 2,
        threads: int | None = None,
    ) -> None:
        self.lake_path = Path(lake_path)
        self.split = check_name("split", split)
        self.shard = check_name("shard", shard_name)
        self.where = f"shard {split}/{shard_name} of lake {self.lake_path}"
        stored = _read_meta(self.lake_path)
        diffs = meta.layout_differences(stored)
        if diffs:
            raise FhbError(
                f"{self.where}: expected the lake's layout, found a different one (requested != "
                f"stored: {'; '.join(diffs)}); pass the metadata create_lake returned"
            )
        self.meta = stored
        self.codec: TargetCodec = stored.codec
        self.fitted: dict[str, FittedCodec] = read_fitted(self.lake_path, stored)
        self.expected_frames = expected_frames
        self.expected_samples = expected_samples
        self._committed = False
        self._closed = False

        split_dir = self.lake_path / split
        _ensure_split_group(self.lake_path, split)
        for old in leftovers_of(split_dir, shard_name):
            remove_tree(old)
        final = split_dir / shard_name
        if final.exists() and not is_committed_dir(final):
            logger.info("%s: removing uncommitted earlier attempt", self.where)
            remove_tree(final)
        self.tmp_name = f"{TMP_PREFIX}{shard_name}_{uuid.uuid4().hex[:12]}"
        self.tmp_dir = split_dir / self.tmp_name

        self._index = IndexBuilder()
        self._ids: set[str] = set()
        self._skipped: list[dict[str, str]] = []
        self._crcs: dict[str, list[int]] = {}
        self._arrays: dict[str, zarr.Array] = {}
        self._create_group()

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fhb-shard-writer") if background else None
        n_threads = min(8, os.cpu_count() or 1) if threads is None else threads
        self._layer_pool = (
            ThreadPoolExecutor(n_threads, thread_name_prefix="fhb-shard-encode")
            if n_threads > 1
            else None
        )
        self._max_pending = max(1, max_pending)
        self._pending: deque[Future[None]] = deque()
        layers = self.meta.layers
        d = self.meta.teacher.dim
        c = self.codec.chunk_frames
        self._targets = _Stream(len(layers), c, (d,), np.dtype(np.float32), self._emit_targets)
        self._cnn = (
            _Stream(1, c, (self.meta.cnn_dim,), np.dtype(np.float32), self._emit_cnn)
            if self.meta.cnn_features
            else None
        )
        self._audio = _Stream(
            1, self.codec.audio_chunk_samples, (), np.dtype(np.int16), self._emit_audio
        )

    # -- public API ---------------------------------------------------------------------------

    def add(
        self,
        utt_id: str,
        speaker: str | int,
        chapter: str | int,
        transcript: str,
        audio_int16: np.ndarray,
        targets: np.ndarray,
        cnn: np.ndarray | None = None,
        ctc_labels: Sequence[int] | None = None,
    ) -> None:
        """Append one utterance.

        ``audio_int16``: ``S`` int16 samples. ``targets``: ``L x T x D`` float (L = stored layers
        in order, D = teacher dim). ``cnn``: ``T x Dc`` when the lake stores CNN features.
        ``T`` is stored as the utterance's frame count (the caller computes it from ``S`` with
        the teacher's conv arithmetic; `verify_lake` checks it). ``ctc_labels``: the teacher's
        greedy CTC labels, exactly when the lake's teacher has a ``ctc_vocab``.
        """
        self._check_open()
        self._raise_background_errors()
        what = f"{self.where}, utterance {utt_id!r}"
        if not isinstance(utt_id, str) or not utt_id:
            raise FhbError(f"{self.where}: expected a non-empty string utterance id, found {utt_id!r}")
        if utt_id in self._ids:
            raise FhbError(f"{what}: expected a new utterance id, found it added twice; fix the shard plan")
        audio = np.asarray(audio_int16)
        if audio.dtype != np.int16 or audio.ndim != 1:
            raise FhbError(
                f"{what}: audio expected a 1-D int16 array [S], found {audio.dtype} "
                f"{list(audio.shape)}; convert with (x * 32767).round().astype(np.int16)"
            )
        t = np.asarray(targets)
        n_layers, dim = len(self.meta.layers), self.meta.teacher.dim
        if t.ndim != 3 or t.shape[0] != n_layers or t.shape[2] != dim:
            raise FhbError(
                f"{what}: targets expected [L x T x D] = [{n_layers} x T x {dim}] (layers "
                f"{list(self.meta.layers)}), found {list(t.shape)}; pass exactly the stored layers"
            )
        if not np.issubdtype(t.dtype, np.floating):
            raise FhbError(f"{what}: targets expected floating point, found {t.dtype}")
        n_frames = t.shape[1]
        if self._cnn is not None:
            if cnn is None:
                raise FhbError(
                    f"{what}: expected CNN features [T x {self.meta.cnn_dim}] (the lake stores "
                    f"them), found None; pass cnn="
                )
            c = np.asarray(cnn)
            if c.shape != (n_frames, self.meta.cnn_dim):
                raise FhbError(
                    f"{what}: cnn expected [{n_frames} x {self.meta.cnn_dim}], found {list(c.shape)}"
                )
            self._check_values(c, f"{what}, cnn")
        elif cnn is not None:
            raise FhbError(
                f"{what}: expected no CNN features (the lake has cnn_features false), found an "
                f"array; drop cnn= or create the lake with cnn_features"
            )
        self._check_values(t, f"{what}, targets")
        self._check_ctc_labels(ctc_labels, what)
        if (
            self.expected_frames is not None
            and self._index.frames + n_frames > self.expected_frames
        ) or (
            self.expected_samples is not None
            and self._index.samples + len(audio) > self.expected_samples
        ):
            raise FhbError(
                f"{what}: expected at most {self.expected_frames} frames / "
                f"{self.expected_samples} samples in the shard (from the manifest), found more; "
                f"fix expected_frames/expected_samples (frames come from the conv arithmetic)"
            )
        self._ids.add(utt_id)
        self._index.append(utt_id, str(speaker), str(chapter), transcript, len(audio), n_frames, ctc_labels)
        self._targets.push(t)
        if self._cnn is not None:
            self._cnn.push(np.asarray(cnn)[None])
        self._audio.push(audio[None])

    def _check_ctc_labels(self, labels: Sequence[int] | None, what: str) -> None:
        vocab = self.meta.teacher.ctc_vocab
        if (labels is None) != (vocab is None):
            raise FhbError(
                f"{what}: expected {'no CTC labels (the teacher is not a CTC model)' if vocab is None else 'the teacher greedy CTC labels'}, "
                f"found {'none' if labels is None else 'some'}; pass ctc_labels= exactly for a CTC teacher's lake")
        problem = None if labels is None or vocab is None else ctc_label_problem([int(k) for k in labels], len(vocab))
        if problem:
            raise FhbError(f"{what}: CTC labels {problem}; fix the labels")

    def skip(self, utt_id: str, path: str, reason: str) -> None:
        """Record an utterance that was not stored (listed in the shard's ``skipped``)."""
        self._check_open()
        self._skipped.append({"utt_id": str(utt_id), "path": str(path), "reason": str(reason)})
        logger.info("%s: skipped %s (%s)", self.where, utt_id, reason)

    def commit(self) -> ShardAttrs:
        """Write the tail, checksums and index, rename into place, then set ``committed``."""
        self._check_open()
        self._targets.flush()
        if self._cnn is not None:
            self._cnn.flush()
        self._audio.flush()
        self._drain()
        frames, samples = self._index.frames, self._index.samples
        if (self.expected_frames is not None and frames != self.expected_frames) or (
            self.expected_samples is not None and samples != self.expected_samples
        ):
            raise FhbError(
                f"{self.where}: expected {self.expected_frames} frames / {self.expected_samples} "
                f"samples (from the manifest), found {frames} / {samples}; fix the manifest "
                f"totals or the frame arithmetic"
            )
        index = self._index.build()
        attrs = ShardAttrs(
            committed=False,
            split=self.split,
            name=self.shard,
            index=index,
            skipped=tuple(self._skipped),
            checksums=self._crcs,
            metadata_checksums={name: metadata_checksum(self.split, self.shard, name,
                                                        (self.tmp_dir / name / ZARR_JSON).read_bytes())
                                for name in self._arrays},
            written={
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "fhb_version": self.meta.fhb_version,
            },
        )
        group = zarr.open_group(
            LocalStore(self.tmp_dir), mode="r+", zarr_format=3, use_consolidated=False
        )
        group.attrs.update(attrs.to_attrs())

        final = self.lake_path / self.split / self.shard
        trash = None
        if final.exists():
            trash = final.with_name(f"{TRASH_PREFIX}{self.shard}_{uuid.uuid4().hex[:12]}")
            os.rename(final, trash)
        os.rename(self.tmp_dir, final)
        group = zarr.open_group(LocalStore(final), mode="r+", zarr_format=3, use_consolidated=False)
        group.attrs.update({COMMITTED_ATTR: True})  # the commit marker, written last
        if trash is not None:
            remove_tree(trash)
        self._committed = True
        self._close()
        logger.info(
            "committed %s: %d utterances, %d frames, %d skipped",
            self.where, len(index), frames, len(self._skipped),
        )
        return ShardAttrs.from_attrs(read_node_attrs(final) or {}, self.where)

    def abort(self) -> None:
        """Discard the shard being written (idempotent)."""
        if self._closed:
            return
        if self._pool is not None:
            for f in self._pending:
                f.cancel()
        self._close()
        if self.tmp_dir.exists():
            remove_tree(self.tmp_dir)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self._committed:
            return
        if exc_type is None:
            logger.warning("%s: left without commit(); discarding it", self.where)
        self.abort()

    @property
    def num_utterances(self) -> int:
        """Utterances added so far."""
        return len(self._index)

    # -- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise FhbError(
                f"{self.where}: expected an open writer, found it "
                f"{'committed' if self._committed else 'aborted'}; create a new ShardWriter"
            )

    def _check_values(self, x: np.ndarray, what: str) -> None:
        if x.size == 0:
            return
        hi, lo = float(np.max(x)), float(np.min(x))
        limit = 65504.0 if self.codec.dtype == "float16" else float(np.finfo(np.float32).max)
        if not (np.isfinite(hi) and np.isfinite(lo)):
            raise FhbError(
                f"{what}: expected finite values, found NaN/inf; check the teacher checkpoint "
                f"and this utterance's audio"
            )
        if max(hi, -lo) > limit:
            raise FhbError(
                f"{what}: expected |x| <= {limit:g} for dtype {self.codec.dtype}, found "
                f"{max(hi, -lo):g}; use dtype bfloat16 or float32 for this teacher"
            )

    def _create_group(self) -> None:
        store = LocalStore(self.lake_path)
        path = f"{self.split}/{self.tmp_name}"
        zarr.create_group(
            store=store,
            path=path,
            zarr_format=3,
            attributes=writing_attrs(),
        )
        compressors = self.codec.compressors()
        specs = shard_arrays(self.meta, int(self.expected_frames or 0), int(self.expected_samples or 0))
        for spec in specs:
            self._arrays[spec.name] = zarr.create_array(
                store,
                name=f"{path}/{spec.name}",
                shape=spec.shape,
                chunks=spec.chunks,
                dtype=spec.dtype,
                compressors=compressors,
                fill_value=0,
                attributes={"fhb": spec.attrs},
                config=_ARRAY_CONFIG,
                zarr_format=3,
            )
            self._crcs[spec.name] = []

    def _submit(self, job: Callable[[], None]) -> None:
        if self._pool is None:
            job()
            return
        self._pending.append(self._pool.submit(job))
        while len(self._pending) > self._max_pending:
            self._pending.popleft().result()

    def _raise_background_errors(self) -> None:
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def _close(self) -> None:
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._layer_pool is not None:
            self._layer_pool.shutdown(wait=True)
            self._layer_pool = None
        self._pending.clear()

    def _emit_targets(self, chunk: int, stage: np.ndarray, rows: int) -> None:
        names = [layer_array_name(k) for k in self.meta.layers]
        self._submit(lambda: self._write_target_chunk(names, chunk, stage, rows))

    def _emit_cnn(self, chunk: int, stage: np.ndarray, rows: int) -> None:
        self._submit(lambda: self._write_target_chunk([CNN_ARRAY], chunk, stage, rows))

    def _emit_audio(self, chunk: int, stage: np.ndarray, rows: int) -> None:
        self._submit(lambda: self._write_chunk(AUDIO_ARRAY, chunk, stage[0, :rows]))

    def _write_target_chunk(self, names: list[str], chunk: int, stage: np.ndarray, rows: int) -> None:
        """Encode and write chunk ``chunk`` of every array in ``names`` (layers in parallel)."""

        def one(j: int) -> None:
            # Values were checked per utterance in add(); no second pass here.
            fitted = self.fitted.get(names[j])
            if fitted is not None:
                data, scales = fitted.encode(stage[j, :rows]), None
            else:
                data, scales = self.codec.encode(stage[j, :rows], check=False)
            self._write_chunk(names[j], chunk, data)
            if scales is not None:
                self._write_chunk(scale_array_name(names[j]), chunk, scales)

        if self._layer_pool is None or len(names) == 1:
            for j in range(len(names)):
                one(j)
        else:
            list(self._layer_pool.map(one, range(len(names))))

    def _write_chunk(self, name: str, chunk: int, data: np.ndarray) -> None:
        arr = self._arrays[name]
        start = chunk * arr.chunks[0]
        stop = start + data.shape[0]
        if arr.shape[0] < stop:  # growing (no expected size): extend by this chunk
            arr.resize((stop, *arr.shape[1:]))
        assert stop <= arr.shape[0], f"{name}: chunk {chunk} ends at {stop} > {arr.shape[0]}"
        arr[start:stop] = data
        crcs = self._crcs[name]
        assert len(crcs) == chunk, f"{name}: chunk {chunk} written out of order"
        # The checksum of the bytes as stored (read back from the page cache): what readers check.
        key = arr.metadata.encode_chunk_key((chunk,) + (0,) * (arr.ndim - 1))
        crcs.append(chunk_checksum(self.split, self.shard, name, chunk, (self.tmp_dir / name / key).read_bytes()))
