"""The published FitHuBERT key lists (``tests/student/data``, see its README)."""

from __future__ import annotations

from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"


def read_keys(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """A published key list: ``[(name, shape), ...]`` in state-dict order."""
    rows = []
    for line in (DATA / name).read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, tuple(int(d) for d in shape.split(","))))
    return rows


def keys_of(state: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in state.items()]
