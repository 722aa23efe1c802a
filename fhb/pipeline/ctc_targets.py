"""A fine-tuned CTC teacher's greedy labels: what ``fhb extract`` stores and ``--online-teacher`` recomputes.

As the published ``CTCSequenceConverter`` on the teacher's logits: the per-frame argmax over the
``V`` letters, repeats merged, blanks (id 0) dropped (`fhb.storage.ctc_labels.collapse`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fhb.pipeline.teacher import Teacher
from fhb.storage.ctc_labels import collapse

__all__ = ["greedy_labels", "labels_of_logits"]


def labels_of_logits(logits: torch.Tensor) -> list[int]:
    """``T x V`` logits -> the greedy CTC label sequence."""
    return collapse(logits.argmax(-1).tolist())


def greedy_labels(teacher: Teacher, wavs: Sequence[torch.Tensor], outs: Sequence[torch.Tensor] | None = None,
                  layers: Sequence[int] | None = None) -> list[list[int] | None]:
    """Per utterance, the teacher's greedy CTC labels (None each for a pre-trained teacher).

    ``outs``/``layers``: what `Teacher.extract` already returned for ``wavs`` (``L x T_i x D`` of
    ``layers``); when they include the last layer its output gives the logits (no second forward
    pass), otherwise the teacher runs again (`Teacher.ctc_logits`).
    """
    if not teacher.is_ctc:
        return [None] * len(wavs)
    last = teacher.num_layers
    if outs is not None and layers is not None and last in layers:
        row = list(layers).index(last)
        logits = [teacher.logits_of_last(o[row]) for o in outs]
    else:
        logits = teacher.ctc_logits(wavs)
    return [labels_of_logits(x) for x in logits]
