"""``fhb lake ...``: maintenance of an existing lake (one function per command)."""

from __future__ import annotations

import os

from fhb.pipeline.lake_teacher import store_teacher
from fhb.storage.lake_writer import LakeWriter
from fhb.storage.schema import StoredTeacher


def add_teacher(lake: str | os.PathLike[str], checkpoint: str | os.PathLike[str]) -> StoredTeacher:
    """Store ``checkpoint``'s weights in ``lake`` (``fhb lake add-teacher``), for lakes written
    before ``fhb extract`` stored them, or to repair damaged ones.

    Takes the lake's lock; refuses a checkpoint other than the one the lake was extracted with
    (sha256); does nothing when the lake already holds sound weights of it.
    """
    with LakeWriter.reopen(lake) as writer:
        return store_teacher(writer, checkpoint)
