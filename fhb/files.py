"""Files: crash-safe writes and content hashes, one helper each for every package of fhb.

- `atomic_write_bytes` / `atomic_write_text` / `atomic_torch_save`: the data goes to a temporary
  name beside ``path``, is fsync'ed, moved into place with `os.replace`, and the directory is
  fsync'ed: a crash leaves either the old file or the new one, never a torn one.
- `build_beside`: a folder is built under a temporary sibling name and swapped into place when
  complete (an existing folder is replaced only then); a failure leaves the old folder as it was.
  A long build (an extraction) may be resumable: its sibling keeps a fixed name and survives a
  failure or a kill, and the next build of the same folder continues it.

- `sha256_file`: the hex sha256 of a file's bytes (teachers, checkpoints, stored weights).
- `read_small`: a small metadata file's bytes, refusing a FIFO, device or directory in its place
  (without blocking on it) and a file over a size limit.

The lake's shards have their own commit protocol (`fhb.storage`). Standard library only (torch
is imported by `atomic_torch_save` alone), so every layer may use this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import io
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from fhb.errors import FhbError

__all__ = [
    "MANIFEST",
    "PARTIAL",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "beside",
    "build_beside",
    "check_out_apart",
    "check_replaceable",
    "foreign_entries",
    "fsync_dir",
    "read_manifest",
    "check_regular_if_present",
    "file_kind",
    "not_regular_error",
    "open_regular",
    "read_small",
    "sha256_file",
    "write_manifest",
]

_HASH_BLOCK = 4 << 20

logger = logging.getLogger(__name__)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the file at ``path``, read in 4 MiB blocks (OSError if it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What a ``st_mode`` names, in words (``a directory``, ``a FIFO (named pipe)``, ...)."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_regular_error(path: str | os.PathLike[str], mode: int, what: str, fix: str) -> FhbError:
    """The one-line error for ``what`` at ``path`` being ``mode``'s kind instead of a regular file."""
    return FhbError(f"{what} {path}: expected a regular file, found {file_kind(mode)}; {fix}")


def check_regular_if_present(path: str | os.PathLike[str], what: str, fix: str) -> None:
    """Raise `not_regular_error` when ``path`` exists (symlinks followed) and is not a regular
    file: for files another library will open (zarr's metadata), which a FIFO would block and a
    device never end."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if not stat.S_ISREG(mode):
        raise not_regular_error(path, mode, what, fix)


def open_regular(path: str | os.PathLike[str], what: str, fix: str) -> tuple[int, os.stat_result]:
    """``(fd, stat)`` of the regular file ``path`` opened for reading, never blocking on a FIFO;
    `not_regular_error` for anything else (the fd is closed then). The caller closes the fd."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise not_regular_error(path, st.st_mode, what, fix)
    return fd, st


def read_small(path: str | os.PathLike[str], limit: int, what: str,
               fix: str = "check the path (fhb reads only regular files there)") -> bytes:
    """The bytes of the regular file ``path`` (symlinks followed), refusing what is not one.

    Metadata fhb reads (configs, lock records, manifests, ``zarr.json``) is small: a FIFO, device,
    socket or directory in its place (``--config /dev/zero``, a FIFO planted as a lake's lock
    file) is refused without blocking on it or reading from it, and a file over ``limit`` bytes
    without reading past the limit: one `FhbError` naming ``what``, the path, what was found and
    ``fix``.
    `FileNotFoundError`, `NotADirectoryError` and `PermissionError` propagate as from `open`: the
    caller knows what a missing file means.
    """
    fd, st = open_regular(path, what, fix)
    try:
        if st.st_size > limit:
            raise FhbError(f"{what} {path}: expected at most {limit} bytes, found {st.st_size}; {fix}")
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, st.st_size + 1, 1 << 20))  # os.read allocates what it is asked
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise FhbError(f"{what} {path}: expected at most {limit} bytes, found more (it grew while read); {fix}")
    return data


def fsync_dir(d: Path) -> None:
    """fsync the directory ``d`` (so a rename in it is durable); silently skipped where unsupported."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (tmp file + fsync + os.replace + dir fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: object, path: Path) -> None:
    """`torch.save` of ``obj`` to ``path`` atomically (serialised in memory, then `atomic_write_bytes`)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


PARTIAL = "partial"
"""Tag of a resumable `build_beside` folder: ``.<name>.tmp-partial``."""
_LEFTOVER = re.compile(r"^\.(.+)\.(?:tmp|old)-(?:\d+|partial)$")
MANIFEST = ".fhb-manifest.json"
"""File in every folder `build_beside` writes: which tool wrote it and the entries it created."""


def read_manifest(folder: Path) -> tuple[str, frozenset[str]] | None:
    """``(kind, entries)`` of the manifest `build_beside` left in ``folder``, or None (absent or unreadable)."""
    try:
        record = json.loads(read_small(Path(folder) / MANIFEST, 1 << 20, "manifest").decode("utf-8"))
    except (OSError, ValueError, FhbError):
        return None  # absent, unreadable or not one fhb wrote: the folder is not recognised as fhb's
    if not isinstance(record, dict) or record.get("tool") != "fhb" or not isinstance(record.get("entries"), list):
        return None
    return str(record.get("kind", "")), frozenset(str(e) for e in record["entries"])


def write_manifest(folder: Path, kind: str, entries: list[str] | None = None) -> None:
    """Record ``entries`` (default: what ``folder`` holds now) as written by fhb's ``kind`` command."""
    names = sorted(e.name for e in Path(folder).iterdir() if e.name != MANIFEST) if entries is None else entries
    atomic_write_text(Path(folder) / MANIFEST, json.dumps({"tool": "fhb", "kind": kind, "entries": names}) + "\n")


def foreign_entries(folder: Path, own_layout: frozenset[str] = frozenset()) -> list[str]:
    """Entries of ``folder`` fhb did not write: not in its manifest (or, without one, not in ``own_layout``).

    A symlink is always foreign (fhb never writes one and never deletes through one).
    """
    found = read_manifest(folder)
    own = (found[1] if found is not None else own_layout) | {MANIFEST}

    def is_own(name: str) -> bool:
        leftover = _LEFTOVER.match(name)  # a killed build_beside's temporary or set-aside copy
        return name in own or (leftover is not None and leftover.group(1) in own)

    return sorted(e.name for e in Path(folder).iterdir() if not is_own(e.name) or e.is_symlink())


def check_out_apart(out: Path, inputs: dict[str, Path | None], command: str) -> None:
    """Refuse an output folder below a file, in an unwritable folder, or that equals or contains an input.

    Replacing ``out`` would delete that input (a run, a checkpoint, a lake, a corpus).

    Raises:
        FhbError: naming the option, both paths and the fix.
    """
    target = Path(os.path.abspath(out)).resolve()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if existing != target and not existing.is_dir():
        raise FhbError(f"{command}: --out {out} lies below the file {existing}; expected a folder path; "
                       "choose another --out")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise FhbError(f"{command}: --out {out}: the folder {existing} is not writable; expected a folder you "
                       "can write; choose another --out or fix its permissions")
    for option, path in inputs.items():
        if path is None or str(path) == "":
            continue
        source = Path(os.path.abspath(path)).resolve()
        if source == target or target in source.parents:
            relation = "is" if source == target else "contains"
            raise FhbError(
                f"{command}: --out {out} {relation} the input {option} {path}; expected an output folder "
                "apart from the inputs (writing it would delete them); choose another --out"
            )


def check_replaceable(out: Path, command: str, own_layout: frozenset[str] = frozenset(),
                      foreign: Callable[[Path], list[str]] | None = None) -> None:
    """Refuse to replace ``out`` unless everything in it is fhb's own output.

    ``foreign`` lists a folder's entries fhb did not write (default: `foreign_entries` with
    ``own_layout``; a lake recognises its own layout).

    Raises:
        FhbError: ``out`` is a symlink, a file, or holds entries fhb did not write.
    """
    out = Path(out)
    if out.is_symlink():
        raise FhbError(f"{command}: --out {out} is a symlink; fhb never replaces or deletes through one; "
                       "pass the directory it points to or another --out")
    if not out.exists():
        return
    if not out.is_dir():
        raise FhbError(f"{command}: --out {out} is a file; expected a folder fhb wrote (or none); "
                       "choose another --out")
    found = foreign(out) if foreign is not None else foreign_entries(out, own_layout)
    if found:
        raise FhbError(
            f"{command}: --out {out} holds entries fhb did not write ({found[:5]}); --overwrite only "
            "replaces fhb's own output and deletes only what fhb wrote: move them away or choose another --out"
        )


def beside(out: Path, tag: str) -> Path:
    """The hidden sibling ``.<name>.<tag>`` of ``out`` (``tag``: ``tmp-<pid>``, ``tmp-partial``, ``old-<pid>``)."""
    out = Path(out)
    return out.with_name(f".{out.name}.{tag}")


@contextlib.contextmanager
def build_beside(out: Path, kind: str = "output", own_layout: frozenset[str] = frozenset(), *,
                 foreign: Callable[[Path], list[str]] | None = None,
                 resume: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``out`` to build in; on success it replaces ``out``.

    An existing ``out`` is replaced only if everything in it was written by fhb (`check_replaceable`:
    its manifest, else ``own_layout``, or the caller's ``foreign`` rule), checked before the body runs
    and again before the swap. The new folder is swapped in (atomically where the kernel can exchange
    two names, else the old one is moved aside first and moved back if the rename fails), and only
    then the old one is removed: a failure leaves the old folder as it was. Without ``foreign`` the
    new folder gets a manifest (`MANIFEST`) listing what it holds. Nothing is followed through a symlink.

    ``resume``: a resumable build (an extraction that runs for days). The sibling is
    ``.<name>.tmp-partial``; a failure or a kill leaves it for the next build of ``out``, which
    continues it when ``resume(sibling)`` is true and otherwise starts it over (it holds only fhb's
    output). The caller must hold a lock of ``out``: one build at a time. Without ``resume`` the
    sibling is ``.<name>.tmp-<pid>`` and removed in every case.
    """
    out = Path(out)
    check_replaceable(out, kind, own_layout, foreign)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = beside(out, f"tmp-{PARTIAL}" if resume is not None else f"tmp-{os.getpid()}")
    if resume is None:
        shutil.rmtree(tmp, ignore_errors=True)
    elif tmp.is_symlink() or tmp.exists() and (not tmp.is_dir() or not resume(tmp)):
        check_replaceable(tmp, kind, own_layout, foreign)  # a symlink, a file, a user's entry: refused
        logger.warning("%s: %s holds an interrupted build for other options; starting it over", kind, tmp)
        shutil.rmtree(tmp)
    tmp.mkdir(exist_ok=resume is not None)
    done = False
    try:
        yield tmp
        if foreign is None:
            write_manifest(tmp, kind)
        check_replaceable(out, kind, own_layout, foreign)  # nothing of the user's arrived meanwhile
        _swap_in(tmp, out)
        done = True
    finally:
        if resume is None or done:
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(new: Path, out: Path) -> None:
    """Put the complete folder ``new`` at ``out``; an existing ``out`` is removed once ``new`` is in place."""
    old = beside(out, f"old-{os.getpid()}")
    if out.exists() and _exchange(new, out):
        os.replace(new, old)  # ``new``'s name now holds the old folder
    else:
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(new, out)
        except BaseException:
            if old.exists() and not out.exists():
                os.replace(old, out)
            raise
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the kernel, the C library or the filesystem cannot (nothing changed then)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))
