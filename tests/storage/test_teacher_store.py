"""The teacher stored in a lake (numpy side): written atomically under the lock, recorded in the
root attributes, read back sha256-checked, checked by `verify_lake`; old lakes still open."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fhb.errors import FhbError
from fhb.storage import LakeMeta, LakeWriter, open_lake, read_teacher, verify_lake
from fhb.storage import teacher_store
from fhb.storage.layout import read_node_attrs
from fhb.storage.lock import LakeLock
from fhb.storage.schema import (
    TEACHER_ATTR,
    TEACHER_CONFIG_FILE,
    TEACHER_DIR,
    TEACHER_WEIGHTS_FILE,
    ZARR_JSON,
    StoredTeacher,
)
from fhb.storage.teacher_store import TeacherSource

from .conftest import SHA, make_meta, make_utts


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {f"encoder.layers.{i}.fc1.weight": rng.standard_normal((6, 4)).astype(np.float32) for i in range(3)}


def _source(meta: LakeMeta, sha: str = SHA) -> TeacherSource:
    return TeacherSource(model_name="hubert", normalize=False, config=dict(meta.teacher.config), name="toy.pt", sha256=sha)


@pytest.fixture
def old_lake(build_lake) -> Path:
    """A lake as fhb wrote them before it stored the teacher: no ``teacher_weights`` key at all."""
    meta = make_meta("float16")
    lake = build_lake(meta, {"train": {"s0": make_utts(meta, 3)}})
    doc = json.loads((lake / ZARR_JSON).read_text())
    del doc["attributes"][TEACHER_ATTR]
    (lake / ZARR_JSON).write_text(json.dumps(doc))
    return lake


def _store(lake: Path, tensors: dict[str, np.ndarray] | None = None, sha: str = SHA) -> StoredTeacher:
    with LakeWriter.reopen(lake) as w:
        return w.store_teacher(tensors or _tensors(), _source(w.meta, sha))


def test_old_lake_opens_and_says_how_to_add_the_teacher(old_lake: Path) -> None:
    lake = open_lake(old_lake)
    assert lake.meta.teacher_weights is None and lake.meta.format_version == 1
    assert verify_lake(old_lake) == []
    with pytest.raises(FhbError, match=r"found none .*`fhb lake add-teacher .* --teacher CKPT`") as e:
        read_teacher(old_lake)
    assert "\n" not in str(e.value)


def test_store_then_read(old_lake: Path) -> None:
    stored = _store(old_lake)
    assert stored.source_sha256 == SHA and stored.num_tensors == 3 and stored.dtype == "float32"
    meta = open_lake(old_lake).meta
    assert meta.teacher_weights == stored.weights
    assert meta.splits["train"].utterances == 3  # the listing survived the root update
    assert LakeMeta.from_dict(meta.to_dict()) == meta
    back, arrays = read_teacher(old_lake)
    assert back == stored
    assert all(np.array_equal(arrays[k], v) for k, v in _tensors().items()) and len(arrays) == 3
    assert json.loads((old_lake / TEACHER_DIR / TEACHER_CONFIG_FILE).read_text())["source_sha256"] == SHA
    assert verify_lake(old_lake) == []
    assert sorted(p.name for p in old_lake.iterdir()) == sorted([TEACHER_DIR, ZARR_JSON, "train"])


def test_stored_teacher_is_idempotent_and_needs_the_lock(old_lake: Path) -> None:
    stored = _store(old_lake)
    with LakeWriter.reopen(old_lake) as w:
        assert w.stored_teacher() == stored
    w = LakeWriter.reopen(old_lake)
    with pytest.raises(ValueError, match="inside its `with` block"):
        w.store_teacher(_tensors(), _source(open_lake(old_lake).meta))
    with LakeLock(old_lake), pytest.raises(FhbError, match="lock"):
        _store(old_lake)


def test_weights_of_another_teacher_are_refused(old_lake: Path) -> None:
    with pytest.raises(FhbError, match=f"expected the checkpoint .*sha256 {SHA}.*found sha256 {'f' * 64}"):
        _store(old_lake, sha="f" * 64)
    assert not (old_lake / TEACHER_DIR).exists() and open_lake(old_lake).meta.teacher_weights is None


def test_flipped_byte_is_refused_by_read_reported_by_verify_and_repaired(old_lake: Path) -> None:
    _store(old_lake)
    p = old_lake / TEACHER_DIR / TEACHER_WEIGHTS_FILE
    b = bytearray(p.read_bytes())
    b[-3] ^= 0x10
    p.write_bytes(bytes(b))
    with pytest.raises(FhbError, match="expected sha256 .*add-teacher"):
        read_teacher(old_lake)
    findings = verify_lake(old_lake)
    assert [(f.severity, f.where) for f in findings] == [("error", f"{old_lake.name}/{TEACHER_DIR}")]
    assert "expected sha256" in findings[0].message and "add-teacher" in findings[0].message
    assert verify_lake(old_lake, check_chunks=False) == []  # the data check reads the weights
    with LakeWriter.reopen(old_lake) as w:
        assert w.stored_teacher() is None  # so `add-teacher` writes it again
    _store(old_lake)
    assert verify_lake(old_lake) == [] and read_teacher(old_lake)[1].keys() == _tensors().keys()


def test_weights_recorded_for_another_teacher_are_reported(old_lake: Path) -> None:
    _store(old_lake)
    doc = json.loads((old_lake / ZARR_JSON).read_text())
    doc["attributes"][TEACHER_ATTR]["source_sha256"] = "e" * 64
    (old_lake / ZARR_JSON).write_text(json.dumps(doc))
    with pytest.raises(FhbError, match="stored weights are of checkpoint sha256 e+, the lake's targets of"):
        read_teacher(old_lake)
    assert [f.severity for f in verify_lake(old_lake)] == ["error"]


def test_interrupted_write_leaves_no_half_written_weights(old_lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(path: Path, d: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(teacher_store, "_write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        _store(old_lake)
    assert sorted(p.name for p in old_lake.iterdir()) == sorted([ZARR_JSON, "train"])
    assert open_lake(old_lake).meta.teacher_weights is None
    with pytest.raises(FhbError, match="found none"):
        read_teacher(old_lake)
    monkeypatch.undo()
    stored = _store(old_lake)
    assert read_teacher(old_lake)[0] == stored


def test_interrupted_replacement_never_leaves_a_recorded_half(old_lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replacing a stored teacher unrecords it first: a crash between the swap's renames leaves
    no record (readers say how to add it), never a record of missing or mixed files."""
    _store(old_lake)
    real_rename = teacher_store.os.rename
    calls = []

    def rename(a: Path, b: Path) -> None:
        calls.append(Path(b).name)
        if Path(b).name == TEACHER_DIR:
            raise KeyboardInterrupt
        real_rename(a, b)

    monkeypatch.setattr(teacher_store.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        _store(old_lake)
    monkeypatch.undo()
    assert open_lake(old_lake).meta.teacher_weights is None
    assert not (old_lake / TEACHER_DIR).exists()
    with pytest.raises(FhbError, match="found none"):
        read_teacher(old_lake)
    assert [f.severity for f in verify_lake(old_lake)] == ["warning"]  # the moved-aside old copy
    _store(old_lake)
    assert verify_lake(old_lake) == []
    assert sorted(p.name for p in old_lake.iterdir()) == sorted([TEACHER_DIR, ZARR_JSON, "train"])


def test_killed_write_leftovers_are_invisible_and_cleaned(old_lake: Path) -> None:
    tmp = old_lake / "_tmp_teacher_0123456789ab"
    tmp.mkdir()
    (tmp / TEACHER_WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00")  # a torn file
    findings = verify_lake(old_lake)
    assert [(f.severity, f.where) for f in findings] == [("warning", f"{old_lake.name}/{tmp.name}")]
    with pytest.raises(FhbError, match="found none"):
        read_teacher(old_lake)
    _store(old_lake)
    assert not tmp.exists() and verify_lake(old_lake) == []


def test_unrecorded_complete_teacher_is_adopted(old_lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after the rename, before the root record: readers ignore it, verify warns, and the
    next client records it without writing it again."""
    monkeypatch.setattr(teacher_store, "_record", lambda root, weights: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        _store(old_lake)
    monkeypatch.undo()
    assert (old_lake / TEACHER_DIR).is_dir() and open_lake(old_lake).meta.teacher_weights is None
    assert [f.severity for f in verify_lake(old_lake)] == ["warning"]
    mtime = (old_lake / TEACHER_DIR / TEACHER_WEIGHTS_FILE).stat().st_mtime_ns
    with LakeWriter.reopen(old_lake) as w:
        stored = w.stored_teacher()
        assert stored is not None and w.meta.teacher_weights == stored.weights
    assert (old_lake / TEACHER_DIR / TEACHER_WEIGHTS_FILE).stat().st_mtime_ns == mtime
    assert verify_lake(old_lake) == []


def test_root_attribute_round_trips(old_lake: Path) -> None:
    stored = _store(old_lake)
    attrs = read_node_attrs(old_lake) or {}
    assert attrs[TEACHER_ATTR] == {"dir": TEACHER_DIR, "file": TEACHER_WEIGHTS_FILE, "sha256": stored.weights_sha256,
                                   "bytes": stored.weights_bytes, "source_sha256": SHA}
    assert StoredTeacher.from_dict(stored.to_dict()) == stored
    with pytest.raises(FhbError, match="expected format 'fhb-teacher'"):
        StoredTeacher.from_dict({"format": "other"})
