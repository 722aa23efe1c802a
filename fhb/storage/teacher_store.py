"""The teacher stored in a lake: ``LAKE/_teacher/{model.safetensors, teacher.json}`` (numpy only).

::

    write_teacher(lake, tensors, source)  # the lock holder only (`LakeWriter.store_teacher`)
    stored_teacher(lake)                  # the complete stored teacher of this lake, or None
    teacher_problems(lake, meta)          # what is wrong with it (`verify_lake`)
    read_teacher(lake)                    # -> (StoredTeacher, {fairseq name: float32 array})

Writing is atomic: both files go to ``_tmp_teacher_<hex>/`` (fsynced), which is renamed to
``_teacher/``; then the root attribute ``teacher_weights`` is set, the stored teacher's commit
marker. A stored teacher being replaced is first unrecorded, then moved aside. Readers look only
at a recorded ``_teacher/`` and check the weights' sha256 before using them. The tensors come
from the caller as numpy arrays (the torch side is ``fhb.pipeline.lake_teacher``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fhb.errors import FhbError
from fhb.storage.layout import local_lake_dir, read_node_attrs, remove_tree
from fhb.files import read_small, sha256_file
from fhb.storage.safetensors_file import read_header, read_safetensors, write_safetensors
from fhb.storage.schema import (
    TEACHER_CONFIG_FILE,
    TEACHER_DIR,
    TEACHER_TMP_PREFIX,
    TEACHER_TRASH_PREFIX,
    TEACHER_WEIGHTS_FILE,
    LakeMeta,
    StoredTeacher,
    TeacherWeights,
)
from fhb.storage.writer import write_root_attrs

logger = logging.getLogger(__name__)

ADD_TEACHER_FIX = "fhb lake add-teacher {lake} --teacher CKPT"
"""The command that stores (or repairs) a lake's teacher; CKPT is the checkpoint the lake was extracted with."""


@dataclass(frozen=True)
class TeacherSource:
    """What the caller knows about the weights it stores (everything in `StoredTeacher` but the file)."""

    model_name: str
    normalize: bool
    config: dict[str, Any]
    name: str
    sha256: str


def _fix(root: Path) -> str:
    return ADD_TEACHER_FIX.format(lake=root)


def _read_meta(root: Path) -> LakeMeta:
    return LakeMeta.from_dict(read_node_attrs(root) or {}, f"lake {root}")


def _read_json(path: Path) -> StoredTeacher:
    try:
        d = json.loads(read_small(path, 1 << 20, "stored teacher description"))
    except FileNotFoundError:
        raise FhbError(f"{path}: expected the stored teacher's description, found nothing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FhbError(f"{path}: expected JSON, found unreadable bytes ({exc})") from None
    return StoredTeacher.from_dict(d, str(path))


def teacher_problems(lake_path: str | os.PathLike[str], meta: LakeMeta, check_data: bool = True) -> list[str]:
    """What is wrong with the stored teacher ``meta.teacher_weights`` records (empty: sound; also
    empty when none is recorded).

    Checks that the weights are of the lake's teacher (``source_sha256 == meta.teacher.sha256``),
    that ``teacher.json`` agrees with the root attribute and the lake's teacher config, that
    ``model.safetensors`` has the recorded size and a valid header with the recorded number of
    tensors, and with ``check_data`` its sha256 (reads the file).
    """
    weights = meta.teacher_weights
    if weights is None:
        return []
    d = Path(lake_path) / TEACHER_DIR
    return _problems(d, meta, weights, check_data)[1]


def _problems(
    d: Path, meta: LakeMeta, weights: TeacherWeights, check_data: bool
) -> tuple[StoredTeacher | None, list[str]]:
    """(teacher.json, problems) of the stored teacher in ``d`` against ``weights`` and ``meta``."""
    if weights.source_sha256 != meta.teacher.sha256:
        return None, [f"the stored weights are of checkpoint sha256 {weights.source_sha256}, the lake's "
                      f"targets of {meta.teacher.sha256}"]
    try:
        stored = _read_json(d / TEACHER_CONFIG_FILE)
    except FhbError as exc:
        return None, [str(exc)]
    problems = []
    if stored.weights != weights:
        problems.append(f"{TEACHER_CONFIG_FILE} describes {stored.weights.to_dict()}, the lake records "
                        f"{weights.to_dict()}")
    if stored.config != meta.teacher.config:
        problems.append(f"{TEACHER_CONFIG_FILE}: its config differs from the lake's teacher config")
    path = d / TEACHER_WEIGHTS_FILE
    try:
        size = path.stat().st_size
        header = read_header(path)
    except FileNotFoundError:
        return stored, problems + [f"{path} is missing"]
    except FhbError as exc:
        return stored, problems + [str(exc)]
    if size != weights.bytes:
        problems.append(f"{path}: expected {weights.bytes} bytes, found {size}")
    if len(header.tensors) != stored.num_tensors:
        problems.append(f"{path}: expected {stored.num_tensors} tensors, found {len(header.tensors)}")
    if check_data and not problems:
        found = sha256_file(path)
        if found != weights.sha256:
            problems.append(f"{path}: expected sha256 {weights.sha256}, found {found} (damaged)")
    return stored, problems


def stored_teacher(lake_path: str | os.PathLike[str]) -> StoredTeacher | None:
    """The lake's stored teacher when it is recorded, complete and of the lake's teacher (its
    sha256 checked), else None."""
    root = Path(lake_path)
    meta = _read_meta(root)
    if meta.teacher_weights is None:
        return None
    stored, problems = _problems(root / TEACHER_DIR, meta, meta.teacher_weights, check_data=True)
    return stored if not problems else None


def read_teacher(lake_path: str | os.PathLike[str]) -> tuple[StoredTeacher, dict[str, np.ndarray]]:
    """The stored teacher's description and weights (``{fairseq name: array}``), sha256 checked.

    Raises:
        FhbError: the lake stores no teacher (with the command that adds it), or a stored teacher
            that is damaged or of another checkpoint than the lake's targets.
    """
    root = local_lake_dir(lake_path)
    meta = _read_meta(root)
    weights = meta.teacher_weights
    if weights is None:
        raise FhbError(f"lake {root}: expected the teacher's weights in {TEACHER_DIR}/, found none (the lake "
                       f"was written before fhb stored them); add them with `{_fix(root)}`")
    stored, problems = _problems(root / TEACHER_DIR, meta, weights, check_data=False)
    if problems or stored is None:
        raise FhbError(f"lake {root}: its stored teacher is unusable ({problems[0]}); store it again with "
                       f"`{_fix(root)}`")
    try:
        tensors, _ = read_safetensors(root / TEACHER_DIR / TEACHER_WEIGHTS_FILE, sha256=weights.sha256)
    except FhbError as exc:
        raise FhbError(f"lake {root}: its stored teacher is unusable ({exc}); store it again with "
                       f"`{_fix(root)}`") from None
    return stored, tensors


def write_teacher(
    lake_path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], source: TeacherSource
) -> StoredTeacher:
    """Store ``tensors`` (the backbone's state dict, fairseq names) as the lake's teacher.

    Only the client holding the lake's lock calls this (`LakeWriter.store_teacher`). Refuses
    weights of another checkpoint than the lake's teacher. Replaces a stored teacher (one being
    replaced is unrecorded first, so a crash never leaves a recorded, half-written one).

    Returns:
        What ``teacher.json`` now says.
    """
    root = Path(lake_path)
    meta = _read_meta(root)
    if source.sha256 != meta.teacher.sha256:
        raise FhbError(
            f"teacher {source.name}: expected the checkpoint the lake {root} was extracted with (sha256 "
            f"{meta.teacher.sha256}, {meta.teacher.name}), found sha256 {source.sha256}; pass that checkpoint"
        )
    for leftover in _leftovers(root):
        remove_tree(leftover)
    tmp = root / f"{TEACHER_TMP_PREFIX}{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        sha, size = write_safetensors(tmp / TEACHER_WEIGHTS_FILE, tensors,
                                      metadata={"format": "pt", "source_sha256": source.sha256})
        stored = StoredTeacher(
            model_name=source.model_name, normalize=source.normalize, config=dict(source.config),
            source_name=source.name, source_sha256=source.sha256, weights_sha256=sha,
            weights_bytes=size, num_tensors=len(tensors),
            dtype=",".join(sorted({str(np.asarray(a).dtype) for a in tensors.values()})),
        )
        _write_json(tmp / TEACHER_CONFIG_FILE, stored.to_dict())
        _fsync_dir(tmp)
        final = root / TEACHER_DIR
        if final.exists():
            if meta.teacher_weights is not None:
                _record(root, None)
            os.rename(final, root / f"{TEACHER_TRASH_PREFIX}{uuid.uuid4().hex[:12]}")
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _record(root, stored.weights)
    for leftover in _leftovers(root):
        remove_tree(leftover)
    logger.info("stored teacher %s in %s (%d tensors, %d bytes)", source.name, final, len(tensors), size)
    return stored


def adopt_teacher(lake_path: str | os.PathLike[str]) -> StoredTeacher | None:
    """Record a complete, unrecorded ``_teacher/`` of the lake's teacher (left by a crash between
    its rename and its record); None when there is none. The lock holder only."""
    root = Path(lake_path)
    meta = _read_meta(root)
    d = root / TEACHER_DIR
    if meta.teacher_weights is not None or not d.is_dir():
        return None
    try:
        claimed = _read_json(d / TEACHER_CONFIG_FILE).weights
    except FhbError:
        return None
    stored, problems = _problems(d, meta, claimed, check_data=True)
    if problems or stored is None:
        return None
    _record(root, stored.weights)
    logger.info("recorded the stored teacher already in %s", d)
    return stored


def _leftovers(root: Path) -> list[Path]:
    return [e for e in root.iterdir() if e.is_dir() and e.name.startswith((TEACHER_TMP_PREFIX, TEACHER_TRASH_PREFIX))]


def teacher_leftovers(lake_path: str | os.PathLike[str]) -> list[str]:
    """Names of temporary directories left by interrupted writes of the stored teacher."""
    return sorted(e.name for e in _leftovers(Path(lake_path)))


def _record(root: Path, weights: TeacherWeights | None) -> None:
    write_root_attrs(root, replace(_read_meta(root), teacher_weights=weights))


def _write_json(path: Path, d: Mapping[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(d, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
