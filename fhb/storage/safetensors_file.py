"""A strict reader and writer of the safetensors format, in numpy (no torch, no pickle).

Format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length
``N``, ``N`` bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}``, then the tensors' bytes (little-endian, C order), offsets relative
to the end of the header. fhb writes it itself (in one pass, hashing as it writes) and reads it
itself (one read into one buffer, hashed, the arrays are views of it), so the lake's stored
teacher needs neither torch nor the ``safetensors`` package; the package reads fhb's files
(tested) and fhb reads its files.

The header comes from a file that may be damaged or hostile: it is validated before anything
but the header is allocated — its length is bounded (`MAX_HEADER_BYTES`), every tensor's
``shape x itemsize`` must equal its byte range, and the ranges must tile the data area exactly
(no holes, no overlaps, ending at the end of the file).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fhb.errors import FhbError

MAX_HEADER_BYTES = 16 * 1024 * 1024
"""Largest header accepted (HuBERT Base's is ~25 kB; safetensors itself allows 100 MB)."""

METADATA_KEY = "__metadata__"

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
"""safetensors dtype names fhb reads and writes (bfloat16 has no numpy dtype: not supported)."""

_NAMES = {v: k for k, v in DTYPES.items()}
_BLOCK = 4 << 20  # bytes read and hashed at a time
_ALIGN = 8  # the data area starts 8-byte aligned (the header is padded with spaces, as safetensors does)


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header: dtype, shape and byte range in the data area."""

    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    """A validated header: its tensors (in file order), metadata and where the data starts."""

    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int

    @property
    def file_size(self) -> int:
        """Bytes of the whole file this header describes."""
        return self.data_start + max((t.end for t in self.tensors.values()), default=0)


def write_safetensors(
    path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> tuple[str, int]:
    """Write ``tensors`` (widest dtype first, then by name) to ``path`` and fsync it.

    Returns:
        The file's hex sha256 and its size in bytes (hashed while writing, not re-read).
    """
    header: dict[str, object] = {}
    if metadata:
        header[METADATA_KEY] = {str(k): str(v) for k, v in metadata.items()}
    arrays: list[np.ndarray] = []
    offset = 0
    # widest dtype first, then by name (as safetensors orders them): every tensor stays aligned
    for name in sorted(tensors, key=lambda k: (-np.asarray(tensors[k]).dtype.itemsize, k)):
        a = np.asarray(tensors[name])
        dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if dtype not in _NAMES:
            raise ValueError(f"write_safetensors: tensor {name!r} has dtype {a.dtype}, expected one of {sorted(_NAMES)}")
        a = np.asarray(a, dtype=dtype, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        header[name] = {"dtype": _NAMES[dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % _ALIGN)
    digest = hashlib.sha256()
    size = 0
    with open(path, "wb") as f:
        for part in (len(text).to_bytes(8, "little"), text, *(memoryview(a.reshape(-1).view(np.uint8)) for a in arrays)):
            digest.update(part)
            f.write(part)
            size += len(part)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest(), size


def parse_header(prefix: bytes, file_size: int, where: str) -> Header:
    """Validate the header at the start of a file of ``file_size`` bytes.

    Args:
        prefix: at least the first ``8 + N`` bytes of the file (see `read_header`).
        file_size: the file's size in bytes.
        where: the file, for messages.

    Raises:
        FhbError: naming the problem (truncated, oversized or inconsistent header).
    """
    def bad(found: str) -> FhbError:
        return FhbError(f"{where}: expected a safetensors file, found {found}; the file is damaged or "
                        f"not what fhb wrote: write it again")

    if file_size < 8 or len(prefix) < 8:
        raise bad(f"{file_size} bytes")
    n = int.from_bytes(prefix[:8], "little")
    if n > MAX_HEADER_BYTES or 8 + n > file_size:
        raise bad(f"a header of {n} bytes in a file of {file_size} bytes (at most {MAX_HEADER_BYTES})")
    if len(prefix) < 8 + n:
        raise ValueError("parse_header: prefix shorter than the declared header")
    try:
        raw = json.loads(bytes(prefix[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"a header that is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise bad(f"a header of type {type(raw).__name__}")
    metadata = raw.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("__metadata__ that is not a map of strings")
    tensors: dict[str, TensorEntry] = {}
    for name, info in raw.items():
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {name!r} described as {info!r:.120}") from None
        ints = (*shape, begin, end)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
            raise bad(f"tensor {name!r} with shape {list(shape)!r:.80} and offsets {[begin, end]!r:.80}")
        if math.prod(shape) * dtype.itemsize != end - begin:
            raise bad(f"tensor {name!r} of shape {list(shape)} ({dtype}) declared over {end - begin} bytes")
        tensors[name] = TensorEntry(dtype, shape, begin, end)
    position = 0
    for name, t in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if t.begin != position:
            raise bad(f"tensor {name!r} at bytes {t.begin}..{t.end}, expected to start at {position} (holes or overlaps)")
        position = t.end
    if 8 + n + position != file_size:
        raise bad(f"tensors declaring {position} bytes of data, the file holds {file_size - 8 - n}")
    return Header(tensors, {str(k): v for k, v in metadata.items()}, 8 + n)


def read_header(path: str | os.PathLike[str]) -> Header:
    """The validated header of the file at ``path`` (reads only the header)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        if len(head) == 8 and n <= MAX_HEADER_BYTES and 8 + n <= size:
            head += f.read(n)
    return parse_header(head, size, str(path))


def read_safetensors(
    path: str | os.PathLike[str], sha256: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor of the file at ``path``, checking its sha256 first when given.

    The header is validated before the data is allocated; the file is read once into one
    writable buffer, hashed block by block as it is read, and the arrays are views of it (no
    further copies).

    Returns:
        ``{name: array}`` in file order, and the header's metadata.

    Raises:
        FhbError: a damaged, truncated or hostile file, or a sha256 other than ``sha256``.
    """
    path = Path(path)
    header = read_header(path)
    buf = np.empty(header.file_size, dtype=np.uint8)  # not zero-filled: every byte is read into it
    view = memoryview(buf)
    digest = hashlib.sha256()
    got = 0
    with open(path, "rb") as f:
        while got < len(buf):  # hash each block while it is in the cache
            n = f.readinto(view[got : got + _BLOCK])
            if not n:
                break
            digest.update(view[got : got + n])
            got += n
    if got != len(buf):
        raise FhbError(f"{path}: expected {len(buf)} bytes, read {got} (the file changed while reading); read it again")
    if sha256 is not None and digest.hexdigest() != sha256:
        raise FhbError(f"{path}: expected sha256 {sha256}, found {digest.hexdigest()}; the file is damaged: write it again")
    out = {
        name: np.frombuffer(view[header.data_start + t.begin : header.data_start + t.end], dtype=t.dtype).reshape(t.shape)
        for name, t in header.tensors.items()
    }
    return out, header.metadata
