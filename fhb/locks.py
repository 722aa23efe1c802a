"""One lock for every folder fhb writes in place (a lake, a run directory), with crash recovery.

The lock is a file ``<folder>/.fhb.lock`` created with ``O_CREAT | O_EXCL`` holding JSON
``{"pid", "hostname", "machine_id", "boot_id", "pid_start", "pid_ns", "started", "token", "command"}``.
A second acquirer is refused with one line naming the holder, unless the holder is **provably
dead** (`LockInfo.dead_because`), as git decides for its ``gc.pid`` file:

- it ran on this host (same hostname and, where both are known, the same ``/etc/machine-id``), and
- this host has rebooted since (``/proc/sys/kernel/random/boot_id`` differs: a power cut), or its
  pid no longer runs (or is a zombie), or the pid now belongs to another process (its start time,
  field 22 of ``/proc/<pid>/stat``, differs from the one recorded: the pid was reused).

Such a lock is **taken over** with a warning naming the folder, the dead pid and host and why it is
known to be dead: after a SIGKILL, the OOM killer or a power cut the same command just resumes.
A lock from another host (a shared filesystem) or from another pid namespace (a container) cannot
be checked and is never taken over; ``fhb unlock FOLDER`` (`break_lock`) is the user's call there.
Two processes taking over the same dead lock at once are serialised by ``flock`` on the folder
itself (released by the kernel when a process dies, so it cannot go stale); where the filesystem
has no ``flock``, nothing is taken over and the refusal names ``fhb unlock``.

Standard library only: every layer may use it (`fhb.storage.lock` builds the lake's lock and its
readers' leases on it; ``fhb distill`` locks its run directory with it).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import functools
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fhb.errors import FhbError
from fhb.files import read_small

logger = logging.getLogger(__name__)

LOCK_FILE = ".fhb.lock"
"""Name of the lock file inside the locked folder."""


# ---------------------------------------------------------------------------------------------
# Who is this process, and is another one still alive?


def _read_first_line(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.readline().strip()
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def boot_id() -> str:
    """This boot of the kernel (``/proc/sys/kernel/random/boot_id``); ``""`` where unknown."""
    return _read_first_line("/proc/sys/kernel/random/boot_id")


@functools.lru_cache(maxsize=1)
def machine_id() -> str:
    """This machine (``/etc/machine-id``, stable across boots); ``""`` where unknown."""
    return _read_first_line("/etc/machine-id")


@functools.lru_cache(maxsize=1)
def pid_namespace() -> str:
    """The pid namespace of this process (``pid:[4026531836]``); ``""`` where unknown."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_start(pid: int) -> tuple[bool, int | None]:
    """``(running, start)`` of ``pid``: whether it runs (a zombie does not), and its start time in
    clock ticks after boot (field 22 of ``/proc/<pid>/stat``; None where unknown)."""
    if pid <= 0:
        return False, None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0] != "Z", int(fields[19])
    except (OSError, IndexError, ValueError):
        pass
    try:  # no /proc (or not readable): ask the kernel whether the pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, None
    except PermissionError:
        return True, None
    return True, None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie does not)."""
    return process_start(pid)[0]


# ---------------------------------------------------------------------------------------------
# The lock record.


@dataclass(frozen=True)
class LockInfo:
    """Who holds a lock (as written in the lock file, or in a reader's lease)."""

    pid: int
    hostname: str
    started: str
    token: str = ""
    command: str = ""
    boot_id: str = ""
    pid_start: int | None = None
    machine_id: str = ""
    pid_ns: str = ""

    @classmethod
    def of_this_process(cls) -> LockInfo:
        """A record naming this process (a fresh token)."""
        return cls(pid=os.getpid(), hostname=socket.gethostname(),
                   started=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   token=uuid.uuid4().hex, command=" ".join(sys.argv)[:500], boot_id=boot_id(),
                   pid_start=process_start(os.getpid())[1], machine_id=machine_id(), pid_ns=pid_namespace())

    @classmethod
    def from_dict(cls, d: object) -> LockInfo:
        """Parse a record (`ValueError`/`KeyError`/`TypeError` when it is not one). Records of an
        older fhb lack the identity fields: their holder is judged by its pid alone."""
        if not isinstance(d, dict):
            raise ValueError("not a mapping")
        start = d.get("pid_start")
        return cls(pid=int(d["pid"]), hostname=str(d["hostname"]), started=str(d.get("started", "?")),
                   token=str(d.get("token", "")), command=str(d.get("command", "")),
                   boot_id=str(d.get("boot_id") or ""), pid_start=None if start is None else int(start),
                   machine_id=str(d.get("machine_id") or ""), pid_ns=str(d.get("pid_ns") or ""))

    def to_dict(self) -> dict[str, object]:
        """The JSON record."""
        return {"pid": self.pid, "hostname": self.hostname, "started": self.started, "token": self.token,
                "command": self.command, "boot_id": self.boot_id, "pid_start": self.pid_start,
                "machine_id": self.machine_id, "pid_ns": self.pid_ns}

    def on_this_host(self) -> bool:
        """Same hostname and, where both are recorded, the same machine id."""
        return self.hostname == socket.gethostname() and (
            not self.machine_id or not machine_id() or self.machine_id == machine_id())

    def dead_because(self) -> str | None:
        """Why the holder is provably gone, or None when it may still run (or cannot be checked:
        another host, another pid namespace, an unreadable record)."""
        if self.pid <= 0 or not self.on_this_host():
            return None
        if self.boot_id and boot_id() and self.boot_id != boot_id():
            return "this host has rebooted since it took the lock"
        if self.pid_ns and pid_namespace() and self.pid_ns != pid_namespace():
            return None  # another container's pids: not ours to check
        running, start = process_start(self.pid)
        if not running:
            return f"pid {self.pid} is no longer running"
        if self.pid_start is not None and start is not None and start != self.pid_start:
            return f"pid {self.pid} now belongs to another process, started at tick {start}, not {self.pid_start}"
        return None

    def is_stale(self) -> bool:
        """True when the holder is provably dead (`dead_because`)."""
        return self.dead_because() is not None

    def describe(self) -> str:
        """``pid 123 on host h since 2025-...``."""
        return f"pid {self.pid} on host {self.hostname} since {self.started}"

    def describe_with_command(self) -> str:
        """`describe` and, when recorded, the holder's command line in parentheses."""
        return self.describe() + (f" ({self.command})" if self.command else "")


UNREADABLE = LockInfo(pid=-1, hostname="?", started="?")
"""What `read_lock` returns for a lock file that cannot be parsed (a crash between create and write)."""


def lock_path(folder: str | os.PathLike[str]) -> Path:
    """Path of the lock file of ``folder``."""
    return Path(folder) / LOCK_FILE


SETTLE_SECONDS = 5.0
"""How long a lock file younger than this may stay unparsable before it counts as `UNREADABLE`: its
holder creates it (``O_EXCL``) and then writes its record, and a process descheduled in between
(a loaded machine) must not have its live lock reported as damaged."""


LOCK_MAX_BYTES = 1 << 16
"""The largest lock record (or reader lease) fhb reads; its own are under 1 kB."""


def read_lock(folder: str | os.PathLike[str]) -> LockInfo | None:
    """The current holder of the folder's lock, None when unlocked, `UNREADABLE` when unparsable.

    A lock file just created whose record is not written yet is read again until it is (at most
    `SETTLE_SECONDS` after its creation); an older unparsable one (a crash between create and
    write, or damage) is `UNREADABLE` at once. Something else in its place (a directory, a FIFO,
    a device, a file over `LOCK_MAX_BYTES`) is `FhbError` naming it (`fhb.files.read_small`).
    """
    path = lock_path(folder)
    while True:
        try:
            text = read_small(path, LOCK_MAX_BYTES, "lock file", "fhb only ever writes a small regular file there: if "
                              "no fhb process is using the folder, remove it by hand").decode("utf-8", errors="replace")
            age = time.time() - path.stat().st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return LockInfo.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError):
            if not 0 <= age < SETTLE_SECONDS:
                return UNREADABLE
        time.sleep(0.01)


def break_lock(folder: str | os.PathLike[str], what: str = "lake") -> LockInfo | None:
    """Remove the folder's lock file (what ``fhb unlock FOLDER`` does); returns the former holder.

    Refuses (`FhbError`) while the holder is another process that is still running on this host:
    breaking its lock would let a second writer change the folder at the same time.
    """
    info = read_lock(folder)
    if info is not None and info.pid != os.getpid() and info.on_this_host() and info.pid > 0 \
            and info.dead_because() is None and process_alive(info.pid):
        raise FhbError(
            f"{what} {folder} is locked by {info.describe_with_command()}, which is still running; stop that "
            f"process first (or, if pid {info.pid} is not an fhb process, delete {lock_path(folder)} by hand)"
        )
    try:
        lock_path(folder).unlink()
    except FileNotFoundError:
        return None
    logger.info("removed lock of %s held by %s", folder, info.describe() if info else "?")
    return info


@contextlib.contextmanager
def folder_flock(folder: Path) -> Iterator[bool]:
    """Hold ``flock(LOCK_EX)`` on the directory ``folder`` itself; yields False (holding nothing)
    where the filesystem cannot (then nothing may be taken over). The kernel drops it when the
    process dies, so it never goes stale."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the flock


class FolderLock:
    """Context manager holding the exclusive lock of a folder (created, with its parents, if missing).

    ``what`` names the folder in messages (``lake``, ``run directory``). A second acquirer gets
    `FhbError` naming the holder, unless the holder is provably dead: then the lock is taken over
    with a warning. With ``remove_created``, a folder this lock created is removed again on release
    if it is then empty (a refused command leaves nothing behind).
    """

    what = "folder"
    remove_created = False

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = lock_path(folder)
        self._token: str | None = None
        self._created: list[Path] = []  # folders this lock made (the folder first, then its new parents)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._token is not None

    def acquire(self) -> FolderLock:
        """Take the lock (taking over a dead holder's) or raise `FhbError` naming the holder and the fix."""
        if self.held:
            return self
        self._make_folder()
        for _ in range(5):  # a lock released or taken over between our tries: try again
            mine = LockInfo.of_this_process()
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_lock(self.folder)
                if holder is None:
                    continue
                reason = holder.dead_because()
                if reason is None or not self._take_over(holder, reason):
                    self._forget_folder()
                    raise self._held_error(holder, reason)
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(mine.to_dict(), f)
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:  # e.g. a full disk: leave no empty lock file that `fhb unlock` must clear
                self.path.unlink(missing_ok=True)
                self._forget_folder()
                raise
            self._token = mine.token
            logger.debug("locked %s", self.folder)
            return self
        self._forget_folder()
        raise FhbError(f"{self.what} {self.folder}: expected to take its lock, found it changing hands "
                       "repeatedly; retry")

    def release(self) -> None:
        """Release the lock if this object holds it (never removes someone else's lock)."""
        if not self.held:
            return
        current = read_lock(self.folder)
        if current is not None and current.token == self._token:
            self.path.unlink(missing_ok=True)
            logger.debug("unlocked %s", self.folder)
        else:
            logger.warning(
                "lock of %s was broken or taken over while held (now: %s); leaving it",
                self.folder, current.describe() if current else "none",
            )
        self._token = None
        self._forget_folder()

    def forget(self) -> None:
        """Stop holding without touching the folder: it was replaced, and its lock file went with the
        old one (`fhb.files.build_beside` swapped a new folder in)."""
        self._token = None
        self._created = []

    def _make_folder(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise FhbError(f"{self.what} {self.folder}: expected a directory, found a file; choose another path")
        if self.folder.is_dir():
            return
        missing = [p for p in (self.folder, *self.folder.absolute().parents) if not p.exists()]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FhbError(f"{self.what} {self.folder}: cannot create the directory ({exc.strerror}); "
                           "choose another path") from None
        self._created = missing

    def _forget_folder(self) -> None:
        """Remove the folders this lock created (the folder, then its new parents) if they are empty."""
        created, self._created = self._created, []
        if not self.remove_created:
            return
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                return  # not empty: the run wrote into it (or someone else did)

    def _take_over(self, holder: LockInfo, reason: str) -> bool:
        """Remove ``holder``'s lock (provably dead: ``reason``); False where that cannot be done safely."""
        with folder_flock(self.folder) as exclusive:
            if not exclusive:
                return False
            if read_lock(self.folder) != holder:  # someone else took it over first
                return True
            self.path.unlink(missing_ok=True)
        logger.warning("%s %s: taking over the lock of %s, which is gone (%s: it was killed, ran out of memory "
                       "or lost power); resuming%s", self.what, self.folder, holder.describe(), reason,
                       f"; it ran: {holder.command}" if holder.command else "")
        return True

    def _held_error(self, info: LockInfo, dead: str | None) -> FhbError:
        clear = f"fhb unlock {self.folder}"
        if info.pid < 0:
            return FhbError(
                f"{self.what} {self.folder} is locked ({self.path}) but the lock file is unreadable; "
                f"if no fhb process is using it, clear it with: {clear}"
            )
        if dead is not None:  # dead, but the filesystem cannot serialise a takeover
            return FhbError(
                f"{self.what} {self.folder} has a stale lock: {info.describe()}, which is no longer running "
                f"({dead}); this filesystem has no flock to take it over safely: clear it with: {clear}"
            )
        return FhbError(
            f"{self.what} {self.folder} is locked by {info.describe_with_command()}; wait for it to finish, "
            f"or if that process is gone, clear it with: {clear}"
        )

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
