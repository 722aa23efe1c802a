"""A run's on-disk state (`fhb.training.run_state`): checkpoint names, keep, fallback, metrics, RNGs."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fhb.errors import FhbError
from fhb.training import run_state


def _state(value: float) -> dict[str, object]:
    return {"model": {"w": torch.tensor([value])}, "optimizer": {}, "scheduler": {}, "rng": run_state.rng_state(),
            "loader": {"epoch": 0, "batches": 0, "state": {}}}


def test_checkpoint_names_round_trip() -> None:
    assert run_state.checkpoint_name(100) == "step-00000100.pt"
    assert run_state.checkpoint_step("step-00000100.pt") == 100
    for other in ("student.pt", "step-100.pt", "step-00000100.pt.tmp", ".step-00000100.pt.tmp-1234abcd"):
        assert run_state.checkpoint_step(other) is None


def test_save_lists_by_step_keeps_newest_and_points_latest(tmp_path: Path) -> None:
    for step in (1, 2, 10, 3):
        run_state.save_checkpoint(tmp_path, step, _state(step), keep=3)
    assert [p.name for p in run_state.list_checkpoints(tmp_path)] == [
        run_state.checkpoint_name(s) for s in (2, 3, 10)]
    # "latest" names the last one written, even when an older step was written after a newer one
    assert (tmp_path / run_state.LATEST).read_text().strip() == f"{run_state.CHECKPOINT_DIR}/step-00000003.pt"
    path, state = run_state.load_latest_checkpoint(tmp_path)
    assert path.name == "step-00000003.pt" and state["step"] == 3
    assert not [p for p in (tmp_path / run_state.CHECKPOINT_DIR).iterdir() if p.name.startswith(".")]


def test_latest_falls_back_to_an_older_loadable_checkpoint(tmp_path: Path) -> None:
    assert run_state.load_latest_checkpoint(tmp_path) is None
    run_state.save_checkpoint(tmp_path, 1, _state(1.0))
    newest = run_state.save_checkpoint(tmp_path, 2, _state(2.0))
    newest.write_bytes(newest.read_bytes()[:100])  # torn
    path, state = run_state.load_latest_checkpoint(tmp_path)
    assert path.name == "step-00000001.pt" and float(state["model"]["w"]) == 1.0
    (tmp_path / run_state.CHECKPOINT_DIR / "step-00000001.pt").write_bytes(b"junk")
    with pytest.raises(FhbError, match="loadable checkpoint"):
        run_state.load_latest_checkpoint(tmp_path)


def test_read_checkpoint_refuses_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"format": "something-else"}, path)
    with pytest.raises(ValueError):
        run_state.read_checkpoint(path)


def test_metrics_append_read_truncate(tmp_path: Path) -> None:
    with pytest.raises(FhbError, match=run_state.METRICS):
        run_state.read_metrics(tmp_path)
    for step in (1, 2, 3):
        run_state.append_metrics(tmp_path, {"kind": "train", "step": step})
    with open(tmp_path / run_state.METRICS, "a", encoding="utf-8") as f:
        f.write('{"kind": "train", "st')  # a kill mid-line
    assert [r["step"] for r in run_state.read_metrics(tmp_path)] == [1, 2, 3]
    run_state.truncate_metrics(tmp_path, 2)
    assert [r["step"] for r in run_state.read_metrics(tmp_path)] == [1, 2]
    run_state.truncate_metrics(tmp_path, 0)
    assert run_state.read_metrics(tmp_path) == []


def test_rng_state_round_trip() -> None:
    gen = torch.Generator().manual_seed(3)
    saved = run_state.rng_state(gen)
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=gen)))
    run_state.set_rng_state(saved, gen)
    again = (random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=gen)))
    assert first == again
