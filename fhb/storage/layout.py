"""A lake on the local filesystem: reading node attributes, listing split directories, sizes.

What the paths and attributes mean is `fhb.storage.schema`'s; this module only looks at disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhb.errors import FhbError
from fhb.files import read_small
from fhb.storage.schema import TMP_PREFIX, TRASH_PREFIX, ZARR_JSON, is_committed

logger = logging.getLogger(__name__)

NODE_JSON_MAX_BYTES = 1 << 28
"""The largest ``zarr.json`` fhb reads (a shard's holds its index: about 1 MB per hour of audio)."""


def read_node_attrs(node_dir: Path) -> dict[str, Any] | None:
    """Attributes of the zarr node at ``node_dir``, or None if it has no (readable) zarr.json.

    A ``zarr.json`` that is not a regular file (a FIFO, a device) or is over `NODE_JSON_MAX_BYTES`
    is `FhbError` naming it (`fhb.files.read_small`): it is never blocked on or read whole.
    """
    try:
        meta = json.loads(read_small(node_dir / ZARR_JSON, NODE_JSON_MAX_BYTES, "zarr metadata"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    attrs = meta.get("attributes", {})
    return attrs if isinstance(attrs, dict) else None


def is_committed_dir(shard_dir: Path) -> bool:
    """Whether ``shard_dir`` holds a committed shard (its commit marker is set)."""
    return is_committed(read_node_attrs(shard_dir))


def is_shard_committed(lake_path: str | os.PathLike[str], split: str, shard: str) -> bool:
    """Whether ``split/shard`` is committed (for resuming: committed shards are done)."""
    return is_committed_dir(Path(lake_path) / split / shard)


@dataclass(frozen=True)
class SplitDirListing:
    """What lies in a split directory: committed, uncommitted and temporary shard dirs."""

    committed: tuple[str, ...]
    uncommitted: tuple[str, ...]
    temporary: tuple[str, ...]


def list_split_dir(lake_path: str | os.PathLike[str], split: str) -> SplitDirListing:
    """Scan ``LAKE/<split>`` (sorted names); a missing split gives an empty listing."""
    d = Path(lake_path) / split
    committed, uncommitted, temporary = [], [], []
    if d.is_dir():
        for e in sorted(d.iterdir()):
            if not e.is_dir():
                continue
            if e.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                temporary.append(e.name)
            elif is_committed_dir(e):
                committed.append(e.name)
            else:
                uncommitted.append(e.name)
    return SplitDirListing(tuple(committed), tuple(uncommitted), tuple(temporary))


def leftovers_of(split_dir: Path, shard: str) -> list[Path]:
    """Temporary/trash directories left by earlier attempts at ``shard``."""
    if not split_dir.is_dir():
        return []
    prefixes = (f"{TMP_PREFIX}{shard}_", f"{TRASH_PREFIX}{shard}_")
    return [e for e in split_dir.iterdir() if e.is_dir() and e.name.startswith(prefixes)]


def remove_tree(path: Path) -> None:
    """Delete a directory tree (a shard's), logging what went."""
    logger.info("removing %s", path)
    shutil.rmtree(path, ignore_errors=False)


def local_lake_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a local lake directory, or `FhbError` if it is missing or not a lake."""
    p = Path(path)
    if not p.exists():
        raise FhbError(
            f"lake {p}: expected a lake directory, found nothing at that path; check the path, "
            f"or create the lake with `fhb extract`"
        )
    if not p.is_dir() or not (p / ZARR_JSON).is_file():
        raise FhbError(
            f"lake {p}: expected a Zarr v3 group (a directory with zarr.json), found "
            f"{'a file' if not p.is_dir() else 'a directory without zarr.json'}; point at a lake "
            f"written by `fhb extract`"
        )
    return p


def dir_size(path: Path) -> int:
    """Sum of the sizes of all files under ``path`` (bytes on disk, apparent size)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total
