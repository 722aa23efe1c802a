"""The FitHuBERT student: its config, model, distillation loss and checkpoints.

* :mod:`~fhb.student.config`: :class:`StudentConfig` / :class:`LossConfig` / :class:`FitConfig`
  from the published yaml (``fhb/configs/*.yaml``).
* :mod:`~fhb.student.model`: :func:`build_student` -> :class:`FitHuBERT` (published parameter
  names, shapes and order), :class:`StudentOutput`, :func:`strip_for_inference`.
* :mod:`~fhb.student.loss`: :class:`DistillLoss`, :func:`required_teacher_layers`.
* :mod:`~fhb.student.checkpoint`: :func:`load_student`, :func:`save_published_checkpoint`,
  fhb's run format (:func:`save_student`).
"""

from fhb.student.checkpoint import (
    StudentCheckpoint,
    load_student,
    load_student_checkpoint,
    save_published_checkpoint,
    save_student,
)
from fhb.student.config import (
    PACKAGED_CONFIGS,
    FitConfig,
    LossConfig,
    StudentConfig,
    load_fithubert_yaml,
    load_packaged_config,
    packaged_config_path,
)
from fhb.student.loss import DistillLoss, LayerPair, LossResult, required_teacher_layers
from fhb.student.model import FitHuBERT, StudentOutput, build_fit_student, build_student, strip_for_inference

__all__ = [
    "PACKAGED_CONFIGS",
    "DistillLoss",
    "FitConfig",
    "FitHuBERT",
    "LayerPair",
    "LossConfig",
    "LossResult",
    "StudentCheckpoint",
    "StudentConfig",
    "StudentOutput",
    "build_fit_student",
    "build_student",
    "load_fithubert_yaml",
    "load_packaged_config",
    "load_student",
    "load_student_checkpoint",
    "packaged_config_path",
    "required_teacher_layers",
    "save_published_checkpoint",
    "save_student",
    "strip_for_inference",
]
