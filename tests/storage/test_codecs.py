"""Target encodings: exactness/error bounds, int8 scale layout on outlier channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fhb.errors import FhbError
from fhb.storage import TargetCodec
from fhb.storage.codecs import bfloat16_bits_to_float32, float32_to_bfloat16_bits

from .conftest import hubert_like, rel_rms

# Documented bounds (docs/lake-format.md): relative RMS error vs float32.
BOUNDS = {"float32": 0.0, "float16": 1e-3, "bfloat16": 4e-3, "int8": 1e-2}


@pytest.fixture(scope="module")
def layer() -> np.ndarray:
    """2048 frames x 768 of HuBERT-like data with 6 outlier channels (10-50x)."""
    return hubert_like(2048, 768, seed=3)


def round_trip(codec: TargetCodec, x: np.ndarray) -> np.ndarray:
    data, scales = codec.encode(x)
    assert data.dtype == codec.stored_dtype
    return codec.decode(data, scales)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8"])
def test_error_within_documented_bound(dtype: str, layer: np.ndarray) -> None:
    err = rel_rms(round_trip(TargetCodec.default(dtype), layer), layer)
    if dtype == "float32":
        assert err == 0.0
    assert err <= BOUNDS[dtype], f"{dtype}: relative RMS error {err:.2e}"


def test_int8_per_row_absmax_fails_on_outlier_channels(layer: np.ndarray) -> None:
    """Why per-channel scales: per-row absmax flattens the ordinary channels."""
    scale = np.abs(layer).max(1, keepdims=True) / 127
    per_row = np.clip(np.rint(layer / scale), -127, 127) * scale
    per_channel = round_trip(TargetCodec.default("int8"), layer)
    assert rel_rms(per_row, layer) > 0.03
    assert rel_rms(per_channel, layer) < 0.01
    # Ordinary channels keep their own precision (not just the outliers dominating the norm).
    ordinary = np.abs(layer).max(0) < 10
    assert rel_rms(per_channel[:, ordinary], layer[:, ordinary]) < 0.015


def test_int8_decode_from_unaligned_start(layer: np.ndarray) -> None:
    codec = TargetCodec.default("int8", chunk_frames=512)
    x = layer[:1000]
    data, scales = codec.encode(x)
    full = codec.decode(data, scales)
    b = codec.scale_block_frames
    for start, stop in [(0, 1000), (300, 301), (255, 257), (511, 900), (999, 1000)]:
        part = codec.decode(data[start:stop], scales[start // b : (stop - 1) // b + 1], first_frame=start)
        np.testing.assert_array_equal(part, full[start:stop])


def test_int8_constant_channel_exact() -> None:
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    x[:, 3] = 2.5
    codec = TargetCodec.default("int8", chunk_frames=256)
    y = round_trip(codec, x)
    np.testing.assert_array_equal(y[:, 3], 2.5)


def test_bfloat16_matches_torch_rounding() -> None:
    x = np.random.default_rng(1).standard_normal(100000).astype(np.float32) * 1e3
    ours = float32_to_bfloat16_bits(x)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, ref)
    back = bfloat16_bits_to_float32(ours)
    np.testing.assert_array_equal(back, torch.from_numpy(ref.view(np.int16)).view(torch.bfloat16).float().numpy())


def test_nonfinite_and_float16_overflow_refused() -> None:
    x = np.ones((4, 3), dtype=np.float32)
    x[1, 1] = np.nan
    for dtype in ("float32", "float16", "bfloat16", "int8"):
        with pytest.raises(FhbError, match="NaN"):
            TargetCodec.default(dtype).encode(x, what="layer_01")
    big = np.full((2, 2), 1e5, dtype=np.float32)
    with pytest.raises(FhbError, match="use dtype bfloat16 or float32"):
        TargetCodec.default("float16").encode(big)
    assert TargetCodec.default("bfloat16").encode(big)[0].dtype == np.uint16


def test_decode_into_float16_out(layer: np.ndarray) -> None:
    for dtype in ("float16", "bfloat16", "int8"):
        codec = TargetCodec.default(dtype)
        data, scales = codec.encode(layer[:300])
        out = np.empty((300, 768), dtype=np.float16)
        codec.decode(data, scales, out=out)
        assert rel_rms(out, layer[:300]) < BOUNDS[dtype] + 1e-3


def test_numpy_fallback_matches_torch(layer: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torch the casts give bit-identical results (only slower)."""
    import fhb.storage.codecs as codecs

    x = layer[:500]
    with_torch = {d: TargetCodec.default(d).encode(x) for d in ("float16", "bfloat16")}
    dec_torch = {d: TargetCodec.default(d).decode(*with_torch[d]) for d in with_torch}
    monkeypatch.setattr(codecs, "_TORCH", False)
    for d in with_torch:
        data, _ = TargetCodec.default(d).encode(x)
        np.testing.assert_array_equal(data, with_torch[d][0])
        np.testing.assert_array_equal(TargetCodec.default(d).decode(data), dec_torch[d])
