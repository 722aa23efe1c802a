"""Stage 2, ``fhb distill``: train the FitHuBERT student from a lake, without running the teacher.

    fhb distill --cache LAKE --config fhb/configs/fithubert.yaml --out RUN [--steps N | --epochs E]
    torchrun --nproc-per-node 2 -m fhb.cli distill --cache LAKE --config ... --out RUN

`run_distill` resolves the settings (the published yaml's ``train`` section as
`fhb.training.trainer.TrainConfig`, ``optimizer`` and ``data``; arguments given explicitly
override it), checks the lake can serve the student (`fhb.training.checks`: its stored layers
cover `required_teacher_layers`, its teacher dimension equals ``pred_head_final_dim``), builds a
`fhb.training.trainer.Trainer`, runs it (the training loop, DDP, checkpoints and dev evaluation
live there), and saves the student (rank 0). Default precision: fp16 when the yaml says
``use_fp16`` and the device is CUDA, else fp32; bf16 is allowed on CPU (`fhb.pipeline.precision`).
``resume=True`` continues from the newest complete checkpoint and ends with the same parameters
as an uninterrupted run.

The published recipe by default (README, "Faithfulness"): the published batches (``bucketing``
``sorted``: the whole set sorted by length into fixed batches, only their order shuffled), the
published effective batch whatever the number of ranks (``accumulate`` = yaml
``accumulate_grad_batches x gpus / ranks``, refused when that is not a whole number unless given
explicitly), dev-clean evaluated after every epoch when the lake has it, early stopping after
``train.early_stopping_patience`` (15) evaluations without improvement, the ``keep_best`` (3) best
students kept in ``RUN/best/`` and the best written as ``RUN/student.pt`` (``export="last"``: the
last update's, fhb's earlier behaviour).

``online_teacher=CKPT`` is the baseline: the same student, the same batches (the loader reads only
audio from the lake), the teacher run on every batch. Its targets equal the lake's (to float16
precision) for whole utterances; with ``max_seconds`` crops the online teacher sees only the crop
(less context than the lake's full-utterance targets), so the two differ slightly. Training
straight from a LibriSpeech root (``libri_root`` without a lake) is not implemented; extract a
lake first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fhb.errors import FhbError
from fhb.files import atomic_write_text, check_out_apart
from fhb.stages.option_limits import MAX_ACCUMULATE, MAX_BATCH_SECONDS, MAX_PROCESSES, MAX_UPDATES, check_int
from fhb.stages.out_paths import check_out_not_inside_lake
from fhb.pipeline.precision import check_device, check_precision
from fhb.pipeline.teacher import Teacher, load_teacher
from fhb.storage.lock import LakeReadLease
from fhb.storage.reader import open_lake
from fhb.student.attention_targets import attention_for_run
from fhb.student.checkpoint import save_student
from fhb.student.config import FitConfig, load_fithubert_yaml
from fhb.student.loss import required_teacher_layers
from fhb.training import run_state
from fhb.training.ctc_objective import build_ctc_objective, use_gt_for_ctc
from fhb.training.checks import (
    check_complete_splits,
    check_lake,
    check_same_teacher,
    check_teacher,
    lake_teacher_record,
)
from fhb.training.distributed import DistInfo, barrier, cleanup_distributed, env_world_size, init_distributed
from fhb.training.loader import LakeLoader
from fhb.training.optim import OptimConfig
from fhb.training.epoch import BUCKETINGS
from fhb.training.selection import Kept
from fhb.training.teacher_weights import init_weights
from fhb.training.trainer import Schedule, TrainConfig, Trainer, build_model_and_loss

logger = logging.getLogger(__name__)

DEFAULT_SPLITS = ("train-clean-100",)
DEFAULT_DEV_SPLIT = "dev-clean"
"""Evaluated after every epoch when the lake has it (the published ``val_dataloader``)."""
NO_DEV = "none"
"""``--dev-split none``: no evaluation (and so no early stopping and no best checkpoint)."""
EXPORTS = ("best", "last")


@dataclass(frozen=True)
class RunSummary:
    """What a finished `run_distill` reports (on every rank; files exist on rank 0 only)."""

    run_dir: Path
    steps: int
    epochs_done: float
    final_loss: float
    dev_loss: float | None
    student_path: Path | None
    seconds: float
    steps_per_s: float
    loader_wait_share: float
    resumed_from: int | None


@dataclass(frozen=True)
class DistillSettings:
    """Resolved training settings (yaml values with explicit arguments applied); saved in config.yaml."""

    cache: str | None
    config: str
    out: str
    splits: tuple[str, ...]
    dev_split: str | None
    steps: int | None
    epochs: int | None
    batch_size: int | None
    batch_seconds: float | None
    max_seconds: float | None
    accumulate: int
    precision: str
    device: str
    workers: int
    prefetch: int
    seed: int
    online_teacher: str | None
    log_every: int
    eval_every: int | None
    save_every: int | None
    keep_checkpoints: int | None
    clip_grad_norm: float | None
    weight_decay: float | None
    lr: float | None
    allow_missing_shards: bool = False
    bucketing: str = "sorted"
    early_stopping_patience: int | None = 15
    keep_best: int = 3
    export: str = "best"
    optimizer_impl: str = "s3prl"
    accumulate_source: str = "yaml"


# ---------------------------------------------------------------------------------------------
# Configuration.


def resolve_settings(
    fit: FitConfig,
    cache: Path | None,
    config: Path,
    out: Path,
    *,
    splits: Sequence[str] | None = None,
    dev_split: str | None = None,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    batch_seconds: float | None = None,
    max_seconds: float | None = None,
    accumulate: int | None = None,
    precision: str | None = None,
    device: str = "cpu",
    workers: int = 2,
    prefetch: int = 4,
    seed: int = 0,
    online_teacher: Path | None = None,
    log_every: int = 10,
    eval_every: int | None = None,
    save_every: int | None = None,
    keep_checkpoints: int | None = None,
    clip_grad_norm: float | None = None,
    weight_decay: float | None = None,
    lr: float | None = None,
    allow_missing_shards: bool = False,
    bucketing: str = "sorted",
    early_stopping_patience: int | None = None,
    keep_best: int | None = None,
    export: str = "best",
    optimizer_impl: str = "s3prl",
    world_size: int = 1,
) -> DistillSettings:
    """The run's `DistillSettings`: the yaml's values with the explicit arguments applied, validated
    before anything is created (a refused option leaves no run directory).

    Args:
        fit: the parsed yaml of ``config``.
        cache: the lake (`fhb extract` output). Required (``libri_root`` alone is not supported).
        config: a FitHuBERT yaml (published layout).
        out: run directory (created; must be empty or absent unless ``resume``).
        splits: training splits (default: the yaml's ``data.train_set`` if the lake has them,
            else ``train-clean-100``).
        dev_split: split evaluated after every epoch (or every ``eval_every`` updates) and at the
            end (None: dev-clean when the lake has it; ``"none"``: no evaluation).
        steps / epochs: length of the run in optimiser updates / epochs (default: yaml
            ``train.num_epochs``).
        batch_size / batch_seconds: utterances per micro-batch, or audio seconds per micro-batch
            (default: yaml ``train.batch_size``); ``max_seconds`` crops longer utterances (a random,
            frame-aligned window each epoch).
        accumulate: micro-batches per update (default: the published effective batch, yaml
            ``accumulate_grad_batches x gpus`` micro-batches over all ranks; see `published_accumulate`).
        precision: fp32, fp16 (CUDA) or bf16 (default: fp16 if yaml ``use_fp16`` and CUDA).
        device: cpu, cuda, cuda:K (under torchrun each rank uses cuda:LOCAL_RANK).
        workers / prefetch: loader decode processes and batches read ahead.
        seed: student init, loss random layers, data order, dropout.
        online_teacher: run this teacher on every batch instead of reading targets (baseline).
        log_every / eval_every / save_every: intervals in updates (None: never; the last update
            is always saved and evaluated; ``eval_every`` replaces the per-epoch evaluation).
        keep_checkpoints: keep only the newest N checkpoints (None: all).
        clip_grad_norm: max gradient norm (None: no clipping, as published).
        weight_decay: non-bias weight decay (None: the published 0.01; see `fhb.training.optim`).
        lr: learning-rate override.
        allow_missing_shards: train on the committed shards of splits whose listing names missing or
            uncommitted ones (default: refuse such a lake).
        bucketing: ``sorted`` (the published batches) or ``window`` (`fhb.training.epoch`).
        early_stopping_patience / keep_best: override the yaml's ``train.`` keys (0: off).
        export: ``best`` (the lowest dev loss; ``last`` without a dev split) or ``last`` as ``student.pt``.
        optimizer_impl: ``s3prl`` (the published update) or ``torch`` (`fhb.training.optim`).
        world_size: the number of DDP ranks (the effective batch is kept over all of them).
    """
    train = TrainConfig.from_yaml(fit.train, str(config))
    if cache is None:
        raise FhbError(
            "--cache: expected a lake written by `fhb extract`, found none; training from "
            "--libri-root alone is not implemented: run `fhb extract` first and pass --cache"
        )
    if steps is not None and epochs is not None:
        raise FhbError(f"--steps {steps} and --epochs {epochs}: expected one of them, found both; pass only one")
    if steps is None and epochs is None:
        epochs = train.num_epochs
    if steps is not None and steps < 1:
        raise FhbError(f"--steps: expected >= 1, found {steps}")
    if epochs is not None and epochs < 1:
        raise FhbError(f"--epochs: expected >= 1, found {epochs}")
    if batch_size is not None and batch_seconds is not None:
        raise FhbError(
            f"--batch-size {batch_size} and --batch-seconds {batch_seconds}: expected one of them, "
            f"found both; pass only one"
        )
    if batch_size is None and batch_seconds is None:
        batch_size = train.batch_size
    if accumulate is not None:
        acc, acc_source = int(accumulate), "--accumulate"
        if acc < 1:
            raise FhbError(f"--accumulate: expected >= 1, found {acc}")
    else:
        acc, acc_source = published_accumulate(train, world_size, str(config)), "yaml"
    if bucketing not in BUCKETINGS:
        raise FhbError(f"--bucketing {bucketing!r}: expected one of {', '.join(BUCKETINGS)}; pass one of them")
    if export not in EXPORTS:
        raise FhbError(f"--export {export!r}: expected one of {', '.join(EXPORTS)}; pass one of them")
    patience = train.early_stopping_patience if early_stopping_patience is None else early_stopping_patience
    best = train.keep_best if keep_best is None else keep_best
    if patience < 0 or best < 0:
        raise FhbError(f"--early-stopping-patience {patience}, --keep-best {best}: expected >= 0 (0: off); "
                       f"fix the value")
    if splits is not None and len(set(splits)) != len(list(splits)):
        repeated = sorted({x for x in splits if list(splits).count(x) > 1})
        raise FhbError(f"--splits {','.join(splits)}: expected each split once, found {repeated} repeated; "
                       "name each split once")
    check_device(device)
    _check_numbers(batch_seconds=batch_seconds, max_seconds=max_seconds, lr=lr, clip_grad_norm=clip_grad_norm,
                   weight_decay=weight_decay, seed=seed, keep_checkpoints=keep_checkpoints)
    if precision is None:
        precision = "fp16" if train.use_fp16 and device.startswith("cuda") else "fp32"
    check_precision(precision, device, bf16_on_cpu=True)  # training autocasts in bf16 on CPU too
    if splits is None and cache is not None:
        # The yaml's data.train_set, restricted to the splits the lake has (fithubert.yaml lists
        # all 960 h; a train-clean-100 lake trains on that).
        yaml_sets = [str(x) for x in (fit.data.get("train_set") or DEFAULT_SPLITS)]
        present = set(open_lake(cache).splits)
        splits = tuple(x for x in yaml_sets if x in present)
        if not splits:
            raise FhbError(
                f"lake {cache}: expected one of the yaml's data.train_set splits {yaml_sets}, found "
                f"splits {sorted(present)}; pass --splits among those"
            )
        if len(splits) < len(yaml_sets):
            logger.warning("training on %s (the lake lacks %s of data.train_set)", list(splits),
                           [x for x in yaml_sets if x not in present])
    if dev_split is None and cache is not None:
        dev_split = DEFAULT_DEV_SPLIT if DEFAULT_DEV_SPLIT in set(open_lake(cache).splits) else None
        if dev_split is None:
            logger.warning("no %s in the lake: no dev evaluation, early stopping or best checkpoint "
                           "(the published run evaluates it after every epoch)", DEFAULT_DEV_SPLIT)
    elif dev_split == NO_DEV:
        dev_split = None
    if export == "best" and dev_split is None:
        export = "last"  # nothing to select by
    for name, v in (("log_every", log_every), ("eval_every", eval_every), ("save_every", save_every)):
        if v is not None and v < 1:
            raise FhbError(f"--{name.replace('_', '-')}: expected >= 1 (or unset), found {v}")
    check_int("--steps", steps, 1, MAX_UPDATES)
    check_int("--epochs", epochs, 1, MAX_UPDATES)
    check_int("--workers", workers, 0, MAX_PROCESSES)
    check_int("--accumulate", acc, 1, MAX_ACCUMULATE)
    return DistillSettings(
        cache=str(cache), config=str(config), out=str(out), splits=tuple(splits), dev_split=dev_split,
        steps=steps, epochs=epochs, batch_size=batch_size, batch_seconds=batch_seconds,
        max_seconds=max_seconds, accumulate=acc, precision=precision, device=device, workers=workers,
        prefetch=prefetch, seed=seed, online_teacher=str(online_teacher) if online_teacher else None,
        log_every=log_every, eval_every=eval_every, save_every=save_every, keep_checkpoints=keep_checkpoints,
        clip_grad_norm=clip_grad_norm, weight_decay=weight_decay, lr=lr, bucketing=bucketing,
        early_stopping_patience=patience or None, keep_best=best, export=export, optimizer_impl=optimizer_impl,
        accumulate_source=acc_source, allow_missing_shards=allow_missing_shards,
    )


_MAX_BATCH_SECONDS = MAX_BATCH_SECONDS
"""Largest --batch-seconds / --max-seconds accepted (27 hours of audio in one micro-batch)."""
_MAX_SEED = 2**32 - 1  # numpy's seeds


def _check_numbers(*, batch_seconds: float | None, max_seconds: float | None, lr: float | None,
                   clip_grad_norm: float | None, weight_decay: float | None, seed: int,
                   keep_checkpoints: int | None) -> None:
    """Refuse NaN, infinite, negative and absurd numbers in distill's options (one line each).

    Raises:
        FhbError: naming the option, the valid range and the value found.
    """
    ranges: tuple[tuple[str, float | None, float, float, bool], ...] = (
        # option, value, lowest, highest, lowest allowed itself
        ("--batch-seconds", batch_seconds, 0.0, _MAX_BATCH_SECONDS, False),
        ("--max-seconds", max_seconds, 0.0, _MAX_BATCH_SECONDS, False),
        ("--lr", lr, 0.0, 1e3, False),
        ("--clip-grad-norm", clip_grad_norm, 0.0, math.inf, False),
        ("--weight-decay", weight_decay, 0.0, 1e3, True),
    )
    for option, value, low, high, inclusive in ranges:
        if value is None:
            continue
        above = value >= low if inclusive else value > low
        if not (above and value <= high and math.isfinite(value)):  # NaN fails every comparison
            bound = f"{'>=' if inclusive else '>'} {low:g} and <= {high:g}" if math.isfinite(high) else \
                f"a finite number {'>=' if inclusive else '>'} {low:g}"
            raise FhbError(f"{option} {value}: expected {bound}; fix the value")
    if not 0 <= seed <= _MAX_SEED:
        raise FhbError(f"--seed {seed}: expected an integer in 0..{_MAX_SEED}; fix the value")
    if keep_checkpoints is not None and keep_checkpoints < 1:
        raise FhbError(f"--keep-checkpoints {keep_checkpoints}: expected >= 1 (or unset: keep all); "
                       "fix the value")


def published_accumulate(train: TrainConfig, world_size: int, source: str) -> int:
    """Micro-batches per update that keep the published effective batch on ``world_size`` ranks.

    The published run updates once per ``accumulate_grad_batches x gpus`` micro-batches (each of
    its ``gpus`` processes accumulates ``accumulate_grad_batches``); fhb's ranks together must
    read as many.

    Raises:
        FhbError: that count is not a multiple of ``world_size``.
    """
    per_update = train.accumulate_grad_batches * train.gpus
    if per_update % world_size:
        fits = [k for k in range(1, per_update + 1) if per_update % k == 0]
        raise FhbError(
            f"{source}: train.accumulate_grad_batches {train.accumulate_grad_batches} x gpus {train.gpus} = "
            f"{per_update} micro-batches per update: expected a multiple of the {world_size} ranks, found none; "
            f"run {fits} ranks, or pass --accumulate N to choose another effective batch"
        )
    acc = per_update // world_size
    logger.info("accumulate %d: %d micro-batches of %d utterances per update over %d rank(s), as the published "
                "accumulate_grad_batches %d x gpus %d", acc, per_update, train.batch_size, world_size,
                train.accumulate_grad_batches, train.gpus)
    return acc


def _make_loader(splits: Sequence[str], layers: list[int], s: DistillSettings, dist: DistInfo,
                 *, cnn: bool, shuffle: bool, train: bool) -> LakeLoader:
    return LakeLoader(
        s.cache, list(splits), layers,
        batch_size=s.batch_size, batch_seconds=s.batch_seconds, max_seconds=s.max_seconds,
        seed=s.seed, workers=s.workers if train else min(s.workers, 1), prefetch=s.prefetch,
        rank=dist.rank if train else 0, world_size=dist.world_size if train else 1,
        cnn_features=cnn, shuffle=shuffle, drop_last=False,
        pin_memory=s.device.startswith("cuda"), bucketing=s.bucketing,  # dev too: the published eval batches
    )


# ---------------------------------------------------------------------------------------------
# The run.


def run_distill(
    cache: Path | None,
    config: Path,
    out: Path,
    *,
    resume: bool = False,
    libri_root: Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    trace_dir: Path | None = None,
    **options: Any,
) -> RunSummary:
    """Train the student of ``config`` from the lake ``cache`` into the run directory ``out``.

    Args:
        cache: the lake (`fhb extract` output). Required (``libri_root`` alone is not supported).
        config: a FitHuBERT yaml (published layout).
        out: run directory (created; must be empty or absent unless ``resume``).
        resume: continue from ``out``'s newest loadable checkpoint (fresh start if none).
        libri_root: not supported without a lake (raises FhbError when given without ``cache``).
        progress: show a rich progress bar (rank 0).
        stop_after: stop (without the final save) after this many updates: for tests that
            simulate an interrupted run.
        trace_dir: for tests: every rank appends ``{step, epoch, utt_ids}`` of each micro-batch
            to ``trace_dir/rank-R.jsonl``.
        **options: the training options of `resolve_settings` (splits, steps, batch_size, lr, ...).

    Returns:
        `RunSummary`.
    """
    if libri_root is not None and cache is None:
        raise FhbError(
            f"--libri-root {libri_root} without --cache: expected a lake, found none; reading audio "
            f"straight from LibriSpeech is not implemented: run `fhb extract` first and pass --cache"
        )
    fit = load_fithubert_yaml(config)
    s = resolve_settings(fit, cache, config, out, world_size=env_world_size(), **options)
    dist, dev = init_distributed(s.device)
    try:
        check_out_apart(Path(s.out), {"--cache": Path(s.cache),
                                      "--config": Path(s.config) if Path(s.config).exists() else None,
                                      "--online-teacher": Path(s.online_teacher) if s.online_teacher else None},
                        "distill")
        check_out_not_inside_lake(Path(s.out), Path(s.cache), "--cache", "distill")
        # no writer changes the targets under the run; no second distill writes the run
        with LakeReadLease(s.cache), (run_state.RunLock(s.out) if dist.is_main else contextlib.nullcontext()):
            return _run(s, fit, dist, dev, resume, progress and dist.is_main, stop_after, trace_dir)
    finally:
        cleanup_distributed()


def _check_run_dir(s: DistillSettings, dist: DistInfo, resume: bool) -> None:
    """Refuse a non-empty run directory without ``--resume`` (its lock is held; `check_out_apart` passed)."""
    run_dir = Path(s.out)
    if dist.is_main and run_dir.exists() and not resume:
        if not run_dir.is_dir():
            raise FhbError(f"run directory {run_dir}: expected a directory, found a file; choose another --out")
        leftover = run_state.run_entries(run_dir)
        if leftover:
            raise FhbError(
                f"run directory {run_dir}: expected an empty or new directory, found {leftover[:5]}; "
                f"pass --resume to continue that run, or choose another --out"
            )


def _prepare_run_dir(s: DistillSettings, fit: FitConfig, dist: DistInfo, resume: bool) -> None:
    """Create the run directory and write its config (after every check passed: a refused run leaves nothing)."""
    run_dir = Path(s.out)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = {**fit.to_dict(), "fhb_distill": dataclasses.asdict(s)}
        resolved["fhb_distill"]["splits"] = list(s.splits)
        atomic_write_text(run_dir / run_state.CONFIG, yaml.safe_dump(resolved, sort_keys=False))
    barrier(dist)


def _open_teacher(s: DistillSettings, device: torch.device, lake_sha256: str, lake_name: str) -> Teacher | None:
    """The online teacher (None without ``--online-teacher``); it must be the lake's own."""
    if s.online_teacher is None:
        return None
    teacher = load_teacher(s.online_teacher, device=device)
    if teacher.sha256 != lake_sha256:
        raise FhbError(
            f"--online-teacher {s.online_teacher} (sha256 {teacher.sha256[:12]}…) is not the teacher "
            f"that wrote the lake {s.cache} ({lake_name}, sha256 {lake_sha256[:12]}…): the "
            f"online baseline would train on other targets; pass the lake's teacher checkpoint"
        )
    return teacher


def _build_trainer(s: DistillSettings, fit: FitConfig, dist: DistInfo, device: torch.device) -> Trainer:
    """Open the lake (and the online teacher), check they serve the student, build the `Trainer`."""
    lake = open_lake(s.cache)
    lake_teacher = lake.meta.teacher
    teacher = _open_teacher(s, device, lake_teacher.sha256, lake_teacher.name)
    online = teacher is not None
    n_teacher = teacher.num_layers if teacher is not None else lake_teacher.num_layers
    needed = [int(k) for k in required_teacher_layers(fit, n_teacher)]
    if not needed and fit.loss.cnn_loss_weight <= 0:
        raise FhbError(
            f"{s.config}: expected a loss on teacher layers (rec_loss_weight or sim_loss_weight > 0) or "
            f"on its CNN features (cnn_loss_weight > 0), found none; set rec_loss_weight: 1.0"
        )
    check_lake(lake, fit.distiller, needed, s.splits, online)
    if s.dev_split is not None:
        check_lake(lake, fit.distiller, needed, [s.dev_split], online)
    if not s.allow_missing_shards:
        check_complete_splits(lake, [*s.splits, *([s.dev_split] if s.dev_split else [])], "--allow-missing-shards")
    if teacher is not None:
        check_teacher(teacher, fit.distiller, needed)
    use_cnn = float(fit.loss.cnn_loss_weight) > 0
    if use_cnn and online:
        raise FhbError("--online-teacher with train.cnn_loss_weight > 0: not supported; set cnn_loss_weight: 0")
    attention = attention_for_run(fit.loss, n_teacher, s.cache, teacher)
    use_cnn = use_cnn or (attention is not None and attention.layer == 1)
    layers = [] if online else needed
    loader = _make_loader(s.splits, layers, s, dist, cnn=use_cnn, shuffle=True, train=True)
    dev_loader = (_make_loader([s.dev_split], layers, s, dist, cnn=use_cnn, shuffle=False, train=False)
                  if s.dev_split is not None else None)
    init_from = init_weights(fit.distiller, s.cache, lake.meta, teacher)
    model, loss_fn, layer_gen = build_model_and_loss(fit, s.seed, n_teacher, init_from, teacher_attention=attention)
    ctc = build_ctc_objective(lake, [*s.splits, *([s.dev_split] if s.dev_split else [])], model,
                              use_gt_for_ctc(fit.train, str(s.config)), s.max_seconds)
    return Trainer(
        model, loss_fn, layer_gen, loader, needed, OptimConfig.from_yaml(fit.optimizer, weight_decay=s.weight_decay,
                                                                          lr=s.lr, impl=s.optimizer_impl),
        device=device, precision=s.precision, accumulate=s.accumulate, steps=s.steps, epochs=s.epochs, dist=dist,
        clip_grad_norm=s.clip_grad_norm, teacher=teacher, use_cnn=use_cnn, dev_loader=dev_loader,
        dev_split=s.dev_split, ctc=ctc,
        checkpoint_extra={"config": fit.to_dict(), "settings": dataclasses.asdict(s),
                          "lake_teacher": lake_teacher_record(lake)},
    )


def _run(s: DistillSettings, fit: FitConfig, dist: DistInfo, device: torch.device, resume: bool,
         show_progress: bool, stop_after: int | None, trace_dir: Path | None = None) -> RunSummary:
    _check_run_dir(s, dist, resume)
    tr = _build_trainer(s, fit, dist, device)
    _prepare_run_dir(s, fit, dist, resume)
    run_dir = Path(s.out)
    if resume:
        found = run_state.load_latest_checkpoint(run_dir)
        if found is None:
            logger.info("--resume: no checkpoint in %s, starting from scratch", run_dir)
            if dist.is_main:
                run_state.truncate_metrics(run_dir, 0)  # what a killed first attempt logged
        else:
            path, state = found
            check_same_teacher(state.get("lake_teacher"), tr.loader.lake, f"run {run_dir} ({path.name})")
            _report_changed_settings(state.get("settings"), s, path)
            tr.load_state_dict(state)
            tr.resumed_from = tr.global_step
            logger.info("resumed from %s (update %d, epoch %d, batch %d)", path.name, tr.global_step, tr.epoch,
                        tr.batch_in_epoch)
            if dist.is_main:
                run_state.truncate_metrics(run_dir, tr.global_step)
    else:
        np.random.seed(s.seed)
        random.seed(s.seed)
    if dist.is_main:
        logger.info(
            "distilling %s from %s: %d updates (%d per epoch, %d micro-batches of %s each, accumulate %s), "
            "%s, %s, %d rank(s)%s", Path(s.config).name, s.cache, tr.total_steps, tr.updates_per_epoch,
            tr.batches_per_epoch, f"{s.batch_size} utterances" if s.batch_size else f"{s.batch_seconds} s",
            f"{s.accumulate} ({s.accumulate_source})", s.precision, device, dist.world_size,
            f", online teacher {s.online_teacher}" if s.online_teacher else "",
        )
    schedule = Schedule(log_every=s.log_every, eval_every=s.eval_every, save_every=s.save_every,
                        keep_checkpoints=s.keep_checkpoints,
                        eval_each_epoch=s.dev_split is not None and s.eval_every is None,
                        early_stopping_patience=s.early_stopping_patience, keep_best=s.keep_best)

    def write_best(path: Path) -> None:
        save_final_student(path, tr, fit, s.cache)

    fitted = tr.fit(run_dir, schedule, stop_after=stop_after, show_progress=show_progress, trace_dir=trace_dir,
                    write_student=write_best)
    student_path = None
    if tr.finished and dist.is_main:
        student_path = _export_student(run_dir, tr, fit, s, fitted.best)
    barrier(dist)
    return RunSummary(
        run_dir=run_dir, steps=tr.global_step, epochs_done=tr.epoch + tr.batch_in_epoch / tr.batches_per_epoch,
        final_loss=fitted.final_loss, dev_loss=fitted.dev_loss, student_path=student_path, seconds=fitted.seconds,
        steps_per_s=fitted.steps_per_s, loader_wait_share=fitted.loader_wait_share, resumed_from=tr.resumed_from,
    )


_RESUMABLE_CHANGES = frozenset({"steps", "epochs", "workers", "prefetch", "log_every", "eval_every", "save_every",
                                "keep_checkpoints", "device", "allow_missing_shards", "out", "cache",
                                "early_stopping_patience", "keep_best", "export", "accumulate_source"})
"""Settings a resumed run may change without changing what it trains (length, I/O, logging)."""


def _report_changed_settings(saved: object, s: DistillSettings, path: Path) -> None:
    """Refuse changed training hyper-parameters on ``--resume``; log the harmless changes explicitly.

    Raises:
        FhbError: naming each changed hyper-parameter (saved -> now) and the fix.
    """
    if not isinstance(saved, dict):
        return
    now = dataclasses.asdict(s)
    changed = {k: (saved[k], v) for k, v in now.items()
               if k in saved and (list(saved[k]) if isinstance(saved[k], (tuple, list)) else saved[k])
               != (list(v) if isinstance(v, (tuple, list)) else v)}
    refused = {k: c for k, c in changed.items() if k not in _RESUMABLE_CHANGES}
    if refused:
        listing = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(refused.items()))
        raise FhbError(f"--resume from {path}: the run was trained with other settings ({listing}); expected "
                       "the same hyper-parameters to continue it: rerun with the original options, or start a "
                       "new run with another --out")
    for k, (a, b) in sorted(changed.items()):
        logger.warning("--resume: %s changed from %r to %r", k, a, b)


def _export_student(run_dir: Path, tr: Trainer, fit: FitConfig, s: DistillSettings, best: Kept | None) -> Path:
    """``RUN/student.pt``: the best kept student (``export="best"``) or the last update's; the choice
    is recorded in ``metrics.jsonl`` (a ``selected`` record) for the model card."""
    path = run_dir / run_state.STUDENT
    if s.export == "best" and best is not None and Path(best.path).is_file():
        shutil.copyfile(best.path, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        chosen = {"selected": "best", "step": best.step, "dev_loss": best.dev_loss, "split": s.dev_split}
    else:
        save_final_student(path, tr, fit, s.cache)
        chosen = {"selected": "last", "step": tr.global_step, "dev_loss": None, "split": s.dev_split}
    run_state.append_metrics(run_dir, {"kind": "selected", **chosen, "stopped_early": tr.stopped_early})
    logger.info("student.pt: the %s student (update %d)", chosen["selected"], chosen["step"])
    return path


def save_final_student(path: Path, tr: Trainer, fit: FitConfig, cache: str) -> Path:
    """Write the trained student in fhb's student format, with the step and the teacher's identity
    (and, for a CTC teacher's run, its CTC head under ``extra["ctc_head"]``: `fhb evaluate` scores
    WER / CER with it; exports drop it)."""
    meta = tr.loader.lake.meta
    teacher = {"lake": cache, "name": meta.teacher.name, "sha256": meta.teacher.sha256,
               "layers": list(meta.layers), "dtype": meta.dtype}
    head = {"ctc_head": {k: v.detach().cpu() for k, v in tr.ctc.head.state_dict().items()}} if tr.ctc else None
    save_student(tr.model, fit, path, epoch=int(tr.epoch), step=int(tr.global_step), teacher=teacher, extra=head)
    logger.info("student written to %s", path)
    return path
