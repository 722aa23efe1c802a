"""The mel-spectrogram front-end of the published student, without torchaudio.

:class:`MelSpectrogram` computes what the published code's
``torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=400, n_mels=n, hop_length=320,
center=False)`` computes (periodic Hann window of 400 samples, power 2, HTK mel scale, no filter
normalisation, 0 Hz to 8 kHz), with torchaudio's buffer names (``spectrogram.window``,
``mel_scale.fb``) so published state dicts load. With ``center=False`` a waveform of ``S`` samples
gives ``(S - 400) // 320 + 1`` frames: the frame count and 20 ms hop of the wav2vec 2.0 conv stack
(receptive field 400, stride 320), so the teacher's frames line up one to one.

:class:`MelSpecHead` is the published optional conv head over the mel bins (Conv1d per layer,
stride 1, padding ``kernel // 2``, ReLU between layers, none after the last).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fhb.nn.frames import ConvSpec

__all__ = ["MEL_HOP", "MEL_WINDOW", "MelSpecHead", "MelSpectrogram", "mel_filterbank"]

SAMPLE_RATE = 16000
MEL_WINDOW = 400
"""``n_fft`` = window length in samples (25 ms)."""
MEL_HOP = 320
"""Hop in samples (20 ms, the teacher's frame rate)."""


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int = SAMPLE_RATE,
                   f_min: float = 0.0, f_max: float | None = None) -> torch.Tensor:
    """HTK-scale triangular filters, unnormalised: ``n_freqs x n_mels`` (torchaudio's ``melscale_fbanks``).

    Filter ``m`` rises linearly from mel point ``m`` to ``m + 1`` and falls to ``m + 2``; the
    ``n_mels + 2`` points are equally spaced in mel between ``f_min`` and ``f_max``.
    """
    f_max = float(sample_rate // 2) if f_max is None else f_max
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_pts = torch.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2)
    f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.max(torch.zeros(1), torch.min(down, up))


class _PowerSpectrogram(nn.Module):
    """``|STFT|^2`` with a periodic Hann window, no centring (buffer ``window``)."""

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop = hop
        self.register_buffer("window", torch.hann_window(n_fft))

    def forward(self, wavs: torch.Tensor) -> torch.Tensor:
        """``B x S`` -> ``B x (n_fft // 2 + 1) x T'``."""
        window: torch.Tensor = self.window  # type: ignore[assignment]
        spec = torch.stft(wavs, self.n_fft, hop_length=self.hop, win_length=self.n_fft, window=window,
                          center=False, normalized=False, onesided=True, return_complex=True)
        return spec.abs().pow(2.0)


class _MelScale(nn.Module):
    """Project a power spectrogram onto mel filters (buffer ``fb``, ``n_freqs x n_mels``)."""

    def __init__(self, n_freqs: int, n_mels: int) -> None:
        super().__init__()
        self.register_buffer("fb", mel_filterbank(n_freqs, n_mels))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """``B x F x T'`` -> ``B x n_mels x T'``."""
        fb: torch.Tensor = self.fb  # type: ignore[assignment]
        return torch.matmul(spec.transpose(-1, -2), fb).transpose(-1, -2)


class MelSpectrogram(nn.Module):
    """Power mel spectrogram, optionally ``log(mel + 1e-15)`` (the published ``enable_log_mel``).

    Args:
        n_mels: mel bins.
        log: take the log.
    """

    def __init__(self, n_mels: int, log: bool = False) -> None:
        super().__init__()
        self.spectrogram = _PowerSpectrogram(MEL_WINDOW, MEL_HOP)
        self.mel_scale = _MelScale(MEL_WINDOW // 2 + 1, n_mels)
        self.n_mels = n_mels
        self.log = log

    def forward(self, wavs: torch.Tensor) -> torch.Tensor:
        """``B x S`` float waveforms -> ``B x n_mels x T'`` with ``T' = (S - 400) // 320 + 1``.

        Always computed in float32 (STFT under autocast would lose the low bins).
        """
        with torch.autocast(device_type=wavs.device.type, enabled=False):
            mel = self.mel_scale(self.spectrogram(wavs.float()))
            return torch.log(mel + 1e-15) if self.log else mel


class MelSpecHead(nn.Module):
    """Conv layers over the mel bins that keep the frame count (``conv_layers.{i}``).

    Args:
        n_mels: input channels.
        specs: ``(channels, kernel, stride)`` per layer; stride must be 1 and kernels odd.
    """

    def __init__(self, n_mels: int, specs: tuple[ConvSpec, ...]) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList()
        channels_in = n_mels
        for channels, kernel, stride in specs:
            if stride != 1 or kernel % 2 != 1:
                raise ValueError(f"Expected stride 1 and an odd kernel. Found: {(channels, kernel, stride)}")
            self.conv_layers.append(nn.Conv1d(channels_in, channels, kernel, padding=kernel // 2))
            channels_in = channels
        self.out_dim = channels_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x n_mels x T'`` -> ``B x C x T'``."""
        last = len(self.conv_layers) - 1
        for i, conv in enumerate(self.conv_layers):
            x = conv(x)
            if i < last:
                x = F.relu(x)
        return x
