"""``fhb demo`` (behind ``make demo``) runs end to end: extract → inspect → verify → distill →
report → export → the exported upstream loaded as S3PRL loads it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "fhb.cli", "demo", "--out", str(out), "--steps", "6"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hidden states, each B x T x D" in proc.stdout + proc.stderr
    for path in ("teacher-tiny.pt", "lake/zarr.json", "run/student.pt", "run/loss_curves.png",
                 "export/fithubert.ckpt", "export/fithubert.yaml", "export/model_card.md"):
        assert (out / path).exists(), path
