"""The lake's contract in one place (`fhb.storage.schema`): LakeMeta round trip, validation and
refusal of other format versions; shard attributes round-trip; the arrays the writer creates are
the ones the verifier expects; the frame rule follows the lake's teacher; one duplicate-id rule."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr

from fhb.errors import FhbError
from fhb.storage import FORMAT_VERSION, LakeMeta, ShardAttrs, SplitInfo, TargetCodec, TeacherMeta, open_lake, verify_lake
from fhb.storage.layout import read_node_attrs
from fhb.storage.schema import (
    COMMITTED_ATTR,
    ShardIndex,
    duplicate_ids,
    is_committed,
    shard_arrays,
    writing_attrs,
)
from tests.lakes import Utt

from .conftest import make_meta, make_utts


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_writer_creates_exactly_the_schema_arrays(build_lake, dtype: str) -> None:
    meta = make_meta(dtype, cnn_dim=8)
    utts = make_utts(meta, 5)
    lake = build_lake(meta, {"train": {"s0": utts}})
    group = zarr.open_group(str(lake / "train" / "s0"), mode="r")
    sa = ShardAttrs.from_attrs(read_node_attrs(lake / "train" / "s0") or {}, "s0")
    specs = shard_arrays(meta, sa.index.total_frames, sa.index.total_samples)
    assert sorted(name for name, _ in group.arrays()) == sorted(s.name for s in specs)
    for spec in specs:
        arr = group[spec.name]
        assert (tuple(arr.shape), tuple(arr.chunks), np.dtype(arr.dtype)) == (spec.shape, spec.chunks, spec.dtype)
        assert dict(arr.attrs)["fhb"] == spec.attrs
    assert set(sa.checksums) == {s.name for s in specs}


def test_shard_attrs_round_trip(build_lake) -> None:
    meta = make_meta()
    lake = build_lake(meta, {"train": {"s0": make_utts(meta, 3)}})
    raw = read_node_attrs(lake / "train" / "s0") or {}
    sa = ShardAttrs.from_attrs(raw, "s0")
    assert sa.to_attrs() == raw  # symmetric: what the writer wrote is what to_attrs gives
    again = ShardAttrs.from_attrs(json.loads(json.dumps(sa.to_attrs())), "s0")
    assert again.to_attrs() == sa.to_attrs() and again.committed and again.written["fhb_version"]


def test_commit_marker_is_one_rule() -> None:
    assert is_committed({COMMITTED_ATTR: True, "fhb_shard": {}})
    assert not is_committed(writing_attrs())
    assert not is_committed(None) and not is_committed({}) and not is_committed({COMMITTED_ATTR: "true"})


def test_duplicate_ids() -> None:
    shards = [("a", ["u1", "u2"]), ("b", ["u3", "u1"]), ("c", ["u2"])]
    assert list(duplicate_ids(shards)) == [("u1", "a", "b"), ("u2", "a", "c")]
    assert list(duplicate_ids([("a", ["x"]), ("b", ["y"])])) == []


def test_frame_rule_comes_from_the_lakes_teacher(tmp_path: Path) -> None:
    """A teacher with another conv stack: verify, reader and loader use its frame rule, not HuBERT's."""
    conv = "[(32, 10, 5)] + [(32, 4, 4)] * 2 + [(32, 2, 2)]"  # stride 160, receptive field 165
    teacher = TeacherMeta("toy-160", "ab" * 32, {"conv_feature_layers": conv}, 2, 8)
    assert teacher.num_frames(16000) == 99 and teacher.num_frames(164) == 0 and teacher.num_frames(165) == 1
    meta = LakeMeta(teacher=teacher, layers=(1, 2), codec=TargetCodec.default("float16", chunk_frames=16))
    rng = np.random.default_rng(0)
    utts = []
    for i, n in enumerate((3000, 4321, 8000)):
        t = teacher.num_frames(n)
        utts.append(Utt(f"u{i}", "1", "2", "", rng.integers(-99, 99, n).astype(np.int16),
                        rng.standard_normal((2, t, 8)).astype(np.float32)))
    from tests.lakes import write_lake

    lake = write_lake(tmp_path / "lake", meta, {"train": {"s0": utts}})
    assert verify_lake(lake) == []
    assert open_lake(lake).meta.num_frames(16000) == 99
    from fhb.training.loader import LakeLoader

    with LakeLoader(lake, ["train"], None, batch_size=2, workers=0, max_seconds=0.2) as loader:
        batches = list(loader)  # crops rely on the frame rule: HuBERT's would refuse this lake
    assert sum(len(b) for b in batches) == 3
    assert all(int(t) == teacher.num_frames(int(s)) for b in batches
               for s, t in zip(b.wav_lengths, b.target_lengths))


def test_unparsable_conv_stack_is_one_line() -> None:
    with pytest.raises(FhbError, match="conv_feature_layers.*re-extract"):
        TeacherMeta("t", "0" * 64, {"conv_feature_layers": "__import__('os')"}, 2, 8)


def test_codec_is_typed() -> None:
    meta = make_meta("int8")
    assert isinstance(meta.codec, TargetCodec) and meta.codec.has_scales
    back = LakeMeta.from_dict(json.loads(json.dumps(meta.to_dict())))
    assert back == meta and isinstance(back.codec, TargetCodec)
    assert replace(meta, codec=meta.codec.to_dict()).codec == meta.codec  # the dict form is accepted


def test_index_offsets_rule() -> None:
    idx = ShardIndex.from_dict({"utt_id": ["a", "b"], "speaker": ["1", "1"], "chapter": ["2", "2"],
                                "transcript": ["", ""], "num_samples": [400, 800], "num_frames": [1, 2],
                                "sample_offset": [0, 400], "frame_offset": [0, 2]}, "x")
    assert idx.consistency_problems() == ["frame_offset of 'b' (row 1): expected 1 (contiguous), found 2"]


def test_storage_does_not_import_torch() -> None:
    code = "import sys, fhb.storage, fhb.storage.schema; print(sorted(m for m in sys.modules if m == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_meta_round_trip() -> None:
    meta = make_meta("int8", cnn_dim=16).with_split("train", SplitInfo(("s0", "s1"), 3, 100, 5))
    d = json.loads(json.dumps(meta.to_dict()))
    back = LakeMeta.from_dict(d)
    assert back == meta
    assert back.format_version == FORMAT_VERSION == 1
    assert back.splits["train"].shards == ("s0", "s1")
    assert back.samples_per_frame == 320
    assert back.target_arrays == ("layer_01", "layer_02", "layer_03", "cnn")


def test_future_format_version_refused() -> None:
    d = make_meta().to_dict()
    d["format_version"] = 7
    with pytest.raises(FhbError, match="written by format version 7; this fhb reads version 1: upgrade fhb"):
        LakeMeta.from_dict(d, "lake X")


@pytest.mark.parametrize("key", ["teacher", "layers", "dtype", "codec", "splits"])
def test_missing_key_refused(key: str) -> None:
    d = make_meta().to_dict()
    del d[key]
    with pytest.raises(FhbError, match=f"missing \\['{key}'\\]"):
        LakeMeta.from_dict(d)


def test_not_a_lake_refused() -> None:
    with pytest.raises(FhbError, match="not an fhb lake"):
        LakeMeta.from_dict({"something": 1})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"layers": (0, 1)}, "stored layers"),
        ({"layers": (2, 1)}, "stored layers"),
        ({"layers": (5,)}, "stored layers"),
        ({"dtype": "float8"}, "lake dtype"),
    ],
)
def test_invalid_meta_refused(kwargs: dict, match: str) -> None:
    base = make_meta()
    args = {"teacher": base.teacher, "layers": base.layers, "dtype": "float16"} | kwargs
    with pytest.raises(FhbError, match=match):
        LakeMeta(**args)


def test_cnn_dim_must_match_flag() -> None:
    base = make_meta()
    with pytest.raises(FhbError, match="cnn_dim"):
        LakeMeta(teacher=base.teacher, layers=(1,), cnn_features=True)
    with pytest.raises(FhbError, match="cnn_dim"):
        LakeMeta(teacher=base.teacher, layers=(1,), cnn_dim=8)


def test_codec_validation() -> None:
    with pytest.raises(FhbError, match="scale_block_frames"):
        TargetCodec("int8", chunk_frames=100, scale_block_frames=64)
    d = TargetCodec.default("float16").to_dict() | {"delta_filter": True}
    with pytest.raises(FhbError, match="unknown keys.*upgrade fhb"):
        TargetCodec.from_dict(d)
    base = make_meta()
    with pytest.raises(FhbError, match="encoding for dtype 'int8'"):
        LakeMeta(teacher=base.teacher, layers=(1,), dtype="int8",
                 codec=TargetCodec.default("float16").to_dict())


def test_open_lake_refuses_future_version(build_lake, tmp_path: Path) -> None:
    lake = build_lake(make_meta(), {})
    zj = lake / "zarr.json"
    meta = json.loads(zj.read_text())
    meta["attributes"]["format_version"] = 7
    zj.write_text(json.dumps(meta))
    with pytest.raises(FhbError, match=f"lake {lake} was written by format version 7.*upgrade fhb"):
        open_lake(lake)


def test_open_lake_missing_or_foreign(tmp_path: Path) -> None:
    with pytest.raises(FhbError, match="found nothing at that path"):
        open_lake(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FhbError, match="without zarr.json"):
        open_lake(tmp_path / "plain")
    import zarr

    zarr.create_group(str(tmp_path / "foreign"), attributes={"hello": 1})
    with pytest.raises(FhbError, match="not an fhb lake"):
        open_lake(tmp_path / "foreign")


def test_meta_accepts_plain_dicts() -> None:
    base = make_meta()
    meta = LakeMeta(teacher=base.teacher.to_dict(), layers=[1, 2],
                    splits={"dev": {"shards": ["a"], "utterances": 1, "samples": 2, "frames": 0}})
    assert meta.teacher == base.teacher
    assert meta.layers == (1, 2) and meta.splits["dev"] == SplitInfo(("a",), 1, 2, 0)
    assert meta.codec == TargetCodec.default("float16")
