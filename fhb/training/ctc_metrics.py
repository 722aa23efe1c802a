"""Dev WER / CER of a student's CTC head: greedy decoding, corpus-level edit distance.

As the published validation: each utterance's argmax over the letters is decoded with the
published ``Decoder`` rules (`fhb.storage.ctc_labels.decode`) and compared with its transcript;
WER and CER are corpus-level (``evaluate``'s ``wer``/``cer``, i.e. jiwer's): the edit distances
summed over the split divided by the reference words / characters (spaces count as characters).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fhb.storage.ctc_labels import decode

__all__ = ["ErrorRates", "edit_distance"]


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two token sequences (substitutions, insertions, deletions cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


@dataclass
class ErrorRates:
    """Accumulates word and character errors over a split (`add` per batch, then `wer` / `cer`)."""

    word_errors: int = 0
    words: int = 0
    char_errors: int = 0
    chars: int = 0

    def add(self, logits: torch.Tensor, lengths: torch.Tensor, references: Sequence[str]) -> None:
        """``B x T x V`` logits with ``B`` valid frame counts, and the ``B`` transcripts."""
        ids = logits.argmax(-1).cpu()
        for row, n, ref in zip(ids, lengths.tolist(), references):
            hyp = decode(row[: int(n)].tolist())
            ref = " ".join(ref.upper().split())
            self.word_errors += edit_distance(ref.split(), hyp.split())
            self.words += len(ref.split())
            self.char_errors += edit_distance(ref, hyp)
            self.chars += len(ref)

    @property
    def wer(self) -> float:
        """Word error rate (NaN before any reference word)."""
        return self.word_errors / self.words if self.words else float("nan")

    @property
    def cer(self) -> float:
        """Character error rate (NaN before any reference character)."""
        return self.char_errors / self.chars if self.chars else float("nan")
