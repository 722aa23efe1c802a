"""Issue 13 end to end: ``fhb distill`` evaluates dev-clean after every epoch by default, releases
the best student as ``student.pt`` and the model card says which one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.stages.test_distill import _run, build_lake


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, libri_root: Path, tiny_teacher_path: Path) -> Path:
    return build_lake(libri_root, tiny_teacher_path, tmp_path_factory.mktemp("recipe") / "lake")


def test_default_run_evaluates_each_epoch_and_releases_the_best(lake: Path, tmp_path: Path) -> None:
    from fhb.stages.export import write_model_card
    from fhb.training.runs import load_run_student

    run = tmp_path / "run"
    summary = _run(lake, run, epochs=3, batch_size=2, accumulate=2)  # no --dev-split: dev-clean by default
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if r["kind"] == "eval"]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2] and all("padded_frames_share" in r for r in epochs)
    assert len(evals) == 3 and all(r["split"] == "dev-clean" for r in evals)
    selected = recs[-1]
    assert selected["kind"] == "selected" and selected["selected"] == "best"
    best = min(evals, key=lambda r: (r["dev_loss"], r["step"]))
    assert (selected["step"], selected["dev_loss"]) == (best["step"], best["dev_loss"])
    assert (run / "student.pt").read_bytes() == (run / "best" / f"student-{best['step']:08d}.pt").read_bytes()
    assert len(list((run / "best").iterdir())) <= 3
    assert summary.student_path == run / "student.pt"
    card = write_model_card(tmp_path / "card.md", load_run_student(run), run)
    text = (tmp_path / "card.md").read_text()
    assert card["selected"]["selected"] == "best" and f"at update {best['step']}" in text
    import yaml

    settings = yaml.safe_load((run / "config.yaml").read_text())["fhb_distill"]
    assert settings["accumulate"] == 2 and settings["bucketing"] == "sorted" and settings["dev_split"] == "dev-clean"


def test_export_last_and_no_dev_split(lake: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _run(lake, run, steps=3, dev_split="none", export="best")  # nothing to select by: the last
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in recs if r["kind"] == "eval"]
    assert recs[-1]["kind"] == "selected" and recs[-1]["selected"] == "last" and recs[-1]["step"] == 3
    assert not (run / "best").exists()
