"""The student's CTC head and loss: task-specific distillation from a fine-tuned CTC teacher.

The published ``train.py`` (task-agnostic = False, i.e. a ``wav2vec_ctc`` teacher) takes the
student's ``x`` (fhb's `StudentOutput.last_hidden_state`: the last prediction head's output at
the teacher's 20 ms rate), ``log_softmax`` over its last dimension and ``F.ctc_loss`` against either
the transcript's letters (``use_gt_for_ctc: True``) or the teacher's greedy labels. It never
projects ``x`` to the 32 letters, so it cannot run as published; fhb does what it evidently intends
(README, Faithfulness): a `CtcHead`, a linear layer ``D_x -> V`` on ``x`` (fairseq's ``proj`` of
a CTC model), trained with the student and dropped on export, like the published upstream (whose
student has no such layer).

Loss settings as published: ``F.ctc_loss`` with blank 0 and ``reduction="mean"`` (each
utterance's loss divided by its target length, then the batch mean), weight 1 on top of the
distillation losses. Two deliberate differences: the input lengths are the utterances' valid
frames (the published code passes the padded length for all), and ``zero_infinity=True`` (an
utterance whose labels cannot fit its frames adds 0 instead of making the update infinite).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CTC_LOSS_WEIGHT", "CtcHead", "ctc_loss", "student_ctc_dim"]

CTC_LOSS_WEIGHT = 1.0
"""The published code adds the CTC loss unweighted (no yaml key)."""


class CtcHead(nn.Module):
    """``B x T x D_x`` student output -> ``B x T x V`` letter logits (one linear layer, ``proj``)."""

    def __init__(self, in_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def student_ctc_dim(model: nn.Module) -> int:
    """``D_x``: the width of the student's ``last_hidden_state`` (a dry run on 1 s of silence; the
    global RNG and the model's mode are left as they were)."""
    was_training = model.training
    device = next(model.parameters()).device
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            out = model(torch.zeros(1, 16000, device=device), torch.tensor([16000], device=device))
    finally:
        model.train(was_training)
    return int(out.last_hidden_state.shape[-1])


def ctc_loss(logits: torch.Tensor, lengths: torch.Tensor, labels: Sequence[Sequence[int]]) -> torch.Tensor:
    """The published CTC loss of ``B x T x V`` logits with ``B`` valid frame counts against ``B``
    label sequences (blank 0, mean over the batch of the per-target-length losses), in float32."""
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # T x B x V, as F.ctc_loss wants
    targets = torch.tensor([k for seq in labels for k in seq], dtype=torch.long, device=logits.device)
    target_lengths = torch.tensor([len(seq) for seq in labels], dtype=torch.long, device=logits.device)
    input_lengths = lengths.to(logits.device, torch.long).clamp(max=log_probs.shape[0])
    return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean",
                      zero_infinity=True)
