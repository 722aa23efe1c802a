"""Corpus scan: the real fixture, every per-file problem, and the errors that stop a scan."""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fhb.errors import FhbError
from fhb.pipeline.audio import SAMPLE_RATE, load_audio_int16
from fhb.pipeline.corpus import CorpusProblem, Manifest, Utterance, scan_librispeech

SPLITS = ["train-clean-100", "dev-clean"]


def _transcript_lines(libri_root: Path) -> dict[str, str]:
    lines = {}
    for trans in libri_root.rglob("*.trans.txt"):
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt_id, text = line.split(" ", 1)
            lines[utt_id] = text
    return lines


def test_fixture_scan(libri_root: Path) -> None:
    manifest = scan_librispeech(libri_root, SPLITS)
    assert manifest.problems == []
    assert len(manifest.utterances) == 10
    texts = _transcript_lines(libri_root)
    for utt in manifest.utterances:
        assert utt.path.is_file() and utt.path.name == f"{utt.utt_id}.flac"
        assert utt.path.parent == utt.path.parents[2] / utt.speaker / utt.chapter
        assert utt.utt_id.startswith(f"{utt.speaker}-{utt.chapter}-")
        assert utt.path.parents[2].name == utt.split
        assert utt.num_samples == sf.info(utt.path).frames > 0
        assert utt.transcript == texts[utt.utt_id]
    groups = manifest.by_split()
    assert list(groups) == SPLITS
    assert [len(g) for g in groups.values()] == [7, 3]
    for group in groups.values():
        ids = [u.utt_id for u in group]
        assert ids == sorted(ids)
    total = sum(u.num_samples for u in manifest.utterances)
    assert manifest.hours == pytest.approx(total / SAMPLE_RATE / 3600)


def test_split_order_is_the_requested_order(libri_root: Path) -> None:
    manifest = scan_librispeech(libri_root, SPLITS[::-1])
    assert list(manifest.by_split()) == SPLITS[::-1]


def test_parent_of_librispeech_accepted(libri_root: Path) -> None:
    direct = scan_librispeech(libri_root, SPLITS)
    via_parent = scan_librispeech(libri_root.parent, SPLITS)
    assert via_parent == direct


def test_deterministic_across_worker_counts(libri_root: Path) -> None:
    assert scan_librispeech(libri_root, SPLITS, workers=1) == scan_librispeech(
        libri_root, SPLITS, workers=16
    )


def test_records_are_frozen(libri_root: Path) -> None:
    utt = scan_librispeech(libri_root, ["dev-clean"]).utterances[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        utt.num_samples = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        CorpusProblem(Path("x"), "y").reason = "z"  # type: ignore[misc]


def test_does_not_decode(libri_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the scan decoded audio")

    monkeypatch.setattr(sf.SoundFile, "read", refuse)
    assert len(scan_librispeech(libri_root, SPLITS).utterances) == 10


@pytest.fixture
def broken_root(tmp_path: Path, libri_root: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the fixture with one broken file of each kind; returns (root, path -> regex)."""
    root = tmp_path / "LibriSpeech"
    shutil.copytree(libri_root, root)
    train = root / "train-clean-100"
    chapter = train / "4001" / "2001"
    good = chapter / "4001-2001-0000.flac"
    pcm = load_audio_int16(good)
    trans = chapter / "4001-2001.trans.txt"
    expected: dict[str, str] = {}

    cut = chapter / "4001-2001-0001.flac"
    cut.write_bytes(cut.read_bytes()[:20])
    expected[str(cut)] = "not readable"

    stereo = chapter / "4001-2001-0002.flac"
    sf.write(stereo, np.stack([pcm, pcm], axis=1), SAMPLE_RATE)
    expected[str(stereo)] = "2 channels, expected 1"

    slow = chapter / "4001-2001-0003.flac"
    sf.write(slow, pcm[::2], 8000)
    expected[str(slow)] = "sample rate is 8000 Hz, expected 16000 Hz; resample to 16 kHz"

    zero = chapter / "4001-2001-0004.flac"  # a WAV body: libsndfile reads by content
    sf.write(zero, np.zeros(0, np.int16), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    expected[str(zero)] = "0 samples"

    folder = chapter / "4001-2001-0005.flac"
    folder.mkdir()
    expected[str(folder)] = "expected a .flac file, found a directory"

    untranscribed = chapter / "4001-2001-0006.flac"
    shutil.copy(good, untranscribed)
    expected[str(untranscribed)] = "no line for 4001-2001-0006 in transcript"

    with open(trans, "a", encoding="utf-8") as handle:
        for n in (3, 4, 5):
            handle.write(f"4001-2001-000{n} SOME TEXT\n")
        handle.write("4001-2001-0099 A LINE WITHOUT AUDIO\n")

    latin = train / "1995" / "1826"
    (latin / "1995-1826.trans.txt").write_bytes(
        (latin / "1995-1826.trans.txt").read_bytes()
        + "1995-1826-0009 CAF\u00c9\n".encode("latin-1")
    )
    for flac in sorted(latin.glob("*.flac")):
        expected[str(flac)] = "is not UTF-8"
    return root, expected


def test_problems_reported_not_raised(
    broken_root: tuple[Path, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    root, expected = broken_root
    with caplog.at_level(logging.WARNING, logger="fhb.pipeline.corpus"):
        manifest = scan_librispeech(root, SPLITS, workers=4)
    found = {str(p.path): p.reason for p in manifest.problems}
    assert sorted(found) == sorted(expected)
    for path, pattern in expected.items():
        assert re.search(pattern, found[path]), (path, found[path])
    assert [str(p.path) for p in manifest.problems] == sorted(found)
    # only 4001-2001-0000 survives in train; dev-clean is untouched
    assert [u.utt_id for u in manifest.by_split()["train-clean-100"]] == ["4001-2001-0000"]
    assert len(manifest.by_split()["dev-clean"]) == 3
    # a transcript line without audio is a warning, not a problem
    assert "4001-2001-0099" in caplog.text
    assert not any("4001-2001-0099" in str(p.path) for p in manifest.problems)


def test_missing_transcript_file_and_misnamed_flac(tmp_path: Path, libri_root: Path) -> None:
    root = tmp_path / "LibriSpeech"
    shutil.copytree(libri_root, root)
    chapter = root / "dev-clean" / "1995" / "1827"
    (chapter / "1995-1827.trans.txt").unlink()
    misnamed = root / "dev-clean" / "4001" / "2002" / "4001-9999-0000.flac"
    shutil.copy(root / "dev-clean" / "4001" / "2002" / "4001-2002-0000.flac", misnamed)
    manifest = scan_librispeech(root, ["dev-clean"])
    reasons = {p.path.name: p.reason for p in manifest.problems}
    assert set(reasons) == {"1995-1827-0000.flac", "1995-1827-0001.flac", misnamed.name}
    assert reasons["1995-1827-0000.flac"].startswith("no transcript file: expected")
    assert "expected 4001-2002-<number>.flac" in reasons[misnamed.name]
    assert [u.utt_id for u in manifest.utterances] == ["4001-2002-0000"]


def test_check_end_catches_truncated_data(tmp_path: Path, libri_root: Path) -> None:
    root = tmp_path / "LibriSpeech"
    shutil.copytree(libri_root, root)
    flac = root / "dev-clean" / "1995" / "1827" / "1995-1827-0000.flac"
    flac.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    assert scan_librispeech(root, ["dev-clean"]).problems == []  # the header is intact
    manifest = scan_librispeech(root, ["dev-clean"], check_end=True)
    assert [(p.path, "truncated" in p.reason) for p in manifest.problems] == [(flac, True)]
    assert len(manifest.utterances) == 2


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FhbError, match=r"does not exist"):
        scan_librispeech(tmp_path / "nowhere", SPLITS)


def test_missing_split_lists_existing(libri_root: Path) -> None:
    with pytest.raises(FhbError, match=r"'test-clean' not found.*holds dev-clean, train-clean-100"):
        scan_librispeech(libri_root, ["dev-clean", "test-clean"])


def test_split_without_flac(tmp_path: Path) -> None:
    chapter = tmp_path / "LibriSpeech" / "dev-clean" / "1" / "2"
    chapter.mkdir(parents=True)
    (chapter / "1-2.trans.txt").write_text("1-2-0000 HELLO\n", encoding="utf-8")
    with pytest.raises(FhbError, match=r"'dev-clean' holds no \.flac"):
        scan_librispeech(tmp_path, ["dev-clean"])


@pytest.mark.parametrize(
    ("splits", "workers", "pattern"),
    [
        ([], 8, "no splits given"),
        ("dev-clean", 8, "sequence of names"),
        (["dev-clean", "dev-clean"], 8, "listed twice"),
        (["dev-clean"], 0, "workers must be at least 1"),
    ],
)
def test_bad_arguments(libri_root: Path, splits: list[str], workers: int, pattern: str) -> None:
    with pytest.raises(FhbError, match=pattern):
        scan_librispeech(libri_root, splits, workers=workers)


def test_manifest_helpers_on_empty() -> None:
    manifest = Manifest(utterances=[], problems=[])
    assert manifest.hours == 0.0 and manifest.by_split() == {}
    utt = Utterance("1-2-0", "s", "1", "2", Path("x.flac"), SAMPLE_RATE * 3600, "HI")
    assert Manifest([utt], []).hours == pytest.approx(1.0)
