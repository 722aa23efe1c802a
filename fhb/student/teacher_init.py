"""Initialise a student from its teacher's weights (``init_conv_layers``, ``init_encoder_layers``).

The weights come as the teacher backbone's state dict (fairseq names): the lake's stored teacher
(``fhb.pipeline.lake_teacher.load_lake_teacher_state``; the teacher never runs) or a loaded
teacher's ``model``. What is copied is exactly what the published ``CustomStudentModel``
(``modules/model.py``, ``init_from_teacher_conv`` / ``init_from_teacher_enc``) copies:

* ``init_conv_layers``: ``feature_extractor`` (strict), and ``post_extract_proj`` only where both
  exist with equal shapes (the published ``try: ... except: pass``).
* ``init_encoder_layers = n``: ``encoder.pos_conv`` and teacher layers ``0..n-1`` (strict).

Not copied, as published: the CNN output ``layer_norm`` and the encoder's ``layer_norm`` (they keep
their fresh ones/zeros), the prediction heads. One deliberate difference: the published code
indexes ``encoder.layers[i]``, where a time-reduction layer sits at ``tr_layer_index``, so with
``enable_tr_layer`` it loads teacher layer 0 into the time-reduction Conv1d (a load error); here
teacher layer ``i`` goes to the student's transformer layer ``i`` (the same thing without a
time-reduction layer, as in the published DistilHuBERT ``ex.yaml``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from fhb.errors import FhbError

if TYPE_CHECKING:
    from fhb.student.model import FitHuBERT

log = logging.getLogger(__name__)

TeacherState = Mapping[str, torch.Tensor]
"""The teacher backbone's state dict: fairseq names (``feature_extractor.conv_layers.0.0.weight``,
``encoder.layers.3.fc1.weight``, ...) -> tensors."""


def _part(state: TeacherState, prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix.``, the prefix removed."""
    head = prefix + "."
    return {k[len(head):]: v for k, v in state.items() if k.startswith(head)}


def _copy(target: nn.Module, source: dict[str, torch.Tensor], what: str, key: str) -> None:
    """Load ``source`` into ``target`` strictly, as an FhbError when names or shapes differ."""
    if not source:
        raise FhbError(f"distiller.{key}: expected the teacher's {what} in its weights, found none; "
                       f"use a wav2vec 2.0 / HuBERT teacher or set {key} off")
    try:
        target.load_state_dict(source, strict=True)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[1:2]
        raise FhbError(
            f"distiller.{key}: expected the student's {what} to have the teacher's shapes, found "
            f"{detail}; use the teacher's sizes for it or set {key} off"
        ) from None


def init_from_teacher(
    student: FitHuBERT, teacher: nn.Module | TeacherState | None, conv: bool, layers: int
) -> None:
    """Copy teacher weights into ``student`` in place (see the module docstring for what).

    Args:
        student: a freshly built student.
        teacher: the teacher backbone's state dict (fairseq names), or the backbone module
            (``load_teacher(path).model``).
        conv: copy ``feature_extractor`` (and ``post_extract_proj`` where shapes agree).
        layers: copy ``encoder.pos_conv`` and the first ``layers`` transformer layers.

    Raises:
        FhbError: no teacher, or shapes that differ.
    """
    if teacher is None:
        raise FhbError(
            "distiller.init_conv_layers/init_encoder_layers: expected the teacher's weights to copy, "
            "found no teacher; train from a lake that stores them (fhb lake add-teacher LAKE --teacher "
            "CKPT), or set init_conv_layers: False and init_encoder_layers: 0"
        )
    state: TeacherState = teacher.state_dict() if isinstance(teacher, nn.Module) else teacher
    with torch.no_grad():
        if conv:
            _copy(student.feature_extractor, _part(state, "feature_extractor"), "conv stack", "init_conv_layers")
            source = _part(state, "post_extract_proj")
            target = student.post_extract_proj
            if target is not None and source and all(
                k in source and source[k].shape == v.shape for k, v in target.state_dict().items()
            ):
                target.load_state_dict(source)
            else:
                log.info("init_conv_layers: post_extract_proj not copied (absent or shapes differ), as published")
        if layers:
            _copy(student.encoder.pos_conv, _part(state, "encoder.pos_conv"), "positional conv", "init_encoder_layers")
            available = len({k.split(".")[2] for k in state if k.startswith("encoder.layers.")})
            if layers > available:
                raise FhbError(
                    f"distiller.init_encoder_layers: expected at most the teacher's {available} layers, "
                    f"found {layers}; set init_encoder_layers <= {available}"
                )
            first = student.encoder.first_transformer
            for i in range(layers):
                _copy(student.encoder.layers[first + i], _part(state, f"encoder.layers.{i}"),
                      f"transformer layer {i}", "init_encoder_layers")
