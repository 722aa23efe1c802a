"""``fhb distill`` initialises the student from the lake's stored teacher (``init_conv_layers``,
``init_encoder_layers``) without building or running the teacher; a lake without it is refused
in one line naming ``fhb lake add-teacher``, before the run directory exists."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from fhb.errors import FhbError
from fhb.pipeline import teacher as teacher_module
from fhb.pipeline.lake_teacher import store_teacher
from fhb.stages import distill
from fhb.storage import LakeWriter
from tests.recipes import write_recipe
from tests.stages.test_distill import TRAIN, _run, build_lake


@pytest.fixture(scope="module")
def bare_lake(tmp_path_factory: pytest.TempPathFactory, libri_root: Path, tiny_teacher_path: Path) -> Path:
    """The tiny teacher's layers on the train split, without its weights."""
    return build_lake(libri_root, tiny_teacher_path, tmp_path_factory.mktemp("init") / "lake", splits=(TRAIN,))


def test_a_lake_without_the_teacher_is_refused_in_one_line(bare_lake: Path, tmp_path: Path) -> None:
    config = write_recipe(tmp_path / "dh.yaml", "distilhubert")
    with pytest.raises(FhbError) as info:
        _run(bare_lake, tmp_path / "run", steps=1, config=config, dev_split="none")
    assert "\n" not in str(info.value) and f"fhb lake add-teacher {bare_lake} --teacher CKPT" in str(info.value)
    assert not (tmp_path / "run").exists()


def test_the_student_starts_from_the_lake_teacher_which_never_runs(
    bare_lake: Path, tiny_teacher_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(bare_lake, lake)
    with LakeWriter.reopen(lake) as w:
        store_teacher(w, tiny_teacher_path)
    expected = teacher_module.load_teacher(tiny_teacher_path).model.state_dict()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the teacher was built or run in stage two")

    monkeypatch.setattr(teacher_module.Teacher, "extract", refuse)
    monkeypatch.setattr("fhb.pipeline.lake_teacher.build_teacher", refuse)
    seen: dict[str, torch.Tensor] = {}
    build = distill.build_model_and_loss

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]  # the student as built, before any update
        model, loss, gen = build(*args, **kwargs)
        seen.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model, loss, gen

    monkeypatch.setattr(distill, "build_model_and_loss", spy)
    config = write_recipe(tmp_path / "dh.yaml", "distilhubert")
    summary = _run(lake, tmp_path / "run", steps=1, config=config, dev_split="none")
    assert summary.steps == 1 and seen
    for name in ("feature_extractor.conv_layers.0.0.weight", "post_extract_proj.weight", "encoder.pos_conv.0.weight_v",
                 "encoder.layers.0.fc1.weight", "encoder.layers.1.self_attn.q_proj.weight"):
        assert torch.equal(seen[name], expected[name]), name
