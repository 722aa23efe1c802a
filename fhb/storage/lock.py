"""The lake's locks: the exclusive lock of the one client process that drives an extraction
(`LakeLock`), and the leases of the processes that read it (``fhb distill``, ``fhb evaluate``).

Both are `fhb.locks` records (pid, host, boot id, process start time, ...), judged by one rule
(`fhb.locks.LockInfo.dead_because`): a holder that ran on this host and is provably dead is taken
over with a warning; a live one, or one of another host, is refused with one line.

Readers register a file ``<lake>/.fhb.readers/<host>-<pid>-<token>.json`` (`LakeReadLease`); a
writer refuses while a live reader is registered, a reader refuses while a writer holds the lock.
Each side first publishes itself, then looks for the other, so two that start together cannot both
miss each other. Leases of dead readers are removed, with a warning, by the next writer or reader.

The lock is the file ``<lake>/.fhb.lock`` (`fhb.locks.FolderLock`). Workers writing shards do not
take it; only the client (which creates the lake and updates the root listing) does.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from fhb.errors import FhbError
from fhb.files import read_small
from fhb.locks import LOCK_MAX_BYTES, LockInfo, FolderLock, lock_path, read_lock
from fhb.locks import break_lock as _break_lock

__all__ = ["READERS_DIR", "LakeLock", "LakeReadLease", "LockInfo", "break_lock", "live_readers", "lock_path",
           "read_lock"]

logger = logging.getLogger(__name__)


def break_lock(lake_path: str | os.PathLike[str]) -> LockInfo | None:
    """Remove a lake's (or a run directory's) lock file: ``fhb unlock`` (see `fhb.locks.break_lock`)."""
    return _break_lock(lake_path, "lake" if (Path(lake_path) / "zarr.json").is_file() else "folder")


class LakeLock(FolderLock):
    """Context manager holding the exclusive lock of a lake (creates the lake directory).

    A second acquirer gets `FhbError` naming the holder; a lock whose holder ran on this host and
    is provably dead is taken over with a warning. Refused while a live reader holds a lease.
    """

    what = "lake"

    @property
    def lake_path(self) -> Path:
        """The locked lake."""
        return self.folder

    def acquire(self) -> LakeLock:
        """Take the lock or raise `FhbError` naming the holder (or a reader) and the fix."""
        if self.held:
            return self
        super().acquire()
        readers = live_readers(self.folder, prune=True)
        if readers:
            self.release()
            first = readers[0]
            raise FhbError(
                f"lake {self.folder} is being read by {first.describe_with_command()}"
                + (f" and {len(readers) - 1} other reader(s)" if len(readers) > 1 else "")
                + "; expected no reader while writing (it would train on changing targets): wait for it to finish"
            )
        return self

    def __enter__(self) -> LakeLock:
        return self.acquire()


READERS_DIR = ".fhb.readers"
"""Folder of a lake where the processes reading it register (`LakeReadLease`)."""


def live_readers(lake_path: str | os.PathLike[str], prune: bool = False) -> list[LockInfo]:
    """Processes registered as readers of the lake that may still run.

    Leases of provably dead readers are ignored; ``prune`` also deletes them, with a warning
    (writers do once they hold the lake, readers when they leave).
    """
    folder = Path(lake_path) / READERS_DIR
    try:
        entries = sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        try:
            info = LockInfo.from_dict(json.loads(read_small(entry, LOCK_MAX_BYTES, "reader lease")))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError, FhbError):
            continue  # being written this instant, damaged, or not a lease fhb wrote: not a proof of a reader
        dead = info.dead_because()
        if dead is not None:
            if prune:
                entry.unlink(missing_ok=True)
                logger.warning("lake %s: removed the reader lease of %s, which is gone (%s)", lake_path,
                               info.describe_with_command(), dead)
            continue
        found.append(info)
    return found


class LakeReadLease:
    """Context manager: this process reads the lake; writers are refused until it leaves.

    Refuses (`FhbError`) when a live writer holds the lake's lock (the lock of a provably dead
    writer is only a warning: its committed shards are complete). A lake this process cannot write
    (read-only media) is read without registering, with a warning.
    """

    def __init__(self, lake_path: str | os.PathLike[str]) -> None:
        self.lake_path = Path(lake_path)
        self._file: Path | None = None

    def __enter__(self) -> LakeReadLease:
        info = LockInfo.of_this_process()
        folder = self.lake_path / READERS_DIR
        path = folder / f"{info.hostname}-{info.pid}-{info.token}.json"
        try:
            folder.mkdir(exist_ok=True)
            with open(path, "x", encoding="utf-8") as f:
                json.dump(info.to_dict(), f)
            self._file = path
        except OSError as exc:
            logger.warning("cannot register as a reader of %s (%s); a writer started now would not be refused",
                           self.lake_path, exc.strerror or exc)
        try:
            writer = read_lock(self.lake_path)
        except FhbError:  # not a lock file in its place: leave no lease behind
            self._leave()
            raise
        if writer is not None and writer.pid != os.getpid():
            dead = writer.dead_because()
            if dead is not None:
                logger.warning("lake %s has the lock of %s, which is gone (%s): an extraction was interrupted; "
                               "reading its committed shards", self.lake_path, writer.describe_with_command(), dead)
            else:
                self._leave()
                raise FhbError(
                    f"lake {self.lake_path} is being written by {writer.describe_with_command()}"
                    + f"; expected no writer while reading: wait for it to finish (if that process is gone, "
                    f"clear the lock with: fhb unlock {self.lake_path})"
                )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._leave()

    def _leave(self) -> None:
        if self._file is None:
            return
        self._file.unlink(missing_ok=True)
        self._file = None
        live_readers(self.lake_path, prune=True)  # and those of readers that were killed
        try:
            (self.lake_path / READERS_DIR).rmdir()
        except OSError:
            pass  # other readers, or already gone
