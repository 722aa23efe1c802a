"""Stage 2, ``fhb distill``: train the FitHuBERT student from a lake, without running the teacher.

    fhb distill --cache LAKE --config fhb/configs/fithubert.yaml --out RUN [--steps N | --epochs E]
    torchrun --nproc-per-node 2 -m fhb.cli distill --cache LAKE --config ... --out RUN

`run_distill` reads the published yaml (``train``, ``distiller``, ``optimizer``, ``data``
sections; arguments given explicitly override it), checks the lake can serve the student (its
stored layers cover `required_teacher_layers`, its teacher dimension equals
``pred_head_final_dim``), then trains:

- AdamW with the published grouping and ``warmup_linear`` schedule (see `fhb.training.optim`:
  weight decay 0.01 on every non-bias parameter by default, as the published code really does);
- gradient accumulation (``train.accumulate_grad_batches``; each micro-batch loss divided by the
  count, as Lightning does; an epoch's leftover micro-batches make one last, smaller update);
- mixed precision (``torch.autocast``; ``GradScaler`` for fp16 on CUDA). Default precision: fp16
  when the yaml says ``use_fp16`` and the device is CUDA, else fp32;
- gradient clipping: off by default (the published code has none); ``clip_grad_norm`` turns it on;
- DDP when launched by ``torchrun`` (gloo on CPU, nccl on CUDA): each rank reads its own part of
  each epoch (the loader's ``rank/world_size``); only rank 0 writes checkpoints, metrics and the
  student, and only rank 0 evaluates (on the whole dev split); logged train losses are rank 0's;
- a checkpoint every ``save_every`` updates (see `fhb.training.run_state`: atomic, with every RNG
  state and the loader's mid-epoch position), so ``resume=True`` continues where the newest
  complete checkpoint left off and ends with the same parameters as an uninterrupted run;
- dev evaluation every ``eval_every`` updates: per-layer losses and the published validation loss
  (the unweighted last-layer loss), appended to ``metrics.jsonl`` with the train records.

``online_teacher=CKPT`` is the baseline: the same student, the same batches (the loader reads only
audio from the lake), the teacher run on every batch. Its targets equal the lake's (to float16
precision) for whole utterances; with ``max_seconds`` crops the online teacher sees only the crop
(less context than the lake's full-utterance targets), so the two differ slightly. Training
straight from a LibriSpeech root (``libri_root`` without a lake) is not implemented; extract a
lake first.

Determinism: a fixed seed gives the same parameters whether the run is interrupted and resumed
or not (any ``workers``), on the same machine and torch thread count. Starting a loader iterator
draws from torch's global RNG, so ``next(loader)`` runs under ``torch.random.fork_rng``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fhb.errors import FhbError
from fhb.pipeline.files import atomic_write_text
from fhb.student.checkpoint import save_student
from fhb.training.distributed import DistInfo, all_reduce_min, barrier, cleanup_distributed, init_distributed
from fhb.training.optim import OptimConfig, build_optimizer
from fhb.training import run_state
from fhb.stages.train_loop import (
    PRECISIONS,
    LossValues,
    StepTimer,
    autocast_context,
    make_scaler,
    online_targets,
)

logger = logging.getLogger(__name__)

DEFAULT_SPLITS = ("train-clean-100",)


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


# ---------------------------------------------------------------------------------------------
# Student-side API (fhb.student), in one place.


def required_layers(fit: Any, num_teacher_layers: int) -> list[int]:
    """Teacher layers (1-based, ascending) the student's loss can ask for over the run."""
    from fhb.student.loss import required_teacher_layers

    return [int(k) for k in required_teacher_layers(fit, num_teacher_layers)]


def build_model_and_loss(fit: Any, seed: int, num_teacher_layers: int) -> tuple[torch.nn.Module, Any, torch.Generator]:
    """The student (initialised from ``seed``), its `DistillLoss`, and the generator of its layer draws.

    The generator (seeded with ``seed``) draws the random layers at the start and after every
    epoch; it is checkpointed with the other RNG states.
    """
    from fhb.student.loss import DistillLoss
    from fhb.student.model import build_student

    torch.manual_seed(seed)
    model = build_student(fit.distiller, cnn_loss_weight=float(fit.loss.cnn_loss_weight))
    gen = torch.Generator().manual_seed(seed)
    loss = DistillLoss(fit.loss, num_teacher_layers, student=fit.distiller, generator=gen)
    return model, loss, gen


def compute_loss(loss_fn: Any, output: Any, targets: torch.Tensor, layers: list[int],
                 target_lengths: torch.Tensor, cnn: torch.Tensor | None) -> LossValues:
    """Student output + ``B x L x T x D`` targets of teacher ``layers`` -> `LossValues`.

    Per-layer values are the unweighted losses, named ``layer_K`` by teacher layer ``K``;
    ``last`` is the teacher's last layer's (the published validation loss).
    """
    by_layer = {k: targets[:, i] for i, k in enumerate(layers)}
    res = loss_fn(output, by_layer, target_lengths, cnn)
    per = {f"layer_{k:02d}": float(v.detach()) for k, v in sorted(res.per_layer.items())}
    n = loss_fn.num_teacher_layers
    last = float(res.per_layer[n].detach()) if n in res.per_layer else float("nan")
    return LossValues(total=res.total, layers=per, last=last)


# ---------------------------------------------------------------------------------------------
# Configuration.


def _resolve(
    fit: Any,
    *,
    cache: Path | None,
    config: Path,
    out: Path,
    splits: Sequence[str] | None,
    dev_split: str | None,
    steps: int | None,
    epochs: int | None,
    batch_size: int | None,
    batch_seconds: float | None,
    max_seconds: float | None,
    accumulate: int | None,
    precision: str | None,
    device: str,
    workers: int,
    prefetch: int,
    seed: int,
    online_teacher: Path | None,
    log_every: int,
    eval_every: int | None,
    save_every: int | None,
    keep_checkpoints: int | None,
    clip_grad_norm: float | None,
    weight_decay: float | None,
    lr: float | None,
) -> DistillSettings:
    train = fit.train
    if cache is None:
        raise FhbError(
            "--cache: expected a lake written by `fhb extract`, found none; training from "
            "--libri-root alone is not implemented: run `fhb extract` first and pass --cache"
        )
    if steps is not None and epochs is not None:
        raise FhbError(f"--steps {steps} and --epochs {epochs}: expected one of them, found both; pass only one")
    if steps is None and epochs is None:
        epochs = int(train.get("num_epochs", 1))
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
        batch_size = int(train.get("batch_size", 1))
    acc = int(accumulate if accumulate is not None else train.get("accumulate_grad_batches", 1))
    if acc < 1:
        raise FhbError(f"accumulate (train.accumulate_grad_batches): expected >= 1, found {acc}")
    if precision is None:
        precision = "fp16" if bool(train.get("use_fp16", False)) and device.startswith("cuda") else "fp32"
    if precision not in PRECISIONS:
        raise FhbError(f"--precision: expected one of {list(PRECISIONS)}, found {precision!r}")
    if precision == "fp16" and not device.startswith("cuda"):
        raise FhbError(f"--precision fp16 on {device}: expected a CUDA device; use bf16 or fp32 on CPU")
    if splits is None and cache is not None:
        # The yaml's data.train_set, restricted to the splits the lake has (fithubert.yaml lists
        # all 960 h; a train-clean-100 lake trains on that).
        from fhb.storage.reader import open_lake

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
    for name, v in (("log_every", log_every), ("eval_every", eval_every), ("save_every", save_every)):
        if v is not None and v < 1:
            raise FhbError(f"--{name.replace('_', '-')}: expected >= 1 (or unset), found {v}")
    return DistillSettings(
        cache=str(cache), config=str(config), out=str(out), splits=tuple(splits), dev_split=dev_split,
        steps=steps, epochs=epochs, batch_size=batch_size, batch_seconds=batch_seconds,
        max_seconds=max_seconds, accumulate=acc, precision=precision, device=device, workers=workers,
        prefetch=prefetch, seed=seed, online_teacher=str(online_teacher) if online_teacher else None,
        log_every=log_every, eval_every=eval_every, save_every=save_every, keep_checkpoints=keep_checkpoints,
        clip_grad_norm=clip_grad_norm, weight_decay=weight_decay, lr=lr,
    )


def check_lake(lake: Any, fit: Any, needed: list[int], splits: Sequence[str], online: bool) -> None:
    """Refuse a lake that cannot serve this student: missing layers, wrong dim, missing splits.

    Raises:
        FhbError: naming the missing layers / the dimension mismatch and the fix.
    """
    meta = lake.meta
    missing_splits = [s for s in splits if s not in lake.splits]
    if missing_splits:
        raise FhbError(
            f"lake {lake.location}: expected splits {list(splits)}, found {lake.splits} (missing "
            f"{missing_splits}); extract them with `fhb extract` or pass --splits among {lake.splits}"
        )
    if online:
        return
    dim = int(fit.distiller.pred_head_final_dim)
    if meta.teacher.dim != dim:
        raise FhbError(
            f"lake {lake.location}: expected teacher dim {dim} (distiller.pred_head_final_dim), found "
            f"{meta.teacher.dim} (teacher {meta.teacher.name}); set pred_head_final_dim: {meta.teacher.dim} "
            f"or use a lake extracted from a {dim}-dim teacher"
        )
    missing = [k for k in needed if k not in meta.layers]
    if missing:
        raise FhbError(
            f"lake {lake.location}: expected teacher layers {needed} (required by the student's loss), "
            f"found {list(meta.layers)}; missing {missing}: re-extract with --layers "
            f"{','.join(map(str, sorted(set(meta.layers) | set(needed))))}, or reduce "
            f"distiller.encoder_layers / train.distil_random_layer / pred_layer_id"
        )


def _check_teacher(teacher: Any, fit: Any, needed: list[int]) -> None:
    dim = int(fit.distiller.pred_head_final_dim)
    if teacher.dim != dim or max(needed) > teacher.num_layers:
        raise FhbError(
            f"online teacher {teacher.path}: expected dim {dim} and at least {max(needed)} layers, found "
            f"dim {teacher.dim} and {teacher.num_layers} layers; pick a matching teacher or config"
        )


def _make_loader(splits: Sequence[str], layers: list[int], s: DistillSettings, dist: DistInfo,
                 *, cnn: bool, shuffle: bool, train: bool) -> Any:
    from fhb.training.loader import LakeLoader

    return LakeLoader(
        s.cache, list(splits), layers,
        batch_size=s.batch_size, batch_seconds=s.batch_seconds, max_seconds=s.max_seconds,
        seed=s.seed, workers=s.workers if train else min(s.workers, 1), prefetch=s.prefetch,
        rank=dist.rank if train else 0, world_size=dist.world_size if train else 1,
        cnn_features=cnn, shuffle=shuffle, drop_last=False,
        pin_memory=s.device.startswith("cuda"),
    )


# ---------------------------------------------------------------------------------------------
# The run.


class _Trainer:
    """Holds the objects of one run; `run_distill` drives it."""

    def __init__(self, s: DistillSettings, fit: Any, dist: DistInfo, device: torch.device) -> None:
        from fhb.storage.reader import open_lake

        self.s, self.fit, self.dist, self.device = s, fit, dist, device
        self.run_dir = Path(s.out)
        self.lake = open_lake(s.cache)
        online = s.online_teacher is not None
        self.teacher = None
        if online:
            from fhb.pipeline.teacher import load_teacher

            self.teacher = load_teacher(s.online_teacher, device=device)
            lake_teacher = self.lake.meta.teacher
            if self.teacher.sha256 != lake_teacher.sha256:
                raise FhbError(
                    f"--online-teacher {s.online_teacher} (sha256 {self.teacher.sha256[:12]}…) is not the teacher "
                    f"that wrote the lake {s.cache} ({lake_teacher.name}, sha256 {lake_teacher.sha256[:12]}…): the "
                    f"online baseline would train on other targets; pass the lake's teacher checkpoint"
                )
        n_teacher = self.teacher.num_layers if self.teacher is not None else self.lake.meta.teacher.num_layers
        self.needed = required_layers(fit, n_teacher)
        if not self.needed:
            raise FhbError(
                f"{s.config}: expected a loss on teacher layers (rec_loss_weight or sim_loss_weight > 0), "
                f"found none; fhb distill trains from teacher layers: set rec_loss_weight: 1.0"
            )
        check_lake(self.lake, fit, self.needed, s.splits, online)
        if s.dev_split is not None:
            check_lake(self.lake, fit, self.needed, [s.dev_split], online)
        if self.teacher is not None:
            _check_teacher(self.teacher, fit, self.needed)
        self.use_cnn = float(fit.loss.cnn_loss_weight) > 0
        if self.use_cnn and online:
            raise FhbError("--online-teacher with train.cnn_loss_weight > 0: not supported; set cnn_loss_weight: 0")
        layers = [] if online else self.needed
        self.loader = _make_loader(s.splits, layers, s, dist, cnn=self.use_cnn, shuffle=True, train=True)
        self.dev_loader = (
            _make_loader([s.dev_split], layers, s, dist, cnn=self.use_cnn, shuffle=False, train=False)
            if s.dev_split is not None else None
        )
        self.batches_per_epoch = all_reduce_min(len(self.loader), dist)
        if self.batches_per_epoch < 1:
            raise FhbError(
                f"splits {list(s.splits)}: expected at least one batch per rank, found none "
                f"({dist.world_size} ranks); use more data, fewer ranks or smaller batches"
            )
        self.updates_per_epoch = math.ceil(self.batches_per_epoch / s.accumulate)
        self.total_steps = s.steps if s.steps is not None else int(s.epochs or 1) * self.updates_per_epoch

        self.model, self.loss_fn, self.layer_gen = build_model_and_loss(fit, s.seed, n_teacher)
        self.model.to(device)
        self.ddp: torch.nn.Module = self.model
        if dist.enabled:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        optim_cfg = OptimConfig.from_yaml(fit.optimizer, weight_decay=s.weight_decay, lr=s.lr)
        self.optimizer, self.scheduler = build_optimizer(self.model, optim_cfg, self.total_steps)
        self.scaler = make_scaler(device, s.precision)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.resumed_from: int | None = None

    # -- state ----------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": run_state.rng_state(self.layer_gen),
            "loss_state": self.loss_fn.state_dict(),
            "loader": {"epoch": self.epoch, "batches": self.batch_in_epoch, "state": self.loader.state_dict()},
            "config": self.fit.to_dict(),
            "settings": dataclasses.asdict(self.s),
            "world_size": self.dist.world_size,
        }

    def load(self, state: dict[str, Any]) -> None:
        """Restore `state` (the inverse of :meth:`state`)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.loss_fn.load_state_dict(state["loss_state"])
        run_state.set_rng_state(state["rng"], self.layer_gen)
        self.step = int(state["step"])
        self.epoch = int(state["loader"]["epoch"])
        self.batch_in_epoch = int(state["loader"]["batches"])
        if state.get("world_size", 1) != self.dist.world_size:
            raise FhbError(
                f"resume: expected the checkpoint's world size {state.get('world_size')}, found "
                f"{self.dist.world_size} processes; resume with the same number of ranks"
            )
        self._loader_state = state["loader"]["state"]

    def save(self) -> None:
        if self.dist.is_main:
            run_state.save_checkpoint(self.run_dir, self.step, self.state(), self.s.keep_checkpoints)
        barrier(self.dist)

    # -- batches ----------------------------------------------------------------------------------

    def _targets(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.teacher is not None:
            t, n = online_targets(self.teacher, batch.wavs, batch.wav_lengths, self.needed)
            return t.to(self.device), n.to(self.device)
        return batch.targets.to(self.device, torch.float32), batch.target_lengths.to(self.device)

    def forward_loss(self, module: torch.nn.Module, batch: Any) -> LossValues:
        """Student forward + loss on one (device) batch."""
        targets, target_lengths = self._targets(batch)
        with autocast_context(self.device, self.s.precision):
            out = module(batch.wavs.to(self.device), batch.wav_lengths.to(self.device))
        cnn = batch.cnn.to(self.device, torch.float32) if (self.use_cnn and batch.cnn is not None) else None
        return compute_loss(self.loss_fn, out, targets, self.needed, target_lengths, cnn)

    def epoch_batches(self) -> Any:
        """Iterator over (batch) for the current epoch, positioned after ``batch_in_epoch``."""
        self.loader.set_epoch(self.epoch)
        state = getattr(self, "_loader_state", None)
        if state is not None and self.batch_in_epoch > 0:
            self.loader.load_state_dict(state)
        self._loader_state = None
        return iter(self.loader)

    # -- evaluation -------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any] | None:
        """Dev losses (rank 0 only, the whole dev split); the model's train mode is restored."""
        if self.dev_loader is None or not self.dist.is_main:
            return None
        was_training = self.model.training
        self.model.eval()
        sums: dict[str, float] = {}
        last = 0.0
        n = 0
        t0 = time.perf_counter()
        self.dev_loader.set_epoch(0)
        with torch.random.fork_rng(devices=[]):  # evaluation must not move the training RNG
            batches = list(self.dev_loader)
        for batch in batches:
            lv = self.forward_loss(self.model, batch)
            for k, v in lv.layers.items():
                sums[k] = sums.get(k, 0.0) + v
            last += lv.last
            n += 1
        self.model.train(was_training)
        if n == 0:
            return None
        return {
            "kind": "eval", "step": self.step, "split": self.s.dev_split, "dev_loss": last / n,
            "layer_losses": {k: v / n for k, v in sums.items()}, "batches": n,
            "seconds": time.perf_counter() - t0,
        }


def run_distill(
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
    resume: bool = False,
    online_teacher: Path | None = None,
    libri_root: Path | None = None,
    log_every: int = 10,
    eval_every: int | None = None,
    save_every: int | None = None,
    keep_checkpoints: int | None = None,
    clip_grad_norm: float | None = None,
    weight_decay: float | None = None,
    lr: float | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    trace_dir: Path | None = None,
) -> RunSummary:
    """Train the student of ``config`` from the lake ``cache`` into the run directory ``out``.

    Args:
        cache: the lake (`fhb extract` output). Required (``libri_root`` alone is not supported).
        config: a FitHuBERT yaml (published layout).
        out: run directory (created; must be empty or absent unless ``resume``).
        splits: training splits (default: the yaml's ``data.train_set`` if the lake has them,
            else ``train-clean-100``).
        dev_split: split evaluated every ``eval_every`` updates and at the end (None: no eval).
        steps / epochs: length of the run in optimiser updates / epochs (default: yaml
            ``train.num_epochs``).
        batch_size / batch_seconds: utterances per micro-batch, or audio seconds per micro-batch
            (default: yaml ``train.batch_size``); ``max_seconds`` drops longer utterances.
        accumulate: micro-batches per update (default: yaml ``train.accumulate_grad_batches``).
        precision: fp32, fp16 (CUDA) or bf16 (default: fp16 if yaml ``use_fp16`` and CUDA).
        device: cpu, cuda, cuda:K (under torchrun each rank uses cuda:LOCAL_RANK).
        workers / prefetch: loader decode processes and batches read ahead.
        seed: student init, loss random layers, data order, dropout.
        resume: continue from ``out``'s newest loadable checkpoint (fresh start if none).
        online_teacher: run this teacher on every batch instead of reading targets (baseline).
        libri_root: not supported without a lake (raises FhbError when given without ``cache``).
        log_every / eval_every / save_every: intervals in updates (None: never; the last update
            is always saved and evaluated).
        keep_checkpoints: keep only the newest N checkpoints (None: all).
        clip_grad_norm: max gradient norm (None: no clipping, as published).
        weight_decay: non-bias weight decay (None: the published 0.01; see `fhb.training.optim`).
        lr: learning-rate override.
        progress: show a rich progress bar (rank 0).
        stop_after: stop (without the final save) after this many updates: for tests that
            simulate an interrupted run.
        trace_dir: for tests: every rank appends ``{step, epoch, utt_ids}`` of each micro-batch
            to ``trace_dir/rank-R.jsonl``.

    Returns:
        `RunSummary`.
    """
    from fhb.student.config import load_fithubert_yaml

    if libri_root is not None and cache is None:
        raise FhbError(
            f"--libri-root {libri_root} without --cache: expected a lake, found none; reading audio "
            f"straight from LibriSpeech is not implemented: run `fhb extract` first and pass --cache"
        )
    fit = load_fithubert_yaml(config)
    s = _resolve(
        fit, cache=cache, config=config, out=out, splits=splits, dev_split=dev_split, steps=steps,
        epochs=epochs, batch_size=batch_size, batch_seconds=batch_seconds, max_seconds=max_seconds,
        accumulate=accumulate, precision=precision, device=device, workers=workers, prefetch=prefetch,
        seed=seed, online_teacher=online_teacher, log_every=log_every, eval_every=eval_every,
        save_every=save_every, keep_checkpoints=keep_checkpoints, clip_grad_norm=clip_grad_norm,
        weight_decay=weight_decay, lr=lr,
    )
    dist, dev = init_distributed(device)
    try:
        return _run(s, fit, dist, dev, resume, progress and dist.is_main, stop_after, trace_dir)
    finally:
        cleanup_distributed()


def _prepare_run_dir(s: DistillSettings, fit: Any, dist: DistInfo, resume: bool) -> None:
    run_dir = Path(s.out)
    if dist.is_main:
        if run_dir.exists() and not resume:
            leftover = sorted(p.name for p in run_dir.iterdir())
            if leftover:
                raise FhbError(
                    f"run directory {run_dir}: expected an empty or new directory, found {leftover[:5]}; "
                    f"pass --resume to continue that run, or choose another --out"
                )
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = {**fit.to_dict(), "fhb_distill": dataclasses.asdict(s)}
        resolved["fhb_distill"]["splits"] = list(s.splits)
        atomic_write_text(run_dir / run_state.CONFIG, yaml.safe_dump(resolved, sort_keys=False))
    barrier(dist)


def _run(s: DistillSettings, fit: Any, dist: DistInfo, device: torch.device, resume: bool,
         show_progress: bool, stop_after: int | None, trace_dir: Path | None = None) -> RunSummary:
    _prepare_run_dir(s, fit, dist, resume)
    tr = _Trainer(s, fit, dist, device)
    run_dir = tr.run_dir
    if resume:
        found = run_state.load_latest_checkpoint(run_dir)
        if found is None:
            logger.info("--resume: no checkpoint in %s, starting from scratch", run_dir)
            if dist.is_main:
                run_state.truncate_metrics(run_dir, 0)  # what a killed first attempt logged
        else:
            path, state = found
            tr.load(state)
            tr.resumed_from = tr.step
            logger.info("resumed from %s (update %d, epoch %d, batch %d)", path.name, tr.step, tr.epoch,
                        tr.batch_in_epoch)
            if dist.is_main:
                run_state.truncate_metrics(run_dir, tr.step)
    else:
        np.random.seed(s.seed)
        import random

        random.seed(s.seed)
    if tr.dist.is_main:
        logger.info(
            "distilling %s from %s: %d updates (%d per epoch, %d micro-batches of %s each, accumulate %d), "
            "%s, %s, %d rank(s)%s", Path(s.config).name, s.cache, tr.total_steps, tr.updates_per_epoch,
            tr.batches_per_epoch, f"{s.batch_size} utterances" if s.batch_size else f"{s.batch_seconds} s",
            s.accumulate, s.precision, device, dist.world_size,
            f", online teacher {s.online_teacher}" if s.online_teacher else "",
        )
    last_loss = float("nan")
    dev_loss: float | None = None
    timer = StepTimer()
    total_timer = StepTimer()
    tr.ddp.train()
    bar = _progress(show_progress, tr.total_steps, tr.step)
    window_loss: list[float] = []
    window_layers: dict[str, list[float]] = {}
    target = tr.total_steps if stop_after is None else min(tr.total_steps, stop_after)
    try:
        while tr.step < target:
            if tr.batch_in_epoch >= tr.batches_per_epoch:
                tr.epoch += 1
                tr.batch_in_epoch = 0
                tr.loss_fn.resample(tr.layer_gen)  # the published code redraws after every epoch
            it = tr.epoch_batches()
            while tr.step < target and tr.batch_in_epoch < tr.batches_per_epoch:
                n_micro = min(s.accumulate, tr.batches_per_epoch - tr.batch_in_epoch)
                step_loss = 0.0
                step_layers: dict[str, float] = {}
                for j in range(n_micro):
                    # fork_rng: starting a DataLoader iterator draws a seed from the global torch
                    # RNG; isolating it keeps dropout draws identical after a mid-epoch resume.
                    with timer.waiting(), total_timer.waiting(), torch.random.fork_rng(devices=[]):
                        batch = next(it)
                    tr.batch_in_epoch += 1
                    if trace_dir is not None:
                        _trace(trace_dir, dist.rank, tr.step, tr.epoch, batch.utt_ids)
                    sync = j == n_micro - 1 or not dist.enabled
                    ctx = tr.ddp.no_sync() if not sync else contextlib.nullcontext()
                    with ctx:
                        lv = tr.forward_loss(tr.ddp, batch)
                        tr.scaler.scale(lv.total / s.accumulate).backward()
                    step_loss += float(lv.total.detach()) / n_micro
                    for k, v in lv.layers.items():
                        step_layers[k] = step_layers.get(k, 0.0) + v / n_micro
                if s.clip_grad_norm is not None:
                    tr.scaler.unscale_(tr.optimizer)
                    torch.nn.utils.clip_grad_norm_(tr.model.parameters(), s.clip_grad_norm)
                lr_now = tr.optimizer.param_groups[0]["lr"]
                tr.scaler.step(tr.optimizer)
                tr.scaler.update()
                tr.optimizer.zero_grad(set_to_none=True)
                tr.scheduler.step()
                tr.step += 1
                timer.steps += 1
                total_timer.steps += 1
                last_loss = step_loss
                window_loss.append(step_loss)
                for k, v in step_layers.items():
                    window_layers.setdefault(k, []).append(v)
                if not math.isfinite(step_loss):
                    raise FhbError(
                        f"update {tr.step}: expected a finite loss, found {step_loss}; lower --lr, use fp32/bf16, "
                        f"or enable --clip-grad-norm"
                    )
                sps, wait = timer.figures()
                if bar is not None:
                    bar[0].update(bar[1], completed=tr.step,
                                  status=f"loss {step_loss:.4g} · {sps:.2f} steps/s · wait {wait:.0%}")
                final = tr.step == tr.total_steps
                if dist.is_main and (tr.step % s.log_every == 0 or final):
                    run_state.append_metrics(run_dir, {
                        "kind": "train", "step": tr.step, "epoch": tr.epoch, "lr": lr_now,
                        "loss": sum(window_loss) / len(window_loss),
                        "layer_losses": {k: sum(v) / len(v) for k, v in window_layers.items()},
                        "steps_per_s": sps, "loader_wait_share": wait,
                    })
                    window_loss.clear()
                    window_layers.clear()
                    timer.reset()
                if (s.eval_every and tr.step % s.eval_every == 0) or (final and s.dev_split):
                    rec = tr.evaluate()
                    if rec is not None:
                        dev_loss = rec["dev_loss"]
                        run_state.append_metrics(run_dir, rec)
                        logger.info("update %d: dev loss %.4g", tr.step, dev_loss)
                    barrier(dist)
                if (s.save_every and tr.step % s.save_every == 0) or final:
                    tr.save()
    finally:
        if bar is not None:
            bar[0].stop()
        tr.loader.close()  # worker processes of an unfinished epoch
    student_path = None
    if tr.step == tr.total_steps and dist.is_main:
        student_path = save_final_student(run_dir / run_state.STUDENT, tr, fit)
    barrier(dist)
    sps_all, wait_all = total_timer.figures()
    return RunSummary(
        run_dir=run_dir, steps=tr.step, epochs_done=tr.epoch + tr.batch_in_epoch / tr.batches_per_epoch,
        final_loss=last_loss, dev_loss=dev_loss, student_path=student_path,
        seconds=time.perf_counter() - total_timer.start, steps_per_s=sps_all, loader_wait_share=wait_all,
        resumed_from=tr.resumed_from,
    )


def _trace(trace_dir: Path, rank: int, step: int, epoch: int, utt_ids: Sequence[str]) -> None:
    trace_dir.mkdir(parents=True, exist_ok=True)
    with open(trace_dir / f"rank-{rank}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, "epoch": epoch, "utt_ids": list(utt_ids)}) + "\n")


def _progress(show: bool, total: int, done: int) -> tuple[Any, Any] | None:
    if not show:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from fhb.pipeline.logging_setup import console

    p = Progress(TextColumn("distill"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                 TextColumn("{task.fields[status]}"), console=console, transient=False)
    task = p.add_task("distill", total=total, completed=done, status="")
    p.start()
    return p, task


def save_final_student(path: Path, tr: Any, fit: Any) -> Path:
    """Write the trained student in fhb's student format, with the step and the teacher's identity."""
    meta = tr.lake.meta
    teacher = {"lake": str(tr.s.cache), "name": meta.teacher.name, "sha256": meta.teacher.sha256,
               "layers": list(meta.layers), "dtype": meta.dtype}
    save_student(tr.model, fit, path, epoch=int(tr.epoch), step=int(tr.step), teacher=teacher)
    logger.info("student written to %s", path)
    return path
