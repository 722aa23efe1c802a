"""Parity of the student's blocks with fairseq's own classes, weights shared (skipped without fairseq).

The published student is built from local copies of fairseq's ``ConvFeatureExtractionModel``,
``TransformerSentenceEncoderLayer``, ``pos_conv`` and ``GradMultiply``; the same weights must give
the same outputs (fp32, tolerance 1e-5).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from fhb.student import FitConfig, FitHuBERT, build_fit_student, load_packaged_config
from fhb.student.model import GradMultiply

pytestmark = pytest.mark.reference
fairseq = pytest.importorskip("fairseq", reason="reference tests need fairseq-fixed (make setup installs it)")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fairseq.models.wav2vec.wav2vec2 import (
        ConvFeatureExtractionModel,
        TransformerSentenceEncoderLayer,
        make_conv_pos,
    )
    from fairseq.modules import GradMultiply as FairseqGradMultiply

TOLERANCE = 1e-5


def test_conv_stack_matches_fairseq() -> None:
    torch.manual_seed(0)
    model = build_fit_student(load_packaged_config("fithubert")).eval()
    ref = ConvFeatureExtractionModel(list(model.feature_extractor.specs), dropout=0.0, mode="default", conv_bias=False)
    ref.load_state_dict(model.feature_extractor.state_dict(), strict=True)
    wav = torch.randn(2, 16320)
    with torch.no_grad():
        ours, _ = model.feature_extractor(wav)
        torch.testing.assert_close(ours, ref.eval()(wav), atol=TOLERANCE, rtol=TOLERANCE)


def test_transformer_layer_matches_fairseq(tiny_model: FitHuBERT, tiny_config: FitConfig) -> None:
    d = tiny_config.distiller
    layer = tiny_model.encoder.layers[1]  # layers[0] is the time-reduction conv
    ref = TransformerSentenceEncoderLayer(d.encoder_embed_dim, d.encoder_ffn_embed_dim, d.encoder_attention_heads,
                                          activation_fn=d.activation_fn, layer_norm_first=False)
    ref.load_state_dict(layer.state_dict(), strict=True)
    assert list(ref.state_dict()) == list(layer.state_dict())  # fairseq's parameter order too
    x = torch.randn(3, 11, d.encoder_embed_dim)
    mask = torch.arange(11)[None] >= torch.tensor([11, 7, 4])[:, None]
    layer.eval(), ref.eval()
    with torch.no_grad():
        ours = layer(x, mask)
        theirs, _ = ref(x.transpose(0, 1), self_attn_padding_mask=mask)
    valid = ~mask
    torch.testing.assert_close(ours[valid], theirs.transpose(0, 1)[valid], atol=TOLERANCE, rtol=TOLERANCE)


def test_positional_conv_matches_fairseq(tiny_model: FitHuBERT, tiny_config: FitConfig) -> None:
    d = tiny_config.distiller
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's weight_norm deprecation
        ref = make_conv_pos(d.encoder_embed_dim, d.conv_pos, d.conv_pos_groups)
    ours = tiny_model.encoder.pos_conv
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert list(ref.state_dict()) == list(ours.state_dict())
    x = torch.randn(2, d.encoder_embed_dim, 13)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=TOLERANCE, rtol=TOLERANCE)


def test_grad_multiply_matches_fairseq() -> None:
    x = torch.randn(4, 5, requires_grad=True)
    y = torch.randn(4, 5, requires_grad=True)
    (GradMultiply.apply(x, 0.1) ** 2).sum().backward()
    (FairseqGradMultiply.apply(y, 0.1) ** 2).sum().backward()
    torch.testing.assert_close(x.grad / x.detach(), y.grad / y.detach())


def _fairseq_encoder(config: FitConfig) -> torch.nn.Module:
    from fairseq.models.wav2vec.wav2vec2 import TransformerEncoder, Wav2Vec2Config

    d = config.distiller
    args = Wav2Vec2Config(
        encoder_layers=d.encoder_layers, encoder_embed_dim=d.encoder_embed_dim,
        encoder_ffn_embed_dim=d.encoder_ffn_embed_dim, encoder_attention_heads=d.encoder_attention_heads,
        conv_pos=d.conv_pos, conv_pos_groups=d.conv_pos_groups, layer_norm_first=d.layer_norm_first,
        activation_fn=d.activation_fn, required_seq_len_multiple=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerEncoder(args).eval()


def test_time_reduced_encoder_matches_fairseq_blocks(tiny_model: FitHuBERT, tiny_config: FitConfig) -> None:
    """The published encoder loop, written with fairseq's modules: embed at 20 ms, the TR Conv1d,
    the mask reduced by any-of-pair (odd tail dropped), fairseq's layers at 40 ms."""
    ours = tiny_model.encoder.eval()
    ref = _fairseq_encoder(tiny_config)
    state = {k: v for k, v in ours.state_dict().items() if not k.startswith("layers.0.")}
    state = {(f"layers.{int(k.split('.')[1]) - 1}." + k.split(".", 2)[2] if k.startswith("layers.") else k): v
             for k, v in state.items()}
    ref.load_state_dict(state, strict=True)
    tr = ours.layers[0]
    lengths = torch.tensor([13, 9, 4])
    mask = torch.arange(13)[None] >= lengths[:, None]
    x = torch.randn(3, 13, tiny_config.distiller.encoder_embed_dim)
    with torch.no_grad():
        out = ours(x, lengths, mask)
        y = x.masked_fill(mask[..., None], 0.0)
        y = ref.layer_norm(y + ref.pos_conv(y.transpose(1, 2)).transpose(1, 2))
        y = torch.nn.functional.conv1d(y.transpose(1, 2), tr.weight, tr.bias, stride=2).permute(2, 0, 1)
        reduced = torch.stack(mask.split(2, dim=1)[:-1]).any(-1).transpose(0, 1)  # 13 frames: drop the odd tail
        assert torch.equal(reduced, out.padding_mask)
        for k, layer in enumerate(ref.layers):
            y, _ = layer(y, self_attn_padding_mask=reduced)
            valid = ~reduced
            torch.testing.assert_close(out.hidden_states[k][valid], y.transpose(0, 1)[valid],
                                       atol=TOLERANCE, rtol=TOLERANCE)


def test_encoder_without_time_reduction_matches_fairseq(tiny_config: FitConfig) -> None:
    import dataclasses

    from fhb.student import build_student

    torch.manual_seed(0)
    model = build_student(dataclasses.replace(tiny_config.distiller, enable_tr_layer=False)).eval()
    ref = _fairseq_encoder(tiny_config)
    ref.load_state_dict(model.encoder.state_dict(), strict=True)
    assert list(ref.state_dict()) == list(model.encoder.state_dict())
    lengths = torch.tensor([12, 8])
    mask = torch.arange(12)[None] >= lengths[:, None]
    x = torch.randn(2, 12, tiny_config.distiller.encoder_embed_dim)
    with torch.no_grad():
        out = model.encoder(x, lengths, mask)
        _, layer_results = ref.extract_features(x, padding_mask=mask)
    for ours, (theirs, _, _) in zip(out.hidden_states, layer_results):
        torch.testing.assert_close(ours[~mask], theirs.transpose(0, 1)[~mask], atol=TOLERANCE, rtol=TOLERANCE)
