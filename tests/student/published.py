"""The published FitHuBERT key lists (``tests/student/data``, see its README)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from fhb.student import FitConfig

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


def write_published_checkpoint(path: Path, config: FitConfig, seed: int = 5, global_step: int = 1234) -> Path:
    """A student checkpoint in the published Lightning layout, with teacher weights and optimizer
    state next to the student's as the published train.py saves them (its yaml beside it)."""
    from fhb.student import build_fit_student, save_published_checkpoint

    torch.manual_seed(seed)
    ckpt, _ = save_published_checkpoint(build_fit_student(config), config, path, global_step=global_step)
    raw = torch.load(ckpt, weights_only=True)
    raw["state_dict"] = {"teacher_model.model.encoder.layer_norm.weight": torch.ones(64), **raw["state_dict"]}
    raw["optimizer_states"] = [{"state": {}, "param_groups": [{"lr": 5e-4}]}]
    torch.save(raw, ckpt)
    return ckpt
