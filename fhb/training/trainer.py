"""Stage two's training loop: `Trainer` (one optimiser update at a time) and `Trainer.fit` (the run).

- `TrainConfig`: the yaml ``train:`` keys the trainer reads (``num_epochs``, ``batch_size``,
  ``accumulate_grad_batches``, ``gpus``, ``use_fp16``, and fhb's ``early_stopping_patience`` and
  ``keep_best``), typed and validated once. The loss keys of the same
  section are `fhb.student.config.LossConfig`'s.
- `Trainer.step` is one optimiser update: ``accumulate`` micro-batches, each loss divided by the
  count (as Lightning does; an epoch's leftover micro-batches make one last, smaller update);
  mixed precision (``torch.autocast``; a ``GradScaler`` for fp16 on CUDA); gradient clipping when
  ``clip_grad_norm`` is set (the published code has none); the AdamW + ``warmup_linear`` schedule
  of `fhb.training.optim`; the scheduler advances only on updates the optimiser applied (not on
  those the fp16 grad scaler skips), as s3prl's in-optimiser schedule does. The loss is computed
  in fp32 (`fhb.student.loss`), as autocast runs the published ``mse_loss``. After every epoch the
  loss redraws its random layers (as published).
- DDP when the `DistInfo` says so: each rank reads its own part of each epoch (the loader's
  ``rank/world_size``); every rank gets the same number of batches; only rank 0 writes
  checkpoints and metrics, and only rank 0 evaluates (on the whole dev split, with
  `fhb.training.evaluation.evaluate_split`); logged train losses are the mean over ranks.
- `Trainer.fit` runs updates until a step: a metrics record every ``log_every`` updates, an
  ``epoch`` record when an epoch starts (``padded_frames_share``, dropped utterances), a dev
  evaluation every ``eval_every`` updates, after every epoch (``eval_each_epoch``, as published)
  and after the last, with early stopping and the best checkpoints (`fhb.training.selection`),
  a checkpoint
  (`fhb.training.run_state`: atomic, with every RNG state and the loader's mid-epoch position)
  every ``save_every`` updates and after the last.
- `Trainer.state_dict` / `Trainer.load_state_dict`: everything needed to continue bit for bit.

Determinism: a fixed seed gives the same parameters whether the run is interrupted and resumed
or not (any loader ``workers``), on the same machine and torch thread count. Starting a loader
iterator draws from torch's global RNG, so ``next(loader)`` runs under ``torch.random.fork_rng``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from fhb.errors import FhbError
from fhb.pipeline.teacher import Teacher
from fhb.student.attention_targets import TeacherAttention
from fhb.student.config import FitConfig
from fhb.student.loss import DistillLoss
from fhb.student.model import FitHuBERT, build_student
from fhb.student.specaug import spec_augment
from fhb.training import run_state
from fhb.training.distributed import DistInfo, all_reduce_mean, all_reduce_min, barrier, broadcast_from_main
from fhb.training.ctc_objective import CtcObjective
from fhb.training.evaluation import evaluate_split, forward_loss
from fhb.training.loader import Batch, LakeLoader
from fhb.training.optim import OptimConfig, build_optimizer
from fhb.training.selection import Kept, Selection

__all__ = ["FitResult", "Schedule", "StepResult", "StepTimer", "TrainConfig", "Trainer", "build_model_and_loss",
           "make_scaler"]

logger = logging.getLogger(__name__)


_MAX_COUNT = 10**9
"""Largest count a ``train:`` key may hold (epochs, batch size, GPUs, patience): more only exhausts the machine."""


@dataclass(frozen=True)
class TrainConfig:
    """The yaml ``train:`` keys the trainer reads (defaults: the values used when a key is absent).

    Attributes:
        num_epochs: epochs of a run given neither ``--steps`` nor ``--epochs``.
        batch_size: utterances per micro-batch (unless ``--batch-size``/``--batch-seconds``).
        accumulate_grad_batches: micro-batches per optimiser update.
        gpus: processes the published run used (a list counts its entries); with
            ``batch_size`` and ``accumulate_grad_batches`` it fixes the effective batch.
        use_fp16: train in fp16 on CUDA by default (CPU runs stay fp32).
        early_stopping_patience: dev evaluations without improvement before stopping (published: 15).
        keep_best: best checkpoints by dev loss kept (published: 3, plus the last).
    """

    num_epochs: int = 1
    batch_size: int = 1
    accumulate_grad_batches: int = 1
    gpus: int = 1
    use_fp16: bool = False
    early_stopping_patience: int = 15
    keep_best: int = 3

    @classmethod
    def from_yaml(cls, train: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """Read and validate the keys from a ``train:`` mapping (other keys are ignored here).

        Raises:
            FhbError: a value of the wrong type, or a count below 1, naming the key.
        """
        values: dict[str, int | bool] = {}
        for f in fields(cls):
            raw = train.get(f.name)
            if raw is None:
                continue
            if f.name == "gpus" and isinstance(raw, list):  # Lightning's list of device ids
                raw = len(raw)
            if f.type == "bool":
                if not isinstance(raw, bool):
                    raise FhbError(f"{source}: train.{f.name}: expected true or false, found {raw!r}; fix the value")
                values[f.name] = raw
                continue
            ok = isinstance(raw, int) and not isinstance(raw, bool) or isinstance(raw, float) and raw.is_integer()
            if not ok or not 1 <= int(raw) <= _MAX_COUNT:
                raise FhbError(f"{source}: train.{f.name}: expected an integer >= 1 (at most {_MAX_COUNT}), found "
                               f"{raw!r}; fix the value")
            values[f.name] = int(raw)
        return cls(**values)


@dataclass(frozen=True)
class StepResult:
    """What one `Trainer.step` did.

    Attributes:
        step: updates done, this one included.
        epoch: the epoch the update's batches came from.
        loss: the update's loss (mean over its micro-batches).
        layer_losses: per-layer unweighted losses (``layer_KK``), mean over its micro-batches.
        lr: the learning rate the update used.
        loader_wait: seconds spent waiting for batches.
        applied: the optimiser applied it (False: the fp16 grad scaler skipped it).
    """

    step: int
    epoch: int
    loss: float
    layer_losses: dict[str, float]
    lr: float
    loader_wait: float
    applied: bool = True


@dataclass(frozen=True)
class Schedule:
    """How often `Trainer.fit` logs, evaluates and saves (in updates; None: never, except after the last).

    ``eval_each_epoch``: evaluate after every epoch's last update (the published cadence).
    ``early_stopping_patience``: stop after that many evaluations without a lower dev loss (None:
    never). ``keep_best``: keep the best N students by dev loss in ``RUN/best/`` (0: none).
    """

    log_every: int = 10
    eval_every: int | None = None
    save_every: int | None = None
    keep_checkpoints: int | None = None
    eval_each_epoch: bool = False
    early_stopping_patience: int | None = None
    keep_best: int = 0


@dataclass(frozen=True)
class FitResult:
    """What `Trainer.fit` reports: the last update's loss, the last dev loss, throughput figures,
    whether it stopped early, and the best kept student (path, update, dev loss) if any."""

    final_loss: float
    dev_loss: float | None
    seconds: float
    steps_per_s: float
    loader_wait_share: float
    stopped_early: bool = False
    best: Kept | None = None


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A `GradScaler`, enabled only for fp16 on CUDA (bf16 and CPU need none)."""
    return torch.amp.GradScaler(device.type, enabled=(precision == "fp16" and device.type == "cuda"))


def build_model_and_loss(fit: FitConfig, seed: int, num_teacher_layers: int,
                         teacher_state: Mapping[str, torch.Tensor] | None = None,
                         teacher_attention: TeacherAttention | None = None,
                         ) -> tuple[FitHuBERT, DistillLoss, torch.Generator]:
    """The student (initialised from ``seed``), its `DistillLoss`, and the generator of its layer draws.

    ``teacher_state``: the teacher backbone's state dict, for ``init_conv_layers`` /
    ``init_encoder_layers`` (the lake's stored teacher). With ``train.specaug`` the student gets
    its SpecAugment (``fhb.student.specaug``). The generator (seeded with ``seed``) draws the
    random layers at the start and after every epoch; it is checkpointed with the other RNG states.
    ``teacher_attention``: the teacher's last layer for the attention terms
    (`fhb.student.attention_targets`); with it the student returns its last layer's attention.
    """
    torch.manual_seed(seed)
    model = build_student(fit.distiller, cnn_loss_weight=float(fit.loss.cnn_loss_weight), teacher=teacher_state,
                          delete_projections=fit.loss.delete_projections)
    model.specaug = spec_augment(fit)
    gen = torch.Generator().manual_seed(seed)
    loss = DistillLoss(fit.loss, num_teacher_layers, student=fit.distiller, generator=gen,
                       teacher_attention=teacher_attention)
    model.return_attention = loss.uses_attention
    return model, loss, gen


class StepTimer:
    """Accumulates wall time spent waiting on the loader vs the whole step, per logging window."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new window."""
        self.start = time.perf_counter()
        self.wait = 0.0
        self.steps = 0

    def add(self, result: StepResult) -> None:
        """Count one update and its loader wait."""
        self.steps += 1
        self.wait += result.loader_wait

    def figures(self) -> tuple[float, float]:
        """(updates per second, loader-wait share) of the window so far."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return self.steps / elapsed, self.wait / elapsed


class Trainer:
    """One training run's model, optimiser and position (update, epoch, batch within the epoch).

    Args:
        model: the student (moved to ``device``; wrapped in DDP when ``dist`` says so).
        loss_fn: its loss; ``layer_gen`` draws its random layers.
        loader: the training batches (this rank's part); ``dev_loader``: the dev split, or None.
        layers: the teacher layers the loss reads, in the loader's target order.
        optim: optimiser settings; the schedule spans the run's ``total_steps``.
        device / precision: where and how the student runs (``fhb.pipeline.precision``).
        accumulate: micro-batches per update.
        steps / epochs: the run's length (exactly one of them).
        dist: this process's place in the job.
        clip_grad_norm: max gradient norm (None: no clipping).
        teacher: an online teacher computing the targets (None: the lake's targets).
        use_cnn: the loss has a CNN term (the loader gives CNN features).
        checkpoint_extra: stored in every checkpoint next to the training state (config, settings).
        dev_split: the dev split's name, for the metrics.
        ctc: the CTC term of a CTC teacher's lake (`fhb.training.ctc_objective`): its head is optimised
            and checkpointed with the student; its loss is logged as ``layer_losses["ctc"]``, its dev
            loss / WER / CER as ``ctc_loss`` / ``wer`` / ``cer`` of the ``eval`` records.

    Raises:
        FhbError: a rank gets no batch.
    """

    def __init__(
        self,
        model: FitHuBERT,
        loss_fn: DistillLoss,
        layer_gen: torch.Generator,
        loader: LakeLoader,
        layers: Sequence[int],
        optim: OptimConfig,
        *,
        device: torch.device,
        precision: str,
        accumulate: int,
        steps: int | None,
        epochs: int | None,
        dist: DistInfo = DistInfo(),
        clip_grad_norm: float | None = None,
        teacher: Teacher | None = None,
        use_cnn: bool = False,
        dev_loader: LakeLoader | None = None,
        dev_split: str | None = None,
        checkpoint_extra: Mapping[str, Any] | None = None,
        ctc: CtcObjective | None = None,
    ) -> None:
        self.ctc = ctc
        self.loss_fn, self.layer_gen, self.loader, self.dev_loader = loss_fn, layer_gen, loader, dev_loader
        self.layers, self.device, self.precision, self.accumulate = list(layers), device, precision, accumulate
        self.dist, self.clip_grad_norm, self.teacher, self.use_cnn = dist, clip_grad_norm, teacher, use_cnn
        self.dev_split = dev_split
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.batches_per_epoch = all_reduce_min(len(loader), dist)
        if self.batches_per_epoch < 1:
            raise FhbError(
                f"splits {list(loader.splits)}: expected at least one batch per rank, found none "
                f"({dist.world_size} ranks); use more data, fewer ranks or smaller batches"
            )
        self.updates_per_epoch = math.ceil(self.batches_per_epoch / accumulate)
        self.total_steps = steps if steps is not None else int(epochs or 1) * self.updates_per_epoch
        self.model = model.to(device)
        if ctc is not None:
            ctc.head.to(device)
        self.ddp: torch.nn.Module = model
        if dist.enabled:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True,
            )
        trained = model if ctc is None else torch.nn.ModuleList([model, ctc.head])
        self.optimizer, self.scheduler = build_optimizer(trained, optim, self.total_steps)
        self.scaler = make_scaler(device, precision)
        self.global_step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.selection: Selection | None = None
        self.stopped_early = False
        self.resumed_from: int | None = None
        self._selection_state: dict[str, Any] | None = None
        self._loader_state: dict[str, Any] | None = None
        self._batches: Iterator[Batch] | None = None

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit (plus ``checkpoint_extra``)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": run_state.rng_state(self.layer_gen),
            "loss_state": self.loss_fn.state_dict(),
            "loader": {"epoch": self.epoch, "batches": self.batch_in_epoch, "state": self.loader.state_dict()},
            "selection": self.selection.state_dict() if self.selection is not None else None,
            **({"ctc_head": self.ctc.head.state_dict()} if self.ctc is not None else {}),
            **self.checkpoint_extra,
            "world_size": self.dist.world_size,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (a checkpoint of `run_state.load_latest_checkpoint`).

        Raises:
            FhbError: the checkpoint was written by another number of ranks.
        """
        self.model.load_state_dict(state["model"])
        if self.ctc is not None:
            self.ctc.head.load_state_dict(state["ctc_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.loss_fn.load_state_dict(state["loss_state"])
        run_state.set_rng_state(state["rng"], self.layer_gen)
        self.global_step = int(state["step"])
        self.epoch = int(state["loader"]["epoch"])
        self.batch_in_epoch = int(state["loader"]["batches"])
        if state.get("world_size", 1) != self.dist.world_size:
            raise FhbError(
                f"resume: expected the checkpoint's world size {state.get('world_size')}, found "
                f"{self.dist.world_size} processes; resume with the same number of ranks"
            )
        self._loader_state = state["loader"]["state"]
        self._selection_state = state.get("selection")

    def save(self, run_dir: Path, keep: int | None = None) -> None:
        """Checkpoint (rank 0) into ``run_dir``, keeping the newest ``keep``; every rank waits for it."""
        if self.dist.is_main:
            run_state.save_checkpoint(run_dir, self.global_step, self.state_dict(), keep)
        barrier(self.dist)

    # -- updates --------------------------------------------------------------------------------

    def _epoch_batches(self) -> Iterator[Batch]:
        """The current epoch's batches, positioned after ``batch_in_epoch``."""
        self.loader.set_epoch(self.epoch)
        if self._loader_state is not None and self.batch_in_epoch > 0:
            self.loader.load_state_dict(self._loader_state)
        self._loader_state = None
        return iter(self.loader)

    def step(self, on_batch: Callable[[Batch], None] | None = None) -> StepResult:
        """One optimiser update (see the module docstring); an ended epoch starts the next first.

        ``on_batch``: called with each micro-batch before its forward pass (tests trace batches).

        Raises:
            FhbError: the update's loss is not finite.
        """
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
            self.loss_fn.resample(self.layer_gen)  # the published code redraws after every epoch
            self._batches = None
        if self._batches is None:
            self._batches = self._epoch_batches()
        n_micro = min(self.accumulate, self.batches_per_epoch - self.batch_in_epoch)
        epoch = self.epoch
        step_loss = 0.0
        step_layers: dict[str, float] = {}
        wait = 0.0
        for j in range(n_micro):
            t0 = time.perf_counter()
            # fork_rng: starting a loader iterator draws a seed from the global torch RNG;
            # isolating it keeps dropout draws identical after a mid-epoch resume.
            with torch.random.fork_rng(devices=[]):
                batch = next(self._batches)
            wait += time.perf_counter() - t0
            self.batch_in_epoch += 1
            if on_batch is not None:
                on_batch(batch)
            sync = j == n_micro - 1 or not self.dist.enabled
            with self.ddp.no_sync() if not sync else contextlib.nullcontext():
                lv = forward_loss(self.ddp, self.loss_fn, batch, self.layers, device=self.device,
                                  precision=self.precision, teacher=self.teacher, use_cnn=self.use_cnn, ctc=self.ctc)
                self.scaler.scale(lv.total / self.accumulate).backward()
            step_loss += float(lv.total.detach()) / n_micro
            layer_values = {**lv.layers, **({"ctc": float(lv.ctc.loss.detach())} if lv.ctc is not None else {})}
            for k, v in layer_values.items():
                step_layers[k] = step_layers.get(k, 0.0) + v / n_micro
        if self.ctc is not None:
            self.ctc.sync_grads(self.dist.world_size)
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            params = list(self.model.parameters()) + (list(self.ctc.head.parameters()) if self.ctc is not None else [])
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        lr_now = self.optimizer.param_groups[0]["lr"]
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # A skipped update (inf/NaN gradients) lowers the scale; s3prl's schedule counts only applied ones.
        applied = scale is None or self.scaler.get_scale() >= scale
        self.optimizer.zero_grad(set_to_none=True)
        if applied:
            self.scheduler.step()
        self.global_step += 1
        if not math.isfinite(step_loss):
            raise FhbError(
                f"update {self.global_step}: expected a finite loss, found {step_loss}; lower --lr, use fp32/bf16, "
                f"or enable --clip-grad-norm"
            )
        return StepResult(self.global_step, epoch, step_loss, step_layers, lr_now, wait, applied)

    # -- evaluation -----------------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any] | None:
        """The dev split's ``eval`` metrics record (rank 0 only; None elsewhere or without a dev split)."""
        if self.dev_loader is None or not self.dist.is_main:
            return None
        res = evaluate_split(self.model, self.loss_fn, self.dev_loader, self.layers, device=self.device,
                             precision=self.precision, teacher=self.teacher, use_cnn=self.use_cnn, ctc=self.ctc)
        if res.batches == 0:
            return None
        ctc = {"ctc_loss": res.ctc, "wer": res.wer, "cer": res.cer} if self.ctc is not None else {}
        return {
            "kind": "eval", "step": self.global_step, "split": self.dev_split, "dev_loss": res.last,
            "layer_losses": res.layers, "batches": res.batches, "seconds": res.seconds, **ctc,
        }

    # -- the loop -------------------------------------------------------------------------------

    def fit(self, run_dir: Path, schedule: Schedule, *, stop_after: int | None = None, show_progress: bool = False,
            trace_dir: Path | None = None, write_student: Callable[[Path], None] | None = None) -> FitResult:
        """Train up to `total_steps` (or ``stop_after`` updates, without the final evaluation and save).

        Rank 0 appends ``train``, ``epoch`` and ``eval`` records to ``run_dir``'s metrics and writes
        its checkpoints. With a dev loader, ``schedule.keep_best`` students (the best by dev loss)
        are written by ``write_student(path)`` into ``run_dir/best/``, and the run stops early once
        ``schedule.early_stopping_patience`` evaluations in a row did not improve the dev loss (the
        last update is then saved as the final one). ``trace_dir`` (tests): every rank appends
        ``{step, epoch, utt_ids}`` of each micro-batch to ``trace_dir/rank-R.jsonl``. The loader's
        worker processes are stopped on the way out, whatever happens.
        """
        last_loss = float("nan")
        dev_loss: float | None = None
        window, total = StepTimer(), StepTimer()
        window_loss: list[float] = []
        window_layers: dict[str, list[float]] = {}
        target = self.total_steps if stop_after is None else min(self.total_steps, stop_after)
        self.selection = Selection(run_dir / "best", keep_best=schedule.keep_best if write_student else 0,
                                   patience=schedule.early_stopping_patience)
        self.selection.load_state_dict(self._selection_state)
        def trace(batch: Batch) -> None:
            assert trace_dir is not None
            _trace(trace_dir, self.dist.rank, self.global_step, self.epoch, batch.utt_ids)

        on_batch = trace if trace_dir is not None else None
        self.ddp.train()
        bar = _progress(show_progress, self.total_steps, self.global_step)
        logged_epoch = self.epoch if self.batch_in_epoch > 0 else -1
        try:
            while self.global_step < target:
                r = self.step(on_batch)
                if r.epoch != logged_epoch:
                    self._log_epoch(run_dir, r.epoch)
                    logged_epoch = r.epoch
                window.add(r)
                total.add(r)
                last_loss = r.loss
                window_loss.append(r.loss)
                for k, v in r.layer_losses.items():
                    window_layers.setdefault(k, []).append(v)
                sps, wait = window.figures()
                if bar is not None:
                    bar[0].update(bar[1], completed=r.step,
                                  status=f"loss {r.loss:.4g} · {sps:.2f} steps/s · wait {wait:.0%}")
                final = r.step == self.total_steps
                epoch_end = self.batch_in_epoch >= self.batches_per_epoch
                if r.step % schedule.log_every == 0 or final:
                    names = sorted(window_layers)
                    means = all_reduce_mean([sum(window_loss) / len(window_loss)]
                                            + [sum(window_layers[k]) / len(window_layers[k]) for k in names], self.dist)
                    if self.dist.is_main:
                        run_state.append_metrics(run_dir, {
                            "kind": "train", "step": r.step, "epoch": r.epoch, "lr": r.lr, "loss": means[0],
                            "layer_losses": dict(zip(names, means[1:])), "steps_per_s": sps,
                            "loader_wait_share": wait,
                        })
                    window_loss.clear()
                    window_layers.clear()
                    window.reset()
                evaluate = ((schedule.eval_every and r.step % schedule.eval_every == 0)
                            or (schedule.eval_each_epoch and epoch_end) or (final and self.dev_split))
                if evaluate and self.dev_loader is not None:
                    dev_loss = self._evaluate_and_select(run_dir, write_student)
                if self.selection.should_stop() and not final:
                    self.stopped_early = True
                    logger.info("update %d: dev loss not improved in %d evaluations: stopping early",
                                r.step, self.selection.bad_evals)
                    if self.dist.is_main:
                        run_state.append_metrics(run_dir, {"kind": "early_stop", "step": r.step,
                                                           "best_dev_loss": self.selection.best_loss})
                    self.save(run_dir, schedule.keep_checkpoints)
                    break
                if (schedule.save_every and r.step % schedule.save_every == 0) or final:
                    self.save(run_dir, schedule.keep_checkpoints)
        finally:
            if bar is not None:
                bar[0].stop()
            self.loader.close()  # worker processes of an unfinished epoch
        sps_all, wait_all = total.figures()
        return FitResult(final_loss=last_loss, dev_loss=dev_loss, seconds=time.perf_counter() - total.start,
                         steps_per_s=sps_all, loader_wait_share=wait_all, stopped_early=self.stopped_early,
                         best=self.selection.best)

    @property
    def finished(self) -> bool:
        """The run is over: every update done, or stopped early."""
        return self.global_step == self.total_steps or self.stopped_early

    def _log_epoch(self, run_dir: Path, epoch: int) -> None:
        """The ``epoch`` record (rank 0): the plan's padded target frames and what it dropped."""
        if not self.dist.is_main:
            return
        plan = self.loader.plan(epoch)
        run_state.append_metrics(run_dir, {
            "kind": "epoch", "step": self.global_step, "epoch": epoch,
            "padded_frames_share": plan.padded_frames_share(), "batches": len(plan),
            "dropped_utterances": plan.dropped_utterances,
        })

    def _evaluate_and_select(self, run_dir: Path, write_student: Callable[[Path], None] | None) -> float | None:
        """Evaluate (rank 0), offer the dev loss to the selection on every rank, write a best student."""
        assert self.selection is not None
        rec = self.evaluate()
        loss = broadcast_from_main(rec["dev_loss"] if rec is not None else math.nan, self.dist)
        if math.isnan(loss):  # no dev batch
            barrier(self.dist)
            return None
        offer = self.selection.offer(self.global_step, loss)
        if self.dist.is_main:
            assert rec is not None
            run_state.append_metrics(run_dir, {**rec, "improved": offer.improved})
            logger.info("update %d: dev loss %.4g%s", self.global_step, loss, " (best so far)" if offer.improved else "")
            if offer.write is not None and write_student is not None:
                offer.write.parent.mkdir(parents=True, exist_ok=True)
                write_student(offer.write)
                for old in offer.drop:
                    old.unlink(missing_ok=True)
        barrier(self.dist)
        return loss


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
