"""SIGTERM (what job schedulers send at a time limit) unwinds like Ctrl-C: the lock is released and
the rerun resumes to the same lake as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fhb.storage.lock import read_lock
from fhb.storage.reader import open_lake

pytestmark = pytest.mark.slow


def test_sigterm_releases_lock_and_rerun_resumes(tiny_teacher_path: Path, libri_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    cmd = [sys.executable, "-m", "fhb.cli", "extract", "--teacher", str(tiny_teacher_path), "--libri-root",
           str(libri_root), "--out", str(out), "--shard-hours", "0.002", "--workers", "0", "--threads", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob("*/shard-*")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the extraction finished before SIGTERM arrived")
    assert proc.returncode == 130, err.decode()[-1000:]
    assert b"Traceback" not in err and b"rerun the same command" in err
    assert read_lock(out) is None, "SIGTERM left the lake locked"
    done = subprocess.run(cmd, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-1000:]
    straight = tmp_path / "straight"
    subprocess.run([*cmd[:8], "--out", str(straight), *cmd[10:]], env=env, check=True, capture_output=True)
    a, b = open_lake(out), open_lake(straight)
    for split in a.splits:
        assert a[split].utterance_ids == b[split].utterance_ids
        for utt in a[split].utterance_ids:
            assert np.array_equal(a[split].targets(utt), b[split].targets(utt))
