"""CTC labels as the lake stores them: the letter dictionary, transcripts as letter ids, greedy labels.

The dictionary is fairseq's for ``dict.ltr.txt`` (what the published FitHuBERT code ships and its
``Decoder`` hard-codes): the four specials ``<s> <pad> </s> <unk>`` (ids 0-3), then ``|`` (the word
boundary, id 4) and the 27 letters in the file's order: 32 symbols. ``<s>`` (id 0) is CTC's blank,
as in fairseq's CTC fine-tuning (``blank_idx = dictionary.bos()``) and ``F.ctc_loss``'s default.

Transcripts become letter ids as fairseq's ``libri_labels.py`` writes ``.ltr`` targets: words
joined by ``|`` and one ``|`` after the last word (``"HI YOU"`` -> ``H I | Y O U |``). The
teacher's greedy labels follow the published ``CTCSequenceConverter``: the per-frame argmax,
repeats merged, blanks dropped. Pure Python/numpy: the loader's workers import this.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from fhb.errors import FhbError

__all__ = ["BLANK", "LETTERS", "WORD_BOUNDARY", "collapse", "decode", "letter_ids"]

LETTERS: tuple[str, ...] = (
    "<s>", "<pad>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U",
    "M", "W", "C", "F", "G", "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z",
)
"""The published ``dict.ltr.txt`` as a fairseq dictionary: id -> symbol."""

BLANK = 0
"""CTC blank id (``<s>``)."""

WORD_BOUNDARY = "|"
_INDEX = {s: i for i, s in enumerate(LETTERS)}


def letter_ids(transcript: str, where: str = "transcript") -> list[int]:
    """A transcript (``"HELLO WORLD"``) -> its letter ids (``H E L L O | W O R L D |``).

    Letters are upper-cased; characters outside the dictionary raise an FhbError naming them.
    """
    words = transcript.upper().split()
    ids: list[int] = []
    for word in words:
        for ch in word:
            i = _INDEX.get(ch)
            if i is None or i < 4:
                raise FhbError(
                    f"{where}: expected letters of the published dict.ltr.txt (A-Z, ' and spaces), "
                    f"found {ch!r} in {transcript[:60]!r}; normalise the transcript (LibriSpeech's are)"
                )
            ids.append(i)
        ids.append(_INDEX[WORD_BOUNDARY])
    return ids


def collapse(frame_ids: Iterable[int]) -> list[int]:
    """Per-frame argmax ids -> the greedy CTC label sequence: repeats merged, blanks dropped."""
    return [int(k) for k, _ in itertools.groupby(frame_ids) if int(k) != BLANK]


def decode(frame_ids: Sequence[int]) -> str:
    """Per-frame argmax ids -> text, as the published ``Decoder``: repeats merged, ``<s>`` dropped,
    ``|`` as the word boundary; whitespace runs are collapsed and the ends stripped (the published
    WER metric splits on whitespace)."""
    symbols = [LETTERS[k] if 0 <= k < len(LETTERS) else "<unk>" for k in collapse(frame_ids)]
    text = "".join(s for s in symbols if s not in ("<pad>", "</s>", "<unk>"))
    return " ".join(text.replace(WORD_BOUNDARY, " ").split())
