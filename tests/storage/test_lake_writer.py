"""LakeWriter: lock, create or reopen, plan check, shards, split listing in one object."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhb.errors import FhbError
from fhb.storage import LakeLock, LakeWriter, open_lake, read_lock

from .conftest import make_meta, make_utts


def test_lake_writer_holds_the_lock_and_lists_splits(tmp_path: Path) -> None:
    meta = make_meta()
    lake = tmp_path / "lake"
    utts = make_utts(meta, 4)
    with LakeWriter(lake, meta) as lw:
        assert read_lock(lake) is not None
        with pytest.raises(FhbError, match="is locked by"):
            LakeLock(lake).acquire()
        assert not lw.is_committed("train", "s0")
        with lw.shard("train", "s0", background=False) as w:
            for u in utts:
                u.add_to(w)
            w.commit()
        assert lw.is_committed("train", "s0")
        info = lw.list_split("train", ["s0"])
        assert info.utterances == 4 and lw.meta.splits["train"] == info
    assert read_lock(lake) is None
    assert open_lake(lake)["train"].utterance_ids == [u.utt_id for u in utts]


def test_lake_writer_reopens_and_checks_the_plan(tmp_path: Path) -> None:
    meta = make_meta()
    lake = tmp_path / "lake"
    utts = make_utts(meta, 3)
    with LakeWriter(lake, meta) as lw:
        with lw.shard("train", "s0") as w:
            for u in utts:
                u.add_to(w)
            w.commit()
        lw.list_split("train", ["s0"])
    with LakeWriter(lake, meta) as lw:  # resume: same layout, listing kept
        assert lw.meta.splits["train"].utterances == 3
        lw.check_plan("train", "s0", [u.utt_id for u in utts])
        lw.check_plan("train", "s1", ["anything"])  # not committed: nothing to compare
        with pytest.raises(FhbError, match="holds other utterances than this run plans.*--order manifest"):
            lw.check_plan("train", "s0", [u.utt_id for u in utts[:2]])
    with pytest.raises(FhbError, match="different layout"):
        with LakeWriter(lake, make_meta(layers=(1, 2))):
            pass
    assert read_lock(lake) is None  # a refused reopen releases the lock


def test_meta_outside_the_block_is_misuse(tmp_path: Path) -> None:
    lw = LakeWriter(tmp_path / "lake", make_meta())
    with pytest.raises(ValueError):
        lw.meta  # noqa: B018
