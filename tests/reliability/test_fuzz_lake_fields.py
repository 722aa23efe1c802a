"""Wrong types in a shard's metadata and in the root's split listing (the root's own attributes are
fuzzed in ``test_trust_lake.py``).

Promise (docs/reliability.md, "Every user error is one line"): any value of another type in a
shard's ``zarr.json`` attributes (``committed``, every ``fhb_shard`` key, the index columns,
checksums) or in a split's listing is a finding of ``fhb verify`` (exit 1) or one line (exit 2)
for ``verify``, ``inspect`` and ``distill``; never a traceback.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import TRACEBACK, small_distill_args

SHARD = "train-clean-100/shard-00000"
SHARD_KEYS = ["committed", "fhb_shard", "fhb_shard.format_version", "fhb_shard.split", "fhb_shard.name",
              "fhb_shard.num_utterances", "fhb_shard.num_frames", "fhb_shard.num_samples", "fhb_shard.index",
              "fhb_shard.index.utt_id", "fhb_shard.index.num_frames", "fhb_shard.index.frame_offset",
              "fhb_shard.index.num_samples", "fhb_shard.index.sample_offset", "fhb_shard.index.transcript",
              "fhb_shard.skipped", "fhb_shard.checksums", "fhb_shard.checksums.arrays",
              "fhb_shard.checksums.arrays.layer_01"]
SPLIT_KEYS = ["splits.train-clean-100", "splits.train-clean-100.shards", "splits.train-clean-100.utterances",
              "splits.train-clean-100.frames", "splits.train-clean-100.samples"]
READ_KEYS = {"fhb_shard", "fhb_shard.split", "fhb_shard.name", "fhb_shard.index", "fhb_shard.index.utt_id",
             "fhb_shard.index.num_frames", "fhb_shard.index.frame_offset",
             "fhb_shard.checksums", "fhb_shard.checksums.arrays", "fhb_shard.checksums.arrays.layer_01"}
"""Keys verify must find damaged (the shard's totals are derived from its index, not read)."""
WRONG = [None, "x", -1, 1e308, [], {}, [["nested"]], True]


def _set(attrs: dict[str, Any], dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    node = attrs
    for key in parents:
        node = node[key]
    node[last] = value


@pytest.fixture(scope="module")
def field_lake(reference_lake: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("fields") / "lake"
    shutil.copytree(reference_lake, lake)
    return lake


def _file_of(lake: Path, key: str) -> Path:
    return lake / (f"{SHARD}/zarr.json" if key in SHARD_KEYS else "zarr.json")


def _check(result: Any, what: object) -> None:
    assert TRACEBACK not in result.stderr + result.stdout, (what, result.stderr[-3000:])
    assert result.code in (0, 1, 2), (what, result.code, result.stderr[-2000:])
    if result.code == 2:
        assert len(result.error_lines) == 1, (what, result.stderr[-2000:])


@pytest.mark.parametrize("key", SHARD_KEYS + SPLIT_KEYS)
def test_wrong_types_in_shard_and_split_metadata_verify_and_inspect(key: str, field_lake: Path, cli: Any) -> None:
    path = _file_of(field_lake, key)
    original = path.read_text()
    try:
        for value in WRONG:
            meta = json.loads(original)
            _set(meta["attributes"], key, value)
            path.write_text(json.dumps(meta))
            for command in ("verify", "inspect"):
                result = cli(command, str(field_lake))
                _check(result, (command, key, value))
                right_type = isinstance(value, str) and key in ("fhb_shard.split", "fhb_shard.name")
                if command == "verify" and key in READ_KEYS and not right_type:
                    assert result.code != 0, (key, value, "verify passed a damaged shard")
    finally:
        path.write_text(original)


@pytest.mark.slow
@given(key=st.sampled_from(SHARD_KEYS + SPLIT_KEYS), value=st.sampled_from(WRONG))
@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_wrong_types_in_shard_and_split_metadata_distill(key: str, value: object, field_lake: Path, cli: Any) -> None:
    path = _file_of(field_lake, key)
    original = path.read_text()
    run = field_lake.parent / "run"
    try:
        meta = json.loads(original)
        _set(meta["attributes"], key, value)
        path.write_text(json.dumps(meta))
        result = cli(*small_distill_args(field_lake, run, "--steps", "1", "--no-progress"))
        _check(result, ("distill", key, value))
        if result.code == 2:
            assert not run.exists(), (key, value, "a refused run left its directory")
    finally:
        path.write_text(original)
        shutil.rmtree(run, ignore_errors=True)
