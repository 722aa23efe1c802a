"""Helpers for the lake tests: synthetic HuBERT-like targets, small metas, shard writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fhb.nn.frames import conv_output_length
from fhb.storage import LakeMeta, TargetCodec, TeacherMeta
from tests.lakes import Utt, write_lake, write_shard

__all__ = ["SHA", "Utt", "hubert_like", "make_meta", "make_utts", "rel_rms", "write_shard"]

SHA = "0123456789abcdef" * 4


def hubert_like(
    num_frames: int, dim: int = 768, seed: int = 0, n_outliers: int = 6, pre_ln: bool = False
) -> np.ndarray:
    """``T x D`` float32 shaped like a post-LN HuBERT layer.

    Heavy-tailed (Student-t, 6 dof), temporally correlated frames (AR(1), rho 0.85), LayerNorm
    per frame, then per-channel gain/bias where ``n_outliers`` channels get 10-50x gain and a
    large bias (HuBERT's outlier channels). ``pre_ln`` also scales frames by a log-normal factor
    (residual-stream magnitudes of pre-LN teachers).
    """
    rng = np.random.default_rng(seed)
    e = rng.standard_t(6, size=(num_frames, dim)).astype(np.float32)
    x = np.empty_like(e)
    x[0] = e[0]
    for t in range(1, num_frames):
        x[t] = 0.85 * x[t - 1] + 0.53 * e[t]
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    gain = (1 + 0.3 * rng.standard_normal(dim)).astype(np.float32)
    bias = (0.2 * rng.standard_normal(dim)).astype(np.float32)
    idx = rng.choice(dim, n_outliers, replace=False)
    gain[idx] *= rng.uniform(10, 50, n_outliers).astype(np.float32)
    bias[idx] += rng.uniform(-20, 20, n_outliers).astype(np.float32)
    y = x * gain + bias
    if pre_ln:
        y *= np.exp(0.5 * rng.standard_normal((num_frames, 1))).astype(np.float32)
    return y.astype(np.float32)


def rel_rms(a: np.ndarray, ref: np.ndarray) -> float:
    """``||a - ref|| / ||ref||``."""
    ref64 = ref.astype(np.float64)
    return float(np.sqrt(((a.astype(np.float64) - ref64) ** 2).sum() / (ref64**2).sum()))


def make_meta(
    dtype: str = "float16",
    layers: tuple[int, ...] = (1, 2, 3),
    num_layers: int = 4,
    dim: int = 24,
    chunk_frames: int = 64,
    cnn_dim: int | None = None,
    sha: str = SHA,
) -> LakeMeta:
    """A small lake layout (tiny chunks so that utterances cross chunk boundaries)."""
    teacher = TeacherMeta("toy-hubert", sha, {"encoder_layers": num_layers, "encoder_embed_dim": dim},
                          num_layers, dim)
    return LakeMeta(
        teacher=teacher,
        layers=layers,
        dtype=dtype,
        codec=TargetCodec.default(dtype, chunk_frames=chunk_frames),
        cnn_features=cnn_dim is not None,
        cnn_dim=cnn_dim,
    )


def make_utts(meta: LakeMeta, n: int, seed: int = 0, prefix: str = "u",
              min_samples: int = 4000, max_samples: int = 40000) -> list[Utt]:
    """``n`` utterances with frames = HuBERT conv arithmetic of their sample counts."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = int(rng.integers(min_samples, max_samples))
        t = conv_output_length(s)
        targets = rng.standard_normal((len(meta.layers), t, meta.teacher.dim)).astype(np.float32)
        targets[:, :, 0] *= 30  # an outlier channel
        cnn = (rng.standard_normal((t, meta.cnn_dim)).astype(np.float32)
               if meta.cnn_features else None)
        audio = rng.integers(-20000, 20000, s).astype(np.int16)
        out.append(Utt(f"{prefix}{seed}-{i:03d}", str(100 + i % 3), str(7 + i % 2),
                       f"TRANSCRIPT {seed} {i}", audio, targets, cnn))
    return out


@pytest.fixture
def build_lake(tmp_path: Path):
    """``build_lake(meta, {split: {shard: utts}}) -> lake path`` (listed in dict order)."""

    def build(meta: LakeMeta, plan: dict[str, dict[str, list[Utt]]], name: str = "lake",
              **kw: object) -> Path:
        return write_lake(tmp_path / name, meta, plan, **kw)

    return build
