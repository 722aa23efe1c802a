"""``fhb import-checkpoint`` (fhb.stages.import_ckpt): published checkpoints as fhb runs, and the
import -> export round trip, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fhb.errors import FhbError
from fhb.training import run_state
from fhb.stages.export import CKPT_NAME, YAML_NAME, export_s3prl
from fhb.stages.import_ckpt import import_checkpoint
from fhb.student import build_fit_student, load_packaged_config, load_student_checkpoint, save_published_checkpoint


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """A tiny checkpoint in the published Lightning layout, with teacher weights and optimizer
    state next to the student's, as train.py saves them; and its yaml."""
    config = load_packaged_config("tiny")
    torch.manual_seed(5)
    model = build_fit_student(config)
    ckpt, yaml_path = save_published_checkpoint(model, config, tmp_path / "published.ckpt", global_step=1234)
    raw = torch.load(ckpt, weights_only=True)
    raw["state_dict"] = {"teacher_model.model.encoder.layer_norm.weight": torch.ones(64), **raw["state_dict"]}
    raw["optimizer_states"] = [{"state": {}, "param_groups": [{"lr": 5e-4}]}]
    raw["epoch"] = 3
    torch.save(raw, ckpt)
    student = {k[len("student_model."):]: v for k, v in raw["state_dict"].items() if k.startswith("student_model.")}
    return ckpt, yaml_path, student


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_import_writes_a_run(published: tuple[Path, Path, dict], tmp_path: Path) -> None:
    ckpt, yaml_path, student = published
    res = import_checkpoint(ckpt, tmp_path / "run", yaml_path)
    assert res.kind == "lightning" and res.step == 1234 and res.num_tensors == len(student)
    for name in (run_state.CONFIG, run_state.STUDENT, run_state.METRICS):
        assert (res.run / name).is_file()
    loaded = load_student_checkpoint(res.student)
    assert loaded.kind == "fhb" and loaded.step == 1234 and loaded.epoch == 3
    state = loaded.model.state_dict()
    assert list(state) == list(student)
    assert all(torch.equal(state[k], v) for k, v in student.items())
    assert run_state.read_metrics(res.run)[0]["sha256"] == res.sha256


def test_import_then_export_is_bitwise(published: tuple[Path, Path, dict], tmp_path: Path) -> None:
    ckpt, yaml_path, student = published
    first = export_s3prl(import_checkpoint(ckpt, tmp_path / "run1", yaml_path).run, tmp_path / "exp1")
    assert first.step == 1234
    a = _state(first.checkpoint)
    assert list(a) == ["student_model." + k for k in student]  # teacher keys dropped, order kept
    assert all(torch.equal(a["student_model." + k], v) for k, v in student.items())
    # the exported pair imports and exports again to the same tensors and the same yaml
    second = export_s3prl(import_checkpoint(first.checkpoint, tmp_path / "run2", first.yaml).run, tmp_path / "exp2")
    b = _state(second.checkpoint)
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert (tmp_path / "exp1" / YAML_NAME).read_text() == (tmp_path / "exp2" / YAML_NAME).read_text()
    assert "imported from" in (tmp_path / "exp2" / "model_card.md").read_text()
    # and without -g, the config stored in the checkpoint is used
    third = import_checkpoint(tmp_path / "exp2" / CKPT_NAME, tmp_path / "run3")
    assert third.step == 1234


def test_import_refuses(published: tuple[Path, Path, dict], tmp_path: Path) -> None:
    ckpt, yaml_path, _ = published
    import_checkpoint(ckpt, tmp_path / "run", yaml_path)
    with pytest.raises(FhbError, match="not empty"):
        import_checkpoint(ckpt, tmp_path / "run", yaml_path)
    import_checkpoint(ckpt, tmp_path / "run", yaml_path, overwrite=True)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(load_packaged_config("fithubert").to_yaml())
    with pytest.raises(FhbError, match="do not match"):
        import_checkpoint(ckpt, tmp_path / "run-wrong", wrong)
    assert not (tmp_path / "run-wrong").exists()
    with pytest.raises(FhbError):
        import_checkpoint(tmp_path / "missing.ckpt", tmp_path / "run-missing")
