"""The teacher rebuilt from a lake alone: bit-identical to the checkpoint's, no pickle, refused
when absent, damaged or of another checkpoint."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fhb.errors import FhbError
from fhb.pipeline import checkpoint_io
from fhb.pipeline import teacher as teacher_module
from fhb.pipeline.lake_teacher import load_lake_teacher, load_lake_teacher_state, store_teacher
from fhb.pipeline.teacher import load_teacher, read_teacher_spec, save_random_checkpoint
from fhb.storage import LakeMeta, LakeWriter, TeacherMeta, verify_lake
from fhb.storage.schema import TEACHER_DIR, TEACHER_WEIGHTS_FILE, json_config
from tests.lakes import write_lake


def _empty_lake(checkpoint: Path, path: Path) -> Path:
    """A lake of ``checkpoint``'s teacher without shards and without weights."""
    spec = read_teacher_spec(checkpoint)
    teacher = TeacherMeta(spec.path.name, spec.sha256, json_config(spec.config), spec.num_layers, spec.dim)
    return write_lake(path, LakeMeta(teacher=teacher, layers=(1,)), {})


@pytest.fixture(params=["tiny_teacher_path", "tiny_w2v2_teacher_path"])
def checkpoint(request: pytest.FixtureRequest) -> Path:
    """The post-LN HuBERT and the pre-LN, normalising wav2vec 2.0 tiny teachers."""
    return request.getfixturevalue(request.param)


def test_lake_teacher_equals_checkpoint_teacher_bit_for_bit(checkpoint: Path, fixture_wavs: dict, tmp_path: Path) -> None:
    lake = _empty_lake(checkpoint, tmp_path / "lake")
    with LakeWriter.reopen(lake) as w:
        stored = store_teacher(w, checkpoint)
    original, rebuilt = load_teacher(checkpoint), load_lake_teacher(lake)
    assert rebuilt.sha256 == original.sha256 == stored.source_sha256
    assert (rebuilt.model_name, rebuilt.normalize, rebuilt.arch) == (original.model_name, original.normalize, original.arch)
    assert rebuilt.path == lake / TEACHER_DIR / TEACHER_WEIGHTS_FILE
    a, b = original.model.state_dict(), rebuilt.model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    wavs = [original.prepare(w) for w in list(fixture_wavs.values())[:4]]
    (la, ca), (lb, cb) = original.extract(wavs, cnn_features=True), rebuilt.extract(wavs, cnn_features=True)
    assert all(torch.equal(x, y) for x, y in zip(la, lb)) and all(torch.equal(x, y) for x, y in zip(ca, cb))
    assert verify_lake(lake) == []


def test_reading_unpickles_nothing(tiny_teacher_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = _empty_lake(tiny_teacher_path, tmp_path / "lake")
    with LakeWriter.reopen(lake) as w:
        store_teacher(w, tiny_teacher_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickling while loading the lake's teacher")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(checkpoint_io.Unpickler, "load", refuse)  # fhb's restricted unpickler
    monkeypatch.setattr(checkpoint_io, "load_checkpoint", refuse)
    monkeypatch.setattr(teacher_module, "load_checkpoint", refuse)
    stored, state = load_lake_teacher_state(lake)
    assert stored.model_name == "hubert" and all(v.dtype == torch.float32 for v in state.values())
    assert load_lake_teacher(lake).num_layers == 3


def test_safetensors_package_reads_the_stored_weights(tiny_teacher_path: Path, tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.torch")
    lake = _empty_lake(tiny_teacher_path, tmp_path / "lake")
    with LakeWriter.reopen(lake) as w:
        store_teacher(w, tiny_teacher_path)
    theirs = st.load_file(str(lake / TEACHER_DIR / TEACHER_WEIGHTS_FILE))
    ours = load_teacher(tiny_teacher_path).model.state_dict()
    assert sorted(theirs) == sorted(ours) and all(torch.equal(theirs[k], ours[k]) for k in ours)


def test_no_weights_gives_one_line_with_the_fix(tiny_teacher_path: Path, tmp_path: Path) -> None:
    lake = _empty_lake(tiny_teacher_path, tmp_path / "lake")
    with pytest.raises(FhbError, match=rf"`fhb lake add-teacher {lake} --teacher CKPT`") as e:
        load_lake_teacher(lake)
    assert "\n" not in str(e.value)


def test_wrong_checkpoint_is_refused_naming_both(tiny_teacher_path: Path, tmp_path: Path) -> None:
    lake = _empty_lake(tiny_teacher_path, tmp_path / "lake")
    other = save_random_checkpoint(tmp_path / "other.pt", "tiny", seed=5)
    want, found = read_teacher_spec(tiny_teacher_path).sha256, read_teacher_spec(other).sha256
    with LakeWriter.reopen(lake) as w, pytest.raises(FhbError, match=f"{want}.*found sha256 {found}") as e:
        store_teacher(w, other)
    assert "tiny.pt" in str(e.value) and "other.pt" in str(e.value)
    assert not (lake / TEACHER_DIR).exists()


def test_damaged_weights_are_refused(tiny_teacher_path: Path, tmp_path: Path) -> None:
    lake = _empty_lake(tiny_teacher_path, tmp_path / "lake")
    with LakeWriter.reopen(lake) as w:
        store_teacher(w, tiny_teacher_path)
    p = lake / TEACHER_DIR / TEACHER_WEIGHTS_FILE
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x40
    p.write_bytes(bytes(b))
    with pytest.raises(FhbError, match="expected sha256 .*store it again with `fhb lake add-teacher"):
        load_lake_teacher(lake)
    assert [f.severity for f in verify_lake(lake)] == ["error"]
    with LakeWriter.reopen(lake) as w:  # add-teacher repairs it
        store_teacher(w, tiny_teacher_path)
    assert np.isfinite(load_lake_teacher(lake).model.encoder.layers[0].fc1.weight.detach().numpy()).all()
