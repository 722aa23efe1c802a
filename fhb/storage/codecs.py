"""Target encodings (float32, float16, bfloat16, int8 with scales) and the chunk compressor.

One `TargetCodec` describes how a lake stores its targets; it is recorded in the root
attributes (``codec``) so a reader needs no flags. Encodings, per block of ``n`` frames:

- ``float32``: stored as is (lossless).
- ``float16``: IEEE half (``x.astype(float16)``); values beyond +-65504 are refused.
- ``bfloat16``: zarr 3.1 has no bfloat16 dtype, so the upper 16 bits of the float32 pattern
  (round to nearest even) are stored as ``uint16``. Decode: ``(u.astype(uint32) << 16).view(f32)``;
  torch users can ``torch.from_numpy(u).view(torch.bfloat16)`` without a copy.
- ``int8``: per-channel affine quantisation per block of ``scale_block_frames`` frames: for block
  ``b`` and channel ``d``, ``offset = (max + min) / 2``, ``scale = (max - min) / 254``,
  ``q = round((x - offset) / scale)`` in ``[-127, 127]``; decode ``x = q * scale + offset``.
  Scales live in a companion float32 array ``<name>_scale`` of shape ``ceil(T / B) x 2 x D``
  (``[:, 0]`` scale, ``[:, 1]`` offset). Per-channel scales keep outlier channels (10-50x the
  typical magnitude, common in HuBERT) from flattening every other channel, which is what
  per-row absmax scales do (measured: 4.5-4.8 % vs 0.6 % relative RMS error).

All arrays are compressed with Blosc (zstd, clevel 1, byte shuffle, 1 MiB blocks), chosen by
measurement (see ``docs/lake-format.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fhb.errors import FhbError

logger = logging.getLogger(__name__)

DTYPES: tuple[str, ...] = ("float16", "bfloat16", "int8", "float32")
FITTED_DTYPES: tuple[str, ...] = ("pca", "pq", "klt")
"""Per-array fitted codecs (`fhb.storage.fitted`): the lake's codec stores only their codes; the
fitted parameters live in ``LAKE/_codecs/`` (`fhb.storage.schema.FittedSpec`)."""

STORED_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.uint16),
    "int8": np.dtype(np.int8),
    "pca": np.dtype(np.int8),
    "pq": np.dtype(np.uint8),
    "klt": np.dtype(np.uint8),
}

ENCODINGS: dict[str, str] = {
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16-bits-as-uint16",
    "int8": "int8-affine-per-channel-block",
    "pca": "pca-int8-codes",
    "pq": "pq-uint8-codes",
    "klt": "klt-zigzag-uint8-codes",
}

SHUFFLES = ("noshuffle", "shuffle", "bitshuffle")
CNAMES = ("zstd", "lz4", "lz4hc", "blosclz", "zlib")

DEFAULT_CHUNK_FRAMES = 2048
DEFAULT_SCALE_BLOCK_FRAMES = 256
_INT8_LEVELS = 127
_FLOAT16_MAX = 65504.0


@dataclass(frozen=True)
class TargetCodec:
    """How targets and audio are encoded, chunked and compressed.

    ``chunk_frames``: frames per chunk of every target array (chunks are ``chunk_frames x D``).
    ``audio_chunk_samples``: samples per chunk of ``audio``. ``scale_block_frames``: int8 only,
    frames sharing one scale/offset per channel; divides ``chunk_frames`` so that scale chunk
    ``i`` belongs to data chunk ``i``. ``cname/clevel/shuffle/blocksize``: Blosc parameters.
    """

    dtype: str
    chunk_frames: int = DEFAULT_CHUNK_FRAMES
    audio_chunk_samples: int = DEFAULT_CHUNK_FRAMES * 320
    scale_block_frames: int | None = None
    cname: str = "zstd"
    clevel: int = 1
    shuffle: str = "shuffle"
    blocksize: int = 1 << 20

    def __post_init__(self) -> None:
        problems = []
        if self.dtype not in DTYPES + FITTED_DTYPES:
            problems.append(f"dtype one of {list(DTYPES + FITTED_DTYPES)}, found {self.dtype!r}")
        if not (isinstance(self.chunk_frames, int) and self.chunk_frames > 0):
            problems.append(f"chunk_frames > 0, found {self.chunk_frames!r}")
        if not (isinstance(self.audio_chunk_samples, int) and self.audio_chunk_samples > 0):
            problems.append(f"audio_chunk_samples > 0, found {self.audio_chunk_samples!r}")
        if self.dtype == "int8":
            b = self.scale_block_frames
            if not (isinstance(b, int) and b > 0 and self.chunk_frames % b == 0):
                problems.append(
                    f"int8 scale_block_frames > 0 dividing chunk_frames={self.chunk_frames}, "
                    f"found {b!r}"
                )
        elif self.scale_block_frames is not None:
            problems.append(f"scale_block_frames None for {self.dtype}, found {self.scale_block_frames}")
        if self.cname not in CNAMES:
            problems.append(f"cname one of {list(CNAMES)}, found {self.cname!r}")
        if self.shuffle not in SHUFFLES:
            problems.append(f"shuffle one of {list(SHUFFLES)}, found {self.shuffle!r}")
        if not (isinstance(self.clevel, int) and 0 <= self.clevel <= 9):
            problems.append(f"clevel in 0..9, found {self.clevel!r}")
        if not (isinstance(self.blocksize, int) and self.blocksize >= 0):
            problems.append(f"blocksize >= 0, found {self.blocksize!r}")
        if problems:
            raise FhbError(
                "lake codec: expected " + "; ".join(problems) + "; build it with "
                "TargetCodec.default(dtype) or fix the lake's codec attribute"
            )

    @classmethod
    def default(
        cls, dtype: str, chunk_frames: int = DEFAULT_CHUNK_FRAMES, samples_per_frame: int = 320
    ) -> TargetCodec:
        """The measured default for ``dtype`` (see module docstring)."""
        block = min(DEFAULT_SCALE_BLOCK_FRAMES, chunk_frames) if dtype == "int8" else None
        if block is not None and chunk_frames % block:
            block = chunk_frames
        return cls(
            dtype=dtype,
            chunk_frames=chunk_frames,
            audio_chunk_samples=chunk_frames * samples_per_frame,
            scale_block_frames=block,
            # klt codes are small zigzagged integers: bit planes of zeros, which bitshuffle exposes
            # to zstd (measured ~30-40 % fewer bytes than byte shuffle at 1-2 bits per code)
            shuffle="bitshuffle" if dtype == "klt" else "shuffle",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict for the ``codec`` root attribute (adds the encoding's name)."""
        d = asdict(self)
        d["encoding"] = ENCODINGS.get(self.dtype, self.dtype)
        d["stored_dtype"] = str(self.stored_dtype) if self.dtype in STORED_DTYPES else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TargetCodec:
        """Parse the ``codec`` root attribute; unknown keys are refused."""
        if not isinstance(d, Mapping) or "dtype" not in d:
            raise FhbError(
                f"lake codec: expected a dict with at least 'dtype', found {d!r:.120}; fix the "
                f"lake's codec attribute or re-extract"
            )
        known = set(cls.__dataclass_fields__)
        extra = set(d) - known - {"encoding", "stored_dtype"}
        if extra:
            raise FhbError(
                f"lake codec: unknown keys {sorted(extra)} (known: {sorted(known)}); the lake was "
                f"written by a newer fhb: upgrade fhb"
            )
        codec = cls(**{k: v for k, v in d.items() if k in known})
        if "encoding" in d and d["encoding"] != ENCODINGS[codec.dtype]:
            raise FhbError(
                f"lake codec: expected encoding {ENCODINGS[codec.dtype]!r} for dtype "
                f"{codec.dtype!r}, found {d['encoding']!r}; upgrade fhb"
            )
        return codec

    @property
    def stored_dtype(self) -> np.dtype:
        """numpy dtype of the stored target arrays."""
        return STORED_DTYPES[self.dtype]

    @property
    def fitted(self) -> bool:
        """Whether targets are stored as codes of per-array fitted codecs (`FITTED_DTYPES`)."""
        return self.dtype in FITTED_DTYPES

    @property
    def has_scales(self) -> bool:
        """Whether every target array has a companion ``<name>_scale`` array (int8)."""
        return self.dtype == "int8"

    def compressors(self) -> list[Any]:
        """Zarr v3 codecs for every array of the lake (targets, scales, audio)."""
        from zarr.codecs import BloscCodec

        return [
            BloscCodec(
                cname=self.cname, clevel=self.clevel, shuffle=self.shuffle, blocksize=self.blocksize
            )
        ]

    def scale_rows(self, start: int, stop: int) -> tuple[int, int]:
        """Rows ``[s0, s1)`` of a ``<name>_scale`` array that cover frames ``start:stop`` (int8,
        ``stop > start``)."""
        b = self.scale_block_frames or self.chunk_frames
        return start // b, (stop - 1) // b + 1

    def num_blocks(self, num_frames: int) -> int:
        """Scale blocks covering ``num_frames`` frames (int8)."""
        assert self.scale_block_frames is not None
        return -(-num_frames // self.scale_block_frames)

    def encode(
        self, x: np.ndarray, what: str = "targets", check: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Encode a ``T x D`` float block that starts on a scale-block boundary.

        Returns ``(data, scales)``: ``data`` is ``T x D`` in `stored_dtype`; ``scales`` is
        ``ceil(T / B) x 2 x D`` float32 (scale, offset) for int8, else None. With ``check``,
        non-finite values (or float16 overflow) raise `FhbError` naming ``what`` (the writer
        checks each utterance itself and passes ``check=False``).
        """
        if self.fitted:
            raise ValueError(f"TargetCodec.encode: {self.dtype} codes come from the array's FittedCodec")
        x = np.ascontiguousarray(x, dtype=np.float32)
        assert x.ndim == 2, f"Expected T x D, found {list(x.shape)}"
        if check:
            limit = _FLOAT16_MAX if self.dtype == "float16" else np.finfo(np.float32).max
            if x.size and not (-limit <= float(x.min()) and float(x.max()) <= limit):
                _raise_nonfinite(x, what, self.dtype)
        if self.dtype == "float16":
            return cast(x, np.float16), None
        if self.dtype == "float32":
            return x, None
        if self.dtype == "bfloat16":
            return float32_to_bfloat16_bits(x), None
        return quantize_int8(x, self.scale_block_frames or x.shape[0])

    def decode(
        self,
        data: np.ndarray,
        scales: np.ndarray | None = None,
        first_frame: int = 0,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Decode ``T x D`` stored values back to float (``out``'s dtype, default float32).

        For int8, ``first_frame`` is the absolute frame index of ``data[0]`` within its array and
        ``scales`` holds the scale rows from block ``first_frame // B`` on.
        """
        if self.fitted:
            raise ValueError(f"TargetCodec.decode: {self.dtype} codes are decoded by the array's FittedCodec")
        if out is None:
            out = np.empty(data.shape, dtype=np.float32)
        assert out.shape == data.shape, f"Expected out {list(data.shape)}, found {list(out.shape)}"
        if self.dtype in ("float32", "float16"):
            cast(data, out.dtype, out=out)
        elif self.dtype == "bfloat16":
            torch = _torch()
            if torch is not None and data.flags.writeable and out.flags.writeable:
                src = torch.from_numpy(np.ascontiguousarray(data).view(np.int16)).view(torch.bfloat16)
                torch.from_numpy(out).copy_(src)
            elif out.dtype == np.float32:
                out.view(np.uint32)[...] = data.astype(np.uint32) << 16
            else:
                out[...] = bfloat16_bits_to_float32(data)
        else:
            assert scales is not None, "int8 decode needs scales"
            dequantize_int8(data, scales, self.scale_block_frames or len(data), first_frame, out)
        return out


_TORCH: Any = None


def _torch() -> Any:
    """torch if importable (its CPU casts to/from float16/bfloat16 are ~40x numpy's), else None."""
    global _TORCH
    if _TORCH is None:
        try:
            import torch
        except ImportError:  # numpy fallback: same values, slower
            torch = False
        _TORCH = torch
    return _TORCH or None


def cast(x: np.ndarray, dtype: Any, out: np.ndarray | None = None) -> np.ndarray:
    """``x.astype(dtype)`` (into ``out`` if given) between float32/float16, using torch when
    available; IEEE round-to-nearest-even either way, overflow becomes inf."""
    dtype = np.dtype(dtype)
    if out is None:
        out = np.empty(x.shape, dtype=dtype)
    torch = _torch()
    if (
        torch is not None
        and x.dtype in (np.float16, np.float32)
        and out.dtype in (np.float16, np.float32)
        and x.flags.writeable  # torch.from_numpy warns on read-only arrays
        and out.flags.c_contiguous
    ):
        torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(x)))
    else:
        with np.errstate(over="ignore"):
            out[...] = x
    return out


def float32_to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns as uint16, rounding to nearest even (finite input)."""
    torch = _torch()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if torch is not None and x.flags.writeable:
        return torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    u = x.view(np.uint32)
    rounded = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def bfloat16_bits_to_float32(u: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exact."""
    return (np.asarray(u, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def quantize_int8(x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel affine int8 quantisation per block of ``block`` frames.

    ``x``: ``T x D`` float32. Returns ``q`` (``T x D`` int8) and ``scales``
    (``ceil(T / block) x 2 x D`` float32; ``[:, 0]`` scale, ``[:, 1]`` offset).
    """
    t, d = x.shape
    nb = -(-t // block)
    q = np.empty((t, d), dtype=np.int8)
    scales = np.empty((nb, 2, d), dtype=np.float32)
    for b in range(nb):
        blk = x[b * block : (b + 1) * block]
        lo, hi = blk.min(axis=0), blk.max(axis=0)
        offset = (hi + lo) * np.float32(0.5)
        scale = (hi - lo) / np.float32(2 * _INT8_LEVELS)
        scale[scale == 0] = 1.0  # constant channel: q = 0, decodes to offset exactly
        scales[b, 0], scales[b, 1] = scale, offset
        y = (blk - offset) * (np.float32(1.0) / scale)
        np.rint(y, out=y)
        np.clip(y, -_INT8_LEVELS, _INT8_LEVELS, out=y)
        q[b * block : (b + 1) * block] = y
    return q, scales


def dequantize_int8(
    q: np.ndarray, scales: np.ndarray, block: int, first_frame: int, out: np.ndarray
) -> np.ndarray:
    """Inverse of `quantize_int8` for frames ``first_frame .. first_frame + len(q)``.

    ``scales[0]`` is the scale row of block ``first_frame // block``. Writes into ``out``.
    """
    t = len(q)
    pos = 0
    b = 0
    while pos < t:
        abs_frame = first_frame + pos
        end = min(t, (abs_frame // block + 1) * block - first_frame)
        scale, offset = scales[b, 0], scales[b, 1]
        np.multiply(q[pos:end], scale, out=out[pos:end], casting="unsafe")
        out[pos:end] += offset.astype(out.dtype, copy=False)
        pos = end
        b += 1
    return out


def _raise_nonfinite(x: np.ndarray, what: str, target: str) -> None:
    finite = np.isfinite(x)
    n_bad = int(x.size - finite.sum())
    absmax = float(np.abs(x[finite]).max()) if finite.any() else float("nan")
    if n_bad:
        raise FhbError(
            f"{what}: expected finite values, found {n_bad} NaN/inf; the teacher produced "
            f"non-finite outputs: check the checkpoint and the audio"
        )
    raise FhbError(
        f"{what}: expected |x| <= {_FLOAT16_MAX:g} for {target}, found max |x| = {absmax:g}; "
        f"use dtype bfloat16 or float32 for this teacher"
    )


# ---------------------------------------------------------------------------------------------
# Partial Blosc decoding (the loader's fast path)

_GETITEM: Any = None


def _blosc_getitem_fn() -> Any:
    """c-blosc's ``blosc_getitem`` from numcodecs' bundled library (ctypes), or None."""
    global _GETITEM
    if _GETITEM is None:
        try:
            import ctypes

            import numcodecs.blosc as nb

            fn = ctypes.CDLL(nb.__file__).blosc_getitem
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
            fn.restype = ctypes.c_int
            _GETITEM = fn
        except (ImportError, OSError, AttributeError):  # another numcodecs build: full decodes
            _GETITEM = False
    return _GETITEM or None


def blosc_getitem_available() -> bool:
    """Whether `blosc_decode_items` can decode parts of a Blosc frame."""
    return _blosc_getitem_fn() is not None


def check_blosc_frame(src: np.ndarray, itemsize: int, min_nbytes: int, nbytes: int | None = None) -> int:
    """Check a Blosc frame's 16-byte header before c-blosc trusts it; returns its decoded size.

    The typesize must be ``itemsize`` (one flipped header byte would make ``blosc_getitem`` write
    past its destination), the compressed size the frame's length, and the decoded size at least
    ``min_nbytes`` (exactly ``nbytes`` when given). `FhbError` otherwise: the chunk is damaged.
    """
    problem = None
    if src.size < 16:
        problem = f"{src.size} bytes, shorter than a Blosc header"
    else:
        head = src[:16].tobytes()
        version, typesize = head[0], head[3]
        size, block, cbytes = (int.from_bytes(head[k : k + 4], "little") for k in (4, 8, 12))
        if version not in (1, 2):
            problem = f"Blosc format version {version}"
        elif typesize != itemsize:
            problem = f"typesize {typesize} in its header, expected {itemsize}"
        elif cbytes != src.size:
            problem = f"{cbytes} compressed bytes in its header, {src.size} in the file"
        elif size < min_nbytes or (nbytes is not None and size != nbytes) or (size and not 0 < block <= max(size, 1 << 16)):
            problem = f"{size} decoded bytes / block size {block} in its header, expected {nbytes or min_nbytes}"
        else:
            return size
    raise FhbError(
        f"blosc chunk: expected a valid Blosc frame, found a damaged one ({problem}); run `fhb verify` "
        f"on the lake and re-extract the shard it names"
    )


def blosc_decode_items(src: np.ndarray, start: int, out: np.ndarray) -> None:
    """Decode items ``start .. start + out.size`` of the Blosc frame ``src`` into ``out``.

    ``src``: a uint8 array holding one complete Blosc frame (e.g. a zarr chunk file). Only the
    Blosc blocks that overlap the range are decompressed (c-blosc's ``blosc_getitem``), so a
    reader that needs 600 frames of a 2048-frame chunk pays for about 600 frames, not 2048.
    ``out`` must be C-contiguous, of the frame's item size. Falls back to a full decode when
    ``blosc_getitem`` is unavailable.
    """
    assert out.flags.c_contiguous and src.flags.c_contiguous
    n = out.size
    if n == 0:
        return
    check_blosc_frame(src, out.dtype.itemsize, (start + n) * out.dtype.itemsize)
    fn = _blosc_getitem_fn()
    if fn is not None:
        got = fn(src.ctypes.data, int(start), int(n), out.ctypes.data)
        if got == out.nbytes:
            return
        if got < 0:
            raise FhbError(
                f"blosc chunk: expected a valid Blosc frame, found a damaged one (blosc_getitem "
                f"returned {got}); run `fhb verify` on the lake"
            )
    import numcodecs.blosc as nb

    flat = np.frombuffer(nb.decompress(src), dtype=out.dtype)
    out.reshape(-1)[...] = flat[start : start + n]
