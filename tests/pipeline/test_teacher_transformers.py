"""A second reference: transformers' ``HubertModel`` with the same weights gives the same layers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from fhb.pipeline.teacher import load_teacher

pytestmark = pytest.mark.reference

TOLERANCE = 1e-5
"""Max abs error of every layer, fp32, as README's "Faithfulness" states it (measured: 0 on the tiny
HuBERT, the two run the same kernels)."""

_RENAMES = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.", r"feature_extractor.conv_layers.\1.conv."),
    (r"^feature_extractor\.conv_layers\.0\.2\.", "feature_extractor.conv_layers.0.layer_norm."),
    (r"^layer_norm\.", "feature_projection.layer_norm."),
    (r"^post_extract_proj\.", "feature_projection.projection."),
    (r"^encoder\.pos_conv\.0\.weight_g$", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"^encoder\.pos_conv\.0\.weight_v$", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"^encoder\.pos_conv\.0\.bias$", "encoder.pos_conv_embed.conv.bias"),
    (r"\.self_attn\.", ".attention."),
    (r"\.self_attn_layer_norm\.", ".layer_norm."),
    (r"\.fc1\.", ".feed_forward.intermediate_dense."),
    (r"\.fc2\.", ".feed_forward.output_dense."),
]


def _to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def test_transformers_hubert_parity(tiny_teacher_path: Path, fixture_wavs: dict) -> None:
    transformers = pytest.importorskip("transformers")
    teacher = load_teacher(tiny_teacher_path)
    arch = teacher.arch
    config = transformers.HubertConfig(
        hidden_size=arch.encoder_embed_dim, num_hidden_layers=arch.encoder_layers,
        num_attention_heads=arch.encoder_attention_heads, intermediate_size=arch.encoder_ffn_embed_dim,
        conv_dim=tuple(c for c, _, _ in arch.conv_feature_layers),
        conv_kernel=tuple(k for _, k, _ in arch.conv_feature_layers),
        conv_stride=tuple(s for _, _, s in arch.conv_feature_layers),
        feat_extract_norm="group", conv_bias=arch.conv_bias, num_conv_pos_embeddings=arch.conv_pos,
        num_conv_pos_embedding_groups=arch.conv_pos_groups, do_stable_layer_norm=False,
        hidden_act="gelu", layer_norm_eps=1e-5, feat_proj_layer_norm=True,
    )
    reference = transformers.HubertModel(config).eval()
    state = {k: v for k, v in teacher.model.state_dict().items()}
    missing, unexpected = reference.load_state_dict(_to_hf(state), strict=False)
    assert set(missing) <= {"masked_spec_embed"} and not unexpected, (missing, unexpected)
    worst = 0.0
    for wav in fixture_wavs.values():
        with torch.inference_mode():
            hidden = reference(wav[None], output_hidden_states=True).hidden_states
        ours = teacher.extract([wav])[0]
        ref = torch.stack([h[0] for h in hidden[1:]])
        assert ref.shape == ours.shape
        worst = max(worst, (ref - ours).abs().max().item())
    assert worst <= TOLERANCE, worst
