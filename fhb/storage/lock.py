"""An exclusive lock on a lake, held by the one client process that drives an extraction,
and the leases of the processes that read it (``fhb distill``, ``fhb evaluate``).

Readers register a file ``<lake>/.fhb.readers/<host>-<pid>-<token>.json`` (`LakeReadLease`); a
writer refuses while a live reader is registered, a reader refuses while a writer holds the lock.
Each side first publishes itself, then looks for the other, so two that start together cannot both
miss each other. Registrations of dead processes on this host are ignored (and removed).

The lock is a file ``<lake>/.fhb.lock`` created with ``O_CREAT | O_EXCL`` holding JSON
``{"pid", "hostname", "started", "token", "command"}``. Workers writing shards do not take it;
only the client (which creates the lake and updates the root listing) does.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from fhb.errors import FhbError
from fhb.storage.schema import LOCK_FILE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LockInfo:
    """Who holds a lock (as written in the lock file)."""

    pid: int
    hostname: str
    started: str
    token: str = ""
    command: str = ""

    def is_stale(self) -> bool:
        """True when the holder ran on this host and its pid is no longer alive."""
        return self.hostname == socket.gethostname() and not _pid_alive(self.pid)

    def describe(self) -> str:
        """``pid 123 on host h since 2025-...``."""
        return f"pid {self.pid} on host {self.hostname} since {self.started}"


def lock_path(lake_path: str | os.PathLike[str]) -> Path:
    """Path of the lock file of ``lake_path``."""
    return Path(lake_path) / LOCK_FILE


def read_lock(lake_path: str | os.PathLike[str]) -> LockInfo | None:
    """The current holder of the lake's lock, or None when unlocked.

    A lock file that cannot be parsed (e.g. a crash between create and write) is reported with
    pid -1 and hostname ``"?"``.
    """
    p = lock_path(lake_path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        return None
    try:
        d = json.loads(text)
        return LockInfo(
            pid=int(d["pid"]),
            hostname=str(d["hostname"]),
            started=str(d.get("started", "?")),
            token=str(d.get("token", "")),
            command=str(d.get("command", "")),
        )
    except (ValueError, KeyError, TypeError):
        return LockInfo(pid=-1, hostname="?", started="?")


def break_lock(lake_path: str | os.PathLike[str]) -> LockInfo | None:
    """Remove the lake's lock file (what ``fhb unlock LAKE`` does); returns the former holder.

    Refuses (`FhbError`) while the holder is another process that is still running on this host:
    breaking its lock would let a second extraction write the lake at the same time.
    """
    info = read_lock(lake_path)
    if info is not None and info.pid != os.getpid() and info.hostname == socket.gethostname() \
            and _pid_alive(info.pid):
        raise FhbError(
            f"lake {lake_path} is locked by {info.describe()}, which is still running"
            + (f" ({info.command})" if info.command else "")
            + f"; stop that process first (or, if pid {info.pid} is not an fhb process, delete "
            f"{lock_path(lake_path)} by hand)"
        )
    try:
        lock_path(lake_path).unlink()
    except FileNotFoundError:
        return None
    logger.info("removed lock of %s held by %s", lake_path, info.describe() if info else "?")
    return info


class LakeLock:
    """Context manager holding the exclusive lock of a lake (creates the lake directory).

    A second acquirer gets `FhbError` naming the holder; a lock whose holder ran on this host and
    has died is reported as stale with the command that clears it (``fhb unlock LAKE``).
    """

    def __init__(self, lake_path: str | os.PathLike[str]) -> None:
        self.lake_path = Path(lake_path)
        self.path = lock_path(lake_path)
        self._token: str | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._token is not None

    def acquire(self) -> LakeLock:
        """Take the lock or raise `FhbError` naming the holder and the fix."""
        if self.held:
            return self
        if self.lake_path.exists() and not self.lake_path.is_dir():
            raise FhbError(
                f"lake {self.lake_path}: expected a directory, found a file; choose another path"
            )
        try:
            self.lake_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FhbError(
                f"lake {self.lake_path}: cannot create the directory ({exc.strerror}); choose another path"
            ) from None
        token = uuid.uuid4().hex
        info = {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "token": token,
            "command": " ".join(sys.argv)[:500],
        }
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise self._held_error() from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:  # e.g. a full disk: leave no empty lock file that `fhb unlock` must clear
            self.path.unlink(missing_ok=True)
            raise
        self._token = token
        readers = live_readers(self.lake_path)
        if readers:
            self.release()
            first = readers[0]
            raise FhbError(
                f"lake {self.lake_path} is being read by {first.describe()}"
                + (f" ({first.command})" if first.command else "")
                + (f" and {len(readers) - 1} other reader(s)" if len(readers) > 1 else "")
                + "; expected no reader while writing (it would train on changing targets): wait for it to finish"
            )
        logger.debug("locked %s", self.lake_path)
        return self

    def release(self) -> None:
        """Release the lock if this object holds it (never removes someone else's lock)."""
        if not self.held:
            return
        current = read_lock(self.lake_path)
        if current is not None and current.token == self._token:
            self.path.unlink(missing_ok=True)
            logger.debug("unlocked %s", self.lake_path)
        else:
            logger.warning(
                "lock of %s was broken or taken over while held (now: %s); leaving it",
                self.lake_path,
                current.describe() if current else "none",
            )
        self._token = None

    def _held_error(self) -> FhbError:
        info = read_lock(self.lake_path)
        clear = f"fhb unlock {self.lake_path}"
        if info is None:  # released between our attempt and the read
            return FhbError(
                f"lake {self.lake_path}: expected no lock, found one that vanished while "
                f"checking; retry"
            )
        if info.pid < 0:
            return FhbError(
                f"lake {self.lake_path} is locked ({self.path}) but the lock file is unreadable; "
                f"if no fhb process is using the lake, clear it with: {clear}"
            )
        if info.is_stale():
            return FhbError(
                f"lake {self.lake_path} has a stale lock: {info.describe()}, which is no longer "
                f"running; clear it with: {clear}"
            )
        return FhbError(
            f"lake {self.lake_path} is locked by {info.describe()}"
            + (f" ({info.command})" if info.command else "")
            + f"; wait for it to finish, or if that process is gone, clear it with: {clear}"
        )

    def __enter__(self) -> LakeLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


READERS_DIR = ".fhb.readers"
"""Folder of a lake where the processes reading it register (`LakeReadLease`)."""


def _lock_info(d: object) -> LockInfo:
    if not isinstance(d, dict):
        raise ValueError("not a mapping")
    return LockInfo(pid=int(d["pid"]), hostname=str(d["hostname"]), started=str(d.get("started", "?")),
                    token=str(d.get("token", "")), command=str(d.get("command", "")))


def live_readers(lake_path: str | os.PathLike[str], prune: bool = False) -> list[LockInfo]:
    """Processes registered as readers of the lake that may still run.

    Registrations of dead processes on this host are ignored; ``prune`` also deletes them (readers
    do, when they leave: a writer never changes the lake before it holds it).
    """
    folder = Path(lake_path) / READERS_DIR
    try:
        entries = sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        try:
            info = _lock_info(json.loads(entry.read_text()))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written this instant, or damaged: not a proof of a reader
        if info.is_stale():
            if prune:
                entry.unlink(missing_ok=True)
            continue
        found.append(info)
    return found


class LakeReadLease:
    """Context manager: this process reads the lake; writers are refused until it leaves.

    Refuses (`FhbError`) when a writer holds the lake's lock (a stale lock of a dead writer on this
    host is only a warning: its committed shards are complete). A lake this process cannot write
    (read-only media) is read without registering, with a warning.
    """

    def __init__(self, lake_path: str | os.PathLike[str]) -> None:
        self.lake_path = Path(lake_path)
        self._file: Path | None = None

    def __enter__(self) -> LakeReadLease:
        token = uuid.uuid4().hex
        info = {"pid": os.getpid(), "hostname": socket.gethostname(), "token": token,
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)[:500]}
        folder = self.lake_path / READERS_DIR
        path = folder / f"{info['hostname']}-{os.getpid()}-{token}.json"
        try:
            folder.mkdir(exist_ok=True)
            with open(path, "x", encoding="utf-8") as f:
                json.dump(info, f)
            self._file = path
        except OSError as exc:
            logger.warning("cannot register as a reader of %s (%s); a writer started now would not be refused",
                           self.lake_path, exc.strerror or exc)
        writer = read_lock(self.lake_path)
        if writer is not None and writer.pid != os.getpid():
            if writer.is_stale():
                logger.warning("lake %s has a stale lock (%s, no longer running): an extraction was interrupted; "
                               "reading its committed shards", self.lake_path, writer.describe())
            else:
                self._leave()
                raise FhbError(
                    f"lake {self.lake_path} is being written by {writer.describe()}"
                    + (f" ({writer.command})" if writer.command else "")
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
            self._file_folder().rmdir()
        except OSError:
            pass  # other readers, or already gone

    def _file_folder(self) -> Path:
        return self.lake_path / READERS_DIR


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) still answers kill(0): treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True
