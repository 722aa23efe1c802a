"""Initialise a student from its teacher's weights (``init_conv_layers``, ``init_encoder_layers``).

Only possible where the shapes agree (a student with the teacher's conv stack or dimension); the
published FitHuBERT config uses neither. Unlike the published code, which indexes
``encoder.layers[i]`` and so tries to load teacher layer 0 into the time-reduction Conv1d, teacher
layer ``i`` goes to the student's transformer layer ``i``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from torch import nn

from fhb.errors import FhbError

if TYPE_CHECKING:
    from fhb.student.model import FitHuBERT

log = logging.getLogger(__name__)


def _copy(target: nn.Module, source: nn.Module, what: str, key: str) -> None:
    """Load ``source``'s state into ``target`` strictly, as an FhbError when shapes differ."""
    try:
        target.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[1:2]
        raise FhbError(
            f"distiller.{key}: expected the student's {what} to have the teacher's shapes, found "
            f"{detail}; use the teacher's sizes for it or set {key} off"
        ) from None


def init_from_teacher(student: FitHuBERT, teacher: nn.Module | None, conv: bool, layers: int) -> None:
    """Copy teacher weights into ``student`` in place.

    Args:
        student: a freshly built student.
        teacher: the teacher backbone (``fhb.pipeline.teacher.load_teacher(path).model``).
        conv: copy ``feature_extractor`` (and ``post_extract_proj`` where shapes agree).
        layers: copy ``encoder.pos_conv`` and the first ``layers`` transformer layers.

    Raises:
        FhbError: no teacher, or shapes that differ.
    """
    if teacher is None:
        raise FhbError(
            "distiller.init_conv_layers/init_encoder_layers: expected the teacher's weights to copy, "
            "found no teacher; pass teacher=load_teacher(path).model to build_student, or set "
            "init_conv_layers: False and init_encoder_layers: 0"
        )
    if conv:
        _copy(student.feature_extractor, teacher.feature_extractor, "conv stack", "init_conv_layers")
        source = getattr(teacher, "post_extract_proj", None)
        target = student.post_extract_proj
        if source is not None and target is not None and source.weight.shape == target.weight.shape:
            target.load_state_dict(source.state_dict())
        else:
            log.info("init_conv_layers: post_extract_proj not copied (shapes differ), as in the published code")
    if layers:
        _copy(student.encoder.pos_conv, teacher.encoder.pos_conv, "positional conv", "init_encoder_layers")
        available = len(teacher.encoder.layers)
        if layers > available:
            raise FhbError(
                f"distiller.init_encoder_layers: expected at most the teacher's {available} layers, "
                f"found {layers}; set init_encoder_layers <= {available}"
            )
        first = student.encoder.first_transformer
        for i in range(layers):
            _copy(student.encoder.layers[first + i], teacher.encoder.layers[i],
                  f"transformer layer {i}", "init_encoder_layers")
