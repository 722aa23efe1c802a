"""The student's loss on one batch, and one split's losses: what training and evaluation share.

`forward_loss` runs the student on a `Batch` (autocast at the run's precision) against its
targets — the lake's, or an online teacher's (`online_targets`) — and returns `LossValues`.
`evaluate_split` averages them over a split: ``fhb distill``'s dev evaluation and ``fhb
evaluate`` both call it, so their numbers compare.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from fhb.pipeline.precision import autocast_context
from fhb.pipeline.teacher import Teacher
from fhb.student.loss import DistillLoss
from fhb.student.model import FitHuBERT, StudentOutput
from fhb.training.ctc_metrics import ErrorRates
from fhb.training.ctc_objective import CtcObjective, CtcOutput
from fhb.training.loader import Batch, LakeLoader

__all__ = ["LossValues", "SplitLosses", "compute_loss", "evaluate_split", "forward_loss", "online_targets",
           "pad_targets"]


@dataclass
class LossValues:
    """One micro-batch's losses.

    ``total``: the weighted loss (differentiable scalar); ``per_layer``: teacher layer ``K`` -> its
    unweighted loss, ascending; ``last``: the teacher's last layer's (the published validation loss;
    the total when no layer loss is computed, e.g. a CNN-only loss with ``delete_projections``);
    ``ctc``: the CTC term (`fhb.training.ctc_objective`), included in ``total``, when the run has one;
    ``terms``: other unweighted terms by their published names (``attn_loss``, ``v_rel_loss``).
    """

    total: torch.Tensor
    per_layer: dict[int, float] = field(default_factory=dict)
    last: float = float("nan")
    ctc: CtcOutput | None = None
    terms: dict[str, float] = field(default_factory=dict)

    @property
    def layers(self) -> dict[str, float]:
        """`per_layer` named ``layer_KK`` (as ``metrics.jsonl`` records them), then `terms`."""
        return {**{f"layer_{k:02d}": v for k, v in self.per_layer.items()}, **self.terms}


def pad_targets(targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-utterance ``L x T_i x D`` -> (``B x L x T x D`` zero-padded, ``B`` lengths)."""
    lengths = torch.tensor([t.shape[1] for t in targets], dtype=torch.long)
    b, (n_layers, _, d) = len(targets), targets[0].shape
    out = targets[0].new_zeros((b, n_layers, int(lengths.max()), d))
    for i, t in enumerate(targets):
        out[i, :, : t.shape[1]] = t
    return out, lengths


def online_targets(teacher: Teacher, wavs: torch.Tensor, wav_lengths: torch.Tensor,
                   layers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the teacher on a batch: ``B x S`` waveforms -> (``B x L x T x D``, ``B`` frame counts).

    Each utterance is cut to its length and prepared as fairseq's task would (`Teacher.prepare`),
    exactly what the extraction stage stores in the lake.
    """
    wavs_cpu = wavs.detach().float().cpu()
    prepared = [teacher.prepare(w[: int(n)]) for w, n in zip(wavs_cpu, wav_lengths.tolist())]
    return pad_targets(teacher.extract(prepared, layers=layers))


def compute_loss(loss_fn: DistillLoss, output: StudentOutput, targets: torch.Tensor | None, layers: Sequence[int],
                 target_lengths: torch.Tensor, cnn: torch.Tensor | None) -> LossValues:
    """Student output + ``B x L x T x D`` targets of teacher ``layers`` -> `LossValues` (``targets``
    None only without layers: a CNN-only loss)."""
    by_layer = {k: targets[:, i] for i, k in enumerate(layers)} if targets is not None else {}
    res = loss_fn(output, by_layer, target_lengths, cnn)
    per = {k: float(v.detach()) for k, v in sorted(res.per_layer.items())}
    n = loss_fn.num_teacher_layers
    last = per.get(n, float("nan")) if per else float(res.total.detach())
    terms: dict[str, float] = {}
    if loss_fn.cfg.attn_loss_weight > 0 and res.attn is not None:
        terms["attn_loss"] = float(res.attn.detach())
    if loss_fn.cfg.v_rel_loss_weight > 0 and res.v_rel is not None:
        terms["v_rel_loss"] = float(res.v_rel.detach())
    return LossValues(total=res.total, per_layer=per, last=last, terms=terms)


def forward_loss(model: torch.nn.Module, loss_fn: DistillLoss, batch: Batch, layers: Sequence[int], *,
                 device: torch.device, precision: str = "fp32", teacher: Teacher | None = None,
                 use_cnn: bool = False, ctc: CtcObjective | None = None) -> LossValues:
    """Student forward (under ``precision``'s autocast) + loss on one batch.

    ``model``: the student (`FitHuBERT`, or its DDP wrapper while training). Targets: the
    batch's (``B x L x T x D``, lake order of ``layers``), or ``teacher``'s when given (the
    online baseline; the batch then holds audio only). ``use_cnn``: pass the batch's ``B x T x
    Dc`` CNN features to the loss. ``ctc``: add the CTC term (its weight times its loss) to ``total``.
    """
    if teacher is not None:
        t, n = online_targets(teacher, batch.wavs, batch.wav_lengths, list(layers))
        targets, target_lengths = t.to(device), n.to(device)
    elif not layers:  # a loss on CNN features only (delete_projections): no teacher layers
        targets, target_lengths = None, batch.target_lengths.to(device)
    else:
        assert batch.targets is not None, "an audio-only batch needs an online teacher"
        targets, target_lengths = batch.float_targets(device), batch.target_lengths.to(device)
    with autocast_context(device, precision):
        out = model(batch.wavs.to(device), batch.wav_lengths.to(device))
    cnn = batch.cnn.to(device, torch.float32) if (use_cnn and batch.cnn is not None) else None
    lv = compute_loss(loss_fn, out, targets, layers, target_lengths, cnn)
    if ctc is not None:
        with autocast_context(device, precision):
            lv.ctc = ctc(out, batch.utt_ids, teacher, batch.wavs, batch.wav_lengths)
        lv.total = lv.total + ctc.weight * lv.ctc.loss
    return lv


@dataclass(frozen=True)
class SplitLosses:
    """`evaluate_split`'s averages over ``batches`` batches (of ``utterances`` utterances).

    ``per_layer``: teacher layer ``K`` -> mean unweighted loss; ``last``: the mean last-layer loss
    (the published ``v_loss``, fhb's ``dev_loss``); ``total``: the mean weighted loss. With a CTC
    term: ``ctc`` its mean loss, ``wer`` / ``cer`` the greedy decoding's corpus-level error rates.
    """

    per_layer: dict[int, float]
    last: float
    total: float
    batches: int
    utterances: int
    seconds: float
    ctc: float | None = None
    wer: float | None = None
    cer: float | None = None

    @property
    def layers(self) -> dict[str, float]:
        """`per_layer` named ``layer_KK``."""
        return {f"layer_{k:02d}": v for k, v in self.per_layer.items()}


@torch.no_grad()
def evaluate_split(model: FitHuBERT, loss_fn: DistillLoss, loader: LakeLoader, layers: Sequence[int], *,
                   device: torch.device, precision: str = "fp32", teacher: Teacher | None = None,
                   use_cnn: bool = False, max_batches: int | None = None,
                   on_batch: Callable[[int], None] | None = None, ctc: CtcObjective | None = None) -> SplitLosses:
    """Mean losses of ``model`` over the batches of ``loader`` (epoch 0 from its first batch, in order).

    The model runs in eval mode (its mode is restored afterwards) and the global RNGs are left as
    they were, so evaluating in the middle of training does not change the training run.
    ``max_batches``: stop after that many batches (None: the whole split). With no batch at all,
    the averages are NaN and ``batches`` is 0. ``on_batch``: called with the number of batches done
    after each one (a progress bar).
    """
    was_training = model.training
    model.eval()
    sums: dict[int, float] = {}
    last = total = ctc_sum = 0.0
    rates = ErrorRates()
    n = utterances = 0
    t0 = time.perf_counter()
    loader.set_epoch(0)
    loader.load_state_dict({**loader.state_dict(), "batches_done": 0})  # from the first batch, always
    with torch.random.fork_rng(devices=[]):  # starting the loader draws from torch's RNG
        for batch in loader:
            lv = forward_loss(model, loss_fn, batch, layers, device=device, precision=precision, teacher=teacher,
                              use_cnn=use_cnn, ctc=ctc)
            if ctc is not None and lv.ctc is not None:
                ctc_sum += float(lv.ctc.loss)
                rates.add(lv.ctc.logits, lv.ctc.lengths, ctc.transcripts(batch.utt_ids))
            for k, v in lv.per_layer.items():
                sums[k] = sums.get(k, 0.0) + v
            last += lv.last
            total += float(lv.total.detach())
            n += 1
            utterances += len(batch.utt_ids)
            if on_batch is not None:
                on_batch(n)
            if max_batches is not None and n >= max_batches:
                break
    model.train(was_training)
    def mean(v: float) -> float:
        return v / n if n else float("nan")

    return SplitLosses(per_layer={k: mean(v) for k, v in sorted(sums.items())}, last=mean(last),
                       total=mean(total), batches=n, utterances=utterances, seconds=time.perf_counter() - t0,
                       ctc=mean(ctc_sum) if ctc is not None else None, wer=rates.wer if ctc is not None else None,
                       cer=rates.cer if ctc is not None else None)
