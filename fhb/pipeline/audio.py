"""Audio decoding for fhb: 16 kHz mono files in, validated numpy arrays out.

Every stage reads audio through this module so that one set of checks decides what counts as
usable speech: the file exists, is a file, decodes completely, is sampled at
:data:`SAMPLE_RATE`, has one channel and at least one sample. Anything else raises
:class:`AudioError`, which names the file, what was wrong and how to fix it.

Two decoders share those checks:

* :func:`load_audio` returns ``float32`` samples, what the teacher consumes;
* :func:`load_audio_int16` returns the ``int16`` samples the lake stores.

For 16-bit sources (LibriSpeech's FLAC) the two agree exactly:
``load_audio(p) == load_audio_int16(p).astype(np.float32) / 32768``, because libsndfile's float
read of 16-bit PCM divides by 32768. Sources with more bits are quantised to 16 bits by
libsndfile in :func:`load_audio_int16`.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import soundfile as sf

from fhb.errors import FhbError
from fhb.files import file_kind

__all__ = [
    "SAMPLE_RATE",
    "AudioError",
    "audio_info",
    "load_audio",
    "load_audio_int16",
]

logger = logging.getLogger(__name__)

SAMPLE_RATE: int = 16000
"""The only sample rate fhb accepts (HuBERT's): 16 kHz."""

_RESAMPLE_HINT = (
    f"resample to {SAMPLE_RATE // 1000} kHz mono first, e.g. "
    f"`sox in.flac -r {SAMPLE_RATE} -c 1 out.flac`"
)
_FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})


MIN_SAMPLES = 400
"""Shortest utterance a teacher can encode: its conv front-end's receptive field (25 ms, one frame).
The corpus scan refuses shorter files (`fhb.pipeline.corpus`); decoding itself accepts any length."""
SHORT_REASON = "has {n} samples, shorter than the teacher's conv front-end ({min} samples = 25 ms, one frame)"


class AudioError(FhbError):
    """An audio file that fhb cannot use.

    Attributes:
        path: the offending file.
        reason: what was expected and what was found, without the path.
        fix: what the user can do about it (appended to the message after ``"; "``).

    The message is ``"{path}: {reason}; {fix}"``.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, fix: str = "") -> None:
        self.path: Path = Path(path)
        self.reason: str = reason
        self.fix: str = fix
        super().__init__(f"{self.path}: {reason}; {fix}" if fix else f"{self.path}: {reason}")


def _check_is_file(path: Path) -> None:
    """Raise :class:`AudioError` unless ``path`` is an existing regular file (or a link to one)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise AudioError(
            path, "no such file", "check the path (and the corpus root it came from)"
        ) from None
    except OSError as error:
        raise AudioError(
            path, f"cannot be opened ({error.strerror})", "check its permissions"
        ) from None
    if stat.S_ISDIR(mode):
        raise AudioError(
            path,
            "expected an audio file, found a directory",
            "remove or rename the directory, or point fhb at the file inside it",
        )
    if not stat.S_ISREG(mode):  # a FIFO would block the decoder, a device never end
        raise AudioError(path, f"expected a regular audio file, found {file_kind(mode)}", "point fhb at a file")


def _unreadable(path: Path, error: sf.SoundFileError | OSError) -> AudioError:
    """Wrap a libsndfile/OS failure into an :class:`AudioError` that keeps libsndfile's words."""
    return AudioError(
        path,
        f"not readable as audio ({error})",
        "the file is truncated, corrupt or not audio; re-download or re-encode it",
    )


def _check_format(path: Path, samplerate: int, channels: int, frames: int) -> None:
    """Apply fhb's rules (rate, channels, non-empty) to header values of ``path``."""
    if samplerate != SAMPLE_RATE:
        raise AudioError(
            path,
            f"sample rate is {samplerate} Hz, expected {SAMPLE_RATE} Hz",
            _RESAMPLE_HINT,
        )
    if channels != 1:
        raise AudioError(
            path,
            f"has {channels} channels, expected 1 (mono)",
            "mix down to mono first, e.g. `sox in.flac -c 1 out.flac`",
        )
    if frames <= 0:
        raise AudioError(
            path,
            "has 0 samples, expected at least one",
            "remove the file from the corpus or replace it with the real recording",
        )


def _read(path: str | os.PathLike[str], dtype: str) -> np.ndarray:
    """Decode a whole validated file as a 1-D array of ``dtype`` (``"float32"`` or ``"int16"``)."""
    path = Path(path)
    _check_is_file(path)
    try:
        with sf.SoundFile(path) as handle:
            _check_format(path, handle.samplerate, handle.channels, handle.frames)
            expected = handle.frames
            subtype = handle.subtype
            data: np.ndarray = handle.read(dtype=dtype, always_2d=False)
    except (sf.SoundFileError, OSError) as error:
        raise _unreadable(path, error) from error
    if data.shape[0] != expected:
        raise AudioError(
            path,
            f"header announces {expected} samples but only {data.shape[0]} decode",
            "the file is truncated; re-download or re-encode it",
        )
    if dtype == "float32" and subtype in _FLOAT_SUBTYPES and data.size:
        peak = float(np.max(np.abs(data)))
        if peak > 1.0:
            raise AudioError(
                path,
                f"floating-point samples reach {peak:.3f}, expected values in [-1, 1]",
                "normalise the file or store it as 16-bit PCM",
            )
    return data


def load_audio(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a 16 kHz mono file to float32 samples.

    Args:
        path: an audio file libsndfile can read (FLAC, WAV, ...).

    Returns:
        ``(sample,)`` float32 array with values in [-1, 1]; for 16-bit sources it equals
        ``load_audio_int16(path).astype(np.float32) / 32768`` exactly.

    Raises:
        AudioError: the file is missing, a directory, unreadable or truncated, not sampled at
            16 kHz, not mono, or empty.
    """
    return _read(path, "float32")


def load_audio_int16(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a 16 kHz mono file to int16 samples, the form the lake stores.

    Args:
        path: an audio file libsndfile can read (FLAC, WAV, ...).

    Returns:
        ``(sample,)`` int16 array. Sources with more than 16 bits are quantised by libsndfile.

    Raises:
        AudioError: as :func:`load_audio`.
    """
    return _read(path, "int16")


def audio_info(path: str | os.PathLike[str], *, check_end: bool = False) -> tuple[int, int, int]:
    """Read an audio file's header without decoding it.

    Args:
        path: an audio file libsndfile can read.
        check_end: also seek to the last sample and decode it (one codec block, a few KB), which
            catches files truncated after an intact header at the cost of one more read.

    Returns:
        ``(num_samples, sample_rate, channels)`` as the header states them; no checks on the
        values (the corpus scanner reports those as problems, the loaders raise).

    Raises:
        AudioError: the file is missing, a directory, or its header (or, with ``check_end``,
            its end) cannot be read.
    """
    path = Path(path)
    _check_is_file(path)
    try:
        handle = sf.SoundFile(path)
    except (sf.SoundFileError, OSError) as error:
        raise _unreadable(path, error) from error
    with handle:
        frames, samplerate, channels = handle.frames, handle.samplerate, handle.channels
        if check_end and frames > 0:
            try:
                handle.seek(frames - 1)
                decoded = handle.read(1, dtype="int16", always_2d=True).shape[0]
            except (sf.SoundFileError, OSError) as error:
                raise AudioError(
                    path,
                    f"header announces {frames} samples but the end does not decode ({error})",
                    "the file is truncated; re-download or re-encode it",
                ) from error
            if decoded != 1:
                raise AudioError(
                    path,
                    f"header announces {frames} samples but the last one does not decode",
                    "the file is truncated; re-download or re-encode it",
                )
    return frames, samplerate, channels
