"""Write random-weight teachers in the real fairseq trainer checkpoint layout.

No HuBERT weights exist offline, so tests and benchmarks build teachers with the real
architectures and random weights. What this writes loads in fairseq itself
(``checkpoint_utils.load_model_ensemble_and_task``) and in :func:`fhb.pipeline.teacher.load_teacher`:
``cfg`` as a plain dict (or a legacy ``args`` Namespace), ``model`` with the pre-training heads,
``task_state`` with a pickled ``fairseq.data.dictionary.Dictionary``, ``optimizer_history`` and
``extra_state``. Compute cost does not depend on the weights, so benchmarks use these too.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import types
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fhb.nn.wav2vec2 import BackboneConfig, build_backbone
from fhb.files import atomic_torch_save

_TINY_CONV = ((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2

ARCHS: dict[str, tuple[str, BackboneConfig, dict[str, Any]]] = {
    # name: (fairseq model name, architecture, model-specific extras)
    "hubert-base": (
        "hubert",
        BackboneConfig(encoder_layerdrop=0.05, dropout_input=0.1, feature_grad_mult=0.1),
        {"final_dim": 256, "num_classes": 504, "normalize": False},
    ),
    "hubert-large": (
        "hubert",
        BackboneConfig(
            extractor_mode="layer_norm", encoder_layers=24, encoder_embed_dim=1024,
            encoder_ffn_embed_dim=4096, encoder_attention_heads=16, layer_norm_first=True,
            encoder_layerdrop=0.0, dropout=0.0, attention_dropout=0.0, feature_grad_mult=1.0,
        ),
        {"final_dim": 768, "num_classes": 504, "normalize": True},
    ),
    "wav2vec2-base": (
        "wav2vec2",
        BackboneConfig(encoder_layerdrop=0.05, dropout_input=0.1, feature_grad_mult=0.1),
        {"final_dim": 256, "latent_vars": 320, "latent_groups": 2, "normalize": False},
    ),
    "wav2vec2-large": (
        "wav2vec2",
        BackboneConfig(
            extractor_mode="layer_norm", conv_bias=True, encoder_layers=24, encoder_embed_dim=1024,
            encoder_ffn_embed_dim=4096, encoder_attention_heads=16, layer_norm_first=True,
            encoder_layerdrop=0.0, dropout_input=0.1, feature_grad_mult=1.0,
        ),
        {"final_dim": 768, "latent_vars": 320, "latent_groups": 2, "normalize": True},
    ),
    "tiny": (
        "hubert",
        BackboneConfig(
            conv_feature_layers=_TINY_CONV, encoder_layers=3, encoder_embed_dim=64,
            encoder_ffn_embed_dim=128, encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4,
        ),
        {"final_dim": 16, "num_classes": 12, "normalize": False},
    ),
    "tiny-wav2vec2": (
        "wav2vec2",
        BackboneConfig(
            extractor_mode="layer_norm", conv_bias=True, conv_feature_layers=_TINY_CONV,
            encoder_layers=3, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
            encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4, layer_norm_first=True,
        ),
        {"final_dim": 16, "latent_vars": 8, "latent_groups": 2, "normalize": True},
    ),
}
"""Random-teacher presets: HuBERT / wav2vec 2.0 Base and Large shapes, and tiny ones for tests."""


class _Dictionary:
    """Stand-in with the pickled state of ``fairseq.data.dictionary.Dictionary``."""


@contextlib.contextmanager
def _fairseq_dictionary_class() -> Iterator[type]:
    """Make ``fairseq.data.dictionary.Dictionary`` resolvable to the stand-in while pickling."""
    names = ("fairseq", "fairseq.data", "fairseq.data.dictionary")
    saved = {name: sys.modules.get(name) for name in names}
    cls = type("Dictionary", (_Dictionary,), {"__module__": "fairseq.data.dictionary", "__qualname__": "Dictionary"})
    modules = {name: types.ModuleType(name) for name in names}
    modules["fairseq"].data = modules["fairseq.data"]  # type: ignore[attr-defined]
    modules["fairseq.data"].dictionary = modules["fairseq.data.dictionary"]  # type: ignore[attr-defined]
    modules["fairseq.data.dictionary"].Dictionary = cls  # type: ignore[attr-defined]
    sys.modules.update(modules)
    try:
        yield cls
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _dictionary_state(num_symbols: int) -> dict[str, Any]:
    """The ``__dict__`` of a fairseq ``Dictionary`` with 4 specials and k-means unit labels."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    symbols = specials + [str(i) for i in range(num_symbols - len(specials))]
    return {
        "bos_word": "<s>", "unk_word": "<unk>", "pad_word": "<pad>", "eos_word": "</s>",
        "symbols": symbols, "count": [1] * len(symbols),
        "indices": {s: i for i, s in enumerate(symbols)},
        "bos_index": 0, "pad_index": 1, "eos_index": 2, "unk_index": 3, "nspecial": 4,
    }


def _model_cfg(model_name: str, arch: BackboneConfig, extras: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {"_name": model_name, **arch.to_fairseq()}
    cfg.update(
        final_dim=extras["final_dim"], layer_type="transformer", dropout_features=0.1,
        logit_temp=0.1, target_glu=False, mask_length=10, mask_prob=0.8, mask_selection="static",
        mask_other=0.0, no_mask_overlap=False, mask_min_space=1, mask_channel_length=10,
        mask_channel_prob=0.0, mask_channel_selection="static", mask_channel_other=0.0,
        no_mask_channel_overlap=False, mask_channel_min_space=1, latent_temp=[2.0, 0.5, 0.999995],
        checkpoint_activations=False, required_seq_len_multiple=2,
    )
    if model_name == "hubert":
        cfg.update(label_rate=50.0, untie_final_proj=False, skip_masked=False, skip_nomask=False)
    else:
        cfg.update(
            quantize_targets=True, quantize_input=False, same_quantizer=False,
            latent_vars=extras["latent_vars"], latent_groups=extras["latent_groups"], latent_dim=0,
            num_negatives=100, negatives_from_everywhere=False, cross_sample_negatives=0,
            codebook_negatives=0, pos_conv_depth=1, max_positions=100000,
        )
    return cfg


def _task_cfg(model_name: str, extras: dict[str, Any]) -> dict[str, Any]:
    common = {"data": "/data/manifest", "sample_rate": 16000, "normalize": extras["normalize"],
              "enable_padding": False, "max_sample_size": 250000, "min_sample_size": 32000}
    if model_name == "hubert":
        return {"_name": "hubert_pretraining", **common, "fine_tuning": False, "labels": ["km"],
                "label_dir": None, "label_rate": 50.0, "max_keep_size": None,
                "single_target": False, "random_crop": True, "pad_audio": False}
    return {"_name": "audio_pretraining", **common}


def _pretraining_heads(model_name: str, arch: BackboneConfig, extras: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Random tensors for the pre-training-only parameters, in fairseq's shapes."""
    dim, final_dim = arch.encoder_embed_dim, extras["final_dim"]
    heads = {"mask_emb": torch.rand(dim), "final_proj.weight": torch.randn(final_dim, dim) * 0.02,
             "final_proj.bias": torch.zeros(final_dim)}
    if model_name == "hubert":
        heads["label_embs_concat"] = torch.randn(extras["num_classes"], final_dim)
    else:
        groups, num_vars = extras["latent_groups"], extras["latent_vars"]
        heads.update({
            "quantizer.vars": torch.rand(1, groups * num_vars, final_dim // groups),
            "quantizer.weight_proj.weight": torch.randn(groups * num_vars, arch.cnn_dim) * 0.02,
            "quantizer.weight_proj.bias": torch.zeros(groups * num_vars),
            "project_q.weight": torch.randn(final_dim, final_dim) * 0.02,
            "project_q.bias": torch.zeros(final_dim),
        })
    return heads


def save_random_checkpoint(
    path: str | Path, arch: str, seed: int = 0, legacy_args: bool = False, **overrides: Any
) -> Path:
    """Write a random-weight teacher checkpoint in fairseq's trainer layout.

    Args:
        path: destination ``.pt`` (written atomically).
        arch: a preset of :data:`ARCHS` (``hubert-base``, ``wav2vec2-base``, ``tiny``, …).
        seed: weight initialisation seed (same seed, same file contents).
        legacy_args: store the config as an argparse ``args`` Namespace (old wav2vec 2.0 files)
            instead of ``cfg``.
        overrides: ``BackboneConfig`` fields to change (e.g. ``encoder_layers=2``).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown teacher arch {arch!r}; expected one of {sorted(ARCHS)}")
    model_name, config, extras = ARCHS[arch]
    config = replace(config, **overrides)
    torch.manual_seed(seed)
    model = build_backbone(config)
    state = {**model.state_dict(), **_pretraining_heads(model_name, config, extras)}
    model_cfg = _model_cfg(model_name, config, extras)
    task_cfg = _task_cfg(model_name, extras)
    ckpt: dict[str, Any] = {
        "model": state,
        "criterion": None,
        "optimizer_history": [{"criterion_name": f"{model_name}_criterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "extra_state": {"metrics": {}, "previous_training_time": 0.0,
                        "train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "shuffle": True}},
        "last_optimizer_state": None,
    }
    if legacy_args:
        ckpt["args"] = argparse.Namespace(arch=model_name, task=task_cfg["_name"],
                                          **{k: v for k, v in {**task_cfg, **model_cfg}.items() if k != "_name"})
        ckpt["cfg"] = None
    else:
        ckpt["args"] = None
        ckpt["cfg"] = {"_name": None, "common": {"_name": None, "seed": seed, "fp16": False, "tpu": False},
                       "model": model_cfg, "task": task_cfg, "criterion": {"_name": f"{model_name}"}}
    path = Path(path)
    with _fairseq_dictionary_class() as dictionary_cls:
        if model_name == "hubert":
            dictionary = dictionary_cls()
            dictionary.__dict__.update(_dictionary_state(extras["num_classes"]))
            ckpt["task_state"] = {"dictionaries": [dictionary]}
        else:
            ckpt["task_state"] = {}
        atomic_torch_save(ckpt, path)
    return path
