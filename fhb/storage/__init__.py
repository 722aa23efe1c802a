"""fhb.storage: the feature lake (format v1). numpy + zarr only (no torch).

Public API::

    from fhb.storage import (LakeMeta, TeacherMeta, SplitInfo, ShardAttrs,     # the contract (schema)
                             TargetCodec,                                       # target encodings
                             LakeWriter, ShardWriter,                           # writing
                             StoredTeacher, TeacherWeights, TeacherSource,      # the stored teacher
                             read_teacher, teacher_problems,
                             open_lake, Lake, SplitView, ShardView, UttEntry,   # reading
                             LakeLock, break_lock, read_lock,                   # locking
                             verify_lake, summarize_lake, Finding)              # integrity

The on-disk contract lives in `fhb.storage.schema`; the layout is documented in
``docs/lake-format.md``.
"""

from fhb.storage.codecs import DTYPES, TargetCodec
from fhb.storage.integrity import Finding, LakeSummary, SplitSummary, summarize_lake, verify_lake
from fhb.storage.lake_writer import LakeWriter
from fhb.storage.layout import is_shard_committed, list_split_dir
from fhb.storage.lock import LakeLock, LockInfo, break_lock, read_lock
from fhb.storage.reader import Lake, ShardView, SplitView, UttEntry, open_lake
from fhb.storage.schema import (
    FORMAT_VERSION,
    FRAME_RATE,
    SAMPLE_RATE,
    LakeMeta,
    ShardAttrs,
    SplitInfo,
    StoredTeacher,
    TeacherMeta,
    TeacherWeights,
)
from fhb.storage.teacher_store import TeacherSource, read_teacher, teacher_problems
from fhb.storage.writer import ShardWriter, create_lake, update_split_listing

__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "FRAME_RATE",
    "SAMPLE_RATE",
    "Finding",
    "Lake",
    "LakeLock",
    "LakeMeta",
    "LakeSummary",
    "LakeWriter",
    "LockInfo",
    "ShardAttrs",
    "ShardView",
    "ShardWriter",
    "SplitInfo",
    "SplitSummary",
    "SplitView",
    "StoredTeacher",
    "TargetCodec",
    "TeacherMeta",
    "TeacherSource",
    "TeacherWeights",
    "UttEntry",
    "break_lock",
    "create_lake",
    "is_shard_committed",
    "list_split_dir",
    "open_lake",
    "read_lock",
    "read_teacher",
    "summarize_lake",
    "teacher_problems",
    "update_split_listing",
    "verify_lake",
]
