"""The lake's checksums (schema + writer): crc32c of every stored chunk bound to its place, of each
array's zarr.json and of the index (shard format 2); legacy shards (format 1) still read and verify.

The attacks on a whole lake, through the loader, `fhb distill`, `fhb evaluate` and `fhb verify`, are
in ``tests/reliability/test_trust_checksums.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore, WrapperStore

from fhb.errors import FhbError
from fhb.storage import crc32c as crc_module
from fhb.storage import open_lake, verify_lake
from fhb.storage.crc32c import crc32c
from fhb.storage.layout import read_node_attrs
from fhb.storage.schema import (
    LEGACY_SHARD_FORMAT,
    SHARD_FORMAT_VERSION,
    ShardAttrs,
    chunk_checksum,
    index_checksum,
    metadata_checksum,
    shard_arrays,
)
from tests.lakes import make_legacy

from .conftest import make_meta, make_utts


def test_crc32c_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    data = np.random.default_rng(0).integers(0, 256, 100_003, dtype=np.uint8)
    want = google_crc32c.value(data.tobytes())
    assert crc_module.hardware_crc32c()  # the installed google-crc32c has its C library
    assert crc32c(data) == crc32c(data.tobytes()) == crc32c(memoryview(data.tobytes())) == want
    assert crc32c(data[50:], crc32c(data[:50])) == want  # extends
    monkeypatch.setattr(crc_module, "_EXTEND", False)  # the copying path: same numbers
    assert not crc_module.hardware_crc32c()
    assert crc32c(data) == crc32c(data.tobytes()) == want


def test_checksum_is_bound_to_its_place() -> None:
    data = b"the same stored bytes"
    base = chunk_checksum("train", "s0", "layer_01", 3, data)
    assert base == chunk_checksum("train", "s0", "layer_01", 3, bytearray(data))
    others = [chunk_checksum("train", "s0", "layer_01", 4, data), chunk_checksum("train", "s0", "layer_02", 3, data),
              chunk_checksum("train", "s1", "layer_01", 3, data), chunk_checksum("dev", "s0", "layer_01", 3, data),
              metadata_checksum("train", "s0", "layer_01", data)]
    assert base not in others and len(set(others)) == len(others)


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_writer_records_the_checksums_of_what_it_stored(build_lake, dtype: str) -> None:
    meta = make_meta(dtype, cnn_dim=8)
    lake = build_lake(meta, {"train": {"s0": make_utts(meta, 5)}})
    d = lake / "train" / "s0"
    raw = read_node_attrs(d) or {}
    sa = ShardAttrs.from_attrs(raw, "s0")
    assert sa.format_version == SHARD_FORMAT_VERSION and sa.verifiable
    sums = raw["fhb_shard"]["checksums"]
    assert (sums["algorithm"], sums["unit"], sums["bound_to"]) == ("crc32c", "stored-chunk", "split/shard/array/chunk")
    assert sums["index"] == index_checksum("train", "s0", sa.index)
    specs = shard_arrays(meta, sa.index.total_frames, sa.index.total_samples)
    assert set(sa.checksums) == set(sa.metadata_checksums) == {s.name for s in specs}
    for spec in specs:
        arr = zarr.open_array(str(d / spec.name), mode="r")
        assert sa.metadata_checksums[spec.name] == metadata_checksum("train", "s0", spec.name,
                                                                      (d / spec.name / "zarr.json").read_bytes())
        n = -(-spec.shape[0] // spec.chunks[0])
        assert len(sa.checksums[spec.name]) == n
        for i in range(n):
            stored = (d / spec.name / arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))).read_bytes()
            assert sa.checksums[spec.name][i] == chunk_checksum("train", "s0", spec.name, i, stored)
            assert sa.chunk_problem(spec.name, i, stored) is None
    assert verify_lake(lake) == []


def _edit_json(path: Path, edit: Any) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_edited_index_is_refused(build_lake) -> None:
    meta = make_meta()
    lake = build_lake(meta, {"train": {"s0": make_utts(meta, 4)}})

    def shift(doc: dict[str, Any]) -> None:  # still contiguous and summing to T: only the checksum sees it
        idx = doc["attributes"]["fhb_shard"]["index"]
        idx["num_frames"][0] += 1
        idx["num_frames"][1] -= 1
        idx["frame_offset"][1] += 1

    _edit_json(lake / "train" / "s0" / "zarr.json", shift)
    with pytest.raises(FhbError, match=r"shard train/s0: index crc32c .* differs") as err:
        open_lake(lake)["train"]
    assert "\n" not in str(err.value)
    assert any("index crc32c" in str(f) for f in verify_lake(lake))


def test_newer_shard_format_is_refused(build_lake) -> None:
    meta = make_meta()
    lake = build_lake(meta, {"train": {"s0": make_utts(meta, 2)}})
    _edit_json(lake / "train" / "s0" / "zarr.json",
               lambda doc: doc["attributes"]["fhb_shard"].__setitem__("format_version", SHARD_FORMAT_VERSION + 1))
    with pytest.raises(FhbError, match="upgrade fhb"):
        open_lake(lake)["train"]


def test_shard_attributes_from_another_shard_are_refused(build_lake) -> None:
    meta = make_meta()
    utts = make_utts(meta, 4)
    lake = build_lake(meta, {"train": {"s0": utts[:2], "s1": utts[2:]}})
    (lake / "train" / "s1" / "zarr.json").write_bytes((lake / "train" / "s0" / "zarr.json").read_bytes())
    with pytest.raises(FhbError, match="expected the attributes of shard train/s1, found those of train/s0"):
        open_lake(lake)["train"]
    assert any("found those of train/s0" in str(f) for f in verify_lake(lake))


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


class _Remote(WrapperStore):
    """A store that is not a LocalStore: the readers go through zarr, not the chunk files."""

    def _with_store(self, store: Any) -> "_Remote":
        return _Remote(store)


@pytest.mark.parametrize("store", ["local", "other"])
def test_random_access_reader_checks_stored_bytes(build_lake, store: str) -> None:
    meta = make_meta()
    utts = make_utts(meta, 4, seed=3)
    lake = build_lake(meta, {"train": {"s0": utts}})
    opened = open_lake(lake if store == "local" else _Remote(LocalStore(lake, read_only=True)))
    np.testing.assert_array_equal(opened["train"].targets(utts[0].utt_id), utts[0].targets.astype(np.float16))
    _flip(lake / "train" / "s0" / "layer_02" / "c" / "0" / "0")
    opened = open_lake(lake if store == "local" else _Remote(LocalStore(lake, read_only=True)))
    with pytest.raises(FhbError, match=r"shard train/s0, array layer_02, chunk 0: crc32c") as err:
        opened["train"].targets(utts[0].utt_id)
    assert "\n" not in str(err.value)
    np.testing.assert_array_equal(opened["train"].audio(utts[0].utt_id), utts[0].audio)
    _flip(lake / "train" / "s0" / "audio" / "c" / "0")
    with pytest.raises(FhbError, match=r"shard train/s0, array audio, chunk 0: crc32c"):
        open_lake(lake if store == "local" else _Remote(LocalStore(lake, read_only=True)))["train"].audio(utts[0].utt_id)


def test_legacy_shards_read_and_verify(build_lake) -> None:
    meta = make_meta("int8")
    utts = make_utts(meta, 4, seed=5)
    lake = build_lake(meta, {"train": {"s0": utts[:2], "s1": utts[2:]}})
    before = {u.utt_id: open_lake(lake)["train"].targets(u.utt_id) for u in utts}
    make_legacy(lake)
    sa = ShardAttrs.from_attrs(read_node_attrs(lake / "train" / "s0") or {}, "s0")
    assert sa.format_version == LEGACY_SHARD_FORMAT and not sa.verifiable and sa.metadata_checksums == {}
    assert sa.to_attrs()["fhb_shard"]["checksums"].keys() == {"algorithm", "unit", "arrays"}
    split = open_lake(lake)["train"]
    for u in utts:
        np.testing.assert_array_equal(split.targets(u.utt_id), before[u.utt_id])
    assert verify_lake(lake) == []
    # What a legacy shard still catches: damage that changes decoded values, in `fhb verify` and the
    # random-access reader (whole chunks, crc32 of the values).
    _flip(lake / "train" / "s1" / "layer_01" / "c" / "0" / "0", at=0.9)
    errors = [str(f) for f in verify_lake(lake) if f.severity == "error"]
    assert any("train/s1/layer_01 chunk 0" in e for e in errors), errors
    with pytest.raises(FhbError, match=r"shard train/s1, array layer_01, chunk"):
        open_lake(lake)["train"].targets(utts[2].utt_id)


def test_verify_names_a_damaged_chunk_and_an_edited_zarr_json(build_lake) -> None:
    meta = make_meta()
    lake = build_lake(meta, {"train": {"s0": make_utts(meta, 4)}})
    _flip(lake / "train" / "s0" / "layer_03" / "c" / "1" / "0")

    def clevel(doc: dict[str, Any]) -> None:
        for codec in doc["codecs"]:
            if codec["name"] == "blosc":
                codec["configuration"]["clevel"] = 9

    _edit_json(lake / "train" / "s0" / "layer_01" / "zarr.json", clevel)
    errors = [str(f) for f in verify_lake(lake) if f.severity == "error"]
    assert any("train/s0/layer_03 chunk 1" in e and "crc32c" in e for e in errors), errors
    assert any("train/s0/layer_01" in e and "zarr.json" in e for e in errors), errors
