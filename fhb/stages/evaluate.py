"""``fhb evaluate``: per-layer distillation losses of a run's student against a lake split.

The student (training layout: it needs every prediction head) runs in eval mode over the split
in lake order; each teacher layer's loss is :class:`fhb.student.loss.DistillLoss`'s unweighted
per-layer loss, averaged over batches exactly as ``fhb distill``'s dev evaluation averages them,
so the numbers compare with ``metrics.jsonl``'s ``eval`` records. With random layers
(``distil_random_layer > 0``) every intermediate head is scored (head ``l`` against teacher layer
``l + 1``), not only the ones a draw would pick; ``dev_loss`` is the last layer's (the published
``v_loss``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from fhb.errors import FhbError

__all__ = ["evaluate_run", "print_evaluation"]

log = logging.getLogger(__name__)


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

    Returns:
        ``{"run", "checkpoint", "step", "lake", "split", "batches", "utterances",
        "layer_losses": {"layer_KK": float}, "weights": {"layer_KK": float}, "dev_loss", "total",
        "seconds"}``.

    Raises:
        FhbError: no student, a student in the inference layout, or a lake whose teacher does not
            match the student (dimension, layers).
    """
    from fhb.training.runs import load_run_student
    from fhb.training.loader import LakeLoader
    from fhb.storage.reader import open_lake
    from fhb.student.loss import DistillLoss

    found = load_run_student(run, step, checkpoint)
    model, fit = found.model, found.config
    if model.is_inference:
        raise FhbError(f"{found.source}: the student is in the inference layout (no per-layer heads); expected "
                       "a training checkpoint to score per layer")
    meta = open_lake(cache).meta
    if meta.teacher.dim != fit.distiller.pred_head_final_dim:
        raise FhbError(f"lake {cache}: expected a teacher of dim {fit.distiller.pred_head_final_dim} "
                       f"(distiller.pred_head_final_dim), found {meta.teacher.dim} ({meta.teacher.name}); use "
                       "the lake the student was distilled from")
    loss_cfg = fit.loss
    if loss_cfg.distil_random_layer > 0:  # score every intermediate head, not a random draw
        loss_cfg = dataclasses.replace(loss_cfg, distil_random_layer=fit.distiller.encoder_layers - 1)
    use_cnn = loss_cfg.cnn_loss_weight > 0 and meta.cnn_features
    if loss_cfg.cnn_loss_weight > 0 and not use_cnn:
        log.warning("lake %s stores no CNN features: the CNN loss is left out of 'total'", cache)
        loss_cfg = dataclasses.replace(loss_cfg, cnn_loss_weight=0.0)
    loss_fn = DistillLoss(loss_cfg, meta.teacher.num_layers, student=fit.distiller)
    layers = loss_fn.required_layers
    if not layers:
        raise FhbError(f"{found.source}: the config's loss uses no teacher layers (rec_loss_weight and "
                       "sim_loss_weight are 0); nothing to evaluate per layer")
    loader = LakeLoader(cache, [split], layers, batch_size=batch_size, shuffle=False, workers=0,
                        cnn_features=use_cnn)
    dev = torch.device(device)
    model.to(dev)
    sums: dict[int, float] = {}
    total = 0.0
    batches = utterances = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            out = model(batch.wavs.to(dev), batch.wav_lengths.to(dev))
            assert batch.targets is not None
            targets = {k: batch.targets[:, i].to(dev, torch.float32) for i, k in enumerate(layers)}
            cnn = batch.cnn.to(dev, torch.float32) if use_cnn and batch.cnn is not None else None
            res = loss_fn(out, targets, batch.target_lengths.to(dev), cnn)
            for k, v in res.per_layer.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            total += float(res.total)
            batches += 1
            utterances += len(batch.utt_ids)
            if max_batches is not None and batches >= max_batches:
                break
    if batches == 0:
        raise FhbError(f"lake {cache}: split {split!r} gave no batches; expected at least one utterance")
    weights = {pair.layer: pair.weight for pair in loss_fn.pairs()}
    n = meta.teacher.num_layers
    result: dict[str, Any] = {
        "run": str(run) if run is not None else None,
        "checkpoint": str(found.source),
        "step": found.step,
        "lake": str(cache),
        "split": split,
        "batches": batches,
        "utterances": utterances,
        "layer_losses": {f"layer_{k:02d}": v / batches for k, v in sorted(sums.items())},
        "weights": {f"layer_{k:02d}": w for k, w in sorted(weights.items())},
        "dev_loss": sums[n] / batches if n in sums else float("nan"),
        "total": total / batches,
        "seconds": time.perf_counter() - t0,
    }
    log.info("evaluated %s on %s/%s: last-layer loss %.6g over %d utterances", found.source, cache, split,
             result["dev_loss"], utterances)
    if show:
        print_evaluation(result)
    return result


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
    table.add_row("total (weighted)", f"{result['total']:.6g}", "")
    console.print(table)
