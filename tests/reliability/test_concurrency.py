"""Two processes and one lake: the lock refuses the second, names the first, and recovers from kills.

Promises (docs/reliability.md, "Concurrency"): while an extraction (or anything holding the
lake's lock) runs, a second ``fhb extract`` on that lake exits with status 2 and one line naming
the holder (pid, host, command), and changes nothing; ``fhb unlock`` refuses to break the lock of
a process that is still running; once the holder is killed (SIGKILL: nothing released) the same
command takes the dead holder's lock over with a warning naming it and completes the lake. A lock
of another host is never taken over (``fhb unlock LAKE`` is the user's call).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fhb.storage.lock import read_lock

from .conftest import (
    TRACEBACK,
    assert_same_lake,
    assert_user_error,
    extract_args,
    fhb_popen,
    paused_fhb,
    lake_files,
    operation_number,
    verify_errors,
)

HOLD = """
import sys, time
from fhb.storage.lock import LakeLock
with LakeLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def _wait_for(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def holder(tmp_path: Path) -> Any:
    """A separate process holding the lock of ``tmp_path/lake`` (killed at teardown)."""
    lake = tmp_path / "lake"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lake)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_second_extract_refused_while_lock_held_then_taken_over_after_kill(
    holder: subprocess.Popen[str], tiny_teacher_path: Path, libri_root: Path, reference_lake: Path,
    tmp_path: Path, cli: Any,
) -> None:
    lake = tmp_path / "lake"
    args = extract_args(tiny_teacher_path, libri_root, lake)
    before = lake_files(lake)
    line = assert_user_error(cli(*args), f"is locked by pid {holder.pid} on host {socket.gethostname()}",
                             "wait for it to finish", f"fhb unlock {lake}")
    assert "stale" not in line
    assert lake_files(lake) == before  # nothing written
    # unlock refuses while the holder runs
    assert_user_error(cli("unlock", lake), f"pid {holder.pid}", "still running", "stop that process first")
    assert read_lock(lake) is not None and read_lock(lake).pid == holder.pid
    # the holder dies without releasing: the same command takes its lock over, with a warning
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    done = cli(*args)
    assert done.code == 0, done.stderr[-3000:]
    assert f"taking over the lock of pid {holder.pid} on host {socket.gethostname()}" in done.stderr
    assert f"pid {holder.pid} is no longer running" in done.stderr
    assert read_lock(lake) is None
    assert cli("unlock", lake).stdout.strip() == f"{lake} was not locked"
    assert_same_lake(reference_lake, lake)


@pytest.mark.slow
def test_running_extraction_refuses_a_second_one(
    operations: list[str], tiny_teacher_path: Path, libri_root: Path, reference_lake: Path, tmp_path: Path,
    cli: Any,
) -> None:
    """A real ``fhb extract``, paused mid-shard, holds the lake: a second run is refused, naming it."""
    lake = tmp_path / "lake"
    point = operation_number(operations, "chunk-of-second-shard")
    args = extract_args(tiny_teacher_path, libri_root, lake)
    with paused_fhb(args, point, tmp_path) as first:  # SIGKILLed when the block ends
        committed = sorted(p.name for p in lake.glob("*/shard-*"))
        second = cli(*args)
        line = assert_user_error(second, f"is locked by pid {first.pid}", "wait for it to finish")
        assert f"cli.py extract --teacher {tiny_teacher_path}" in line  # the holder's command line
        assert sorted(p.name for p in lake.glob("*/shard-*")) == committed
    rerun = cli(*args)  # the dead run's lock is taken over: no `fhb unlock` needed
    assert rerun.code == 0, rerun.stderr[-3000:]
    assert f"taking over the lock of pid {first.pid}" in rerun.stderr
    assert_same_lake(reference_lake, lake)
    assert not verify_errors(lake)


@pytest.mark.slow
def test_two_extractions_started_together_one_wins(tiny_teacher_path: Path, libri_root: Path,
                                                   reference_lake: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    args = extract_args(tiny_teacher_path, libri_root, lake)
    procs = [fhb_popen(*args) for _ in range(2)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [(c, err[-1500:]) for c, _, err in results]
    loser = next(err for code, _, err in results if code == 2)
    assert TRACEBACK not in loser
    assert [line for line in loser.splitlines() if line.startswith("error:")][0].count("is locked by pid") == 1
    assert_same_lake(reference_lake, lake)
    assert read_lock(lake) is None


def test_unreadable_lock_file(tiny_teacher_path: Path, libri_root: Path, tmp_path: Path, cli: Any) -> None:
    """A lock file left empty (a crash between create and write): the message says so and gives the fix."""
    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / ".fhb.lock").write_text("")
    crashed = time.time() - 60  # the crash was a while ago (a fresh empty file is a lock being written)
    os.utime(lake / ".fhb.lock", (crashed, crashed))
    assert_user_error(cli(*extract_args(tiny_teacher_path, libri_root, lake)), "unreadable", f"fhb unlock {lake}")
    assert cli("unlock", lake).code == 0
    assert not (lake / ".fhb.lock").exists()


def test_lock_of_another_host_is_not_called_stale(tiny_teacher_path: Path, libri_root: Path, tmp_path: Path,
                                                  cli: Any) -> None:
    """A lake on a shared filesystem locked from another machine: fhb cannot tell whether it runs."""
    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / ".fhb.lock").write_text(json.dumps({"pid": os.getpid(), "hostname": "node-17", "started": "x",
                                                "command": "fhb extract ..."}))
    line = assert_user_error(cli(*extract_args(tiny_teacher_path, libri_root, lake)), "on host node-17",
                             f"fhb unlock {lake}")
    assert "stale" not in line and "taking over" not in line
    assert cli("unlock", lake).code == 0  # the user's call: fhb cannot check another host
    assert not (lake / ".fhb.lock").exists()
