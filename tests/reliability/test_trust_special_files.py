"""Something other than a regular file where fhb reads one: never a hang, never an endless read.

Promise (docs/reliability.md, "Every user error is one line"): a FIFO (whose open or read blocks
until someone writes to it), a device (``/dev/zero``: a read that never ends, memory until the OOM
killer) or a directory in the place of a config, a teacher, a lake's lock file, a reader's
lease, a shard's or an array's ``zarr.json``, a chunk file, or a corpus' audio file or transcript is refused with one line naming the
path and what was found (``verify``: a finding), within the subprocess timeout. Every case runs
``fhb`` in a subprocess, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fhb.storage.lock import READERS_DIR, live_readers

from .conftest import TRACEBACK, assert_user_error, extract_args, fhb_subprocess, small_distill_args

TIMEOUT = 120


def _fifo(path: Path) -> Path:
    if path.exists():
        path.unlink()
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("config", ["/dev/zero", "fifo"])
def test_config_that_is_a_device_or_fifo(config: str, reference_lake: Path, tmp_path: Path) -> None:
    path = str(_fifo(tmp_path / "c.yaml")) if config == "fifo" else config
    args = small_distill_args(reference_lake, tmp_path / "run")
    args[args.index("--config") + 1] = path
    found = "a FIFO" if config == "fifo" else "a character device"
    assert_user_error(fhb_subprocess(*args, timeout=TIMEOUT), f"config {path}", "expected a regular file", found)
    assert not (tmp_path / "run").exists()


def test_teacher_that_is_a_fifo(libri_root: Path, tmp_path: Path) -> None:
    teacher = _fifo(tmp_path / "t.pt")
    assert_user_error(fhb_subprocess("teacher-info", str(teacher), timeout=TIMEOUT), str(teacher), "a FIFO")
    extract = ("extract", "--teacher", str(teacher), "--libri-root", str(libri_root), "--splits", "dev-clean",
               "--out", str(tmp_path / "lake"))
    assert_user_error(fhb_subprocess(*extract, timeout=TIMEOUT), str(teacher), "a FIFO")


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_lock_file_that_is_not_a_file(kind: str, reference_lake: Path, small_run: Path, tiny_teacher_path: Path,
                                      tmp_path: Path) -> None:
    """Writers, readers and ``fhb unlock`` all say what is in the lock file's place and to remove it
    by hand (fhb never deletes what it did not write)."""
    lake = Path(shutil.copytree(reference_lake, tmp_path / "lake"))
    lock = lake / ".fhb.lock"
    _fifo(lock) if kind == "fifo" else lock.mkdir()
    found = "a FIFO" if kind == "fifo" else "a directory"
    for args in (("lake", "add-teacher", str(lake), "--teacher", str(tiny_teacher_path)),
                 ("evaluate", str(small_run), "--cache", str(lake)),
                 ("unlock", str(lake))):
        assert_user_error(fhb_subprocess(*args, timeout=TIMEOUT), str(lock), found, "remove it by hand")
    assert lock.exists() and not (lake / READERS_DIR).exists()  # the refused reader left no lease


def test_reader_lease_that_is_a_fifo_is_no_reader(reference_lake: Path, tmp_path: Path) -> None:
    lake = Path(shutil.copytree(reference_lake, tmp_path / "lake"))
    (lake / READERS_DIR).mkdir()
    _fifo(lake / READERS_DIR / "host-1-x.json")
    assert live_readers(lake) == []


@pytest.mark.parametrize("where", ["shard zarr.json", "array zarr.json", "chunk"])
def test_lake_file_that_is_a_fifo(where: str, reference_lake: Path, small_run: Path, tmp_path: Path) -> None:
    """``evaluate`` refuses in one line naming the file; ``verify`` reports it (one finding line)."""
    lake = Path(shutil.copytree(reference_lake, tmp_path / "lake"))
    shard = sorted((lake / "dev-clean").glob("shard-*"))[0]
    target = {"shard zarr.json": shard / "zarr.json", "array zarr.json": shard / "layer_01" / "zarr.json",
              "chunk": next(p for p in sorted((shard / "layer_01" / "c").rglob("*")) if p.is_file())}[where]
    _fifo(target)
    evaluated = fhb_subprocess("evaluate", str(small_run), "--cache", str(lake), "--split", "dev-clean",
                               timeout=TIMEOUT)
    assert_user_error(evaluated, str(target.relative_to(tmp_path)) if where != "chunk" else "chunk",
                      "the shard" if where != "chunk" else "a FIFO")
    verified = fhb_subprocess("verify", str(lake), timeout=TIMEOUT)
    assert verified.code != 0 and TRACEBACK not in verified.stderr, verified.stderr[-3000:]
    assert any(line.startswith("error:") and shard.name in line for line in verified.stderr.splitlines()), \
        verified.stderr[-3000:]


@pytest.mark.parametrize("which", ["flac", "transcript"])
def test_corpus_file_that_is_a_fifo(which: str, corpus_copy: Path, tiny_teacher_path: Path, tmp_path: Path) -> None:
    """The decoder would block on a FIFO ``.flac``, the scan on a FIFO ``.trans.txt``: one line
    naming it instead, and no lake."""
    chapter = next(p.parent for p in sorted(corpus_copy.rglob("*.flac")))
    target = sorted(chapter.glob("*.flac"))[0] if which == "flac" else next(chapter.glob("*.trans.txt"))
    _fifo(target)
    extracted = fhb_subprocess(*extract_args(tiny_teacher_path, corpus_copy, tmp_path / "lake"), timeout=TIMEOUT)
    assert_user_error(extracted, target.name, "a FIFO")
    assert not (tmp_path / "lake").exists()
