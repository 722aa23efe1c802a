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
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from fhb.errors import FhbError

__all__ = [
    "MANIFEST",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "build_beside",
    "check_out_apart",
    "check_replaceable",
    "foreign_entries",
    "fsync_dir",
    "read_manifest",
    "sha256_file",
    "write_manifest",
]

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


_LEFTOVER = re.compile(r"^\.(.+)\.(?:tmp|old)-\d+$")
MANIFEST = ".fhb-manifest.json"
"""File in every folder `build_beside` writes: which tool wrote it and the entries it created."""


def read_manifest(folder: Path) -> tuple[str, frozenset[str]] | None:
    """``(kind, entries)`` of the manifest `build_beside` left in ``folder``, or None (absent or unreadable)."""
    try:
        record = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
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


def check_replaceable(out: Path, command: str, own_layout: frozenset[str] = frozenset()) -> None:
    """Refuse to replace ``out`` unless everything in it is fhb's own output.

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
    foreign = foreign_entries(out, own_layout)
    if foreign:
        raise FhbError(
            f"{command}: --out {out} holds entries fhb did not write ({foreign[:5]}); --overwrite only "
            "replaces fhb's own output; move them away or choose another --out"
        )


@contextlib.contextmanager
def build_beside(out: Path, kind: str = "output", own_layout: frozenset[str] = frozenset()) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out`` to build in; on success it replaces ``out``.

    An existing ``out`` is replaced only if everything in it was written by fhb (its manifest,
    else ``own_layout``: the names an older fhb wrote there), see `check_replaceable`; that is
    checked before the body runs. The old folder is moved aside, the new one renamed in, and
    only then the old one removed; a failure leaves the old folder as it was. The new folder
    gets a manifest (`MANIFEST`) listing what it holds. The temporary folder is removed in every case.
    """
    out = Path(out)
    check_replaceable(out, kind, own_layout)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        write_manifest(tmp, kind)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        fsync_dir(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
