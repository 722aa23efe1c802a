"""Training never consumes damaged or misplaced targets silently (Trust, section 2: the checksums).

Promises (docs/reliability.md, "Trust: checksums of everything the loader decodes"): every chunk
file the loader (and so ``fhb distill`` and ``fhb evaluate``) decodes is checked against the crc32c
written for it, bound to its split, shard, array and position, before any of it is decoded; every
array's ``zarr.json`` against its checksum and the contract (shape, chunks, dtype); every shard's
index against its checksum. Each attack below fails with one line naming the shard, the array and
the chunk (or the index). ``fhb verify`` finds the same damage with the same rule. A lake written
before these checksums (shard format 1) still reads and trains.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from fhb.errors import FhbError
from fhb.storage.fitted import fit_codecs, with_fitted
from fhb.storage.schema import layer_array_name
from fhb.training.loader import LakeLoader
from tests.lakes import make_legacy, write_lake
from tests.storage.conftest import make_meta, make_utts

from .conftest import assert_user_error, small_distill_args

# -- attacks on a lake directory ------------------------------------------------------------------


def _chunk(lake: Path, shard: str, array: str, i: int = 0, split: str = "train") -> Path:
    rest = "/0" * (2 if array.endswith("_scale") else 0 if array == "audio" else 1)
    return lake / split / shard / array / f"c/{i}{rest}"


def _flip(path: Path, at: float = 0.5) -> None:
    """One bit flipped inside the compressed data (past the Blosc header and block index)."""
    data = bytearray(path.read_bytes())
    data[max(int(len(data) * at), 40)] ^= 0x04
    path.write_bytes(bytes(data))


def _swap(a: Path, b: Path) -> None:
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)


def _edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _blosc(doc: dict[str, Any]) -> dict[str, Any]:
    return next(c["configuration"] for c in doc["codecs"] if c["name"] == "blosc")


def _edit_block_index(path: Path) -> None:
    """The Blosc frame's block index (``bstarts``, right after the 16-byte header) points elsewhere."""
    data = bytearray(path.read_bytes())
    start = int.from_bytes(data[16:20], "little")
    data[16:20] = (start + 8).to_bytes(4, "little")
    path.write_bytes(bytes(data))


ATTACKS: dict[str, tuple[Callable[[Path], None], str]] = {
    # name: (damage, what the one line must name: a regex)
    "bit-flip-in-block": (lambda lake: _flip(_chunk(lake, "s1", "layer_02", 1)),
                          r"shard train/s1, array layer_02, chunk 1: crc32c"),
    "swap-between-layers": (lambda lake: _swap(_chunk(lake, "s1", "layer_01"), _chunk(lake, "s1", "layer_03")),
                            r"shard train/s1, array layer_0[13], chunk 0: crc32c"),
    "swap-between-shards": (lambda lake: _swap(_chunk(lake, "s0", "layer_02"), _chunk(lake, "s1", "layer_02")),
                            r"shard train/s[01], array layer_02, chunk 0: crc32c"),
    "swap-between-positions": (lambda lake: _swap(_chunk(lake, "s1", "layer_02", 0), _chunk(lake, "s1", "layer_02", 1)),
                               r"shard train/s1, array layer_02, chunk [01]: crc32c"),
    "copy-of-a-valid-chunk": (lambda lake: shutil.copyfile(_chunk(lake, "s0", "layer_03", 2), _chunk(lake, "s1", "layer_03", 2)),
                              r"shard train/s1, array layer_03, chunk 2: crc32c"),
    "blosc-block-index-edited": (lambda lake: _edit_block_index(_chunk(lake, "s1", "layer_01", 1)),
                                 r"shard train/s1, array layer_01, chunk 1: crc32c"),
    "truncated-chunk": (lambda lake: _chunk(lake, "s1", "layer_01").write_bytes(_chunk(lake, "s1", "layer_01").read_bytes()[:-7]),
                        r"shard train/s1, array layer_01, chunk 0: crc32c"),
    "audio-bit-flip": (lambda lake: _flip(_chunk(lake, "s1", "audio")), r"shard train/s1, array audio, chunk 0: crc32c"),
    "codec-parameters-edited": (lambda lake: _edit_json(lake / "train/s1/layer_02/zarr.json",
                                                        lambda d: _blosc(d).__setitem__("typesize", 4)),
                                r"shard train/s1, array layer_02, zarr.json: crc32c"),
    "dtype-edited": (lambda lake: _edit_json(lake / "train/s1/layer_02/zarr.json",
                                             lambda d: d.__setitem__("data_type", "int16")),
                     r"shard train/s1, array layer_02: expected shape .* dtype float16 .* dtype int16"),
    "shape-edited": (lambda lake: _edit_json(lake / "train/s1/layer_03/zarr.json",
                                             lambda d: d["shape"].__setitem__(0, d["shape"][0] - 1)),
                     r"shard train/s1, array layer_03: expected shape"),
    "root-codec-edited": (lambda lake: _edit_json(lake / "zarr.json",
                                                  lambda d: d["attributes"]["codec"].__setitem__("chunk_frames", 32)),
                          r"shard train/s[01], array \w+: expected shape .*chunks \[32, 24\]"),
}


def _lake(tmp_path: Path, dtype: str = "float16") -> tuple[Path, list[Any]]:
    meta = make_meta(dtype, chunk_frames=64)
    utts = make_utts(meta, 6, seed=2, min_samples=20000, max_samples=40000)
    return write_lake(tmp_path / "lake", meta, {"train": {"s0": utts[:3], "s1": utts[3:]}}), utts


def _epoch(lake: Path, workers: int = 0, layers: list[int] | None = None) -> int:
    with LakeLoader(lake, ["train"], layers, batch_size=2, workers=workers, shuffle=False) as loader:
        return sum(len(b) for b in loader)


def _one_line(exc: pytest.ExceptionInfo[FhbError], pattern: str) -> str:
    line = str(exc.value)
    assert "\n" not in line and "Traceback" not in line, line
    assert re.search(pattern, line), f"{pattern!r} not in {line!r}"
    return line


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_loader_refuses_each_attack_with_one_line(attack: str, tmp_path: Path) -> None:
    lake, utts = _lake(tmp_path)
    assert _epoch(lake) == len(utts)  # sound before
    damage, pattern = ATTACKS[attack]
    damage(lake)
    with pytest.raises(FhbError) as exc:
        _epoch(lake)
    _one_line(exc, pattern)


def test_loader_workers_report_the_one_line(tmp_path: Path) -> None:
    lake, _ = _lake(tmp_path)
    _flip(_chunk(lake, "s0", "layer_01", 0))
    with pytest.raises(FhbError) as exc:
        _epoch(lake, workers=1)
    _one_line(exc, r"^shard train/s0, array layer_01, chunk 0: crc32c")


def test_int8_scales_are_checked(tmp_path: Path) -> None:
    lake, _ = _lake(tmp_path, "int8")
    assert _epoch(lake) == 6
    _flip(_chunk(lake, "s1", "layer_02_scale", 1))
    with pytest.raises(FhbError) as exc:
        _epoch(lake)
    _one_line(exc, r"shard train/s1, array layer_02_scale, chunk 1: crc32c")


def test_fitted_codes_are_checked(tmp_path: Path) -> None:
    base = make_meta("float16", chunk_frames=64)
    utts = make_utts(base, 6, seed=4, min_samples=20000)
    samples = {layer_array_name(k): np.concatenate([u.targets[i] for u in utts]) for i, k in enumerate(base.layers)}
    codecs = fit_codecs("pca", samples, 0.1)
    lake = write_lake(tmp_path / "lake", with_fitted(base, codecs), {"train": {"s0": utts[:3], "s1": utts[3:]}},
                      fitted=codecs)
    assert _epoch(lake) == 6
    _flip(_chunk(lake, "s1", "layer_02", 1))
    with pytest.raises(FhbError) as exc:
        _epoch(lake)
    _one_line(exc, r"shard train/s1, array layer_02, chunk 1: crc32c")


def test_edited_index_and_moved_shards_are_refused(tmp_path: Path) -> None:
    lake, _ = _lake(tmp_path)

    def shift(doc: dict[str, Any]) -> None:  # consistent offsets: only the checksum tells
        idx = doc["attributes"]["fhb_shard"]["index"]
        idx["num_frames"][1] += 3
        idx["num_frames"][2] -= 3
        idx["frame_offset"][2] += 3

    original = (lake / "train/s1/zarr.json").read_bytes()
    _edit_json(lake / "train/s1/zarr.json", shift)
    with pytest.raises(FhbError) as exc:
        _epoch(lake)
    _one_line(exc, r"shard train/s1: index crc32c .* differs from the one written")
    (lake / "train/s1/zarr.json").write_bytes(original)
    assert _epoch(lake) == 6
    (lake / "train/s0").rename(lake / "train/tmp")  # the two shard directories swapped
    (lake / "train/s1").rename(lake / "train/s0")
    (lake / "train/tmp").rename(lake / "train/s1")
    with pytest.raises(FhbError) as exc:
        _epoch(lake)
    _one_line(exc, r"shard train/s0: expected the attributes of shard train/s0, found those of train/s1")


def test_audio_only_loader_checks_audio(tmp_path: Path) -> None:
    lake, _ = _lake(tmp_path)
    _flip(_chunk(lake, "s0", "audio", 1))
    with pytest.raises(FhbError) as exc:
        _epoch(lake, layers=[])
    _one_line(exc, r"shard train/s0, array audio, chunk 1: crc32c")


def test_legacy_lake_trains_and_says_what_it_cannot_check(tmp_path: Path) -> None:
    """A lake of shard format 1 reads and trains; its loader checks the structure (shape, chunks,
    dtype against the contract) but not the chunks' bytes: `fhb verify` does (crc32 of values)."""
    lake, utts = _lake(tmp_path)
    make_legacy(lake)
    assert _epoch(lake) == len(utts)
    _edit_json(lake / "train/s1/layer_02/zarr.json", lambda d: d.__setitem__("data_type", "int16"))
    with pytest.raises(FhbError) as exc:
        _epoch(lake)
    _one_line(exc, r"shard train/s1, array layer_02: expected shape .* dtype float16")


# -- through the CLI: fhb distill, fhb evaluate, fhb verify -----------------------------------------


def _shards(lake: Path, split: str = "train-clean-100") -> list[str]:
    return json.loads((lake / "zarr.json").read_text())["attributes"]["splits"][split]["shards"]


def _layer_arrays(shard: Path) -> list[str]:
    return sorted(p.name for p in shard.iterdir() if p.name.startswith("layer_"))


def test_distill_evaluate_and_verify_refuse_a_damaged_chunk(reference_lake: Path, small_run: Path,
                                                            tmp_path: Path, cli: Any) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(reference_lake, lake)
    split = lake / "train-clean-100"
    for shard in _shards(lake):  # every chunk distill could read first
        for array in _layer_arrays(split / shard):
            _flip(split / shard / array / "c/0/0")
    line = assert_user_error(cli(*small_distill_args(lake, tmp_path / "run")), "crc32c", ", chunk 0: ")
    assert re.search(r"shard train-clean-100/[\w.-]+, array layer_\d+, chunk 0", line), line
    evaluated = cli("evaluate", str(small_run), "--cache", str(lake), "--split", "train-clean-100")
    line = assert_user_error(evaluated, "crc32c", ", chunk 0: ")
    assert re.search(rf"shard train-clean-100/{_shards(lake)[0]}, array layer_\d+, chunk 0", line), line
    verified = cli("verify", str(lake))
    assert verified.code == 1 and "crc32c" in verified.stdout + verified.stderr


def test_evaluate_names_the_one_damaged_shard(reference_lake: Path, small_run: Path, tmp_path: Path,
                                              cli: Any) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(reference_lake, lake)
    shard = _shards(lake)[-1]
    array = _layer_arrays(lake / "train-clean-100" / shard)[-1]
    _swap(lake / "train-clean-100" / shard / array / "c/0/0",
          lake / "train-clean-100" / _shards(lake)[0] / array / "c/0/0")
    line = assert_user_error(cli("evaluate", str(small_run), "--cache", str(lake), "--split", "train-clean-100"))
    assert re.search(rf"shard train-clean-100/({shard}|{_shards(lake)[0]}), array {array}, chunk 0: crc32c", line), line


def test_legacy_lake_distills_evaluates_and_verifies(reference_lake: Path, small_run: Path, tmp_path: Path,
                                                      cli: Any) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(reference_lake, lake)
    make_legacy(lake)
    assert cli("verify", str(lake)).code == 0
    trained = cli(*small_distill_args(lake, tmp_path / "run"))
    assert trained.code == 0, trained.stderr[-3000:]
    evaluated = cli("evaluate", str(small_run), "--cache", str(lake), "--split", "train-clean-100")
    assert evaluated.code == 0, evaluated.stderr[-3000:]
