"""``fhb export-hf``: a run's student as a Hugging Face transformers model (safetensors, no pickle).

From one student checkpoint of a run (chosen as for ``fhb export-s3prl``) :func:`export_hf`
writes a folder that ``transformers.AutoModel.from_pretrained(OUT)`` loads offline::

    OUT/config.json                  HubertConfig, or FitHuBERTConfig with auto_map (remote code)
    OUT/model.safetensors            the weights transformers loads
    OUT/preprocessor_config.json     Wav2Vec2FeatureExtractor: 16 kHz, do_normalize false
    OUT/README.md                    model card: teacher sha256, lake, steps, dev losses, outputs
    OUT/fhb.json                     what `fhb import-hf` needs: the whole yaml, step, layout
    OUT/fhb_training_heads.safetensors   the student's tensors the transformers model has no
                                     place for (prediction heads), for `fhb import-hf`
  remote code only (a student with FitHuBERT's time-reduction layer):
    OUT/configuration_fithubert.py, OUT/modeling_fithubert.py   from fhb/stages/hf_template/
    OUT/fhb_*.py, OUT/fhb_bundle.json                          fhb's student modules, flattened

**Two layouts.** A student ``HubertConfig`` can express (no time reduction: DistilHuBERT-style)
becomes a plain ``HubertModel``: fhb's fairseq-named keys are renamed to transformers' (see
:func:`hubert_rules`); a student whose CNN output already has the model dimension (no
``post_extract_proj``) gets an identity ``feature_projection.projection``, which transformers
always has. Any other student (FitHuBERT: time-reduction layer, thin-deep, prediction head) is
fhb's own model under ``model_type: fithubert``, loaded with ``trust_remote_code=True``; its
weights keep fhb's names under ``student.``.

**One source of truth for the model code.** As for the S3PRL upstream, the remote code is not a
second copy of the model: :func:`bundle_flat_sources` copies the source of the fhb modules the
student needs at export time into flat sibling modules (transformers' remote-code loader follows
``from .module import`` of files next to ``modeling_fithubert.py`` only) and may depend on torch
and the standard library only.

The folder is assembled in a temporary sibling, both safetensors files are read back through
:func:`fhb.stages.import_hf.student_state_from_export` and compared with the student bit for bit,
and only then is it renamed to ``OUT``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fhb.errors import FhbError
from fhb.stages.bundle import BUNDLE_ROOTS, assert_same_state, bundle
from fhb.stages.export import write_model_card
from fhb.training.runs import RunStudent, load_run_student

__all__ = [
    "FHB_META",
    "HEADS_NAME",
    "HFExportResult",
    "HUBERT",
    "REMOTE",
    "WEIGHTS_NAME",
    "bundle_flat_sources",
    "export_hf",
    "hubert_config",
    "hubert_incompatibility",
    "hubert_rules",
    "rename",
]

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
HEADS_NAME = "fhb_training_heads.safetensors"
CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
CARD_NAME = "README.md"
FHB_META = "fhb.json"
BUNDLE_MANIFEST = "fhb_bundle.json"
FORMAT = "fhb-transformers"
FORMAT_VERSION = 1
HUBERT = "HubertModel"
REMOTE = "FitHuBERTModel"
REMOTE_PREFIX = "student."
"""Key prefix of the remote-code model's weights (its fhb student is ``model.student``)."""
SAMPLE_RATE = 16000
"""Allowed inside functions only (``FitConfig.to_yaml`` and friends), which the model never calls."""
_HF_ACTIVATIONS: dict[str, str] = {
    "gelu": "gelu",
    "gelu_accurate": "gelu_pytorch_tanh",
    "relu": "relu",
    "tanh": "tanh",
    "linear": "linear",
}
"""fhb's ``activation_fn`` -> transformers' ``hidden_act`` computing the same function."""


# ---------------------------------------------------------------------------------- HubertModel


def hubert_incompatibility(config: Any) -> str | None:
    """Why ``HubertConfig`` cannot express the student of ``config`` (a ``StudentConfig``); None if it can."""
    if config.enable_tr_layer:
        return "it has a time-reduction layer"
    if config.layer_type != "transformer":
        return f"it has {config.layer_type} layers"
    if config.n_mels > 0:
        return "it reads mel spectrograms"
    if config.crop_seq_to_multiple != 1:
        return f"it crops frames to a multiple of {config.crop_seq_to_multiple}"
    if config.activation_fn not in _HF_ACTIVATIONS:
        return f"transformers has no activation {config.activation_fn!r}"
    return None


def hubert_config(config: Any) -> dict[str, Any]:
    """``config.json`` of the ``HubertModel`` for a student ``config`` (``StudentConfig``).

    Dropouts and layerdrop are the student's training values; SpecAugment masking is off (the
    student never trained with it, and ``masked_spec_embed`` would be an untrained parameter).
    """
    import fhb

    assert hubert_incompatibility(config) is None, hubert_incompatibility(config)
    specs = list(config.conv_feature_layers)
    return {
        "architectures": [HUBERT],
        "model_type": "hubert",
        "hidden_size": config.encoder_embed_dim,
        "num_hidden_layers": config.encoder_layers,
        "num_attention_heads": config.encoder_attention_heads,
        "intermediate_size": config.encoder_ffn_embed_dim,
        "hidden_act": _HF_ACTIVATIONS[config.activation_fn],
        "hidden_dropout": config.dropout,
        "activation_dropout": config.activation_dropout,
        "attention_dropout": config.attention_dropout,
        "feat_proj_layer_norm": True,
        "feat_proj_dropout": config.dropout_input,
        "layerdrop": config.encoder_layerdrop,
        "layer_norm_eps": 1e-5,
        "feat_extract_norm": "layer" if config.extractor_mode == "layer_norm" else "group",
        "feat_extract_activation": "gelu",
        "conv_dim": [c for c, _, _ in specs],
        "conv_kernel": [k for _, k, _ in specs],
        "conv_stride": [s for _, _, s in specs],
        "conv_bias": config.conv_bias,
        "num_conv_pos_embeddings": config.conv_pos,
        "num_conv_pos_embedding_groups": config.conv_pos_groups,
        "conv_pos_batch_norm": False,
        "do_stable_layer_norm": config.layer_norm_first,
        "apply_spec_augment": False,
        "mask_time_prob": 0.0,
        "mask_feature_prob": 0.0,
        "dtype": "float32",
        "fhb_version": fhb.__version__,
    }


def hubert_rules(config: Any) -> list[tuple[str, str]]:
    """``(fhb key, transformers key)`` templates for a student ``config`` (``StudentConfig``).

    ``{i}`` stands for a layer index, ``{p}`` for ``weight``/``bias``, ``{proj}`` for one of the
    attention projections. Keys no rule matches (prediction heads) have no place in ``HubertModel``.
    """
    conv_norm = ("feature_extractor.conv_layers.{i}.2.1.{p}" if config.extractor_mode == "layer_norm"
                 else "feature_extractor.conv_layers.{i}.2.{p}")
    layer = "encoder.layers.{i}."
    return [
        ("feature_extractor.conv_layers.{i}.0.{p}", "feature_extractor.conv_layers.{i}.conv.{p}"),
        (conv_norm, "feature_extractor.conv_layers.{i}.layer_norm.{p}"),
        ("layer_norm.{p}", "feature_projection.layer_norm.{p}"),
        ("post_extract_proj.{p}", "feature_projection.projection.{p}"),
        ("encoder.pos_conv.0.weight_g", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
        ("encoder.pos_conv.0.weight_v", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
        ("encoder.pos_conv.0.bias", "encoder.pos_conv_embed.conv.bias"),
        ("encoder.layer_norm.{p}", "encoder.layer_norm.{p}"),
        (layer + "self_attn.{proj}.{p}", layer + "attention.{proj}.{p}"),
        (layer + "self_attn_layer_norm.{p}", layer + "layer_norm.{p}"),
        (layer + "fc1.{p}", layer + "feed_forward.intermediate_dense.{p}"),
        (layer + "fc2.{p}", layer + "feed_forward.output_dense.{p}"),
        (layer + "final_layer_norm.{p}", layer + "final_layer_norm.{p}"),
    ]


_FIELDS = {"i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias)", "proj": r"(?P<proj>[qkv]_proj|out_proj)"}


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(part) if n % 2 == 0 else _FIELDS[part] for n, part in enumerate(parts))
    return re.compile(f"^{regex}$")


def rename(keys: list[str], rules: list[tuple[str, str]], reverse: bool = False) -> dict[str, str]:
    """``{key: renamed}`` for every key a rule matches (``reverse``: transformers -> fhb).

    Keys no rule matches are left out.
    """
    compiled = [(_pattern(b if reverse else a), a if reverse else b) for a, b in rules]
    out: dict[str, str] = {}
    for key in keys:
        for pattern, target in compiled:
            match = pattern.match(key)
            if match:
                out[key] = target.format(**match.groupdict())
                break
    return out


# ---------------------------------------------------------------------------------- remote code


def bundle_flat_sources(dest: Path, roots: tuple[str, ...] = BUNDLE_ROOTS) -> dict[str, str]:
    """Copy fhb's student modules into ``dest`` as flat sibling modules (``fhb_x_y.py``) for
    transformers' remote-code loader (`fhb.stages.bundle.bundle`, ``flat`` layout).

    Only torch at module level; pyyaml inside functions only (the yaml readers and writers of
    ``fhb.student.config``, which the model never calls).

    Returns:
        ``{"fhb/x/y.py": sha256 of the original source}``, also written to ``dest/fhb_bundle.json``.
    """
    return bundle(dest, layout="flat", allowed=frozenset({"torch"}), allowed_in_functions=frozenset({"yaml"}),
                  manifest=BUNDLE_MANIFEST, purpose="the transformers remote code", roots=roots)


def remote_config(config: Any) -> dict[str, Any]:
    """``config.json`` of the remote-code ``FitHuBERTModel`` for a student ``config`` (``StudentConfig``)."""
    import fhb
    from fhb.nn.frames import total_stride

    stride = total_stride(list(config.front_specs))
    return {
        "architectures": [REMOTE],
        "model_type": "fithubert",
        "auto_map": {"AutoConfig": "configuration_fithubert.FitHuBERTConfig",
                     "AutoModel": "modeling_fithubert.FitHuBERTModel"},
        "distiller": config.to_dict(),
        "hidden_size": config.encoder_embed_dim,
        "num_hidden_layers": config.encoder_layers,
        "reduce_factor": config.reduce_factor,
        "frame_stride": stride * config.reduce_factor,
        "prediction_stride": stride,
        "prediction_dim": config.pred_head_final_dim if config.layerwise_proj else config.encoder_embed_dim,
        "sampling_rate": SAMPLE_RATE,
        "dtype": "float32",
        "fhb_version": fhb.__version__,
    }


# ---------------------------------------------------------------------------------- weights


def split_state(model: Any, architecture: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The student's tensors as (``model.safetensors``, ``fhb_training_heads.safetensors``).

    ``HubertModel``: renamed by :func:`hubert_rules`, plus an identity projection when the student
    has no ``post_extract_proj``; unmatched keys go to the heads file. Remote code: the inference
    layout (:func:`~fhb.student.model.strip_for_inference`) under ``student.``; the training heads
    (``proj_head.*``, ``cnn_proj_head.*``; ``final_proj`` is a copy of the last head) go to the
    heads file.
    """
    from fhb.student.model import strip_for_inference

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if architecture == HUBERT:
        names = rename(list(state), hubert_rules(model.config))
        weights = {names[k]: v for k, v in state.items() if k in names}
        if model.post_extract_proj is None:
            dim = model.config.encoder_embed_dim
            weights["feature_projection.projection.weight"] = torch.eye(dim, dtype=torch.float32)
            weights["feature_projection.projection.bias"] = torch.zeros(dim, dtype=torch.float32)
        return weights, {k: v for k, v in state.items() if k not in names}
    inference = strip_for_inference(state)
    weights = {REMOTE_PREFIX + k: v.clone() for k, v in inference.items()}
    return weights, {k: v for k, v in state.items() if k not in inference}


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


# ---------------------------------------------------------------------------------- model card


_CARD = """\
---
library_name: transformers
pipeline_tag: feature-extraction
tags:
- audio
- speech
- knowledge-distillation
- fhb
---

# {title}

{what} exported by fhb {version} from `{source}` (update {steps}).
The weights are `model.safetensors` (no pickle); the waveform is 16 kHz mono, not normalised
(`do_normalize: false`, as the student was trained).

```python
from transformers import AutoFeatureExtractor, AutoModel

extractor = AutoFeatureExtractor.from_pretrained("{folder}")
model = AutoModel.from_pretrained("{folder}"{trust})
inputs = extractor(wavs, sampling_rate=16000, padding=True, return_tensors="pt")
out = model(**inputs, output_hidden_states=True)
```

## Outputs

| output | shape | frame rate |
|---|---|---|
| `hidden_states` | {num_states} x `B x T2 x {dim}` | {hidden_ms} ms ({hidden_rate} samples) |
| `last_hidden_state` | `B x T2 x {dim}` | {hidden_ms} ms |
{prediction_row}
`T' = ` conv frames of the waveform (20 ms: stride 320, receptive field 400), `T2 = T' // {f}`.
`hidden_states[0]` is the input of the first transformer layer: {first}.
`hidden_states[i]` (i = 1..{layers}) is the output of transformer layer i (fhb's layer numbering,
the same list as fhb's S3PRL upstream gives). `last_hidden_state` is {last}.
{published}
To continue training in fhb: `fhb import-hf {folder} --out RUN` (bit for bit, heads included).

"""


def _write_card(path: Path, found: RunStudent, run: Path | None, architecture: str, out: Path) -> dict[str, Any]:
    """``README.md``: how to load it, the outputs, then fhb's model card (teacher, lake, steps, losses)."""
    import fhb
    from fhb.nn.frames import total_stride

    fhb_card = path.with_name(".fhb_card.md")
    try:
        card = write_model_card(fhb_card, found, run)
        facts = fhb_card.read_text(encoding="utf-8").split("\n", 1)[1]  # without its title
    finally:
        fhb_card.unlink(missing_ok=True)
    d = found.config.distiller
    f = d.reduce_factor
    stride = total_stride(list(d.front_specs))
    remote = architecture == REMOTE
    if d.enable_tr_layer:
        first = (f"the time-reduction Conv1d's output (kernel = stride = {f}) over the embedding "
                 "(positional conv, then LayerNorm)")
    elif d.layer_norm_first:
        first = "the embedding (the projected CNN features plus the positional conv)"
    else:
        first = "the embedding (the projected CNN features plus the positional conv, then LayerNorm)"
    last = ("`hidden_states[-1]` after the encoder's final LayerNorm (pre-LN student)" if d.layer_norm_first
            else "`hidden_states[-1]`")
    out_dim = d.pred_head_final_dim if d.layerwise_proj else d.encoder_embed_dim
    prediction_row = (f"| `prediction` | `B x {f}*T2 x {out_dim}` | {1000 * stride // SAMPLE_RATE} ms |\n"
                      if remote else "")
    if remote:
        published = ("`prediction` is the published FitHuBERT S3PRL upstream's `last_hidden_state` (the last "
                     "prediction head on the last layer, upsampled back to 20 ms).\n")
    else:
        published = ("This is a plain `HubertModel` (no remote code). The prediction heads the student trained "
                     f"with are not part of it; they travel in `{HEADS_NAME}` for fhb.\n")
    text = _CARD.format(
        title=f"{d.encoder_layers}-layer {'FitHuBERT' if d.enable_tr_layer else 'HuBERT-style'} student "
              f"({found.model.num_parameters(inference=True):,} parameters)",
        what="A FitHuBERT student (remote code: `trust_remote_code=True`)" if remote
        else "A DistilHuBERT-style student as a plain `HubertModel`",
        version=fhb.__version__, source=found.source, steps=card["steps"], folder=out,
        trust=", trust_remote_code=True" if remote else "", num_states=d.encoder_layers + 1,
        dim=d.encoder_embed_dim, hidden_ms=1000 * stride * f // SAMPLE_RATE, hidden_rate=stride * f,
        prediction_row=prediction_row, f=f, first=first, layers=d.encoder_layers, last=last, published=published,
    )
    path.write_text(text + "## Training record (fhb)\n" + facts, encoding="utf-8")
    return card


# ---------------------------------------------------------------------------------- export


@dataclass(frozen=True)
class HFExportResult:
    """What :func:`export_hf` wrote.

    Attributes:
        out: the folder.
        architecture: ``HubertModel`` or ``FitHuBERTModel`` (remote code).
        source: the checkpoint exported.
        step: its optimizer updates.
        card: the facts of its model card.
    """

    out: Path
    architecture: str
    source: Path
    step: int
    card: dict[str, Any]


def _preprocessor() -> dict[str, Any]:
    """``preprocessor_config.json``: what the student reads (16 kHz, not normalised, zero padding)."""
    return {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": SAMPLE_RATE,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": False,
        "return_attention_mask": True,
    }


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, default=str) + "\n", encoding="utf-8")


def _verify(folder: Path, model: Any) -> None:
    """Read the written tensors back as fhb's student state and compare them bit for bit."""
    from fhb.stages.import_hf import student_state_from_export

    assert_same_state(model.state_dict(), student_state_from_export(folder, model), f"exported {folder.name}")


def export_hf(
    run: Path | None,
    out: Path,
    *,
    step: int | None = None,
    checkpoint: Path | None = None,
    yaml_path: Path | None = None,
    overwrite: bool = False,
) -> HFExportResult:
    """Export one student checkpoint as a transformers model folder (see the module docstring).

    Args:
        run: the run directory (None with ``checkpoint``).
        out: the folder; must not exist or be empty unless ``overwrite``.
        step: export ``checkpoints/step-XXXXXXXX.pt`` instead of the final student.
        checkpoint: export this file instead.
        yaml_path: config for a checkpoint that stores none (bare state dict).
        overwrite: replace an existing non-empty ``out``.

    Raises:
        FhbError: no such run/checkpoint, or a non-empty ``out`` without ``overwrite``.
    """
    import fhb
    from fhb.files import build_beside, check_out_apart, check_replaceable
    from fhb.stages.hf_template import TEMPLATE_FILES, template_dir
    from fhb.student.checkpoint import layout

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FhbError(f"export-hf: {out} exists and is not empty; expected a new folder; pass --overwrite or "
                       "choose another --out")
    check_out_apart(out, {"--run": run, "--checkpoint": checkpoint, "--config": yaml_path}, "export-hf")
    own = frozenset({WEIGHTS_NAME, HEADS_NAME, CONFIG_NAME, PREPROCESSOR_NAME, CARD_NAME, FHB_META, BUNDLE_MANIFEST,
                     *TEMPLATE_FILES})  # exports before the manifest
    check_replaceable(out, "export-hf", own)
    run_dir = Path(run) if run is not None else None
    found = load_run_student(run_dir, step, checkpoint, yaml_path)
    d = found.config.distiller
    reason = hubert_incompatibility(d)
    architecture = HUBERT if reason is None else REMOTE
    with build_beside(out, "export-hf", own) as tmp:
        weights, heads = split_state(found.model, architecture)
        _save_safetensors(weights, tmp / WEIGHTS_NAME)
        _save_safetensors(heads, tmp / HEADS_NAME)
        if architecture == HUBERT:
            _write_json(tmp / CONFIG_NAME, hubert_config(d))
        else:
            log.info("the student needs remote code (%s): writing model_type fithubert", reason)
            for file in TEMPLATE_FILES:
                shutil.copyfile(template_dir() / file, tmp / file)
            bundle_flat_sources(tmp)
            _write_json(tmp / CONFIG_NAME, remote_config(d))
        _write_json(tmp / PREPROCESSOR_NAME, _preprocessor())
        _write_json(tmp / FHB_META, {
            "format": FORMAT, "version": FORMAT_VERSION, "fhb_version": fhb.__version__,
            "architecture": architecture, "layout": layout(found.model, found.config),
            "step": found.step, "source": str(found.source), "kind": found.kind, "teacher": found.teacher,
            "config": found.config.to_dict(),
        })
        _verify(tmp, found.model)
        card = _write_card(tmp / CARD_NAME, found, run_dir, architecture, out)
    log.info("exported %s (update %d) to %s as %s", found.source, found.step, out, architecture)
    return HFExportResult(out, architecture, found.source, found.step, card)
