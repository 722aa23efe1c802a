"""One rule for a CTC teacher's stored greedy labels (`schema.ctc_label_problem`), held by the writer,
`verify_lake` and the reader.

The labels live in the shard index, which is checksummed, so damage on disk is caught there; this
is about what a writer must never store (a blank, an id outside the teacher's vocabulary, labels
in a lake whose teacher has none, or none where it has) and about lakes that were written so
anyway (an older or faulty writer: the index checksum then matches the wrong labels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

from fhb.errors import FhbError
from fhb.storage import LakeMeta, LakeWriter, ShardWriter, open_lake, verify_lake
from fhb.storage.ctc_labels import LETTERS
from fhb.storage.schema import ShardIndex, ctc_label_problem

from .conftest import make_meta, make_utts

V = len(LETTERS)


def _ctc_meta() -> LakeMeta:
    meta = make_meta()
    return dataclasses.replace(meta, teacher=dataclasses.replace(meta.teacher, ctc_vocab=LETTERS))


def _write(path: Path, meta: LakeMeta, labels: Sequence[Sequence[int] | None]) -> Path:
    utts = make_utts(meta, len(labels), seed=3)
    with LakeWriter(path, meta) as lake:
        with ShardWriter(path, "train", "s0", lake.meta) as w:
            for u, lab in zip(utts, labels):
                w.add(u.utt_id, u.speaker, u.chapter, u.transcript, u.audio, u.targets, u.cnn, ctc_labels=lab)
            w.commit()
        lake.list_split("train", ["s0"])
    return path


def test_the_rule() -> None:
    assert ctc_label_problem([4, 5, V - 1], V) is None
    assert ctc_label_problem([], V) is None  # a silent utterance decodes to nothing
    for bad in ([0], [5, V], [-1]):
        assert "expected ids 1..31 (0 is the blank, never stored)" in ctc_label_problem(bad, V)
    index = ShardIndex.from_dict({"utt_id": ["a", "b"], "speaker": ["1", "1"], "chapter": ["2", "2"],
                                  "transcript": ["A", "B"], "num_samples": [400, 400], "num_frames": [1, 1],
                                  "sample_offset": [0, 400], "frame_offset": [0, 1],
                                  "ctc_labels": [[7], [V + 3]]}, "test")
    assert index.ctc_problems(V) == ["ctc_labels of 'b': expected ids 1..31 (0 is the blank, never stored), "
                                     "found [35]"]
    assert "expected none" in index.ctc_problems(None)[0]
    assert "found none" in dataclasses.replace(index, ctc_labels=None).ctc_problems(V)[0]


@pytest.mark.parametrize("labels,needle", [
    ([[5, 6], [0, 7]], "expected ids 1..31"),
    ([[5, 6], [V]], "expected ids 1..31"),
    ([[5, 6], None], "expected the teacher greedy CTC labels, found none"),
])
def test_writer_refuses_labels_no_ctc_teacher_has(tmp_path: Path, labels: list, needle: str) -> None:
    with pytest.raises(FhbError, match=needle):
        _write(tmp_path / "lake", _ctc_meta(), labels)


def test_writer_refuses_labels_without_a_ctc_teacher(tmp_path: Path) -> None:
    with pytest.raises(FhbError, match="expected no CTC labels"):
        _write(tmp_path / "lake", make_meta(), [[5]])


def test_verify_and_reader_catch_labels_a_faulty_writer_stored(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A lake whose index (and its checksum) holds a blank and an id past the vocabulary: `verify`
    names the shard and utterance, and reading that utterance's labels is one line, not a CTC loss
    on garbage."""
    good = _write(tmp_path / "good", _ctc_meta(), [[5, 6], [7]])
    assert verify_lake(good) == []
    monkeypatch.setattr(ShardWriter, "_check_ctc_labels", lambda self, labels, what: None)  # the faulty writer
    bad = _write(tmp_path / "bad", _ctc_meta(), [[5, 6], [7, V + 1]])
    findings = [str(f) for f in verify_lake(bad)]
    assert len(findings) == 1 and "train/s0" in findings[0] and "expected ids 1..31" in findings[0], findings
    split = open_lake(bad)["train"]
    first, second = split.utterance_ids
    assert split.ctc_labels(first) == (5, 6)
    with pytest.raises(FhbError, match=f"shard 's0': ctc_labels of '{second}': expected ids 1..31"):
        split.ctc_labels(second)
    missing = _write(tmp_path / "missing", _ctc_meta(), [None, None])
    assert any("expected the column ctc_labels" in str(f) for f in verify_lake(missing))
