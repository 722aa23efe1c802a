"""Shared fixtures: the real-speech fixture corpus and small random teachers in fairseq's layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# fairseq (reference tests only) calls torch.load without weights_only, which torch >= 2.6 refuses.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

DATA = Path(__file__).parent / "data"
LIBRI_ROOT = DATA / "mini-librispeech" / "LibriSpeech"


@pytest.fixture(scope="session")
def libri_root() -> Path:
    """The bundled mini-LibriSpeech root (10 real utterances, train-clean-100 and dev-clean)."""
    return LIBRI_ROOT


@pytest.fixture(scope="session")
def tiny_teacher_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random HuBERT (3 post-LN layers, dim 64) in fairseq's checkpoint layout."""
    from fhb.pipeline.teacher import save_random_checkpoint

    return save_random_checkpoint(tmp_path_factory.mktemp("teachers") / "tiny.pt", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_w2v2_teacher_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random pre-LN wav2vec 2.0 (layer_norm extractor, conv bias, normalize=True)."""
    from fhb.pipeline.teacher import save_random_checkpoint

    return save_random_checkpoint(tmp_path_factory.mktemp("teachers") / "tiny-w2v2.pt", "tiny-wav2vec2", seed=1)


@pytest.fixture(scope="session")
def fixture_wavs(libri_root: Path) -> dict[str, "object"]:
    """utterance id -> float32 torch waveform, for every fixture utterance."""
    import soundfile as sf
    import torch

    wavs = {}
    for flac in sorted(libri_root.rglob("*.flac")):
        data, rate = sf.read(flac, dtype="float32")
        assert rate == 16000
        wavs[flac.stem] = torch.from_numpy(data)
    return wavs
