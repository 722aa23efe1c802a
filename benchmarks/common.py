"""Shared benchmark helpers: LibriSpeech-like generated audio, timing, and docs/benchmarks.md."""

from __future__ import annotations

import json
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def librispeech_like_lengths(total_seconds: float, low: float = 2.0, high: float = 35.0, mean: float = 12.0,
                             seed: int = 0) -> list[int]:
    """Utterance lengths in samples (16 kHz), gamma-distributed like LibriSpeech, clipped to [low, high]."""
    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    while sum(lengths) < total_seconds * 16000:
        seconds = float(np.clip(rng.gamma(4.0, mean / 4.0), low, high))
        lengths.append(int(seconds * 16000))
    return lengths


def generated_audio(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    """Speech-band noise with a syllable-rate envelope (cost does not depend on the content)."""
    gen = torch.Generator().manual_seed(seed)
    wavs = []
    for n in lengths:
        t = torch.arange(n) / 16000
        envelope = 0.5 + 0.5 * torch.sin(2 * torch.pi * 4.0 * t)
        wavs.append((0.1 * envelope * torch.randn(n, generator=gen)).float())
    return wavs


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def machine() -> str:
    """One line naming the machine the figures came from."""
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def emit(name: str, figures: dict[str, object]) -> None:
    """Print the final JSON line a benchmark ends with."""
    print(json.dumps({"benchmark": name, **figures}, sort_keys=True))


def record(section: str, markdown: str) -> None:
    """Replace (or append) ``## section`` in docs/benchmarks.md with ``markdown``."""
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n\nRatios measured side by side in one run (absolute times vary on these machines).\n"
    block = f"## {section}\n\n{markdown.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: block + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    DOCS.write_text(text.rstrip() + "\n")
