"""`LakeWriter`: the client side of writing a lake, in one object (lhotse's writer in spirit).

::

    with LakeWriter(path, meta, overwrite=False) as lake:   # lock, then create or reopen (resume)
        lake.check_plan(split, shard, utt_ids)             # a committed shard holds what is planned
        if not lake.is_committed(split, shard):
            with lake.shard(split, shard, expected_frames=..., expected_samples=...) as w:
                w.add(...)                                   # a `ShardWriter`
                w.commit()
        lake.list_split(split, shard_names)                 # list the committed shards, in order
        if lake.stored_teacher() is None:                   # the teacher's weights, once
            lake.store_teacher(tensors, source)

    with LakeWriter.reopen(path) as lake: ...              # an existing lake, whatever its layout

The lock (`LakeLock`) is held for the whole block, so one client drives a lake at a time. Workers
in other processes (dask) write their shards with ``ShardWriter(lake.path, split, shard,
lake.meta)`` directly: only the client updates the root attributes.

``--overwrite`` of an existing lake builds the new one beside it and swaps it in when complete::

    target = overwrite_target(out, overwrite, "fhb extract")     # out, or .out.tmp-partial
    with replacing_lake(out, target, meta, planned, "extract"), LakeWriter(target, meta) as lake: ...
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from fhb.errors import FhbError
from fhb.files import PARTIAL, beside, build_beside

from fhb.storage.fitted import FittedCodec
from fhb.storage.layout import local_lake_dir, read_node_attrs
from fhb.storage.lock import LakeLock
from fhb.storage.schema import ZARR_JSON, LakeMeta, ShardAttrs, SplitInfo, StoredTeacher, is_committed
from fhb.storage.teacher_store import TeacherSource, adopt_teacher, stored_teacher, write_teacher
from fhb.storage.writer import ShardWriter, create_lake, foreign_lake_entries, update_split_listing

logger = logging.getLogger(__name__)


class LakeWriter:
    """Lock, create or reopen, plan check, shards and split listings of one lake (a context manager).

    Args:
        path: the lake directory (local filesystem).
        meta: the layout to write (`LakeMeta`; its split listings are ignored: they start empty).
        overwrite: replace a lake of another layout (see `create_lake`).
        fitted: the fitted codecs of a pca/pq lake (see `create_lake`).
    """

    def __init__(self, path: str | os.PathLike[str], meta: LakeMeta, overwrite: bool = False,
                 fitted: Mapping[str, FittedCodec] | None = None) -> None:
        self.path = Path(path)
        self._fitted = fitted
        self._requested = meta
        self._overwrite = overwrite
        self._lock = LakeLock(self.path)
        self._meta: LakeMeta | None = None

    @classmethod
    def reopen(cls, path: str | os.PathLike[str]) -> LakeWriter:
        """A writer of the existing lake at ``path`` with the layout it has (`FhbError` if there is
        no lake there)."""
        root = local_lake_dir(path)
        return cls(root, LakeMeta.from_dict(read_node_attrs(root) or {}, f"lake {root}"))

    @property
    def meta(self) -> LakeMeta:
        """The layout stored in the lake (what `create_lake` returned)."""
        if self._meta is None:
            raise ValueError("LakeWriter.meta: use the writer inside its `with` block")
        return self._meta

    def __enter__(self) -> LakeWriter:
        self._lock.acquire()
        try:
            self._meta = create_lake(self.path, self._requested, overwrite=self._overwrite, fitted=self._fitted)
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._meta = None
        self._lock.release()

    def committed(self, split: str, shard: str) -> ShardAttrs | None:
        """The attributes of ``split/shard`` when it is committed, else None."""
        attrs = read_node_attrs(self.path / split / shard)
        if not is_committed(attrs):
            return None
        return ShardAttrs.from_attrs(attrs or {}, f"shard {split}/{shard}")

    def is_committed(self, split: str, shard: str) -> bool:
        """Whether ``split/shard`` is committed (for resuming: committed shards are done)."""
        return is_committed(read_node_attrs(self.path / split / shard))

    def check_plan(self, split: str, shard: str, utt_ids: Sequence[str]) -> None:
        """A committed ``split/shard`` must hold exactly ``utt_ids`` (same order); `FhbError` if not."""
        found = self.committed(split, shard)
        if found is not None and list(found.index.utt_ids) != list(utt_ids):
            raise FhbError(
                f"lake {self.path}: committed shard {split}/{shard} holds other utterances than "
                f"this run plans (was it extracted with another --shard-hours, --order or corpus?); "
                f"rerun with the original options (a lake begun before length ordering was the "
                f"default needs --order manifest), or pass --overwrite to start over"
            )

    def shard(
        self,
        split: str,
        name: str,
        *,
        expected_frames: int | None = None,
        expected_samples: int | None = None,
        background: bool = True,
        threads: int | None = None,
    ) -> ShardWriter:
        """A `ShardWriter` for ``split/name`` of this lake (see its docs; commit it, or it is discarded)."""
        return ShardWriter(self.path, split, name, self.meta, expected_frames=expected_frames,
                           expected_samples=expected_samples, background=background, threads=threads)

    def list_split(self, split: str, shard_names: Sequence[str]) -> SplitInfo:
        """List ``shard_names`` (all committed) as ``split``, in that order (`update_split_listing`)."""
        info = update_split_listing(self.path, split, shard_names)
        self._meta = self.meta.with_split(split, info)
        return info

    def stored_teacher(self) -> StoredTeacher | None:
        """The lake's stored teacher when it is complete and of the lake's teacher (sha256 checked;
        a complete one that a crash left unrecorded is recorded now), else None."""
        self.meta  # noqa: B018  # inside the `with` block only: the lock must be held
        found = stored_teacher(self.path) or adopt_teacher(self.path)
        self._reload()
        return found

    def store_teacher(self, tensors: Mapping[str, np.ndarray], source: TeacherSource) -> StoredTeacher:
        """Store the teacher's weights (``{fairseq name: array}``) in the lake (`write_teacher`)."""
        self.meta  # noqa: B018  # inside the `with` block only: the lock must be held
        stored = write_teacher(self.path, tensors, source)
        self._reload()
        return stored

    def _reload(self) -> None:
        self._meta = LakeMeta.from_dict(read_node_attrs(self.path) or {}, f"lake {self.path}")


Planned = Mapping[str, Mapping[str, Sequence[str]]]
"""``{split: {shard: utterance ids}}``: the shards a run will write and what each must hold."""


def overwrite_target(out: Path, overwrite: bool, command: str) -> Path:
    """Where a lake-building ``command`` writes: ``out``, or with ``overwrite`` of an existing lake
    (or to continue an interrupted overwrite) its partial sibling ``.LAKE.tmp-partial``."""
    partial = beside(out, f"tmp-{PARTIAL}")
    if overwrite and ((out / ZARR_JSON).is_file() or partial.is_dir()):
        return partial
    if partial.is_dir():
        logger.warning("an interrupted `%s --overwrite` of %s left its partial new lake in %s: rerun "
                       "with --overwrite to continue it, or delete it", command, out, partial)
    return out


@contextlib.contextmanager
def replacing_lake(out: Path, target: Path, meta: LakeMeta, planned: Planned, kind: str) -> Iterator[None]:
    """With ``target`` beside ``out`` (`overwrite_target`): hold the old lake's lock for the whole
    run (its readers and writers are refused), build the new lake in ``target`` (continuing an
    interrupted one of the same layout and plan, `partial_matches`) and swap it in; a failure leaves
    the old lake as it was (`fhb.files.build_beside`; ``kind`` names the command in its messages).
    A no-op when ``target`` is ``out``."""
    if target == out:
        yield
        return
    old = LakeLock(out) if out.is_dir() and not out.is_symlink() else None
    with old if old is not None else contextlib.nullcontext():
        with build_beside(out, kind, foreign=foreign_lake_entries,
                          resume=lambda partial: partial_matches(partial, meta, planned)) as built:
            assert built == target, (built, target)
            yield
        if old is not None:
            old.forget()  # the old lake, with its lock file, was swapped out and deleted
    logger.info("lake %s replaced by the new %s", out, "extraction" if kind == "extract" else kind)


def partial_matches(partial: Path, meta: LakeMeta, planned: Planned) -> bool:
    """Whether a partial lake was started with ``meta``'s layout and, shard by shard, ``planned``."""
    attrs = read_node_attrs(partial) if (partial / ZARR_JSON).is_file() else None
    if attrs is None:
        return True  # nothing written yet
    try:
        if meta.layout_differences(LakeMeta.from_dict(attrs, f"lake {partial}")):
            return False
        for split, shards in planned.items():
            for shard, utt_ids in shards.items():
                found = read_node_attrs(partial / split / shard)
                if is_committed(found) and list(ShardAttrs.from_attrs(found or {}, shard).index.utt_ids) \
                        != list(utt_ids):
                    return False
    except FhbError:
        return False
    return True
