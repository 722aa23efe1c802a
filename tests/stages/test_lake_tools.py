"""``fhb lake add-teacher``: adds the teacher to a lake written without it, refuses another
checkpoint (naming both), is idempotent and takes the lake's lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fhb.cli import app
from fhb.errors import FhbError
from fhb.pipeline.lake_teacher import load_lake_teacher
from fhb.pipeline.teacher import load_teacher, read_teacher_spec, save_random_checkpoint
from fhb.storage import LakeMeta, TeacherMeta, open_lake, verify_lake
from fhb.storage.lock import LakeLock
from fhb.storage.schema import TEACHER_DIR, TEACHER_WEIGHTS_FILE, json_config
from tests.lakes import Utt, write_lake


def _old_lake(checkpoint: Path, path: Path) -> Path:
    """A lake written without the teacher's weights (one tiny shard of random targets)."""
    spec = read_teacher_spec(checkpoint)
    meta = LakeMeta(teacher=TeacherMeta(spec.path.name, spec.sha256, json_config(spec.config), spec.num_layers,
                                        spec.dim), layers=(1, 3))
    rng = np.random.default_rng(0)
    utt = Utt("u1", "1", "2", "HELLO", rng.integers(-100, 100, 8000).astype(np.int16),
              rng.standard_normal((2, meta.num_frames(8000), spec.dim)).astype(np.float32))
    return write_lake(path, meta, {"train": {"s0": [utt]}})


def test_add_teacher_to_an_old_lake(tiny_teacher_path: Path, tmp_path: Path) -> None:
    lake = _old_lake(tiny_teacher_path, tmp_path / "lake")
    assert open_lake(lake).meta.teacher_weights is None
    result = CliRunner().invoke(app, ["lake", "add-teacher", str(lake), "--teacher", str(tiny_teacher_path)])
    assert result.exit_code == 0, result.output
    assert "stores teacher tiny.pt" in result.output
    assert verify_lake(lake) == []
    sd = load_teacher(tiny_teacher_path).model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in load_lake_teacher(lake).model.state_dict().items())
    mtime = (lake / TEACHER_DIR / TEACHER_WEIGHTS_FILE).stat().st_mtime_ns
    again = CliRunner().invoke(app, ["lake", "add-teacher", str(lake), "--teacher", str(tiny_teacher_path)])
    assert again.exit_code == 0 and (lake / TEACHER_DIR / TEACHER_WEIGHTS_FILE).stat().st_mtime_ns == mtime


def test_add_teacher_refuses_another_checkpoint(tiny_teacher_path: Path, tmp_path: Path) -> None:
    lake = _old_lake(tiny_teacher_path, tmp_path / "lake")
    other = save_random_checkpoint(tmp_path / "other.pt", "tiny", seed=3)
    result = CliRunner().invoke(app, ["lake", "add-teacher", str(lake), "--teacher", str(other)])
    assert isinstance(result.exception, FhbError)
    message = str(result.exception)
    assert read_teacher_spec(other).sha256 in message and read_teacher_spec(tiny_teacher_path).sha256 in message
    assert "tiny.pt" in message and "other.pt" in message and "\n" not in message
    assert not (lake / TEACHER_DIR).exists() and open_lake(lake).meta.teacher_weights is None


def test_add_teacher_takes_the_lock(tiny_teacher_path: Path, tmp_path: Path) -> None:
    lake = _old_lake(tiny_teacher_path, tmp_path / "lake")
    with LakeLock(lake):
        result = CliRunner().invoke(app, ["lake", "add-teacher", str(lake), "--teacher", str(tiny_teacher_path)])
    assert isinstance(result.exception, FhbError) and "locked" in str(result.exception)
    assert not (lake / TEACHER_DIR).exists()


@pytest.mark.slow
def test_console_error_is_one_line(tiny_teacher_path: Path, tmp_path: Path) -> None:
    """Through the real entry point: a wrong checkpoint exits 2 with one red line."""
    lake = _old_lake(tiny_teacher_path, tmp_path / "lake")
    other = save_random_checkpoint(tmp_path / "other.pt", "tiny", seed=3)
    proc = subprocess.run([sys.executable, "-c", "from fhb.cli import main; main()", "lake", "add-teacher",
                           str(lake), "--teacher", str(other)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "400"})
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error:") and "found sha256" in errors[0] and "other.pt" in errors[0]


def test_inspect_shows_whether_the_teacher_is_stored(tiny_teacher_path: Path, tmp_path: Path) -> None:
    import json

    lake = _old_lake(tiny_teacher_path, tmp_path / "lake")
    before = CliRunner().invoke(app, ["inspect", str(lake)], terminal_width=400)
    assert before.exit_code == 0 and "not stored (add them: fhb lake add-teacher" in before.output
    assert json.loads(CliRunner().invoke(app, ["inspect", str(lake), "--json"]).output)["teacher_weights"] is None
    CliRunner().invoke(app, ["lake", "add-teacher", str(lake), "--teacher", str(tiny_teacher_path)])
    record = json.loads(CliRunner().invoke(app, ["inspect", str(lake), "--json"]).output)["teacher_weights"]
    assert record["bytes"] == (lake / TEACHER_DIR / TEACHER_WEIGHTS_FILE).stat().st_size
    after = CliRunner().invoke(app, ["inspect", str(lake)], terminal_width=400)
    assert f"{TEACHER_DIR}/{TEACHER_WEIGHTS_FILE}" in after.output and record["sha256"][:12] in after.output
