"""The teacher's weights a student is initialised from (``init_conv_layers`` / ``init_encoder_layers``).

Stage two takes them from the lake (``LAKE/_teacher/``, `fhb.pipeline.lake_teacher`): the teacher
is rebuilt as a state dict only and never runs. With ``--online-teacher`` they are that teacher's
(checked to be the lake's checkpoint, so bit for bit the same weights).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from fhb.errors import FhbError
from fhb.pipeline.lake_teacher import load_lake_teacher_state
from fhb.pipeline.teacher import Teacher
from fhb.storage.schema import TEACHER_DIR, LakeMeta
from fhb.storage.teacher_store import ADD_TEACHER_FIX
from fhb.student.config import StudentConfig

__all__ = ["init_weights"]


def init_weights(student: StudentConfig, lake: str | os.PathLike[str], meta: LakeMeta,
                 online_teacher: Teacher | None = None) -> Mapping[str, torch.Tensor] | None:
    """The teacher backbone's state dict the student copies from, or None when it copies nothing.

    Args:
        student: the ``distiller:`` section (its ``init_conv_layers`` / ``init_encoder_layers``).
        lake: the lake stage two reads; ``meta``: its metadata.
        online_teacher: the ``--online-teacher`` (its weights are used; the lake may lack them).

    Raises:
        FhbError: initialisation asked for and the lake stores no teacher (one line naming
            ``fhb lake add-teacher``), or a damaged stored teacher.
    """
    if not (student.init_conv_layers or student.init_encoder_layers):
        return None
    if online_teacher is not None:
        return online_teacher.model.state_dict()
    if meta.teacher_weights is None:
        raise FhbError(
            f"distiller.init_conv_layers/init_encoder_layers: expected the teacher's weights in lake {lake} "
            f"({TEACHER_DIR}/), found none (written before fhb stored them); run "
            f"`{ADD_TEACHER_FIX.format(lake=lake)}` with CKPT = {meta.teacher.name}"
        )
    _, state = load_lake_teacher_state(lake)
    return state
