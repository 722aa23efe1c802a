"""verify_lake finds damage and names it; summarize_lake reports sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhb.storage import ShardWriter, open_lake, summarize_lake, verify_lake

from .conftest import make_meta, make_utts


@pytest.fixture
def lake(build_lake) -> Path:
    meta = make_meta("int8", cnn_dim=8)
    return build_lake(meta, {"train": {"s0": make_utts(meta, 4, seed=1),
                                       "s1": make_utts(meta, 3, seed=2)}})


def test_clean_lake_has_no_findings(lake: Path) -> None:
    assert verify_lake(lake) == []


@pytest.mark.parametrize("array", ["layer_02", "layer_02_scale", "audio", "cnn"])
def test_corrupted_chunk_is_named(lake: Path, array: str) -> None:
    key = {"layer_02": "c/1/0", "layer_02_scale": "c/1/0/0", "audio": "c/1", "cnn": "c/1/0"}[array]
    chunk = lake / "train" / "s1" / array / key
    raw = bytearray(chunk.read_bytes())
    for i in range(len(raw) // 2, min(len(raw), len(raw) // 2 + 16)):
        raw[i] ^= 0x5A
    chunk.write_bytes(bytes(raw))
    errors = [f for f in verify_lake(lake) if f.severity == "error"]
    assert len(errors) == 1, errors
    assert errors[0].where == f"train/s1/{array} chunk 1"
    assert "re-extract the shard" in errors[0].message


def test_missing_chunk_and_array(lake: Path) -> None:
    (lake / "train" / "s0" / "layer_01" / "c" / "0" / "0").unlink()
    findings = verify_lake(lake)
    assert any(f.where == "train/s0/layer_01 chunk 0" and "missing" in f.message for f in findings)
    import shutil

    shutil.rmtree(lake / "train" / "s0" / "layer_03")
    assert any(f.where == "train/s0/layer_03" and "missing" in f.message for f in verify_lake(lake))


def test_frames_function_mismatch(lake: Path) -> None:
    findings = verify_lake(lake, frames_fn=lambda s: s // 320, check_chunks=False)
    assert findings and all(f.severity == "error" for f in findings)
    assert "num_frames != frames_fn(num_samples)" in findings[0].message


def test_leftovers_and_unlisted_are_warnings(lake: Path) -> None:
    meta = open_lake(lake).meta
    w = ShardWriter(lake, "train", "s2", meta, background=False)
    make_utts(meta, 1, seed=3)[0].add_to(w)  # "crashes" without commit
    with ShardWriter(lake, "train", "s3", meta) as w3:
        make_utts(meta, 1, seed=4)[0].add_to(w3)
        w3.commit()  # committed, not listed
    findings = verify_lake(lake)
    assert [f.severity for f in findings] == ["warning", "warning"]
    assert findings[0].where == "train/s3" and "not listed" in findings[0].message
    assert findings[1].where.startswith("train/_tmp_s2_") and "interrupted" in findings[1].message


def test_summary(lake: Path) -> None:
    s = summarize_lake(lake)
    train = s.splits["train"]
    split = open_lake(lake)["train"]
    assert train.utterances == 7 and train.shards == 2
    assert train.samples == sum(split.num_samples(u) for u in split.utterance_ids)
    assert train.hours == pytest.approx(train.samples / 16000 / 3600)
    assert s.dtype == "int8" and s.layers == (1, 2, 3) and s.teacher_sha256 == "0123456789abcdef" * 4
    assert train.bytes_on_disk >= train.target_bytes + train.audio_bytes > 0
    assert train.compression_ratio == pytest.approx(
        train.frames * 3 * 24 * 4 / train.target_bytes)
    assert s.to_dict()["splits"]["train"]["utterances"] == 7
