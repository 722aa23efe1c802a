"""Audio decoding: the fixture decodes exactly, and every kind of bad file raises AudioError."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fhb.errors import FhbError
from fhb.pipeline.audio import (
    SAMPLE_RATE,
    AudioError,
    audio_info,
    load_audio,
    load_audio_int16,
)

LOADERS: list[Callable[[Path], np.ndarray]] = [load_audio, load_audio_int16]


def _fixture_flacs(libri_root: Path) -> list[Path]:
    flacs = sorted(libri_root.rglob("*.flac"))
    assert len(flacs) == 10
    return flacs


@pytest.fixture
def long_flac(libri_root: Path) -> Path:
    return sorted(libri_root.rglob("*.flac"))[0]


def test_fixture_float_is_int16_over_32768_exactly(libri_root: Path) -> None:
    for flac in _fixture_flacs(libri_root):
        wav = load_audio(flac)
        pcm = load_audio_int16(flac)
        assert wav.dtype == np.float32 and wav.ndim == 1
        assert pcm.dtype == np.int16 and pcm.shape == wav.shape
        assert np.array_equal(wav, pcm.astype(np.float32) / 32768)
        assert wav.min() >= -1.0 and wav.max() < 1.0
        assert audio_info(flac) == (wav.shape[0], SAMPLE_RATE, 1)


@settings(max_examples=25, deadline=None)
@given(arrays(np.int16, st.integers(1, 3000)))
def test_int16_round_trip_through_flac(
    tmp_path_factory: pytest.TempPathFactory, pcm: np.ndarray
) -> None:
    """Any int16 signal written as 16-bit FLAC decodes back bit-exactly, in both forms."""
    path = tmp_path_factory.mktemp("flac") / "x.flac"
    sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16")
    assert np.array_equal(load_audio_int16(path), pcm)
    assert np.array_equal(load_audio(path), pcm.astype(np.float32) / 32768)


def _cut(src: Path, dst: Path, keep: int) -> Path:
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


def _bad_files(tmp_path: Path, src: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, regex its AudioError reason must match)."""
    pcm = load_audio_int16(src)
    size = src.stat().st_size
    cases: dict[str, tuple[Path, str]] = {
        "truncated_data": (_cut(src, tmp_path / "half.flac", size // 2), "truncated|not readable"),
        "truncated_header": (_cut(src, tmp_path / "head.flac", 20), "not readable"),
        "missing": (tmp_path / "nope.flac", "no such file"),
        "not_audio": (tmp_path / "text.flac", "not readable"),
    }
    (tmp_path / "text.flac").write_text("ID SOME TEXT\n")
    sf.write(tmp_path / "zero.wav", np.zeros(0, np.int16), SAMPLE_RATE, subtype="PCM_16")
    cases["zero"] = (tmp_path / "zero.wav", "0 samples")
    sf.write(tmp_path / "stereo.flac", np.stack([pcm, pcm], axis=1), SAMPLE_RATE)
    cases["stereo"] = (tmp_path / "stereo.flac", "2 channels, expected 1")
    sf.write(tmp_path / "8k.flac", pcm[::2], 8000)
    cases["8k"] = (tmp_path / "8k.flac", "sample rate is 8000 Hz, expected 16000 Hz")
    (tmp_path / "dir.flac").mkdir()
    cases["directory"] = (tmp_path / "dir.flac", "found a directory")
    return cases


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "case",
    [
        "truncated_data",
        "truncated_header",
        "missing",
        "not_audio",
        "zero",
        "stereo",
        "8k",
        "directory",
    ],
)
def test_bad_file_raises(
    tmp_path: Path, long_flac: Path, loader: Callable[[Path], np.ndarray], case: str
) -> None:
    path, reason = _bad_files(tmp_path, long_flac)[case]
    with pytest.raises(AudioError, match=reason) as caught:
        loader(path)
    error = caught.value
    assert isinstance(error, FhbError)
    assert error.path == path
    assert str(error).startswith(f"{path}: {error.reason}")
    assert error.fix and error.fix in str(error)


def test_wrong_rate_message_says_resample(tmp_path: Path, long_flac: Path) -> None:
    path, _ = _bad_files(tmp_path, long_flac)["8k"]
    with pytest.raises(AudioError, match="resample to 16 kHz"):
        load_audio(path)


def test_info_reads_header_only(tmp_path: Path, long_flac: Path) -> None:
    """A file cut after its header still has an intact header; only decoding sees the cut."""
    cut = _cut(long_flac, tmp_path / "cut.flac", long_flac.stat().st_size // 2)
    assert audio_info(cut) == audio_info(long_flac)
    with pytest.raises(AudioError, match="truncated"):
        audio_info(cut, check_end=True)
    with pytest.raises(AudioError):
        load_audio(cut)


@pytest.mark.parametrize("case", ["truncated_header", "missing", "not_audio", "directory"])
def test_info_raises_for_unreadable(tmp_path: Path, long_flac: Path, case: str) -> None:
    path, reason = _bad_files(tmp_path, long_flac)[case]
    with pytest.raises(AudioError, match=reason):
        audio_info(path)


def test_info_reports_values_without_judging(tmp_path: Path, long_flac: Path) -> None:
    cases = _bad_files(tmp_path, long_flac)
    assert audio_info(cases["stereo"][0])[1:] == (SAMPLE_RATE, 2)
    assert audio_info(cases["8k"][0])[1:] == (8000, 1)
    assert audio_info(cases["zero"][0])[0] == 0


def test_float_file_outside_unit_range_refused(tmp_path: Path) -> None:
    path = tmp_path / "loud.wav"
    sf.write(path, np.array([0.0, 1.5, -0.2], np.float32), SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"reach 1\.500, expected values in \[-1, 1\]"):
        load_audio(path)
