"""Crash recovery of locks: a dead holder's lock (or reader lease) is taken over, a live or foreign one is not.

Promises (docs/reliability.md, "Locks after a crash"): a lock of a lake or a run directory, or a
reader's lease of a lake, whose holder ran on this host and is provably dead (its pid no longer
runs, or now belongs to another process: the start time in ``/proc/<pid>/stat`` differs; or the
host rebooted: the boot id differs) is taken over with a warning naming the folder, the dead pid
and host. A live holder, a holder on another host (or machine, or pid namespace) is refused with
one line, and ``fhb unlock`` stays for those. Two processes taking over one dead lock: one wins.
``fhb distill`` holds its run directory the same way; a run being written can be evaluated and
exported (its files are written atomically).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fhb.errors import FhbError
from fhb.locks import LockInfo, process_start
from fhb.storage.lock import READERS_DIR, LakeLock, LakeReadLease, read_lock

from . import faults
from .conftest import TRACEBACK, assert_user_error, paused_fhb, small_distill_args

_ENV = {**os.environ, "PYTHONPATH": str(Path(__import__("fhb").__file__).resolve().parents[1])}


def _sleeper() -> subprocess.Popen[bytes]:
    """A live process that is not fhb (its pid stands for a recycled pid)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    return int(child.stdout)


def _record(pid: int, **fields: object) -> str:
    """A lock record of ``pid`` on this host as fhb writes it, with ``fields`` changed."""
    info = LockInfo.of_this_process().to_dict()
    info.update({"pid": pid, "pid_start": process_start(pid)[1], "command": "fhb extract (the holder)", **fields})
    return json.dumps(info)


@pytest.fixture
def sleeper() -> Any:
    proc = _sleeper()
    yield proc
    proc.kill()
    proc.wait()


# ------------------------------------------------------------------ which holders are provably dead


@pytest.mark.parametrize("case", ["not-running", "pid-reused", "rebooted"])
def test_provably_dead_holder_is_taken_over_with_a_warning(case: str, sleeper: Any, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    live = sleeper.pid
    record, reason = {
        "not-running": (_record(_dead_pid()), "is no longer running"),
        "pid-reused": (_record(live, pid_start=process_start(live)[1] - 1), "now belongs to another process"),
        "rebooted": (_record(live, boot_id="00000000-0000-0000-0000-000000000000"), "rebooted since"),
    }[case]
    (lake / ".fhb.lock").write_text(record)
    dead = json.loads(record)["pid"]
    with caplog.at_level(logging.WARNING), LakeLock(lake):
        assert read_lock(lake).pid == os.getpid()
    line = next(r.getMessage() for r in caplog.records if "taking over" in r.getMessage())
    assert f"lake {lake}: taking over the lock of pid {dead} on host {socket.gethostname()}" in line
    assert reason in line and "fhb extract (the holder)" in line
    assert "\n" not in line
    assert read_lock(lake) is None


def test_live_holder_and_other_hosts_are_refused(sleeper: Any, tmp_path: Path, cli: Any) -> None:
    """A live holder (its recorded start time matches), another host, another machine of the same
    name, another pid namespace: never taken over; ``fhb unlock`` clears the foreign ones."""
    lake = tmp_path / "lake"
    lake.mkdir()
    dead = _dead_pid()
    cases = [
        (_record(sleeper.pid), f"is locked by pid {sleeper.pid} on host {socket.gethostname()}"),
        (_record(dead, hostname="node-17"), f"is locked by pid {dead} on host node-17"),
        (_record(dead, machine_id="another-machine-same-name"), f"is locked by pid {dead}"),
        (_record(dead, pid_ns="pid:[4026530000]"), f"is locked by pid {dead}"),  # another container's pid
        (_record(dead, hostname="node-17", boot_id="other-boot"), "on host node-17"),
    ]
    for record, needle in cases:
        (lake / ".fhb.lock").write_text(record)
        with pytest.raises(FhbError) as refused:
            LakeLock(lake).acquire()
        msg = str(refused.value)
        assert needle in msg and "wait for it to finish" in msg and f"fhb unlock {lake}" in msg, msg
        assert "\n" not in msg
        assert (lake / ".fhb.lock").read_text() == record
    # the live holder: `fhb unlock` refuses; the foreign holder: `fhb unlock` is the user's call
    (lake / ".fhb.lock").write_text(cases[0][0])
    assert_user_error(cli("unlock", lake), f"pid {sleeper.pid}", "still running")
    (lake / ".fhb.lock").write_text(cases[1][0])
    assert cli("unlock", lake).code == 0 and not (lake / ".fhb.lock").exists()


def test_lock_written_by_an_older_fhb_is_judged_by_its_pid(tmp_path: Path, sleeper: Any) -> None:
    """A record without boot id / start time (an older fhb): dead pid -> taken over; live pid -> refused."""
    lake = tmp_path / "lake"
    lake.mkdir()
    old = {"hostname": socket.gethostname(), "started": "2025-01-01T00:00:00+00:00", "command": "fhb extract"}
    (lake / ".fhb.lock").write_text(json.dumps({"pid": sleeper.pid, **old}))
    with pytest.raises(FhbError, match=f"is locked by pid {sleeper.pid}"):
        LakeLock(lake).acquire()
    (lake / ".fhb.lock").write_text(json.dumps({"pid": _dead_pid(), **old}))
    with LakeLock(lake):
        pass


def test_without_flock_a_dead_lock_is_not_taken_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem without ``flock`` (some network mounts answer ENOLCK) cannot serialise two
    takers: a provably dead holder's lock is then left alone, and the one line says it is stale
    and names ``fhb unlock``; where ``flock`` works, the same lock is taken over."""
    import errno
    import fcntl

    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    lake = tmp_path / "lake"
    lake.mkdir()
    record = _record(_dead_pid())
    (lake / ".fhb.lock").write_text(record)
    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(FhbError) as refused:
        LakeLock(lake).acquire()
    msg = str(refused.value)
    assert "has a stale lock" in msg and "no flock" in msg and f"fhb unlock {lake}" in msg and "\n" not in msg
    assert (lake / ".fhb.lock").read_text() == record
    monkeypatch.undo()
    with LakeLock(lake):  # with flock back, the same lock is taken over
        assert read_lock(lake).pid == os.getpid()


def test_a_lock_being_written_is_not_reported_unreadable(tmp_path: Path, sleeper: Any) -> None:
    """The holder creates its lock file and then writes the record; an acquirer (or a reader) that
    finds it still empty, because the holder was descheduled in between, waits for the record and
    names the holder, instead of calling its live lock damaged (the race of four takers showed it)."""
    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / ".fhb.lock").write_text("")  # created, not yet written
    writer = threading.Timer(0.5, lambda: (lake / ".fhb.lock").write_text(_record(sleeper.pid)))
    writer.start()
    try:
        with pytest.raises(FhbError) as refused:
            LakeLock(lake).acquire()
    finally:
        writer.join()
    assert f"is locked by pid {sleeper.pid}" in str(refused.value) and "unreadable" not in str(refused.value)
    (lake / ".fhb.lock").write_text("")
    writer = threading.Timer(0.5, lambda: (lake / ".fhb.lock").write_text(_record(sleeper.pid)))
    writer.start()
    try:
        with pytest.raises(FhbError, match=f"is being written by pid {sleeper.pid}"):
            LakeReadLease(lake).__enter__()
    finally:
        writer.join()


_RACER = """
import sys, time, pathlib
from fhb.errors import FhbError
from fhb.storage.lock import LakeLock
lake, go = sys.argv[1], pathlib.Path(sys.argv[2])
(go.parent / f"ready-{sys.argv[3]}").touch()  # imported, waiting for the signal
while not go.exists():
    time.sleep(0.001)
try:
    with LakeLock(lake):
        print("won", flush=True)
        deadline = time.monotonic() + 60  # hold until the others have tried (however slow they are)
        while len(list(go.parent.glob("done-*"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
except FhbError as e:
    print("lost:", e, flush=True)
    (go.parent / f"done-{sys.argv[3]}").touch()
"""


def test_two_processes_taking_over_one_dead_lock_one_wins(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / ".fhb.lock").write_text(_record(_dead_pid()))
    go = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(lake), str(go), str(i)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_ENV) for i in range(4)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)  # all started and waiting (a loaded machine may take seconds to import fhb)
    go.touch()
    outs = [p.communicate(timeout=60) for p in racers]
    results = [out.strip() for out, _ in outs]
    winners = [p.pid for p, r in zip(racers, results) if r == "won"]
    assert len(winners) == 1, [(r, err[-500:]) for r, (_, err) in zip(results, outs)]
    losers = [r for r in results if r != "won"]
    assert all(r.startswith("lost:") and f"is locked by pid {winners[0]}" in r for r in losers), results
    assert sum("taking over" in err for _, err in outs) >= 1
    assert read_lock(lake) is None


# ------------------------------------------------------------------------------- reader leases


def test_dead_readers_leases_are_removed_with_a_warning(reference_lake: Path, sleeper: Any, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A reader SIGKILLed (its lease left behind) and a lease whose pid now runs another program do not
    block a writer: removed with a warning. A live reader's lease (start time matches) still does."""
    lake = tmp_path / "lake"
    shutil.copytree(reference_lake, lake)
    reader = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom fhb.storage.lock import LakeReadLease\n"
                               "with LakeReadLease(sys.argv[1]):\n    print('ready', flush=True)\n    time.sleep(120)",
                               str(lake)], stdout=subprocess.PIPE, text=True, env=_ENV)
    assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
    reader.send_signal(signal.SIGKILL)
    reader.wait()
    reused = lake / READERS_DIR / "reused.json"
    reused.write_text(_record(sleeper.pid, pid_start=process_start(sleeper.pid)[1] + 7))
    assert len(list((lake / READERS_DIR).iterdir())) == 2
    with caplog.at_level(logging.WARNING), LakeLock(lake):
        pass
    text = caplog.text
    assert f"removed the reader lease of pid {reader.pid}" in text and "is no longer running" in text
    assert f"removed the reader lease of pid {sleeper.pid}" in text and "now belongs to another process" in text
    assert not list((lake / READERS_DIR).iterdir())
    reused.write_text(_record(sleeper.pid))  # a live reader
    with pytest.raises(FhbError, match=f"is being read by pid {sleeper.pid}"):
        LakeLock(lake).acquire()
    assert reused.exists()


# ------------------------------------------------------------------------------- run directory


def _latest_op(tmp_path: Path, lake: Path) -> int:
    """Number of the operation (``fsync``/``os.replace``, see ``faults.py``) just after the first
    ``latest`` of a 2-update run is in place: a run paused there has one complete checkpoint."""
    from .conftest import main_in_process

    faults.install("count", ops=faults.RUN_OPS)
    try:
        main_in_process(*small_distill_args(lake, tmp_path / "count-run"))
    finally:
        log = list(faults.LOG)
        faults.uninstall()
    return next(i for i, op in enumerate(log, 1) if op.startswith("os.replace") and op.endswith("/latest")) + 1


@pytest.mark.slow
def test_run_directory_is_locked_and_a_killed_distill_is_resumed(reference_lake: Path, tmp_path: Path,
                                                                 cli: Any) -> None:
    """A distill paused after its first checkpoint holds the run: a second distill (with or without
    --resume) is refused with one line naming it; evaluate and export read the run's newest complete
    checkpoint meanwhile. SIGKILLed, ``--resume`` takes its lock over with a warning and finishes."""
    lake = reference_lake
    point = _latest_op(tmp_path, lake)
    run = tmp_path / "run"
    with paused_fhb(small_distill_args(lake, run), point, tmp_path, FHB_FAULT_OPS="run",
                    OMP_NUM_THREADS="1") as first:  # SIGKILLed when the block ends
        for extra in ((), ("--resume",)):
            line = assert_user_error(cli(*small_distill_args(lake, run, *extra)),
                                     f"run directory {run} is locked by pid {first.pid}", "wait for it to finish")
            assert "distill --cache" in line  # the holder's command line
        assert (run / "checkpoints" / "step-00000001.pt").is_file() and not (run / "student.pt").exists()
        evaluated = cli("evaluate", str(run), "--cache", str(lake))
        assert evaluated.code == 0 and TRACEBACK not in evaluated.stderr, evaluated.stderr[-3000:]
        exported = cli("export-s3prl", "--run", str(run), "--out", str(tmp_path / "export"))
        assert exported.code == 0, exported.stderr[-3000:]
    assert read_lock(run) is not None and read_lock(run).pid == first.pid  # left behind by the kill
    resumed = cli(*small_distill_args(lake, run, "--resume"))
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert f"run directory {run}: taking over the lock of pid {first.pid}" in resumed.stderr
    assert f"removed the reader lease of pid {first.pid}" in resumed.stderr  # and its lease of the lake
    assert (run / "student.pt").is_file() and read_lock(run) is None
    assert not (lake / READERS_DIR).exists()


def test_run_directory_locked_from_another_host(small_run: Path, reference_lake: Path, tmp_path: Path,
                                                cli: Any) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    (run / ".fhb.lock").write_text(_record(os.getpid(), hostname="node-17", command="fhb distill ..."))
    line = assert_user_error(cli(*small_distill_args(reference_lake, run, "--resume")),
                             f"run directory {run} is locked by pid {os.getpid()} on host node-17",
                             f"fhb unlock {run}")
    assert "taking over" not in line
    assert cli("unlock", run).code == 0
    assert cli(*small_distill_args(reference_lake, run, "--resume")).code == 0


def test_refused_distill_leaves_no_run_directory(tiny_teacher_path: Path, libri_root: Path, tmp_path: Path,
                                                 cli: Any) -> None:
    """Refused after taking the run's lock (the lake lacks a layer the loss needs): no directory left."""
    from .conftest import run_extract_quiet

    lake = tmp_path / "lake"
    run_extract_quiet(tiny_teacher_path, libri_root, lake, layers="1,3")
    run = tmp_path / "runs" / "new"
    assert_user_error(cli(*small_distill_args(lake, run)), "missing [2]")
    assert not run.exists() and not run.parent.exists()


def test_import_checkpoint_overwrite_takes_the_runs_lock(small_run: Path, tmp_path: Path, cli: Any) -> None:
    source, run = small_run / "student.pt", tmp_path / "imported"
    assert cli("import-checkpoint", source, "--out", run).code == 0
    before = (run / "student.pt").read_bytes()
    (run / ".fhb.lock").write_text(_record(os.getpid(), hostname="node-17", command="fhb distill ..."))
    line = assert_user_error(cli("import-checkpoint", source, "--out", run, "--overwrite"),
                             f"run directory {run} is locked by pid {os.getpid()} on host node-17")
    assert "taking over" not in line and (run / "student.pt").read_bytes() == before
    (run / ".fhb.lock").write_text(_record(_dead_pid(), command="fhb distill ..."))  # a killed distill
    result = cli("import-checkpoint", source, "--out", run, "--overwrite")
    assert result.code == 0, result.stderr[-3000:]
    assert "taking over the lock" in " ".join((result.stderr + result.stdout).split())
    assert not (run / ".fhb.lock").exists() and (run / "student.pt").is_file()
    assert not list(tmp_path.glob(".imported.*"))  # nothing left beside it
