"""Proof that the lake is faithful for every objective (issue 12): each config below trains for a
few updates twice, from the lake and with ``--online-teacher`` (the teacher run on every batch's
audio), with the same seed and so the same batches, initialisation, dropout and SpecAugment
masks; the per-step losses must agree to float16 storage precision.

Tolerance: ``|loss_lake - loss_online| <= 2**-10 * loss_online`` at every update. The lake stores
each teacher output in float16 (11 significant bits: each element within ``2**-11`` of the
teacher's fp32 value, relative); every loss term is an average of per-element terms that move by
at most that relative amount of the target (L1, cosine) or twice it (MSE), and the few updates
taken on these losses stay within a factor 2 of it. Anything a lake got wrong (a wrong layer,
frame, utterance, normalisation, or targets from augmented audio) moves the loss by orders of
magnitude more. The measured differences are in docs/benchmarks.md ("Lake vs online teacher").

Adding a config: one entry in `RECIPES` — a packaged config (shrunk to the tiny teacher by
`tests.recipes.SHRINK`) and yaml overrides per section.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from fhb.pipeline.lake_teacher import store_teacher
from fhb.storage import LakeWriter
from tests.recipes import write_recipe
from tests.stages.test_distill import TRAIN, build_lake

RECIPES: dict[str, tuple[str, Mapping[str, Mapping[str, Any]]]] = {
    # name: (packaged config, {section: {key: value}})
    "fithubert": ("tiny", {}),  # tiny.yaml: fithubert.yaml's layout (time reduction, layer-wise heads, random layers)
    "distilhubert": ("distilhubert", {}),  # L1 + cosine, split head on layers 1-3, init from the lake's teacher
    "distilhubert-specaug": ("distilhubert", {"train": {"specaug": True}}),
    # the student variants (tests/stages/test_variants.py trains and exports each)
    "conformer": ("tiny", {"distiller": {"layer_type": "conformer", "depthwise_conv_kernel_size": 5}}),
    "conformer-rel-pos": ("tiny", {"distiller": {"layer_type": "conformer", "attn_type": "espnet",
                                                 "pos_enc_type": "rel_pos", "depthwise_conv_kernel_size": 5}}),
    "fc1": ("tiny", {"distiller": {"tr_layer_type": "fc1"}}),
    "fc2": ("tiny", {"distiller": {"tr_layer_type": "fc2"}}),
    "mel": ("tiny", {"distiller": {"n_mels": 16, "enable_log_mel": True,
                                   "mel_spec_head_conv_layers": "[(24, 5, 1), (32, 3, 1)]"}}),
    "mel-specaug": ("tiny", {"distiller": {"n_mels": 16, "enable_log_mel": True,
                                           "mel_spec_head_conv_layers": "[(24, 5, 1), (32, 3, 1)]"},
                             "train": {"specaug": True}}),
    # the attention terms (tests/student/test_attention_reference.py checks them against fairseq)
    "attention-kldiv-v-rel": ("tiny", {"distiller": {"enable_tr_layer": False},
                                       "train": {"attn_loss_weight": 1.0, "attn_loss_type": "kldiv",
                                                 "v_rel_loss_weight": 1.0}}),
    "attention-mse": ("tiny", {"distiller": {"enable_tr_layer": False},
                               "train": {"attn_loss_weight": 1.0, "attn_loss_type": "mse"}}),
    "delete-projections-attention": ("tiny", {"distiller": {"enable_tr_layer": False},
                                              "train": {"delete_projections": True, "rec_loss_weight": 0.0,
                                                        "attn_loss_weight": 1.0, "v_rel_loss_weight": 1.0}}),
}
"""The configs the proof runs; extend with one entry per objective."""

STEPS = 4
TOLERANCE = 2.0**-10
"""Per-update relative tolerance on the loss (see the module docstring)."""


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, libri_root: Path, tiny_teacher_path: Path) -> Path:
    """Every layer of the tiny teacher on the fixture's train split, and the teacher's weights."""
    path = build_lake(libri_root, tiny_teacher_path, tmp_path_factory.mktemp("lake-vs-online") / "lake",
                      splits=(TRAIN,))
    with LakeWriter.reopen(path) as w:
        store_teacher(w, tiny_teacher_path)
    return path


def _losses(lake: Path, config: Path, out: Path, online: Path | None) -> list[float]:
    from fhb.stages.distill import run_distill

    run_distill(lake, config, out, splits=[TRAIN], dev_split="none", steps=STEPS, batch_size=2, accumulate=1,
                workers=0, seed=0, log_every=1, progress=False, max_seconds=None, online_teacher=online)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_lake_and_online_teacher_give_the_same_losses(name: str, lake: Path, tiny_teacher_path: Path,
                                                      tmp_path: Path) -> None:
    base, overrides = RECIPES[name]
    config = write_recipe(tmp_path / f"{name}.yaml", base, overrides)
    cached = _losses(lake, config, tmp_path / "lake-run", None)
    online = _losses(lake, config, tmp_path / "online-run", tiny_teacher_path)
    assert len(cached) == len(online) == STEPS
    diffs = [abs(a - b) for a, b in zip(cached, online)]
    print(f"\n{name}: losses {online}, max |lake - online| {max(diffs):.3g}, "
          f"max relative {max(d / abs(b) for d, b in zip(diffs, online)):.3g}")
    for step, (a, b) in enumerate(zip(cached, online), start=1):
        assert abs(a - b) <= TOLERANCE * abs(b), f"{name} update {step}: lake {a} vs online {b}"
    assert len(set(online)) > 1  # the updates changed the student
