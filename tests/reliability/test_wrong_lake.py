"""Wrong or damaged lakes: a future format version, damaged metadata, corrupted chunk files.

Promises (docs/reliability.md, "Lakes"): a lake of another format version is refused by
``fhb inspect``, ``fhb verify``, ``fhb extract`` and ``open_lake`` with the fix (upgrade fhb, or
re-extract), and is left untouched; ``fhb verify`` finds a damaged chunk and names the shard, the
array and the chunk, exiting non-zero; reading the damaged utterance raises an ``FhbError`` naming
the shard instead of returning wrong numbers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fhb.errors import FhbError
from fhb.storage.reader import open_lake

from .conftest import assert_user_error, extract_args, lake_files

SHARD = "dev-clean/shard-00000"
CHUNK = f"{SHARD}/layer_02/c/0/0"


@pytest.fixture
def lake(reference_lake: Path, tmp_path: Path) -> Path:
    """A private copy of the reference lake to damage."""
    out = tmp_path / "lake"
    shutil.copytree(reference_lake, out)
    return out


def _edit_root_attrs(lake: Path, **changes: Any) -> None:
    meta = json.loads((lake / "zarr.json").read_text())
    meta["attributes"].update(changes)
    (lake / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("version,fix", [(2, "upgrade fhb"), (99, "upgrade fhb"), (0, "re-extract the lake")])
def test_other_format_version_is_refused_everywhere_and_left_untouched(
    version: int, fix: str, lake: Path, tiny_teacher_path: Path, libri_root: Path, cli: Any
) -> None:
    _edit_root_attrs(lake, format_version=version)
    before = {p: (lake / p).read_bytes() for p in lake_files(lake)}
    for command in ("inspect", "verify"):
        assert_user_error(cli(command, lake), f"format version {version}", fix)
    with pytest.raises(FhbError, match=f"format version {version}.*{fix}"):
        open_lake(lake)
    # extracting into it (to resume) refuses it too, and never rewrites it
    assert_user_error(cli(*extract_args(tiny_teacher_path, libri_root, lake)), f"format version {version}", fix)
    assert {p: (lake / p).read_bytes() for p in lake_files(lake)} == before


@pytest.mark.parametrize("damage,words", [
    ("not-json", "not an fhb lake"),
    ("version-as-string", "integer format_version"),
    ("foreign-zarr-group", "not an fhb lake"),
    ("missing-keys", "missing"),
])
def test_damaged_root_metadata_is_one_line(damage: str, words: str, lake: Path, cli: Any) -> None:
    root = lake / "zarr.json"
    if damage == "not-json":
        root.write_text(root.read_text()[:40])
    elif damage == "version-as-string":
        _edit_root_attrs(lake, format_version="1")
    elif damage == "foreign-zarr-group":
        meta = json.loads(root.read_text())
        meta["attributes"] = {"created_by": "someone else"}
        root.write_text(json.dumps(meta))
    else:
        meta = json.loads(root.read_text())
        del meta["attributes"]["splits"], meta["attributes"]["teacher"]
        root.write_text(json.dumps(meta))
    for command in ("inspect", "verify"):
        assert_user_error(cli(command, lake), str(lake.name), words)
    with pytest.raises(FhbError):
        open_lake(lake)


@pytest.mark.parametrize("path_kind", ["missing", "file", "empty-dir"])
def test_not_a_lake_is_one_line(path_kind: str, tmp_path: Path, cli: Any) -> None:
    target = tmp_path / "x"
    if path_kind == "file":
        target.write_text("hello")
    elif path_kind == "empty-dir":
        target.mkdir()
    for command in ("inspect", "verify"):
        assert_user_error(cli(command, target), str(target))


def _corrupt(lake: Path, how: str) -> None:
    chunk = lake / CHUNK
    data = bytearray(chunk.read_bytes())
    if how == "flip-bytes-in-payload":  # decodes, to other numbers
        for i in range(len(data) // 2, len(data) // 2 + 8):
            data[i] ^= 0xFF
    elif how == "flip-bytes-in-header":  # no longer decodes
        for i in range(20, 24):
            data[i] ^= 0xFF
    elif how == "truncated":
        data = data[: len(data) // 2]
    elif how == "swapped-with-another-layer":
        data = bytearray((lake / SHARD / "layer_01" / "c" / "0" / "0").read_bytes())
    if how == "deleted":
        chunk.unlink()
    else:
        chunk.write_bytes(bytes(data))


CORRUPTIONS = ["flip-bytes-in-payload", "flip-bytes-in-header", "truncated", "deleted", "swapped-with-another-layer"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_verify_names_shard_array_and_chunk(how: str, lake: Path, cli: Any) -> None:
    assert cli("verify", lake).code == 0
    _corrupt(lake, how)
    result = cli("verify", lake)
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = result.error_lines
    assert len(errors) == 1, errors
    assert f"{SHARD}/layer_02 chunk 0" in errors[0] and "c/0/0" in errors[0]
    assert "re-extract the shard" in errors[0]
    assert "verified" not in result.stderr


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_reading_a_corrupted_utterance_raises_naming_the_shard(how: str, lake: Path, reference_lake: Path) -> None:
    _corrupt(lake, how)
    view, ref = open_lake(lake)["dev-clean"], open_lake(reference_lake)["dev-clean"]
    garbage = []
    for utt in view.utterance_ids:
        try:
            got = view.targets(utt)
        except FhbError as exc:
            assert SHARD.split("/")[1] in str(exc) and "layer_02" in str(exc), str(exc)
            return
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"reading {utt} raised {type(exc).__name__} (not an FhbError naming the shard): {exc}")
        if not np.array_equal(got, ref.targets(utt)):
            garbage.append(utt)
    assert garbage, "the corruption reached no utterance (the test is wrong)"
    pytest.fail(f"reading {garbage} from a corrupted chunk returned wrong numbers without an error")


def test_tampered_shard_index_is_found(lake: Path, cli: Any) -> None:
    meta_path = lake / SHARD / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["fhb_shard"]["index"]["num_frames"][0] += 1
    meta_path.write_text(json.dumps(meta))
    result = cli("verify", lake)
    assert result.code == 1 and result.error_lines and all(SHARD in line for line in result.error_lines)


def test_deleted_shard_is_found(lake: Path, cli: Any) -> None:
    shutil.rmtree(lake / SHARD)
    result = cli("verify", lake)
    assert result.code == 1
    assert any(SHARD in line and "missing" in line for line in result.error_lines)


FAST_DECODE = """
import sys, numpy as np
from fhb.errors import FhbError
from fhb.storage.codecs import blosc_decode_items
raw = np.fromfile(sys.argv[1], dtype=np.uint8)
buf = np.zeros(4 << 20, np.uint8)  # as the reader does: the file's bytes in a larger reused buffer
buf[: raw.size] = raw
out = np.empty(int(sys.argv[2]), np.float16)
try:
    blosc_decode_items(buf[: raw.size], 0, out)
    print("decoded")
except FhbError as exc:
    print("FhbError", exc)
"""


def test_fast_chunk_decoder_survives_a_corrupted_header(lake: Path) -> None:
    """The loader's direct Blosc decoder given a chunk whose header names another typesize (one flipped
    byte): an FhbError, not c-blosc writing past the output buffer (found crashing the process)."""
    import subprocess
    import sys

    codecs = pytest.importorskip("fhb.storage.codecs")
    if not hasattr(codecs, "blosc_decode_items"):
        pytest.skip("no direct Blosc decoder in fhb.storage.codecs")
    chunk = lake / CHUNK
    data = bytearray(chunk.read_bytes())
    data[3] = 8  # Blosc header byte 3: typesize (2 for float16)
    chunk.write_bytes(bytes(data))
    frames = open_lake(lake)["dev-clean"].shard("shard-00000").num_frames
    done = subprocess.run([sys.executable, "-c", FAST_DECODE, str(chunk), str(frames * 64)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"the decoder crashed the process (exit {done.returncode}): {done.stderr[-500:]}"
    assert done.stdout.startswith("FhbError"), done.stdout
