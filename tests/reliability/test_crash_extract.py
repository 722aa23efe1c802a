"""Crash during extraction: ``fhb extract`` SIGKILLed anywhere, then rerun as the user would.

The promise (docs/reliability.md, "Atomicity and resume"): after a kill at any point, rerunning
the same command takes the dead run's lock over (a warning names it) and finishes the lake, which is then array-for-array equal to an uninterrupted extraction and passes
``fhb verify``.

Kill points are filesystem operations of the extraction (see ``faults.py``), numbered in an
uninterrupted run: five seeded random ones (one per fifth of the run) and the named moments where
a shard or the lake changes state.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from . import faults
from .conftest import (
    TRACEBACK,
    assert_same_lake,
    extract_args,
    fhb_popen,
    operation_number,
)

SEED = 20240905
RANDOM_POINTS = 5


def _kill_and_recover(point: int, teacher: Path, libri_root: Path, reference: Path, tmp_path: Path,
                      cli: object) -> None:
    """Kill ``fhb extract`` at ``point``, rerun (taking its lock over), compare, verify."""
    lake = tmp_path / "lake"
    site = faults.sitecustomize_dir(tmp_path / "site")
    env = {"FHB_FAULT": f"kill:{point}", "PYTHONPATH": str(site)}
    args = extract_args(teacher, libri_root, lake)
    proc = fhb_popen(*args, env=env)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"not killed at operation {point}: exit {proc.returncode}\n{stderr[-2000:]}"

    locked = (lake / ".fhb.lock").exists()
    rerun = cli(*args)  # the same entry point as the console script, in-process (saves a start-up)
    assert rerun.code == 0 and TRACEBACK not in rerun.stderr, (
        f"rerun after a kill at operation {point} failed (exit {rerun.code}):\n{rerun.stderr[-3000:]}")
    if locked:  # what the user sees when simply rerunning: the dead run's lock taken over, with a warning
        assert f"lake {lake}: taking over the lock of pid {proc.pid}" in rerun.stderr, rerun.stderr[-3000:]
        assert "no longer running" in rerun.stderr
    assert not (lake / ".fhb.lock").exists()
    assert_same_lake(reference, lake)
    verified = cli("verify", lake)
    assert verified.code == 0, verified.stderr[-3000:]
    leftovers = [p.name for p in lake.glob("*/*") if p.name.startswith(("_tmp_", "_trash_"))]
    assert not leftovers, leftovers


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(RANDOM_POINTS))
def test_sigkill_at_random_point_then_rerun_equals_uninterrupted(
    trial: int, operations: list[str], tiny_teacher_path: Path, libri_root: Path, reference_lake: Path,
    tmp_path: Path, cli: object,
) -> None:
    n = len(operations)
    rng = random.Random(SEED)
    points = [rng.randint(i * n // RANDOM_POINTS + 1, (i + 1) * n // RANDOM_POINTS) for i in range(RANDOM_POINTS)]
    point = points[trial]
    print(f"kill at operation {point}/{n}: {operations[point - 1]}")
    _kill_and_recover(point, tiny_teacher_path, libri_root, reference_lake, tmp_path, cli)


@pytest.mark.slow
@pytest.mark.parametrize("moment", [
    "first-root-write-unrenamed",
    "before-commit-rename", "before-commit-marker", "listing-update", "before-unlock",
])
def test_sigkill_at_critical_moment_then_rerun_equals_uninterrupted(
    moment: str, operations: list[str], tiny_teacher_path: Path, libri_root: Path, reference_lake: Path,
    tmp_path: Path, cli: object,
) -> None:
    point = operation_number(operations, moment)
    print(f"kill at operation {point}/{len(operations)}: {operations[point - 1]}")
    _kill_and_recover(point, tiny_teacher_path, libri_root, reference_lake, tmp_path, cli)


@pytest.mark.slow
def test_ctrl_c_releases_the_lock_and_the_rerun_resumes(
    operations: list[str], tiny_teacher_path: Path, libri_root: Path, reference_lake: Path, tmp_path: Path,
    cli: object,
) -> None:
    """SIGINT (Ctrl-C) mid-extraction: exit status 130, no lock left, no half-written shard; rerun completes."""
    lake = tmp_path / "lake"
    log = tmp_path / "ops.log"
    point = operation_number(operations, "before-commit-rename")  # in the main thread: where SIGINT lands
    env = {"FHB_FAULT": f"pause:{point}", "FHB_FAULT_LOG": str(log),
           "PYTHONPATH": str(faults.sitecustomize_dir(tmp_path / "site"))}
    args = extract_args(tiny_teacher_path, libri_root, lake)
    proc = fhb_popen(*args, env=env)
    deadline = time.monotonic() + 60
    while not (log.exists() and len(log.read_text().splitlines()) >= point):
        assert time.monotonic() < deadline and proc.poll() is None, "the run did not reach the pause"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]
    assert TRACEBACK not in stderr, stderr[-3000:]
    assert not (lake / ".fhb.lock").exists()
    assert not [p.name for p in lake.glob("*/_tmp_*")]
    rerun = cli(*args)  # no `fhb unlock` needed
    assert rerun.code == 0, rerun.stderr[-3000:]
    assert_same_lake(reference_lake, lake)
