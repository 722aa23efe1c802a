"""The CTC term of task-specific distillation: the student's `CtcHead`, its labels, its loss.

Active when the lake's teacher is a fine-tuned CTC model (``teacher.ctc_vocab`` in the lake),
as the published code adds CTC exactly when its teacher is not task-agnostic. Labels per
utterance, looked up by id in the lake's index (no loader change):

* ``use_gt_for_ctc: True``: the transcript's letters (`fhb.storage.ctc_labels.letter_ids`);
* ``use_gt_for_ctc: False``: the teacher's greedy labels stored at extraction, or, with
  ``--online-teacher``, recomputed from the live teacher's logits (`fhb.pipeline.ctc_targets`).

The head is not part of the student (exports drop it, as the published export does); the
trainer optimises, checkpoints and (under DDP) all-reduces it next to the student.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from fhb.errors import FhbError
from fhb.pipeline.ctc_targets import greedy_labels
from fhb.pipeline.teacher import Teacher
from fhb.storage.ctc_labels import LETTERS, letter_ids
from fhb.storage.reader import Lake, SplitView
from fhb.student.ctc import CTC_LOSS_WEIGHT, CtcHead, ctc_loss, student_ctc_dim
from fhb.student.model import FitHuBERT, StudentOutput

__all__ = ["CtcObjective", "CtcOutput", "build_ctc_objective", "use_gt_for_ctc"]


def use_gt_for_ctc(train: Mapping[str, object], source: str = "config") -> bool:
    """The yaml's ``train.use_gt_for_ctc`` (absent: True, the value of every published config)."""
    value = train.get("use_gt_for_ctc", True)
    if value is None:
        return True
    if not isinstance(value, bool):
        raise FhbError(f"{source}: train.use_gt_for_ctc: expected true or false, found {value!r}; fix the value")
    return value


@dataclass
class CtcOutput:
    """One batch's CTC term: ``loss`` (differentiable scalar), ``logits`` ``B x T x V`` (detached)
    and ``lengths`` ``B`` valid frames."""

    loss: torch.Tensor
    logits: torch.Tensor
    lengths: torch.Tensor


class CtcObjective:
    """The CTC head and how a batch's labels are found.

    Args:
        head: the student's `CtcHead`.
        splits: the lake's split views the batches come from (labels and transcripts by utterance id).
        use_gt: letters of the transcripts (True) or the teacher's greedy labels (False).
        weight: the loss weight (published: 1).
    """

    def __init__(self, head: CtcHead, splits: Mapping[str, SplitView], use_gt: bool,
                 weight: float = CTC_LOSS_WEIGHT) -> None:
        self.head, self.splits, self.use_gt, self.weight = head, dict(splits), use_gt, weight

    def _split_of(self, utt_id: str) -> SplitView:
        for view in self.splits.values():
            if utt_id in view:
                return view
        raise FhbError(f"utterance {utt_id!r}: expected it in the lake splits {sorted(self.splits)}, found it in "
                       f"none; pass the splits the loader reads")

    def transcripts(self, utt_ids: Sequence[str]) -> list[str]:
        """The lake's transcripts of ``utt_ids``."""
        return [self._split_of(u).transcript(u) for u in utt_ids]

    def labels(self, utt_ids: Sequence[str], teacher: Teacher | None = None, wavs: torch.Tensor | None = None,
               wav_lengths: torch.Tensor | None = None) -> list[list[int]]:
        """The CTC targets of a batch (letter ids); with ``teacher`` (online) and ``use_gt`` False, the
        live teacher's greedy labels of the ``B x S`` ``wavs``."""
        if self.use_gt:
            return [letter_ids(t, f"transcript of {u}") for u, t in zip(utt_ids, self.transcripts(utt_ids))]
        if teacher is not None:
            assert wavs is not None and wav_lengths is not None
            cpu = wavs.detach().float().cpu()
            prepared = [teacher.prepare(w[: int(n)]) for w, n in zip(cpu, wav_lengths.tolist())]
            return [list(x or []) for x in greedy_labels(teacher, prepared)]
        out = []
        for u in utt_ids:
            stored = self._split_of(u).ctc_labels(u)
            assert stored is not None, "a CTC objective needs a CTC teacher's lake"
            out.append(list(stored))
        return out

    def __call__(self, output: StudentOutput, utt_ids: Sequence[str], teacher: Teacher | None = None,
                 wavs: torch.Tensor | None = None, wav_lengths: torch.Tensor | None = None) -> CtcOutput:
        """The CTC loss of the student's ``last_hidden_state`` (``B x T x D_x``) on the batch's labels."""
        logits = self.head(output.last_hidden_state)
        lengths = output.projection_lengths
        loss = ctc_loss(logits, lengths, self.labels(utt_ids, teacher, wavs, wav_lengths))
        return CtcOutput(loss=loss, logits=logits.detach(), lengths=lengths.detach())

    def sync_grads(self, world_size: int) -> None:
        """Average the head's gradients over the ranks (the student's are averaged by DDP)."""
        if world_size <= 1:
            return
        for p in self.head.parameters():
            if p.grad is not None:
                torch_dist.all_reduce(p.grad)
                p.grad /= world_size


def build_ctc_objective(lake: Lake, splits: Sequence[str], model: FitHuBERT, use_gt: bool,
                        max_seconds: float | None) -> CtcObjective | None:
    """The CTC objective of a run on ``lake`` (None when its teacher is not a CTC model).

    The head is built on the model's device, from the global RNG (after the student, so the
    student's initialisation does not change).

    Raises:
        FhbError: cropped utterances (``--max-seconds``) with CTC: a crop has no transcript.
    """
    vocab = lake.meta.teacher.ctc_vocab
    if vocab is None:
        return None
    if tuple(vocab) != LETTERS:
        raise FhbError(f"lake teacher: expected the published dict.ltr.txt letters as its CTC vocabulary, found "
                       f"{len(vocab)} symbols {list(vocab)[:6]}…; re-extract with a teacher fine-tuned on letters")
    if max_seconds is not None:
        raise FhbError(f"--max-seconds {max_seconds}: CTC distillation (the lake's teacher is a CTC model) needs "
                       f"whole utterances, as the published code trains; drop --max-seconds")
    device = next(model.parameters()).device
    head = CtcHead(student_ctc_dim(model), len(vocab)).to(device)
    return CtcObjective(head, {s: lake[s] for s in splits}, use_gt)
