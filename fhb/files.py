"""Files: crash-safe writes and content hashes, one helper each for every package of fhb.

- `atomic_write_bytes` / `atomic_write_text` / `atomic_torch_save`: the data goes to a temporary
  name beside ``path``, is fsync'ed, moved into place with `os.replace`, and the directory is
  fsync'ed: a crash leaves either the old file or the new one, never a torn one.
- `build_beside`: a folder is built under a temporary sibling name and swapped into place when
  complete (an existing folder is replaced only then); a failure leaves the old folder as it was.

- `sha256_file`: the hex sha256 of a file's bytes (teachers, checkpoints, stored weights).

The lake's shards have their own commit protocol (`fhb.storage`). Standard library only (torch
is imported by `atomic_torch_save` alone), so every layer may use this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_torch_save", "atomic_write_bytes", "atomic_write_text", "build_beside", "fsync_dir",
           "sha256_file"]

_HASH_BLOCK = 4 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the file at ``path``, read in 4 MiB blocks (OSError if it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


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


@contextlib.contextmanager
def build_beside(out: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out`` to build in; on success it replaces ``out``.

    An existing ``out`` (file or folder) is removed only after the body finished without error;
    the temporary folder is removed in every case.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
