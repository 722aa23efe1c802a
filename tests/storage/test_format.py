"""LakeMeta schema: round trip, validation, refusal of other format versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhb.errors import FhbError
from fhb.storage import FORMAT_VERSION, LakeMeta, SplitInfo, TargetCodec, open_lake

from .conftest import make_meta


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
