"""Fine-tuned CTC teachers in fairseq's layout: ``hubert_ctc`` (HubertCtc) and ``wav2vec_ctc`` (Wav2VecCtc).

A fine-tuned checkpoint nests the pre-trained model: ``cfg.model`` is the CTC model's config
(``_name: hubert_ctc``, dropouts, masking, ``normalize``) and ``cfg.model.w2v_args`` the whole
pre-training config (``model`` + ``task``); the weights are ``w2v_encoder.w2v_model.<backbone
name>`` (with the pre-training leftovers fairseq keeps after ``remove_pretraining_modules``:
``mask_emb``, and HuBERT's ``label_embs_concat``) and the CTC output layer
``w2v_encoder.proj.{weight,bias}`` (``V x D``: one row per letter of the task's ``dict.ltr.txt``).

`unwrap_ctc` turns such a checkpoint into what fhb's teacher loader reads: the backbone's config,
task config and state dict, plus the output layer as ``proj.weight`` / ``proj.bias``.
`save_random_ctc_checkpoint` writes a random one (``fhb random-teacher --arch tiny-ctc``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fhb.files import atomic_torch_save
from fhb.nn.wav2vec2 import build_backbone
from fhb.pipeline.checkpoint_io import CheckpointError, plain_config
from fhb.pipeline.fairseq_layout import ARCHS, _fairseq_dictionary_class, _dictionary_state, _model_cfg, _task_cfg
from fhb.storage.ctc_labels import LETTERS

__all__ = ["CTC_ARCHS", "CTC_MODELS", "HEAD_KEYS", "save_random_ctc_checkpoint", "unwrap_ctc"]

CTC_MODELS: dict[str, str] = {"hubert_ctc": "hubert", "wav2vec_ctc": "wav2vec2"}
"""fairseq CTC model name -> the pre-trained model it wraps."""

BACKBONE_PREFIX = "w2v_encoder.w2v_model."
FAIRSEQ_HEAD_PREFIX = "w2v_encoder."
HEAD_KEYS = ("proj.weight", "proj.bias")
"""The CTC output layer's names in fhb's teacher state (fairseq's without ``w2v_encoder.``)."""

CTC_ARCHS: dict[str, tuple[str, str]] = {
    "hubert-base-ctc": ("hubert_ctc", "hubert-base"),
    "hubert-large-ctc": ("hubert_ctc", "hubert-large"),
    "wav2vec2-base-ctc": ("wav2vec_ctc", "wav2vec2-base"),
    "wav2vec2-large-ctc": ("wav2vec_ctc", "wav2vec2-large"),
    "tiny-ctc": ("hubert_ctc", "tiny"),
    "tiny-wav2vec2-ctc": ("wav2vec_ctc", "tiny-wav2vec2"),
}
"""Random fine-tuned presets: preset -> (fairseq CTC model name, pre-trained preset of `ARCHS`)."""


def unwrap_ctc(path: Path, cfg: dict[str, Any], state: dict[str, torch.Tensor]
               ) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """A fine-tuned checkpoint's (model config, state) -> (backbone model config, backbone task
    config, backbone state + ``proj.weight``/``proj.bias``), fhb's names.

    ``w2v_args`` may be a config dict (``model``/``task``) or a legacy argparse Namespace (one flat
    dict, ``arch`` naming the model). Raises CheckpointError for anything else.
    """
    args = plain_config(cfg.get("w2v_args"))
    if not isinstance(args, dict):
        raise CheckpointError(
            f"{path}: a fine-tuned '{cfg.get('_name')}' checkpoint expected cfg.model.w2v_args (the pre-trained "
            f"model's config), found {type(args).__name__}; use the file fairseq's fine-tuning wrote")
    if isinstance(args.get("model"), dict):
        model, task = dict(args["model"]), dict(args.get("task") or {})
    else:  # legacy Namespace: model and task fields side by side
        model, task = {**args, "_name": args.get("arch")}, {**args, "_name": args.get("task")}
    expected = CTC_MODELS[str(cfg["_name"])]
    if model.get("_name") != expected:
        raise CheckpointError(
            f"{path}: a '{cfg['_name']}' checkpoint should wrap a '{expected}' model, found "
            f"{model.get('_name')!r} in w2v_args; use the file fairseq's fine-tuning wrote")
    if "normalize" in cfg and "normalize" not in task:
        task["normalize"] = cfg["normalize"]
    head = {k[len(FAIRSEQ_HEAD_PREFIX):]: v for k, v in state.items() if k[len(FAIRSEQ_HEAD_PREFIX):] in HEAD_KEYS
            and k.startswith(FAIRSEQ_HEAD_PREFIX)}
    if set(head) != set(HEAD_KEYS):
        raise CheckpointError(
            f"{path}: a CTC checkpoint expected the output layer w2v_encoder.proj.weight/bias, found "
            f"{sorted(k for k in state if not k.startswith(BACKBONE_PREFIX))[:5]}; use the file fairseq's fine-tuning wrote")
    backbone = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    other = sorted(k for k in state if not k.startswith(BACKBONE_PREFIX) and k[len(FAIRSEQ_HEAD_PREFIX):] not in HEAD_KEYS)
    if other:
        raise CheckpointError(f"{path}: unexpected weights {other[:5]} in a CTC checkpoint (fairseq's hold "
                              f"w2v_encoder.w2v_model.* and w2v_encoder.proj.*); use the original file")
    return model, task, {**backbone, **head}


def save_random_ctc_checkpoint(path: str | Path, arch: str, seed: int = 0, **overrides: Any) -> Path:
    """Write a random fine-tuned CTC teacher (`CTC_ARCHS` preset) in fairseq's trainer layout.

    The output layer has one row per symbol of the published ``dict.ltr.txt`` (32); what fairseq
    needs besides the file is that dictionary as ``dict.ltr.txt`` in the task's ``data`` directory
    as for any fine-tuned model.
    """
    if arch not in CTC_ARCHS:
        raise ValueError(f"unknown CTC teacher arch {arch!r}; expected one of {sorted(CTC_ARCHS)}")
    ctc_name, base = CTC_ARCHS[arch]
    model_name, config, extras = ARCHS[base]
    config = replace(config, **overrides)
    torch.manual_seed(seed)
    backbone = build_backbone(config)
    dim = config.encoder_embed_dim
    state: dict[str, torch.Tensor] = {BACKBONE_PREFIX + k: v for k, v in backbone.state_dict().items()}
    state[BACKBONE_PREFIX + "mask_emb"] = torch.rand(dim)
    if model_name == "hubert":
        # fairseq rebuilds the wrapped HuBERT with the fine-tuning task's dictionary: one row per letter
        state[BACKBONE_PREFIX + "label_embs_concat"] = torch.randn(len(LETTERS), extras["final_dim"])
    proj = torch.nn.Linear(dim, len(LETTERS))
    state["w2v_encoder.proj.weight"], state["w2v_encoder.proj.bias"] = proj.weight.detach(), proj.bias.detach()
    pre_task = _task_cfg(model_name, extras)
    w2v_args = {"_name": None, "common": {"_name": None, "seed": seed, "fp16": False},
                "model": _model_cfg(model_name, config, extras), "task": pre_task}
    model_cfg = {
        "_name": ctc_name, "w2v_path": "/models/pretrained.pt", "no_pretrained_weights": False,
        "dropout_input": 0.0, "final_dropout": 0.0, "dropout": 0.0, "attention_dropout": 0.0,
        "activation_dropout": 0.1, "apply_mask": True, "mask_length": 10, "mask_prob": 0.5,
        "mask_selection": "static", "mask_other": 0.0, "no_mask_overlap": False, "mask_channel_length": 64,
        "mask_channel_prob": 0.25, "mask_channel_selection": "static", "mask_channel_other": 0.0,
        "no_mask_channel_overlap": False, "freeze_finetune_updates": 0, "feature_grad_mult": 0.0,
        "layerdrop": 0.1, "normalize": extras["normalize"], "data": pre_task["data"], "w2v_args": w2v_args,
    }
    task_cfg = {"_name": "hubert_pretraining" if model_name == "hubert" else "audio_finetuning",
                "data": pre_task["data"], "normalize": extras["normalize"], "labels": ["ltr"],
                "sample_rate": 16000, "enable_padding": False, "max_sample_size": 250000}
    if model_name == "hubert":
        task_cfg.update(fine_tuning=True, label_dir=None, label_rate=-1.0, single_target=True, pad_audio=False,
                        random_crop=True)
    else:
        task_cfg.update(labels="ltr", eval_wer=False, autoregressive=False)
    ckpt: dict[str, Any] = {
        "args": None, "model": state, "criterion": None, "last_optimizer_state": None,
        "cfg": {"_name": None, "common": {"_name": None, "seed": seed, "fp16": False, "tpu": False},
                "model": model_cfg, "task": task_cfg, "criterion": {"_name": "ctc", "zero_infinity": True}},
        "optimizer_history": [{"criterion_name": "CtcCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "extra_state": {"metrics": {}, "previous_training_time": 0.0,
                        "train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "shuffle": True}},
    }
    path = Path(path)
    with _fairseq_dictionary_class() as dictionary_cls:
        dictionary = dictionary_cls()
        dictionary.__dict__.update(_dictionary_state(len(LETTERS)))
        dictionary.__dict__["symbols"] = list(LETTERS)
        dictionary.__dict__["indices"] = {s: i for i, s in enumerate(LETTERS)}
        ckpt["task_state"] = {"dictionaries": [dictionary]} if model_name == "hubert" else {}
        atomic_torch_save(ckpt, path)
    return path
