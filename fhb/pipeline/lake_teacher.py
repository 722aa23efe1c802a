"""The teacher a lake carries, torch side: store a checkpoint's weights in a lake, rebuild the
teacher from the lake alone.

::

    store_teacher(lake_writer, checkpoint)        # fhb extract / fhb lake add-teacher (lock held)
    load_lake_teacher(lake, device, precision)    # -> Teacher, bit-identical to load_teacher(.pt)
    load_lake_teacher_state(lake)                 # -> (StoredTeacher, {fairseq name: tensor})

The lake side (files, atomic write, sha256, the root record) is ``fhb.storage.teacher_store``,
which sees numpy arrays only; this module turns the backbone's state dict into them and back.
Nothing is unpickled on the way back: ``model.safetensors`` is parsed by fhb, its sha256 checked.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from fhb.errors import FhbError
from fhb.pipeline.checkpoint_io import sha256_file
from fhb.pipeline.teacher import DEFAULT_BATCH_SAMPLES, Teacher, build_teacher, load_teacher
from fhb.storage.lake_writer import LakeWriter
from fhb.storage.schema import TEACHER_DIR, TEACHER_WEIGHTS_FILE, StoredTeacher, json_config
from fhb.storage.teacher_store import TeacherSource, read_teacher

log = logging.getLogger(__name__)


def teacher_tensors(teacher: Teacher) -> dict[str, np.ndarray]:
    """The backbone's state dict as CPU numpy arrays (fairseq names, the model's dtypes: float32)."""
    return {k: v.detach().cpu().contiguous().numpy() for k, v in teacher.model.state_dict().items()}


def teacher_source(teacher: Teacher) -> TeacherSource:
    """What the lake records about ``teacher`` beside its weights."""
    return TeacherSource(model_name=teacher.model_name, normalize=teacher.normalize,
                         config=json_config(teacher.config), name=teacher.path.name, sha256=teacher.sha256)


def store_teacher(lake: LakeWriter, checkpoint: str | os.PathLike[str], sha256: str | None = None) -> StoredTeacher:
    """Store ``checkpoint``'s weights in ``lake`` (an open `LakeWriter`: the lock is held), unless the
    lake holds them already (then nothing is written).

    Args:
        lake: the open writer of the lake.
        checkpoint: the fairseq checkpoint the lake was extracted with.
        sha256: its digest when the caller computed it already (``None`` hashes the file).

    Raises:
        FhbError: ``checkpoint`` is not the lake's teacher (naming both digests), or unreadable.
    """
    path = Path(checkpoint)
    found = sha256 or sha256_file(path)
    expected = lake.meta.teacher
    if found != expected.sha256:
        raise FhbError(
            f"--teacher {path}: expected the checkpoint lake {lake.path} was extracted with ({expected.name}, "
            f"sha256 {expected.sha256}), found sha256 {found}; pass that checkpoint"
        )
    existing = lake.stored_teacher()
    if existing is not None:
        log.info("lake %s already stores teacher %s", lake.path, existing.source_name)
        return existing
    teacher = load_teacher(path, sha256=found)
    return lake.store_teacher(teacher_tensors(teacher), teacher_source(teacher))


def load_lake_teacher_state(lake: str | os.PathLike[str]) -> tuple[StoredTeacher, dict[str, torch.Tensor]]:
    """The lake's stored teacher: its description and backbone state dict (``{fairseq name: float32
    CPU tensor}``), sha256 checked, without the original checkpoint and without unpickling.

    Raises:
        FhbError: the lake stores no teacher (naming ``fhb lake add-teacher``), or a damaged one.
    """
    stored, arrays = read_teacher(lake)
    return stored, {k: torch.from_numpy(a) for k, a in arrays.items()}


def load_lake_teacher(
    lake: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    max_batch_samples: int = DEFAULT_BATCH_SAMPLES,
) -> Teacher:
    """The teacher stored in ``lake``, ready to run: same outputs, bit for bit, as
    ``load_teacher`` of the original checkpoint. ``Teacher.sha256`` is the original checkpoint's
    digest (the lake's ``teacher.sha256``); ``Teacher.path`` is ``LAKE/_teacher/model.safetensors``.

    Args:
        lake: the lake directory.
        device, precision, max_batch_samples: as :func:`fhb.pipeline.teacher.load_teacher`.

    Raises:
        FhbError: the lake stores no teacher (naming ``fhb lake add-teacher``), or a damaged one.
    """
    stored, state = load_lake_teacher_state(lake)
    teacher = build_teacher(
        state, path=Path(lake) / TEACHER_DIR / TEACHER_WEIGHTS_FILE, sha256=stored.source_sha256,
        config=stored.config, model_name=stored.model_name, normalize=stored.normalize, device=device,
        precision=precision, max_batch_samples=max_batch_samples,
    )
    log.info("loaded %s teacher %s from lake %s", stored.model_name, stored.source_name, lake)
    return teacher
