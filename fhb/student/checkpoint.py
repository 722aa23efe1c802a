"""Student checkpoints: the published Lightning layout in and out, and fhb's own run format.

Formats :func:`load_student` reads (all through fhb's restricted unpickler, no code from the file
ever runs):

* **published Lightning** ``.ckpt`` (glory20h/FitHuBERT ``train.py``): ``state_dict`` with
  ``student_model.<key>`` (and ``teacher_model.<key>``, ignored), ``hyper_parameters['cfg']`` the
  whole yaml. Its optimizer state pickles ``s3prl.optimizers.WarmupLinearSchedule`` and may name
  ``pytorch_lightning`` classes: those become inert stubs (see
  :mod:`fhb.pipeline.checkpoint_io`).
* **fhb run checkpoint** (written by :func:`save_student`)::

      {"format": "fhb-student", "version": 1, "config": <yaml dict>, "model": <state dict>,
       "layout": "training" | "inference", "epoch": int, "step": int,
       "optimizer": <optimizer.state_dict()> | None, "scheduler": ... | None,
       "loss": <DistillLoss.state_dict()> | None, "teacher": {...} | None,
       "fhb_version": str, "extra": {...}}

  Plain containers and tensors only: ``torch.load(weights_only=True)`` reads it.
* **a bare state dict** (training or published inference key set, e.g. from
  :func:`~fhb.student.model.strip_for_inference`); it carries no config, so pass ``yaml_path``.

Loading is strict: missing or unexpected keys raise :class:`~fhb.errors.FhbError` naming them.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import fhb
from fhb.errors import FhbError
from fhb.files import atomic_torch_save, atomic_write_text
from fhb.pipeline.checkpoint_io import (
    InertStub,
    RefusedGlobalError,
    check_zip_archive,
    plain_config,
    restricted_pickle,
)
from fhb.student.config import FitConfig, load_fithubert_yaml
from fhb.student.model import FitHuBERT, build_fit_student

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "StudentCheckpoint",
    "build_for_weights",
    "layout",
    "load_student",
    "load_student_checkpoint",
    "save_published_checkpoint",
    "save_student",
]

FORMAT = "fhb-student"
FORMAT_VERSION = 1
STUDENT_PREFIX = "student_model."
TEACHER_PREFIX = "teacher_model."
PL_VERSION = "1.9.5"
"""``pytorch-lightning_version`` written into published-layout files (the code ran on PL 1.5-1.9)."""


@dataclass
class StudentCheckpoint:
    """A loaded student with whatever training state its file held.

    Attributes:
        model: the student, in the file's layout (training or inference), in train mode.
        config: the run's config.
        kind: ``"fhb"``, ``"lightning"`` or ``"state_dict"``.
        epoch: epochs completed (0 when unknown).
        step: optimizer steps completed (Lightning's ``global_step``; 0 when unknown).
        optimizer: the optimizer's state dict, if the file has one.
        scheduler: the scheduler's state dict (fhb format only).
        loss: :meth:`DistillLoss.state_dict` (fhb format only).
        teacher: what the run recorded about its teacher (fhb format only).
        extra: anything else the fhb file recorded.
    """

    model: FitHuBERT
    config: FitConfig
    kind: str
    epoch: int = 0
    step: int = 0
    optimizer: Any = None
    scheduler: Any = None
    loss: Any = None
    teacher: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------- reading


_READ_ERRORS: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError, EOFError, zipfile.BadZipFile, tarfile.TarError, RuntimeError, ValueError,
    KeyError, IndexError, TypeError, struct.error, UnicodeDecodeError, AssertionError, AttributeError,
)


def _read(path: Path) -> Any:
    """``torch.load`` through fhb's restricted unpickler (TorchScript archives refused first)."""
    if not path.is_file():
        found = "a directory" if path.is_dir() else "nothing"
        raise FhbError(f"{path}: expected a student checkpoint file, found {found}; check the path")
    if zipfile.is_zipfile(path):
        check_zip_archive(path, "expected a student checkpoint written by torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle, mmap=False)
    except RefusedGlobalError as exc:
        raise FhbError(
            f"{path}: refusing to load it: the pickle references {exc.qualname}, which a student checkpoint "
            "never needs (fhb unpickles tensors, containers and inert fairseq/omegaconf/s3prl/Lightning "
            "metadata only); use the file its publisher released"
        ) from None
    except _READ_ERRORS as exc:
        raise FhbError(
            f"{path}: could not be read as a torch checkpoint ({type(exc).__name__}: {exc}); the file is "
            "truncated, corrupt or of another format: re-download or re-copy it"
        ) from exc


def _plain(value: Any) -> Any:
    """Config values as plain containers (omegaconf stubs, stubbed dict subclasses, Namespaces)."""
    value = plain_config(value)
    if isinstance(value, InertStub) and value.items:
        return {k: _plain(v) for k, v in value.items.items()}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _tensor_dict(path: Path, what: str, value: Any) -> dict[str, torch.Tensor]:
    if not isinstance(value, Mapping) or not value or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        raise FhbError(f"{path}: {what}: expected a non-empty mapping of parameter names to tensors, "
                       f"found {type(value).__name__}; the file is not a student checkpoint")
    return dict(value)


def _config(path: Path, yaml_path: str | os.PathLike[str] | None, stored: Any, where: str) -> FitConfig:
    """The config: ``yaml_path`` when given (as the published ``-g``), else the stored one."""
    if yaml_path is not None:
        return load_fithubert_yaml(yaml_path)
    if stored is None:
        raise FhbError(f"{path}: expected a config in {where}, found none; pass yaml_path (the yaml "
                       "published next to the checkpoint)")
    return FitConfig.from_dict(_plain(stored), f"{path} {where}")


def _lightning_state(path: Path, ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``student_model.*`` of a Lightning ``state_dict``, prefix removed; ``teacher_model.*`` ignored."""
    state = _tensor_dict(path, "state_dict", ckpt["state_dict"])
    student = {k[len(STUDENT_PREFIX):]: v for k, v in state.items() if k.startswith(STUDENT_PREFIX)}
    other = sorted(k for k in state if not k.startswith((STUDENT_PREFIX, TEACHER_PREFIX)))
    if other:
        raise FhbError(f"{path}: state_dict: expected only student_model.* and teacher_model.* keys, found "
                       f"{other[:5]}{'…' if len(other) > 5 else ''}; this is not a FitHuBERT Lightning checkpoint")
    if not student:
        raise FhbError(f"{path}: state_dict: expected student_model.* keys, found none; this is not a "
                       "FitHuBERT Lightning checkpoint")
    return student


def build_for_weights(config: FitConfig) -> FitHuBERT:
    """The config's student with teacher initialisation off: the weights come from a file
    (the published S3PRL upstream forces the same)."""
    distiller = dataclasses.replace(config.distiller, init_conv_layers=False, init_encoder_layers=0)
    return build_fit_student(dataclasses.replace(config, distiller=distiller))


def _load_weights(path: Path, model: FitHuBERT, state: Mapping[str, torch.Tensor]) -> None:
    """Strict load; switch to the inference layout first when the state has it."""
    if model.proj_head is not None and not any(k.startswith("proj_head.") for k in state):
        model.disable_projection_heads()
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise FhbError(
            f"{path}: the weights do not match the student its config builds (missing: {missing[:5]}"
            f"{'…' if len(missing) > 5 else ''}; unexpected: {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}); "
            "pass the yaml the checkpoint was trained with"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise FhbError(f"{path}: tensor shapes do not match the config's student ({detail}); pass the yaml "
                       "the checkpoint was trained with") from None


def load_student_checkpoint(
    ckpt_path: str | os.PathLike[str], yaml_path: str | os.PathLike[str] | None = None
) -> StudentCheckpoint:
    """Load a student and its training state from any supported format (module docstring).

    Args:
        ckpt_path: the checkpoint.
        yaml_path: the config to build the student from; overrides a stored config and is
            required for a bare state dict.

    Raises:
        FhbError: unreadable or hostile files, unknown formats, configs fhb cannot honour, and
            weights that do not match the config (naming the keys).
    """
    path = Path(ckpt_path)
    ckpt = _read(path)
    if not isinstance(ckpt, Mapping):
        raise FhbError(f"{path}: expected a dict (a student checkpoint), found {type(ckpt).__name__}")
    if ckpt.get("format") == FORMAT:
        version = ckpt.get("version")
        if version != FORMAT_VERSION:
            raise FhbError(f"{path}: {FORMAT} format version {version!r}; expected {FORMAT_VERSION}; "
                           "use the fhb version that wrote it, or upgrade fhb")
        config = _config(path, yaml_path, ckpt.get("config"), "'config'")
        state = _tensor_dict(path, "model", ckpt.get("model"))
        model = build_for_weights(config)
        _load_weights(path, model, state)
        return StudentCheckpoint(
            model, config, "fhb", epoch=int(ckpt.get("epoch", 0)), step=int(ckpt.get("step", 0)),
            optimizer=ckpt.get("optimizer"), scheduler=ckpt.get("scheduler"), loss=ckpt.get("loss"),
            teacher=ckpt.get("teacher"), extra=dict(ckpt.get("extra") or {}),
        )
    if "state_dict" in ckpt:
        hparams = _plain(ckpt.get("hyper_parameters"))
        stored = hparams.get("cfg") if isinstance(hparams, Mapping) else None
        config = _config(path, yaml_path, stored, "hyper_parameters['cfg']")
        model = build_for_weights(config)
        _load_weights(path, model, _lightning_state(path, ckpt))
        optimizers = ckpt.get("optimizer_states")
        return StudentCheckpoint(
            model, config, "lightning", epoch=int(ckpt.get("epoch", 0) or 0),
            step=int(ckpt.get("global_step", 0) or 0),
            optimizer=optimizers[0] if isinstance(optimizers, list) and optimizers else None,
        )
    if ckpt and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt.items()):
        if yaml_path is None:
            raise FhbError(f"{path}: a bare state dict carries no config; pass yaml_path (the yaml the "
                           "student was trained with)")
        config = load_fithubert_yaml(yaml_path)
        state = dict(ckpt)
        if all(k.startswith(STUDENT_PREFIX) for k in state):
            state = {k[len(STUDENT_PREFIX):]: v for k, v in state.items()}
        model = build_for_weights(config)
        _load_weights(path, model, state)
        return StudentCheckpoint(model, config, "state_dict")
    raise FhbError(
        f"{path}: unknown checkpoint layout (keys {sorted(map(str, ckpt))[:8]}); expected a published "
        f"FitHuBERT Lightning .ckpt ('state_dict'), an fhb run checkpoint (format '{FORMAT}') or a bare "
        "state dict"
    )


def load_student(
    ckpt_path: str | os.PathLike[str], yaml_path: str | os.PathLike[str] | None = None
) -> tuple[FitHuBERT, FitConfig]:
    """Load a student for use: :func:`load_student_checkpoint` without the training state.

    Returns:
        The student (train mode, in the file's layout) and its config.
    """
    loaded = load_student_checkpoint(ckpt_path, yaml_path)
    return loaded.model, loaded.config


# ---------------------------------------------------------------------------------- writing


def _cpu_state(model: FitHuBERT) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_student(
    model: FitHuBERT,
    config: FitConfig,
    path: str | os.PathLike[str],
    *,
    epoch: int = 0,
    step: int = 0,
    optimizer: Mapping[str, Any] | None = None,
    scheduler: Mapping[str, Any] | None = None,
    loss: Mapping[str, Any] | None = None,
    teacher: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write fhb's run checkpoint (format ``fhb-student`` version 1; see the module docstring).

    Args:
        model: the student.
        config: its config (stored as the yaml dict).
        path: the file to write (atomically).
        epoch: epochs completed.
        step: optimizer steps completed.
        optimizer: ``optimizer.state_dict()``.
        scheduler: the scheduler's state dict.
        loss: ``DistillLoss.state_dict()`` (the current random-layer draw).
        teacher: what identifies the teacher (lake path, checkpoint sha256, layers, ...).
        extra: anything else (plain containers and tensors only).

    Returns:
        ``path``.
    """
    path = Path(path)
    atomic_torch_save(
        {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": config.to_dict(),
            "model": _cpu_state(model),
            "layout": layout(model, config),
            "epoch": int(epoch),
            "step": int(step),
            "optimizer": optimizer,
            "scheduler": scheduler,
            "loss": loss,
            "teacher": dict(teacher) if teacher is not None else None,
            "fhb_version": fhb.__version__,
            "extra": dict(extra or {}),
        },
        path,
    )
    return path


def layout(model: FitHuBERT, config: FitConfig) -> str:
    """``training`` when ``model`` holds every head its config trains with (none with
    ``delete_projections``, which trains the inference layout), else ``inference``."""
    return "inference" if model.is_inference and not config.loss.delete_projections else "training"


def save_published_checkpoint(
    model: FitHuBERT,
    config: FitConfig,
    path: str | os.PathLike[str],
    *,
    yaml_path: str | os.PathLike[str] | None = None,
    epoch: int = 0,
    global_step: int = 0,
) -> tuple[Path, Path]:
    """Write the published layout: a Lightning-style ``.ckpt`` and its yaml.

    The ``.ckpt`` holds ``state_dict`` (``student_model.<key>``, the full training key set the
    published S3PRL upstream loads strictly), ``hyper_parameters = {"cfg": <yaml dict>}``,
    ``epoch``, ``global_step``, ``pytorch-lightning_version`` and ``hparams_name``; only plain
    containers and tensors, so ``torch.load(weights_only=True)`` reads it. No teacher weights and
    no optimizer state are written.

    Args:
        model: a student in the training layout.
        config: its config.
        path: the ``.ckpt`` to write.
        yaml_path: where the yaml goes (default: ``path`` with suffix ``.yaml``).
        epoch: recorded epoch.
        global_step: recorded optimizer steps.

    Returns:
        The ``.ckpt`` and yaml paths.

    Raises:
        FhbError: the model is in the inference layout (the published loader needs every head).
    """
    if layout(model, config) == "inference":
        raise FhbError("save_published_checkpoint: expected a student in the training layout (the published "
                       "S3PRL upstream loads all heads strictly), found the inference layout; save the "
                       "training model")
    path = Path(path)
    yaml_out = Path(yaml_path) if yaml_path is not None else path.with_suffix(".yaml")
    cfg = config.to_dict()
    atomic_torch_save(
        {
            "epoch": int(epoch),
            "global_step": int(global_step),
            "pytorch-lightning_version": PL_VERSION,
            "state_dict": {STUDENT_PREFIX + k: v for k, v in _cpu_state(model).items()},
            "hparams_name": "kwargs",
            "hyper_parameters": {"cfg": cfg},
        },
        path,
    )
    atomic_write_text(yaml_out, config.to_yaml())
    return path, yaml_out
