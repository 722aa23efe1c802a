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

__all__ = [
    "check_complete_splits",
    "check_lake",
    "check_same_teacher",
    "check_teacher",
    "check_teacher_dim",
    "lake_teacher_record",
]


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


def check_complete_splits(lake: Lake, splits: Sequence[str], opt_in: str | None) -> None:
    """Refuse splits whose listing names shards that are missing or uncommitted (damage, a copy in progress).

    Reading on would silently train (or score) on less data. ``opt_in``: the option that accepts
    the partial splits (shown in the message), or None where there is none.

    Raises:
        FhbError: naming the split, the missing shards and the fixes.
    """
    for split in splits:
        listed = list(lake.meta.splits[split].shards) if split in lake.meta.splits else []
        visible = set(lake[split].shards) if listed else set()
        gone = [s for s in listed if s not in visible]
        if gone:
            accept = f", or pass {opt_in} to use the rest" if opt_in else ""
            raise FhbError(
                f"lake {lake.location}: split {split} lists {len(listed)} shards, {len(gone)} of them missing or "
                f"uncommitted ({gone[:5]}); expected every listed shard: run `fhb verify {lake.location}` and "
                f"rerun the same `fhb extract` to restore them{accept}"
            )


def lake_teacher_record(lake: Lake) -> dict[str, object]:
    """What binds a run to its lake: the teacher's sha256 and name, the stored layers, the dtype."""
    meta = lake.meta
    return {"sha256": meta.teacher.sha256, "name": meta.teacher.name, "layers": [int(k) for k in meta.layers],
            "dtype": str(meta.dtype)}


def check_same_teacher(recorded: object, lake: Lake, what: str, *, same_encoding: bool = True) -> None:
    """Refuse a lake whose teacher (sha256), stored layers or dtype differ from ``recorded`` (a run's record).

    ``recorded``: a `lake_teacher_record` (or a student's ``teacher`` entry); anything else (an older
    run without one) is not checked. ``same_encoding=False`` accepts the same teacher's targets in
    another encoding (``fhb evaluate --any-encoding``: a compact-lake student scored against a
    float32 lake of the same teacher); the teacher and its layers must still match.

    Raises:
        FhbError: naming both teachers / layers / dtypes.
    """
    if not isinstance(recorded, dict) or not recorded.get("sha256"):
        return
    now = lake_teacher_record(lake)
    if recorded["sha256"] != now["sha256"]:
        raise FhbError(
            f"{what} was trained on targets of teacher {recorded.get('name')} (sha256 "
            f"{str(recorded['sha256'])[:12]}…), the lake {lake.location} holds teacher {now['name']} (sha256 "
            f"{str(now['sha256'])[:12]}…); expected the same teacher: pass the run's own lake"
        )
    if same_encoding and recorded.get("dtype") is not None and recorded.get("dtype") != now["dtype"]:
        raise FhbError(f"{what} was trained on {recorded.get('dtype')} targets, the lake {lake.location} stores "
                       f"{now['dtype']}; expected the same dtype: pass the run's own lake (or --any-encoding to "
                       f"score it against the same teacher's targets in another encoding)")
    layers = recorded.get("layers")
    if layers is not None and [int(k) for k in layers] != now["layers"]:
        raise FhbError(f"{what} was trained on teacher layers {[int(k) for k in layers]}, the lake "
                       f"{lake.location} stores {now['layers']}; expected the same layers: pass the run's own lake")


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
