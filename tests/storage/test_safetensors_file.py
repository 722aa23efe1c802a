"""fhb's numpy safetensors reader/writer: round trip, interoperability with the safetensors
package (reference, skipped where absent), damaged files, hostile headers refused unallocated."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fhb.errors import FhbError
from fhb.files import sha256_file
from fhb.storage.safetensors_file import (
    MAX_HEADER_BYTES,
    read_header,
    read_safetensors,
    write_safetensors,
)


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "encoder.layers.0.fc1.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "encoder.layers.0.fc1.bias": rng.standard_normal(8).astype(np.float32),
        "a.scalar": np.array(3.5, dtype=np.float32),
        "b.empty": np.zeros((0, 3), dtype=np.float32),
        "c.int": np.arange(5, dtype=np.int64),
        "d.half": rng.standard_normal(3).astype(np.float16),
    }


def _raw(path: Path, header: dict, data: bytes, pad: bool = True) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def test_round_trip_and_digest(tmp_path: Path) -> None:
    t = _tensors()
    sha, size = write_safetensors(tmp_path / "m.safetensors", t, {"format": "pt"})
    assert sha == hashlib.sha256((tmp_path / "m.safetensors").read_bytes()).hexdigest() == sha256_file(tmp_path / "m.safetensors")
    assert size == (tmp_path / "m.safetensors").stat().st_size
    back, metadata = read_safetensors(tmp_path / "m.safetensors", sha256=sha)
    assert metadata == {"format": "pt"}
    assert sorted(back) == sorted(t)
    for k, v in t.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k
        assert back[k].flags.writeable  # views of one writable buffer: torch.from_numpy takes them as is
    assert read_header(tmp_path / "m.safetensors").data_start % 8 == 0


def test_interoperates_with_the_safetensors_package(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.numpy")
    t = _tensors()
    write_safetensors(tmp_path / "fhb.safetensors", t)
    theirs = st.load_file(str(tmp_path / "fhb.safetensors"))
    assert all(np.array_equal(theirs[k], v) and theirs[k].dtype == v.dtype for k, v in t.items())
    st.save_file(t, str(tmp_path / "st.safetensors"))
    ours, _ = read_safetensors(tmp_path / "st.safetensors")
    assert all(np.array_equal(ours[k], v) and ours[k].dtype == v.dtype for k, v in t.items())


def test_flipped_byte_fails_the_digest(tmp_path: Path) -> None:
    p = tmp_path / "m.safetensors"
    sha, size = write_safetensors(p, _tensors())
    b = bytearray(p.read_bytes())
    b[size - 7] ^= 0x01
    p.write_bytes(bytes(b))
    with pytest.raises(FhbError, match="expected sha256"):
        read_safetensors(p, sha256=sha)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "m.safetensors"
    _, size = write_safetensors(p, _tensors())
    p.write_bytes(p.read_bytes()[: size - 4])
    with pytest.raises(FhbError, match="the file holds"):
        read_safetensors(p)
    p.write_bytes(b"\x01\x02")
    with pytest.raises(FhbError, match="2 bytes"):
        read_safetensors(p)


HOSTILE = {
    "huge tensor": ({"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 4 << 40]}}, "the file holds"),
    "shape vs bytes": ({"w": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 16]}}, "declared over 16 bytes"),
    "negative dim": ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, "with shape"),
    "overlap": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                 "v": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, "holes or overlaps"),
    "unknown dtype": ({"w": {"dtype": "F8_E4M3", "shape": [16], "data_offsets": [0, 16]}}, "described as"),
    "not a map": ([1, 2, 3], "header of type list"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_headers_are_refused_without_allocating(case: str, tmp_path: Path) -> None:
    header, message = HOSTILE[case]
    p = _raw(tmp_path / "h.safetensors", header, b"\0" * 16)
    tracemalloc.start()
    try:
        with pytest.raises(FhbError, match=message):
            read_safetensors(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing near the declared sizes was allocated


def test_hostile_header_length_is_refused_without_reading_it(tmp_path: Path) -> None:
    for n in (1 << 62, MAX_HEADER_BYTES + 1, 10_000):
        p = tmp_path / "h.safetensors"
        p.write_bytes(n.to_bytes(8, "little") + b"{}" + b"\0" * 64)
        tracemalloc.start()
        try:
            with pytest.raises(FhbError, match="a header of"):
                read_safetensors(p)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20


def test_unsupported_dtype_is_refused_on_write(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dtype"):
        write_safetensors(tmp_path / "x.safetensors", {"c": np.zeros(2, dtype=np.complex64)})
