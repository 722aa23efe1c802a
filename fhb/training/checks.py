"""Can this lake / this teacher serve this student? One check per question, one message each.

``fhb distill`` checks its lake (splits, teacher dimension, stored layers) and, for the online
baseline, its teacher; ``fhb evaluate`` checks the lake's teacher dimension. The dimension check is
`check_teacher_dim` in every case.
"""

from __future__ import annotations

from collections.abc import Sequence

from fhb.errors import FhbError
from fhb.pipeline.teacher import Teacher
from fhb.storage.reader import Lake
from fhb.student.config import StudentConfig

__all__ = ["check_lake", "check_teacher", "check_teacher_dim"]


def check_teacher_dim(student: StudentConfig, dim: int, where: str, teacher_name: str, fix: str) -> None:
    """Refuse a teacher whose hidden size is not the student's ``pred_head_final_dim``.

    Args:
        student: the student's ``distiller:`` section.
        dim: the teacher's hidden size.
        where: what holds the teacher (``lake PATH``, ``online teacher PATH``), to start the message.
        teacher_name: the teacher's name, for the message.
        fix: the fix the message ends with.

    Raises:
        FhbError: naming both dimensions and ``fix``.
    """
    want = int(student.pred_head_final_dim)
    if int(dim) != want:
        raise FhbError(f"{where}: expected teacher dim {want} (distiller.pred_head_final_dim), found {dim} "
                       f"(teacher {teacher_name}); {fix}")


def check_lake(lake: Lake, student: StudentConfig, needed: Sequence[int], splits: Sequence[str],
               online: bool) -> None:
    """Refuse a lake that cannot serve this student: missing splits, wrong dim, missing layers.

    ``online``: the targets come from an online teacher (only the splits are checked).

    Raises:
        FhbError: naming the missing splits / the dimension mismatch / the missing layers and the fix.
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
    dim = int(student.pred_head_final_dim)
    check_teacher_dim(student, meta.teacher.dim, f"lake {lake.location}", meta.teacher.name,
                      f"set pred_head_final_dim: {meta.teacher.dim} or use a lake extracted from a {dim}-dim teacher")
    missing = [k for k in needed if k not in meta.layers]
    if missing:
        raise FhbError(
            f"lake {lake.location}: expected teacher layers {list(needed)} (required by the student's loss), "
            f"found {list(meta.layers)}; missing {missing}: re-extract with --layers "
            f"{','.join(map(str, sorted(set(meta.layers) | set(needed))))}, or reduce "
            f"distiller.encoder_layers / train.distil_random_layer / pred_layer_id"
        )


def check_teacher(teacher: Teacher, student: StudentConfig, needed: Sequence[int]) -> None:
    """Refuse an online teacher of another dimension, or with fewer layers than ``needed`` asks for.

    Raises:
        FhbError: naming the teacher's dimension / layers and the fix.
    """
    fix = "pick a matching teacher or config"
    check_teacher_dim(student, teacher.dim, f"online teacher {teacher.path}", teacher.model_name, fix)
    if max(needed) > teacher.num_layers:
        raise FhbError(f"online teacher {teacher.path}: expected at least {max(needed)} layers, found "
                       f"{teacher.num_layers} layers; {fix}")
