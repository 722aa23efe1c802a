"""Disk full during extraction: one clear error, nothing half-committed, and a clean resume.

The filesystem is not really filled: every lake write goes through the calls ``faults.py`` wraps,
and from a chosen write on each write fails with ``OSError(ENOSPC)`` (the disk stays full until
the test frees it by uninstalling the wrapper). In-process, ``--workers 0``.

Promises (docs/reliability.md, "Disk full"): ``fhb extract`` stops with exit status 2 and one
``error:`` line saying the disk is full and naming the lake, no traceback; the lake's lock is
released (no ``fhb unlock`` needed); once space exists, rerunning the same command finishes the
lake, equal to an uninterrupted extraction.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fhb.errors import FhbError
from fhb.storage.lock import LakeLock

from . import faults
from .conftest import assert_same_lake, assert_user_error, extract_args, operation_number, verify_errors

MOMENTS = ["lock", "first-root-write", "chunk-of-second-shard", "before-commit-marker", "listing-write"]


@pytest.mark.parametrize("moment", MOMENTS)
def test_disk_full_is_one_line_and_rerun_resumes(
    moment: str, operations: list[str], tiny_teacher_path: Path, libri_root: Path, reference_lake: Path,
    tmp_path: Path, cli: Any,
) -> None:
    lake = tmp_path / "lake"
    args = extract_args(tiny_teacher_path, libri_root, lake)
    faults.install("enospc", at=operation_number(operations, moment))
    try:
        result = cli(*args)
    finally:
        faults.uninstall()
    line = assert_user_error(result, "disk is full", str(lake), "rerun the same command")
    assert "No space left on device" in line
    assert not (lake / ".fhb.lock").exists(), "the lock must be released"
    assert not list(lake.glob("*/_tmp_*")), "the shard being written must be discarded"
    # space is back: the same command resumes and finishes
    rerun = cli(*args)
    assert rerun.code == 0, rerun.stderr[-3000:]
    assert_same_lake(reference_lake, lake)
    assert not verify_errors(lake)


def test_disk_full_while_writing_the_lock_leaves_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock file is created, then writing its contents fails: no empty lock may stay behind."""
    import fhb.storage.lock as lock_module

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(lock_module.json, "dump", full)
    with pytest.raises(OSError):
        LakeLock(tmp_path / "lake").acquire()
    monkeypatch.undo()
    assert not (tmp_path / "lake" / ".fhb.lock").exists()
    with LakeLock(tmp_path / "lake"):  # and the next run takes the lock without `fhb unlock`
        pass


def _tmpfs(tmp_path: Path, size: str) -> Path | None:
    """A small tmpfs mounted under ``tmp_path``, or None where mounting is not allowed."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if shutil.which("mount") is None:
        return None
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    return mount if done.returncode == 0 else None


def test_real_full_tmpfs_when_mountable(tiny_teacher_path: Path, libri_root: Path, reference_lake: Path,
                                        tmp_path: Path, cli: Any) -> None:
    """Where the test may mount a tmpfs (root in a container), fill a real one (skipped elsewhere)."""
    mount = _tmpfs(tmp_path, "700k")  # the lake needs ~1.4 MB
    if mount is None:
        pytest.skip("mount -t tmpfs is not allowed here; the wrapper tests above cover ENOSPC")
    try:
        lake = mount / "lake"
        args = extract_args(tiny_teacher_path, libri_root, lake)
        assert_user_error(cli(*args), "disk is full", str(lake))
        assert not (lake / ".fhb.lock").exists()
        subprocess.run(["mount", "-o", "remount,size=8m", str(mount)], check=True)
        rerun = cli(*args)
        assert rerun.code == 0, rerun.stderr[-3000:]
        assert_same_lake(reference_lake, lake)
        assert not verify_errors(lake)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_other_os_errors_are_not_disguised(tiny_teacher_path: Path, libri_root: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Only errors the user can fix become one-liners; an unexpected I/O error keeps its traceback."""
    from fhb.stages import extract
    from fhb.storage import lake_writer

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(lake_writer, "create_lake", broken)
    with pytest.raises(OSError) as info:
        extract.run_extract(tiny_teacher_path, libri_root, ["dev-clean"], tmp_path / "lake", workers=0, threads=1)
    assert not isinstance(info.value, FhbError) and info.value.errno == errno.EIO
    assert not (tmp_path / "lake" / ".fhb.lock").exists()
