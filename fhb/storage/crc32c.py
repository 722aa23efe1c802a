"""CRC-32C (Castagnoli) of any contiguous buffer, with the CPU's crc32 instruction where it has one.

`crc32c(data, crc)` extends ``crc`` (0 to start) with ``data`` (bytes, a memoryview, a C-contiguous
numpy array). ``google-crc32c`` computes it: its C library, called through ctypes on the buffer
itself (no copy; the Python wrapper accepts only ``bytes``, which would cost a copy per chunk),
or its own Python API on a ``bytes`` copy when the library cannot be reached that way. The two
give the same numbers (tested); only the speed differs. This module is the lake's checksum
primitive; what is checksummed, and how the checksum is bound to a chunk, is the contract's
(`fhb.storage.schema.stored_checksum`).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

_EXTEND: Any = None


def _c_extend() -> Any:
    """``crc32c_extend(uint32 crc, const uint8 *data, size_t n)`` of google-crc32c's C library, or None."""
    global _EXTEND
    if _EXTEND is None:
        try:
            import google_crc32c._crc32c as ext  # the C extension, linked against libcrc32c

            fn = ctypes.CDLL(ext.__file__).crc32c_extend  # dlsym searches the extension's dependencies
            fn.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
            fn.restype = ctypes.c_uint32
            _EXTEND = fn
        except (ImportError, OSError, AttributeError):  # pure-Python build: the copying path
            _EXTEND = False
    return _EXTEND or None


def hardware_crc32c() -> bool:
    """Whether `crc32c` runs in C on the buffer itself (no copy)."""
    return _c_extend() is not None


def crc32c(data: bytes | bytearray | memoryview | np.ndarray, crc: int = 0) -> int:
    """``crc`` extended with the bytes of ``data`` (C-contiguous), as an unsigned 32-bit int."""
    fn = _c_extend()
    if isinstance(data, np.ndarray):
        assert data.flags.c_contiguous, "crc32c: expected a C-contiguous array"
        if fn is not None:
            return int(fn(crc, data.ctypes.data, data.nbytes))
        data = memoryview(data).cast("B")
    if fn is not None and isinstance(data, bytes):
        return int(fn(crc, data, len(data)))
    import google_crc32c

    return int(google_crc32c.extend(crc, data if isinstance(data, bytes) else bytes(data)))
