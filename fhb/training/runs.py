"""Reading a run's student back: which file of a run directory, and the student in it.

A run directory (`fhb.training.run_state` layout, written by ``fhb distill`` or ``fhb
import-checkpoint``) holds the final ``student.pt`` and the training checkpoints
``checkpoints/step-XXXXXXXX.pt``. `resolve_run_checkpoint` picks one file (``--step`` /
``--checkpoint`` or the default), `load_run_student` reads the student from it whatever its format.
``fhb export-s3prl`` and ``fhb evaluate`` both go through here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fhb.errors import FhbError
from fhb.student.checkpoint import build_for_weights, load_student_checkpoint
from fhb.student.config import FitConfig
from fhb.student.model import FitHuBERT
from fhb.training import run_state

__all__ = ["RunStudent", "load_run_student", "resolve_run_checkpoint"]

log = logging.getLogger(__name__)


@dataclass
class RunStudent:
    """A student read from a run (or any checkpoint), with where it came from.

    Attributes:
        model: the student (training layout when the file has it), in eval mode.
        config: its config.
        source: the file it was read from.
        kind: ``"fhb"``, ``"lightning"``, ``"state_dict"`` or ``"distill-state"``.
        step: optimizer updates of that checkpoint (0 when the file does not record it).
        teacher: what the checkpoint recorded about its teacher (fhb format), else None.
        ctc_head: the state dict of the run's CTC head (a CTC teacher's run: the training state's
            ``ctc_head``, a student file's ``extra["ctc_head"]``), else None.
    """

    model: FitHuBERT
    config: FitConfig
    source: Path
    kind: str
    step: int
    teacher: Mapping[str, Any] | None = None
    ctc_head: Mapping[str, torch.Tensor] | None = None


def resolve_run_checkpoint(run: Path, step: int | None = None, checkpoint: Path | None = None) -> Path:
    """The student checkpoint of ``run`` to use.

    Order: ``checkpoint`` (absolute, or relative to the working directory, else to ``run``);
    ``step`` (``RUN/checkpoints/step-XXXXXXXX.pt``); ``RUN/student.pt``; the checkpoint ``RUN/latest``
    names.

    Raises:
        FhbError: both ``step`` and ``checkpoint``, or nothing found.
    """
    run = Path(run)
    if step is not None and checkpoint is not None:
        raise FhbError("export: expected at most one of --step and --checkpoint, found both; pass one")
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.exists() and not path.is_absolute() and (run / path).exists():
            path = run / path
        if not path.is_file():
            raise FhbError(f"--checkpoint {checkpoint}: expected a checkpoint file, found nothing; check the path")
        return path
    if not run.is_dir():
        raise FhbError(f"run {run}: expected a run directory of `fhb distill` (or `fhb import-checkpoint`), "
                       "found nothing; check the path")
    if step is not None:
        path = run / run_state.CHECKPOINT_DIR / run_state.checkpoint_name(step)
        if not path.is_file():
            have = [p.name for p in run_state.list_checkpoints(run)]
            raise FhbError(f"run {run}: expected a checkpoint at update {step} ({path.name}), found only "
                           f"{have[-5:] or 'none'}; pick one of those steps")
        return path
    final = run / run_state.STUDENT
    if final.is_file():
        return final
    path = run_state.latest_target(run)
    if path is not None and path.is_file():
        return path
    raise FhbError(f"run {run}: expected {run_state.STUDENT} or a checkpoint named by {run_state.LATEST}, "
                   "found neither; let `fhb distill` finish or save a checkpoint, or pass --checkpoint")


def _state_dict_or_none(value: object) -> dict[str, torch.Tensor] | None:
    """``value`` when it is a state dict (names -> tensors), else None (absent, or not one: a file
    written otherwise is scored without it)."""
    if isinstance(value, Mapping) and value and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                    for k, v in value.items()):
        return dict(value)
    return None


def _from_distill_state(path: Path) -> RunStudent:
    """A ``checkpoints/step-XXXXXXXX.pt`` of ``fhb distill`` (the run's own training state)."""
    try:
        state = run_state.read_checkpoint(path)
    except (ValueError, RuntimeError, OSError, EOFError) as exc:
        raise FhbError(f"{path}: expected an `fhb distill` checkpoint, it does not load ({exc}); pick another "
                       "--step or the run's student.pt") from None
    config = FitConfig.from_dict(state["config"], f"{path} config")
    model = build_for_weights(config)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        raise FhbError(f"{path}: the weights do not match the stored config ({str(exc).splitlines()[0]})") from None
    teacher = state.get("lake_teacher")
    return RunStudent(model, config, path, "distill-state", int(state["step"]),
                      teacher if isinstance(teacher, dict) else None, _state_dict_or_none(state.get("ctc_head")))


def load_run_student(
    run: Path | None, step: int | None = None, checkpoint: Path | None = None, yaml_path: Path | None = None
) -> RunStudent:
    """Read the student :func:`resolve_run_checkpoint` picks (any format fhb reads), in eval mode.

    ``checkpoints/step-XXXXXXXX.pt`` files are ``fhb distill``'s training states; any other file
    goes through :func:`fhb.student.checkpoint.load_student_checkpoint` (fhb student format,
    published Lightning ``.ckpt``, bare state dict with ``yaml_path``). A run that ``fhb distill`` is
    writing can be read: its files are written atomically, so the newest complete checkpoint is read.
    """
    for attempt in range(3):
        path = resolve_run_checkpoint(Path(run) if run is not None else Path("."), step, checkpoint)
        if run_state.checkpoint_step(path.name) is None:
            loaded = load_student_checkpoint(path, yaml_path)
            found = RunStudent(loaded.model, loaded.config, path, loaded.kind, loaded.step, loaded.teacher,
                               _state_dict_or_none(loaded.extra.get("ctc_head")))
            break
        try:
            found = _from_distill_state(path)
            break
        except FhbError:
            # A run `fhb distill` is writing: the checkpoint `latest` named was pruned (a newer one replaced
            # it) between resolving and reading. Every file is written atomically: read the newest instead.
            if step is not None or checkpoint is not None or path.exists() or attempt == 2:
                raise
            log.info("%s was replaced by a newer checkpoint while being read; reading the newest", path.name)
    found.model.eval()
    log.info("student read from %s (%s, update %d)", path, found.kind, found.step)
    return found
