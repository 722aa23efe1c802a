"""LakeLock: exclusive, names the holder, detects stale locks, break_lock clears them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fhb.errors import FhbError
from fhb.storage import LakeLock, break_lock, read_lock


def test_second_acquirer_refused(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    with LakeLock(lake) as held:
        assert held.held
        info = read_lock(lake)
        assert info is not None and info.pid == os.getpid() and info.hostname == socket.gethostname()
        with pytest.raises(FhbError) as e:
            LakeLock(lake).acquire()
        msg = str(e.value)
        assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg
        assert f"fhb unlock {lake}" in msg
    assert read_lock(lake) is None
    with LakeLock(lake):  # free again
        pass


def test_dead_holders_lock_is_taken_over_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A lock whose holder ran on this host and is dead is taken over (crash recovery), with a warning
    naming the lake, the dead pid and host; `break_lock` (``fhb unlock``) still clears one too."""
    lake = tmp_path / "lake"
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead_pid = int(child.stdout)
    with LakeLock(lake):
        pass
    dead = json.dumps({"pid": dead_pid, "hostname": socket.gethostname(), "started": "2025-01-01T00:00:00+00:00"})
    (lake / ".fhb.lock").write_text(dead)
    with caplog.at_level("WARNING"), LakeLock(lake):
        assert read_lock(lake).pid == os.getpid()
    assert f"lake {lake}: taking over the lock of pid {dead_pid} on host {socket.gethostname()}" in caplog.text
    assert f"pid {dead_pid} is no longer running" in caplog.text
    (lake / ".fhb.lock").write_text(dead)
    holder = break_lock(lake)
    assert holder is not None and holder.pid == dead_pid
    assert break_lock(lake) is None
    with LakeLock(lake):
        pass


def test_lock_on_other_host_is_not_called_stale(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / ".fhb.lock").write_text(json.dumps({"pid": 1, "hostname": "elsewhere", "started": "x"}))
    with pytest.raises(FhbError, match="locked by pid 1 on host elsewhere.*fhb unlock"):
        LakeLock(lake).acquire()


def test_release_keeps_someone_elses_lock(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lock = LakeLock(lake).acquire()
    break_lock(lake)
    other = LakeLock(lake).acquire()
    lock.release()  # must not remove `other`'s lock
    assert read_lock(lake) is not None
    other.release()
    assert read_lock(lake) is None


def test_lock_file_does_not_disturb_the_lake(tmp_path: Path) -> None:
    from fhb.storage import create_lake, open_lake

    from .conftest import make_meta

    lake = tmp_path / "lake"
    with LakeLock(lake):
        create_lake(lake, make_meta())
        assert open_lake(lake).splits == []
