"""Bytes per frame per layer on disk and error vs float32, per dtype, at D = 768.

Run with ``-s`` to see the table (the numbers in docs/lake-format.md come from here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fhb.nn.frames import conv_output_length
from fhb.storage import ShardWriter, TargetCodec, create_lake, open_lake, summarize_lake, update_split_listing

from .conftest import hubert_like, make_meta, rel_rms

FRAMES = 8192  # 4 chunks of 2048 frames per layer
LIMITS = {"float16": 1536.0, "int8": 800.0}


@pytest.fixture(scope="module")
def layers() -> np.ndarray:
    """``2 x 8192 x 768`` HuBERT-like targets (outlier channels, heavy tails, correlated frames)."""
    return np.stack([hubert_like(FRAMES, 768, seed=10), hubert_like(FRAMES, 768, seed=11)])


def _write(lake: Path, dtype: str, layers: np.ndarray) -> None:
    meta = create_lake(lake, make_meta(dtype, layers=(1, 2), num_layers=12, dim=768,
                                       chunk_frames=2048))
    rng = np.random.default_rng(0)
    with ShardWriter(lake, "train", "s0", meta) as w:
        start, i = 0, 0
        while start < FRAMES:
            samples = int(rng.integers(3 * 16000, 16 * 16000))
            t = conv_output_length(samples)
            if start + t > FRAMES:
                t = FRAMES - start
                samples = t * 320 + 80
            audio = (3000 * np.sin(np.arange(samples) * 0.05)).astype(np.int16)
            w.add(f"u{i}", "1", "1", "", audio, layers[:, start : start + t], None)
            start, i = start + t, i + 1
        w.commit()
    update_split_listing(lake, "train", ["s0"])


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8"])
def test_bytes_per_frame_per_layer(dtype: str, layers: np.ndarray, tmp_path: Path) -> None:
    lake = tmp_path / dtype
    _write(lake, dtype, layers)
    train = summarize_lake(lake).splits["train"]
    split = open_lake(lake)["train"]
    shard = split.shard("s0")
    decoded = shard.read_frames(0, FRAMES)
    err = rel_rms(decoded, layers)
    codec = TargetCodec.default(dtype)
    print(
        f"\n{dtype:8s} D=768 chunk={codec.chunk_frames} blosc {codec.cname} clevel={codec.clevel} "
        f"{codec.shuffle}: {train.bytes_per_frame_per_layer:7.1f} B/frame/layer, "
        f"ratio vs float32 {train.compression_ratio:4.2f}x, rel RMS error {err:.2e}"
    )
    assert train.frames == FRAMES
    if dtype in LIMITS:
        assert train.bytes_per_frame_per_layer <= LIMITS[dtype]
    assert err <= {"float32": 0.0, "float16": 1e-3, "bfloat16": 4e-3, "int8": 1e-2}[dtype]


def test_int8_pre_ln_error() -> None:
    """Pre-LN-like data (per-frame magnitudes vary by e^N(0, 0.5)) is harder; still <= 1 %."""
    x = hubert_like(4096, 768, seed=12, pre_ln=True)
    codec = TargetCodec.default("int8")
    err = rel_rms(codec.decode(*codec.encode(x)), x)
    print(f"\nint8 on pre-LN-like data: rel RMS error {err:.2e}")
    assert err <= 1e-2
