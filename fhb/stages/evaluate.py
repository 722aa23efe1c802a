"""``fhb evaluate``: per-layer distillation losses of a run's student against a lake split.

The student (training layout: it needs every prediction head) runs in eval mode over the split
in the batches ``fhb distill``'s dev evaluation uses (the published fixed batches of the
length-sorted split, ``--batch-size`` utterances each); each teacher layer's loss is
:class:`fhb.student.loss.DistillLoss`'s unweighted per-layer loss, averaged over batches by
`fhb.training.evaluation.evaluate_split`, the function that evaluation calls: with the run's batch
size, a student scores what ``metrics.jsonl``'s ``eval`` record of its update says. With random
layers (``distil_random_layer > 0``) every intermediate head is scored (head ``l`` against teacher
layer ``l + 1``), not only the ones a draw would pick; ``dev_loss`` is the last layer's (the
published ``v_loss``). A CTC teacher's run is also scored for its CTC loss and the WER / CER of
its head's greedy decoding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fhb.errors import FhbError
from fhb.storage.lock import LakeReadLease
from fhb.storage.reader import Lake, open_lake
from fhb.student.attention_targets import attention_for_run
from fhb.student.loss import DistillLoss
from fhb.training.checks import check_complete_splits, check_same_teacher, check_teacher_dim
from fhb.training.ctc_objective import CtcObjective, build_ctc_objective, use_gt_for_ctc
from fhb.training.evaluation import evaluate_split
from fhb.training.loader import LakeLoader
from fhb.training.runs import RunStudent, load_run_student

__all__ = ["evaluate_run", "print_evaluation"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _progress(show: bool, loader: LakeLoader, max_batches: int | None) -> Iterator[Callable[[int], None] | None]:
    """A transient progress bar over the split's batches (``fhb evaluate`` on 960 h takes hours)."""
    if not show:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from fhb.pipeline.logging_setup import transient_progress

    try:
        total: int | None = len(loader)
    except (TypeError, ValueError):
        total = None
    if max_batches is not None and total is not None:
        total = min(total, max_batches)
    columns = (TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with transient_progress(*columns) as progress:
        task = progress.add_task("evaluate", total=total)
        yield lambda done: progress.update(task, completed=done)


def evaluate_run(
    run: Path | None,
    cache: Path,
    split: str = "dev-clean",
    *,
    step: int | None = None,
    checkpoint: Path | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    max_batches: int | None = None,
    show: bool = False,
    any_encoding: bool = False,
) -> dict[str, Any]:
    """Per-layer losses of a run's student on one split of a lake.

    Args:
        run: the run directory (student picked as by ``fhb export-s3prl``).
        cache: the lake.
        split: the split to score.
        step: score ``checkpoints/step-XXXXXXXX.pt`` instead of the final student.
        checkpoint: score this file instead.
        batch_size: utterances per batch.
        device: ``cpu`` or ``cuda``.
        max_batches: stop after this many batches (None: the whole split).
        show: print a rich table.
        any_encoding: accept a lake of the run's teacher whose targets are encoded otherwise than the
            run's (e.g. a float32 reference lake for a student trained on a compact one).

    Returns:
        ``{"run", "checkpoint", "step", "lake", "split", "batches", "utterances",
        "layer_losses": {"layer_KK": float}, "weights": {"layer_KK": float}, "dev_loss", "total",
        "seconds", "per_layer", "validation_loss"}``; ``per_layer`` is ``layer_losses`` and
        ``validation_loss`` is ``dev_loss`` (the published dev metric) under the names ``--json`` promises.
        A CTC teacher's run adds ``ctc_loss``, ``wer`` and ``cer`` (as ``metrics.jsonl``'s dev records;
        ``total`` then includes the CTC term, as there).

    Raises:
        FhbError: no student, a student in the inference layout, or a lake whose teacher does not
            match the student (dimension, layers).
    """
    from fhb.pipeline.precision import check_device

    dev = check_device(device)
    if not (batch_size is None or batch_size >= 1):
        raise FhbError(f"--batch-size {batch_size}: expected >= 1; fix the value")
    if max_batches is not None and max_batches < 1:
        raise FhbError(f"--max-batches {max_batches}: expected >= 1 (or unset: the whole split); fix the value")
    found = load_run_student(run, step, checkpoint)
    model, fit = found.model, found.config
    if model.is_inference:
        raise FhbError(f"{found.source}: the student is in the inference layout (no per-layer heads); expected "
                       "a training checkpoint to score per layer")
    lake = open_lake(cache)
    meta = lake.meta
    check_same_teacher(found.teacher, lake, f"the student {found.source}", same_encoding=not any_encoding)
    if split in lake.splits:
        check_complete_splits(lake, [split], None)
    check_teacher_dim(fit.distiller, meta.teacher.dim, f"lake {cache}", meta.teacher.name,
                      "use the lake the student was distilled from")
    loss_cfg = fit.loss
    if loss_cfg.distil_random_layer > 0:  # score every intermediate head, not a random draw
        loss_cfg = dataclasses.replace(loss_cfg, distil_random_layer=fit.distiller.encoder_layers - 1)
    use_cnn = loss_cfg.cnn_loss_weight > 0 and meta.cnn_features
    if loss_cfg.cnn_loss_weight > 0 and not use_cnn:
        log.warning("lake %s stores no CNN features: the CNN loss is left out of 'total'", cache)
        loss_cfg = dataclasses.replace(loss_cfg, cnn_loss_weight=0.0)
    loss_fn = DistillLoss(loss_cfg, meta.teacher.num_layers, student=fit.distiller,
                          teacher_attention=attention_for_run(loss_cfg, meta.teacher.num_layers, cache))
    model.return_attention = loss_fn.uses_attention
    layers = loss_fn.required_layers
    if not layers:
        raise FhbError(f"{found.source}: the config's loss uses no teacher layers (rec_loss_weight and "
                       "sim_loss_weight are 0); nothing to evaluate per layer")
    loader = LakeLoader(cache, [split], layers, batch_size=batch_size, shuffle=False, workers=0,
                        cnn_features=use_cnn, bucketing="sorted")  # the batches of distill's dev evaluation
    model.to(dev)
    ctc = _ctc_objective(lake, split, found)
    with LakeReadLease(cache), _progress(show, loader, max_batches) as on_batch:  # no writer changes the targets
        res = evaluate_split(model, loss_fn, loader, layers, device=dev, use_cnn=use_cnn, max_batches=max_batches,
                             on_batch=on_batch, ctc=ctc)
    if res.batches == 0:
        raise FhbError(f"lake {cache}: split {split!r} gave no batches; expected at least one utterance")
    weights = {pair.layer: pair.weight for pair in loss_fn.pairs()}
    result: dict[str, Any] = {
        "run": str(run) if run is not None else None,
        "checkpoint": str(found.source),
        "step": found.step,
        "lake": str(cache),
        "split": split,
        "batches": res.batches,
        "utterances": res.utterances,
        "layer_losses": res.layers,
        "weights": {f"layer_{k:02d}": w for k, w in sorted(weights.items())},
        "dev_loss": res.last,
        "total": res.total,
        "seconds": res.seconds,
        "per_layer": dict(res.layers),
        "validation_loss": res.last,
        **({"ctc_loss": res.ctc, "wer": res.wer, "cer": res.cer} if ctc is not None else {}),
    }
    log.info("evaluated %s on %s/%s: last-layer loss %.6g over %d utterances", found.source, cache, split,
             result["dev_loss"], res.utterances)
    if show:
        print_evaluation(result)
    return result


def _ctc_objective(lake: Lake, split: str, found: RunStudent) -> CtcObjective | None:
    """The CTC term of a CTC teacher's run with the head it was trained with (CTC loss, WER, CER of
    its greedy decoding), or None: the lake's teacher is not a CTC model, or the file has no head
    (a warning says so)."""
    if lake.meta.teacher.ctc_vocab is None:
        return None
    if found.ctc_head is None:
        log.warning("%s holds no CTC head (imported, or written by an older fhb): its CTC loss, WER and CER are "
                    "not scored; score a checkpoint of the run (--step N) for them", found.source)
        return None
    ctc = build_ctc_objective(lake, [split], found.model, use_gt_for_ctc(found.config.train, str(found.source)), None)
    try:
        ctc.head.load_state_dict(found.ctc_head)
    except RuntimeError as exc:
        raise FhbError(f"{found.source}: expected a CTC head for the lake's {len(lake.meta.teacher.ctc_vocab)} "
                       f"symbols and the student's width, found another ({str(exc).splitlines()[0]}); score it on "
                       "the lake it was distilled from") from None
    ctc.head.eval()
    return ctc


def print_evaluation(result: dict[str, Any]) -> None:
    """A rich table of :func:`evaluate_run`'s result on fhb's console."""
    from rich.table import Table

    from fhb.pipeline.logging_setup import console

    table = Table(title=f"{result['checkpoint']} on {result['split']} ({result['utterances']} utterances)")
    table.add_column("teacher layer")
    table.add_column("loss", justify="right")
    table.add_column("weight", justify="right")
    for key, value in result["layer_losses"].items():
        table.add_row(key, f"{value:.6g}", f"{result['weights'].get(key, 0.0):g}")
    table.add_section()
    if "wer" in result:
        table.add_row("CTC loss", f"{result['ctc_loss']:.6g}", "")
        table.add_row("WER / CER (greedy)", f"{result['wer']:.2%} / {result['cer']:.2%}", "")
    table.add_row("total (weighted)", f"{result['total']:.6g}", "")
    console.print(table)
