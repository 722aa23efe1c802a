"""Packaged configs shrunk to fhb's tiny random teacher (3 post-LN layers, dim 64, HuBERT's conv
layout with 32 channels), keeping each recipe's structure (losses, heads, initialisation).

``recipe_dict("distilhubert", {"train": {"specaug": True}})`` -> the yaml mapping; `write_recipe`
writes it to a file `fhb distill --config` reads.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fhb.student.config import packaged_config_path

TINY_TEACHER_CONV = "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2"
"""The tiny teacher's conv stack (what ``init_conv_layers`` needs the student to have)."""

SHRINK: dict[str, dict[str, dict[str, Any]]] = {
    # fithubert is shrunk by tiny.yaml itself (its own packaged config)
    "distilhubert": {
        "distiller": {
            "conv_feature_layers": TINY_TEACHER_CONV, "encoder_layers": 2, "encoder_embed_dim": 64,
            "encoder_ffn_embed_dim": 128, "encoder_attention_heads": 4, "conv_pos": 16, "conv_pos_groups": 4,
            "pred_head_final_dim": 64, "pred_layer_id": "[0, 1, 2]",
        },
        "train": {"batch_size": 2, "accumulate_grad_batches": 1, "gpus": 1},
    },
}
"""Per packaged config: the overrides that fit it to the tiny teacher (sizes only)."""


def _merge(base: dict[str, Any], overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for section, values in overrides.items():
        out.setdefault(section, {}).update(copy.deepcopy(dict(values)))
    return out


def recipe_dict(name: str, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Packaged config ``name`` shrunk to the tiny teacher (`SHRINK`), then ``overrides`` per section."""
    base = yaml.safe_load(packaged_config_path(name).read_text(encoding="utf-8"))
    return _merge(_merge(base, SHRINK.get(name, {})), overrides or {})


def write_recipe(path: Path, name: str, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """`recipe_dict` written as yaml to ``path``."""
    path.write_text(yaml.safe_dump(recipe_dict(name, overrides), sort_keys=False))
    return path
