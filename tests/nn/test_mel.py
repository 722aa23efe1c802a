"""fhb.nn.mel: torchaudio's MelSpectrogram(16000, n_fft=400, hop 320, center=False) without torchaudio.

References: transformers' numpy ``audio_utils`` (its HTK filters without normalisation are
torchaudio's ``melscale_fbanks``) and the textbook formulas written out here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fhb.nn.frames import conv_output_lengths
from fhb.nn.mel import MelSpecHead, MelSpectrogram, mel_filterbank


def _textbook_filters(n_freqs: int, n_mels: int) -> np.ndarray:
    """Triangles between n_mels + 2 HTK-mel-spaced points in 0..8000 Hz (float64)."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    points = hz(np.linspace(mel(0.0), mel(8000.0), n_mels + 2))
    freqs = np.linspace(0, 8000, n_freqs)
    fb = np.zeros((n_freqs, n_mels))
    for m in range(n_mels):
        lo, mid, hi = points[m], points[m + 1], points[m + 2]
        fb[:, m] = np.maximum(0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return fb


def test_filterbank_matches_formula_and_transformers() -> None:
    ours = mel_filterbank(201, 80).double().numpy()
    np.testing.assert_allclose(ours, _textbook_filters(201, 80), atol=1e-5)
    audio_utils = pytest.importorskip("transformers.audio_utils")
    theirs = audio_utils.mel_filter_bank(201, 80, 0.0, 8000.0, 16000, norm=None, mel_scale="htk")
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("log", [False, True])
def test_spectrogram_matches_a_direct_dft(log: bool) -> None:
    wav = torch.randn(2, 16000 + 123)
    got = MelSpectrogram(40, log=log)(wav)
    frames = (wav.shape[1] - 400) // 320 + 1
    assert got.shape == (2, 40, frames)
    # direct DFT of each periodic-Hann-windowed 400-sample frame, hop 320, no centring
    n = np.arange(400)
    window = 0.5 - 0.5 * np.cos(2 * math.pi * n / 400)
    x = wav.double().numpy()
    idx = np.arange(frames)[:, None] * 320 + n[None, :]
    power = np.abs(np.fft.rfft(x[:, idx] * window, n=400, axis=-1)) ** 2  # B x T x 201
    mel = power @ _textbook_filters(201, 40)  # B x T x 40
    expected = np.log(mel + 1e-15) if log else mel
    np.testing.assert_allclose(got.transpose(1, 2).double().numpy(), expected, rtol=2e-4, atol=2e-4 if log else 1e-3)


def test_frames_line_up_with_the_wav2vec2_conv_stack() -> None:
    specs = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    for samples in (400, 719, 720, 16000, 16319, 16320, 33333):
        mel = MelSpectrogram(8)(torch.zeros(1, samples))
        assert mel.shape[-1] == int(conv_output_lengths(torch.tensor([samples]), specs)[0])


def test_buffers_have_torchaudio_names() -> None:
    state = MelSpectrogram(80).state_dict()
    assert list(state) == ["spectrogram.window", "mel_scale.fb"]
    assert state["mel_scale.fb"].shape == (201, 80) and state["spectrogram.window"].shape == (400,)


def test_head_keeps_frames_relu_between_layers() -> None:
    head = MelSpecHead(8, ((16, 7, 1), (12, 5, 1)))
    x = torch.randn(2, 8, 13)
    y = head(x)
    assert y.shape == (2, 12, 13) and head.out_dim == 12
    c0, c1 = head.conv_layers
    torch.testing.assert_close(y, c1(torch.relu(c0(x))))
    assert list(head.state_dict()) == ["conv_layers.0.weight", "conv_layers.0.bias",
                                       "conv_layers.1.weight", "conv_layers.1.bias"]
    with pytest.raises(ValueError, match="odd"):
        MelSpecHead(8, ((16, 4, 1),))
