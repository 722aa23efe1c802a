"""A training process killed with SIGKILL takes its loader workers with it (no orphans holding
shared memory after a pre-emption)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found |= {int(c) for c in text.split()}
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PR_SET_PDEATHSIG")
def test_sigkilled_distill_leaves_no_worker_processes(tiny_teacher_path: Path, libri_root: Path,
                                                      tmp_path: Path) -> None:
    from fhb.stages.extract import run_extract

    lake = tmp_path / "lake"
    run_extract(tiny_teacher_path, libri_root, ["train-clean-100"], lake, workers=0, threads=1)
    cmd = [sys.executable, "-m", "fhb.cli", "distill", "--cache", str(lake), "--config", "tiny", "--out",
           str(tmp_path / "run"), "--splits", "train-clean-100", "--steps", "400", "--batch-size", "1",
           "--accumulate", "1", "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    workers: set[int] = set()
    while time.time() < deadline and len(workers) < 2:
        workers = _children(proc.pid)
        time.sleep(0.1)
    assert len(workers) >= 2, "the loader workers did not start"
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"loader workers {survivors} outlived their killed parent"
