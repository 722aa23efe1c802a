"""Extraction with a fine-tuned CTC teacher: the lake keeps the transcripts, the teacher's greedy
labels per utterance and its letter dictionary; the stored teacher keeps the output layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fhb.pipeline.ctc_layout import save_random_ctc_checkpoint
from fhb.pipeline.ctc_targets import greedy_labels, labels_of_logits
from fhb.pipeline.lake_teacher import load_lake_teacher
from fhb.pipeline.teacher import load_teacher
from fhb.stages.extract import run_extract
from fhb.storage.ctc_labels import LETTERS, collapse
from fhb.storage.integrity import verify_lake
from fhb.storage.reader import open_lake


@pytest.fixture(scope="module")
def ctc_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_ctc_checkpoint(tmp_path_factory.mktemp("t") / "tiny-ctc.pt", "tiny-ctc", seed=5)


@pytest.fixture(scope="module")
def ctc_lake(ctc_teacher: Path, libri_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lake") / "lake"
    run_extract(ctc_teacher, libri_root, ["train-clean-100", "dev-clean"], out, shard_hours=0.002, workers=0,
                threads=1, layers="2,3")
    return out


def test_lake_holds_labels_and_dictionary(ctc_lake: Path, ctc_teacher: Path) -> None:
    lake = open_lake(ctc_lake)
    assert lake.meta.teacher.ctc_vocab == LETTERS
    teacher = load_teacher(ctc_teacher)
    split = lake["dev-clean"]
    for utt in split.utterance_ids:
        wav = teacher.prepare(torch.from_numpy(split.audio(utt).astype("float32") / 32768.0))
        expected = labels_of_logits(teacher.ctc_logits([wav])[0])
        assert list(split.ctc_labels(utt)) == expected
        assert split.transcript(utt)  # LibriSpeech transcripts were stored all along
    verify_lake(ctc_lake)


def test_logits_from_stored_last_layer_equal_a_second_pass(ctc_teacher: Path, fixture_wavs: dict) -> None:
    teacher = load_teacher(ctc_teacher)
    wavs = [teacher.prepare(w) for w in list(fixture_wavs.values())[:3]]
    outs = teacher.extract(wavs, layers=[1, 3])
    assert greedy_labels(teacher, wavs, outs, [1, 3]) == greedy_labels(teacher, wavs)


def test_stored_teacher_keeps_the_head(ctc_lake: Path, ctc_teacher: Path, fixture_wavs: dict) -> None:
    stored, original = load_lake_teacher(ctc_lake), load_teacher(ctc_teacher)
    assert stored.is_ctc and stored.model_name == "hubert_ctc"
    wav = original.prepare(next(iter(fixture_wavs.values())))
    assert torch.equal(stored.ctc_logits([wav])[0], original.ctc_logits([wav])[0])


def test_collapse_is_the_published_converter() -> None:
    # CTCSequenceConverter: itertools.groupby over the argmax, then drop id 0
    assert collapse([0, 7, 7, 0, 7, 4, 4, 0, 0, 5]) == [7, 7, 4, 5]
    assert collapse([]) == []


def test_transcode_keeps_labels(ctc_lake: Path, tmp_path: Path) -> None:
    from fhb.stages.transcode import run_transcode

    run_transcode(ctc_lake, tmp_path / "int8", "int8")
    a, b = open_lake(ctc_lake), open_lake(tmp_path / "int8")
    assert b.meta.teacher.ctc_vocab == LETTERS
    for utt in a["dev-clean"].utterance_ids:
        assert b["dev-clean"].ctc_labels(utt) == a["dev-clean"].ctc_labels(utt)
