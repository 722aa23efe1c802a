"""Writer -> reader round trips: values, audio, index, manifest order, errors for bad requests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fhb.errors import FhbError
from fhb.storage import ShardWriter, create_lake, open_lake

from .conftest import make_meta, make_utts, rel_rms

TOL = {"float32": 0.0, "float16": 1e-3, "bfloat16": 4e-3, "int8": 1e-2}


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8"])
def test_round_trip(dtype: str, build_lake) -> None:
    meta = make_meta(dtype, layers=(1, 3, 4), cnn_dim=16)
    s0, s1 = make_utts(meta, 5, seed=1), make_utts(meta, 4, seed=2)
    dev = make_utts(meta, 2, seed=3)
    lake = build_lake(meta, {"train": {"s0": s0, "s1": s1}, "dev": {"d0": dev}})
    opened = open_lake(lake)
    assert opened.splits == ["train", "dev"]
    assert opened.meta.dtype == dtype and opened.attrs["dtype"] == dtype
    train = opened["train"]
    assert train.utterance_ids == [u.utt_id for u in s0 + s1]
    assert len(train) == 9 and len(opened["dev"]) == 2
    for u in s0 + s1:
        np.testing.assert_array_equal(train.audio(u.utt_id), u.audio)
        assert train.audio(u.utt_id).dtype == np.int16
        y = train.targets(u.utt_id)
        assert y.shape == u.targets.shape and y.dtype == np.float32
        c = train.cnn_features(u.utt_id)
        if dtype == "float32":
            np.testing.assert_array_equal(y, u.targets)
            np.testing.assert_array_equal(c, u.cnn)
        else:
            assert rel_rms(y, u.targets) <= TOL[dtype]
            assert rel_rms(c, u.cnn) <= TOL[dtype]
        assert train.num_frames(u.utt_id) == u.targets.shape[1]
        assert train.num_samples(u.utt_id) == len(u.audio)
        assert train.transcript(u.utt_id) == u.transcript
        assert train.speaker(u.utt_id) == u.speaker
        assert train.chapter(u.utt_id) == u.chapter
    u = s1[2]
    assert train.shard_of(u.utt_id) == "s1"
    sub = train.targets(u.utt_id, layers=[4, 1])
    np.testing.assert_array_equal(sub, train.targets(u.utt_id)[[2, 0]])


def test_entries_and_shard_ranges(build_lake) -> None:
    meta = make_meta("float32")
    utts = make_utts(meta, 6, seed=4)
    lake = build_lake(meta, {"train": {"s0": utts[:3], "s1": utts[3:]}})
    split = open_lake(lake)["train"]
    entries = split.entries()
    assert [e.utt_id for e in entries] == [u.utt_id for u in utts]
    assert [e.shard for e in entries] == ["s0"] * 3 + ["s1"] * 3
    assert [e.frame_offset for e in entries[:3]] == [0, utts[0].targets.shape[1],
                                                      utts[0].targets.shape[1] + utts[1].targets.shape[1]]
    # A frame range crossing two utterances (what a chunk-wise loader reads).
    shard = split.shard("s0")
    e1 = entries[1]
    block = shard.read_frames(0, e1.frame_offset + e1.num_frames)
    np.testing.assert_array_equal(block, np.concatenate([utts[0].targets, utts[1].targets], axis=1))
    assert shard.num_frames == sum(u.targets.shape[1] for u in utts[:3])
    assert shard.chunk_frames == 64


def test_preallocated_equals_grown(build_lake) -> None:
    meta = make_meta("int8")
    utts = make_utts(meta, 5, seed=5)
    a = open_lake(build_lake(meta, {"train": {"s0": utts}}, name="grown"))["train"]
    b = open_lake(build_lake(meta, {"train": {"s0": utts}}, name="prealloc", preallocate=True))["train"]
    c = open_lake(build_lake(meta, {"train": {"s0": utts}}, name="inline", background=False))["train"]
    for u in utts:
        np.testing.assert_array_equal(a.targets(u.utt_id), b.targets(u.utt_id))
        np.testing.assert_array_equal(a.targets(u.utt_id), c.targets(u.utt_id))
        np.testing.assert_array_equal(a.audio(u.utt_id), b.audio(u.utt_id))


def test_expected_size_mismatch_refused(tmp_path: Path) -> None:
    meta = create_lake(tmp_path / "lake", make_meta())
    utts = make_utts(meta, 2, seed=6)
    frames = sum(u.targets.shape[1] for u in utts)
    samples = sum(len(u.audio) for u in utts)
    with pytest.raises(FhbError, match=f"expected {frames + 1} frames"):
        with ShardWriter(tmp_path / "lake", "train", "s0", meta, expected_frames=frames + 1,
                         expected_samples=samples) as w:
            for u in utts:
                u.add_to(w)
            w.commit()
    with pytest.raises(FhbError, match="expected at most"):
        with ShardWriter(tmp_path / "lake", "train", "s0", meta, expected_frames=frames - 1,
                         expected_samples=samples) as w:
            for u in utts:
                u.add_to(w)
    assert list((tmp_path / "lake" / "train").iterdir()) == [tmp_path / "lake" / "train" / "zarr.json"]


def test_bad_inputs_refused(tmp_path: Path) -> None:
    meta = create_lake(tmp_path / "lake", make_meta(cnn_dim=8))
    (u,) = make_utts(meta, 1, seed=7)
    with ShardWriter(tmp_path / "lake", "train", "s0", meta) as w:
        with pytest.raises(FhbError, match="audio expected a 1-D int16"):
            w.add("x", "1", "2", "t", u.audio.astype(np.float32), u.targets, u.cnn)
        with pytest.raises(FhbError, match=r"targets expected \[L x T x D\] = \[3 x T x 24\]"):
            w.add("x", "1", "2", "t", u.audio, u.targets[:2], u.cnn)
        with pytest.raises(FhbError, match="expected CNN features"):
            w.add("x", "1", "2", "t", u.audio, u.targets, None)
        bad = u.targets.copy()
        bad[1, 2, 3] = np.inf
        with pytest.raises(FhbError, match="utterance 'x', targets: expected finite"):
            w.add("x", "1", "2", "t", u.audio, bad, u.cnn)
        big = u.targets * 1e5
        with pytest.raises(FhbError, match="use dtype bfloat16 or float32"):
            w.add("x", "1", "2", "t", u.audio, big, u.cnn)
        u.add_to(w)
        with pytest.raises(FhbError, match="added twice"):
            u.add_to(w)
        w.skip("y", "/data/y.flac", "shorter than the receptive field")
        attrs = w.commit()
    assert attrs.skipped == ({"utt_id": "y", "path": "/data/y.flac",
                              "reason": "shorter than the receptive field"},)
    with pytest.raises(FhbError, match="committed; create a new ShardWriter"):
        u.add_to(w)


def test_unknown_ids_layers_splits(build_lake) -> None:
    meta = make_meta(layers=(2, 3))
    utts = make_utts(meta, 2, seed=8)
    lake = open_lake(build_lake(meta, {"train": {"s0": utts}}))
    with pytest.raises(FhbError, match="expected one of its splits \\['train'\\], found 'test'"):
        lake["test"]
    split = lake["train"]
    with pytest.raises(FhbError, match="found 'nope'"):
        split.targets("nope")
    with pytest.raises(FhbError, match="found requests for \\[1, 4\\], which are not stored"):
        split.targets(utts[0].utt_id, layers=[1, 2, 4])
    with pytest.raises(FhbError, match="expected CNN features, found none"):
        split.cnn_features(utts[0].utt_id)
    assert "nope" not in split and utts[0].utt_id in split


def test_empty_and_tiny_utterances(build_lake) -> None:
    meta = make_meta("int8")
    utts = make_utts(meta, 3, seed=9, min_samples=300, max_samples=420)  # 0 or 1 frame
    lake = open_lake(build_lake(meta, {"train": {"s0": utts}}))
    for u in utts:
        y = lake["train"].targets(u.utt_id)
        assert y.shape == u.targets.shape
        np.testing.assert_array_equal(lake["train"].audio(u.utt_id), u.audio)
