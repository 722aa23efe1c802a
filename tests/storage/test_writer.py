"""Commit protocol: invisible until committed, cleaned when redone; create_lake resume/refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from fhb.errors import FhbError
from fhb.storage import (
    ShardWriter,
    create_lake,
    is_shard_committed,
    list_split_dir,
    open_lake,
    update_split_listing,
    verify_lake,
)

from .conftest import make_meta, make_utts, write_shard


def _set_marker(shard_dir: Path, value: bool) -> None:
    zarr.open_group(str(shard_dir), mode="r+").attrs["committed"] = value


def test_shard_without_marker_is_invisible_and_cleaned_when_redone(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    meta = create_lake(lake, make_meta())
    a, b = make_utts(meta, 3, seed=1), make_utts(meta, 3, seed=2)
    write_shard(lake, "train", "s0", meta, a)
    write_shard(lake, "train", "s1", meta, b)
    update_split_listing(lake, "train", ["s0", "s1"])
    # A crash between the rename and the marker leaves s1 without its marker.
    _set_marker(lake / "train" / "s1", False)
    assert not is_shard_committed(lake, "train", "s1")
    split = open_lake(lake)["train"]
    assert split.utterance_ids == [u.utt_id for u in a]
    assert split.shards == ["s0"]
    assert any("s1" in f.where and "no commit marker" in f.message for f in verify_lake(lake))
    with pytest.raises(FhbError, match="expected a committed shard, found an uncommitted"):
        update_split_listing(lake, "train", ["s0", "s1"])

    # A crashed attempt also left a temporary directory behind.
    crashed = ShardWriter(lake, "train", "s1", meta, background=False)
    b[0].add_to(crashed)
    assert crashed.tmp_dir.exists()
    assert list_split_dir(lake, "train").temporary == (crashed.tmp_dir.name,)

    # Redoing the shard removes both leftovers, then commits.
    with ShardWriter(lake, "train", "s1", meta) as w:
        assert not crashed.tmp_dir.exists()
        assert not (lake / "train" / "s1").exists()
        for u in b:
            u.add_to(w)
        w.commit()
    update_split_listing(lake, "train", ["s0", "s1"])
    listing = list_split_dir(lake, "train")
    assert listing.committed == ("s0", "s1") and not listing.uncommitted and not listing.temporary
    assert open_lake(lake)["train"].utterance_ids == [u.utt_id for u in a + b]
    assert verify_lake(lake) == []


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    meta = create_lake(lake, make_meta())
    utts = make_utts(meta, 2, seed=3)
    with pytest.raises(RuntimeError, match="teacher crashed"):
        with ShardWriter(lake, "train", "s0", meta) as w:
            utts[0].add_to(w)
            raise RuntimeError("teacher crashed")
    with ShardWriter(lake, "train", "s1", meta) as w:  # left without commit(): discarded
        utts[1].add_to(w)
    listing = list_split_dir(lake, "train")
    assert listing == type(listing)((), (), ())


def test_redo_replaces_committed_shard(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    meta = create_lake(lake, make_meta("float32"))
    old, new = make_utts(meta, 2, seed=4), make_utts(meta, 3, seed=5)
    write_shard(lake, "train", "s0", meta, old)
    update_split_listing(lake, "train", ["s0"])
    write_shard(lake, "train", "s0", meta, new)
    update_split_listing(lake, "train", ["s0"])
    split = open_lake(lake)["train"]
    assert split.utterance_ids == [u.utt_id for u in new]
    np.testing.assert_array_equal(split.targets(new[2].utt_id), new[2].targets)
    assert sorted(p.name for p in (lake / "train").iterdir()) == ["s0", "zarr.json"]


def test_create_lake_refuses_other_teacher_and_resumes_same(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    meta = create_lake(lake, make_meta())
    write_shard(lake, "train", "s0", meta, make_utts(meta, 2, seed=6))
    update_split_listing(lake, "train", ["s0"])

    other = make_meta(sha="f" * 64)
    with pytest.raises(FhbError, match="different layout \\(requested != stored: teacher.sha256: 'ffff.*overwrite"):
        create_lake(lake, other)
    with pytest.raises(FhbError, match="layers"):
        create_lake(lake, make_meta(layers=(1, 2)))
    with pytest.raises(FhbError, match="dtype"):
        create_lake(lake, make_meta("int8"))
    with pytest.raises(FhbError, match="layout"):
        ShardWriter(lake, "train", "s1", other)

    resumed = create_lake(lake, make_meta())  # same layout: reopen, keep the listing
    assert resumed.splits["train"].shards == ("s0",)
    assert len(open_lake(lake)["train"]) == 2

    fresh = create_lake(lake, other, overwrite=True)
    assert fresh.teacher.sha256 == "f" * 64 and fresh.splits == {}
    assert not (lake / "train").exists()
    assert open_lake(lake).splits == []


def test_create_lake_never_deletes_foreign_data(tmp_path: Path) -> None:
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(FhbError, match="not an fhb lake"):
            create_lake(d, make_meta(), overwrite=overwrite)
    assert (d / "thesis.tex").read_text() == "precious"
