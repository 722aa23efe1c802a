"""Conformer students against fairseq's own wav2vec 2.0 encoders, weights shared (skipped without fairseq).

* ``pos_enc_type: abs``: the published encoder is fairseq's ``TransformerEncoder`` with
  ``layer_type: conformer`` (positional conv, then conformer layers), plus FitHuBERT's
  time-reduction layer before the first layer.
* ``rel_pos`` / ``rope``: fhb follows fairseq's ``ConformerEncoder`` (no positional conv; relative
  encodings for the sequence at hand), which the published code meant to use.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from fhb.student import FitHuBERT, build_student, load_packaged_config

pytestmark = pytest.mark.reference
pytest.importorskip("fairseq", reason="reference tests need fairseq")

TOLERANCE = 2e-5


def _student(**changes: object) -> FitHuBERT:
    torch.manual_seed(0)
    cfg = dataclasses.replace(load_packaged_config("tiny").distiller, layer_type="conformer",
                              depthwise_conv_kernel_size=5, **changes)
    model = build_student(cfg).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for name, buf in model.named_buffers():
            if "running" in name:
                buf.uniform_(0.5, 1.5)
    return model


def _fairseq(model: FitHuBERT, encoder: str) -> torch.nn.Module:
    from fairseq.models.wav2vec import wav2vec2

    d = model.config
    args = wav2vec2.Wav2Vec2Config(
        encoder_layers=d.encoder_layers, encoder_embed_dim=d.encoder_embed_dim,
        encoder_ffn_embed_dim=d.encoder_ffn_embed_dim, encoder_attention_heads=d.encoder_attention_heads,
        conv_pos=d.conv_pos, conv_pos_groups=d.conv_pos_groups, layer_norm_first=d.layer_norm_first,
        required_seq_len_multiple=1, layer_type="conformer", depthwise_conv_kernel_size=d.depthwise_conv_kernel_size,
        attn_type=d.attn_type, pos_enc_type=d.pos_enc_type, fp16=False,
    )
    cls = getattr(wav2vec2, encoder)
    if encoder == "ConformerEncoder":
        class Patched(cls):  # type: ignore[misc, valid-type]
            """fairseq's ConformerEncoder, whose build_encoder_layer lacks the layer_idx its base passes."""

            def build_encoder_layer(self, args: object, **kwargs: object) -> torch.nn.Module:
                return super().build_encoder_layer(args)

        cls = Patched
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(args).eval()


@pytest.mark.parametrize("attn_type", ["", "espnet"])
def test_abs_conformer_without_time_reduction_is_fairseqs_encoder(attn_type: str) -> None:
    model = _student(attn_type=attn_type, enable_tr_layer=False)
    ref = _fairseq(model, "TransformerEncoder")
    assert list(ref.state_dict()) == list(model.encoder.state_dict())
    ref.load_state_dict(model.encoder.state_dict(), strict=True)
    lengths = torch.tensor([12, 8])
    mask = torch.arange(12)[None] >= lengths[:, None]
    x = torch.randn(2, 12, model.config.encoder_embed_dim)
    with torch.no_grad():
        out = model.encoder(x, lengths, mask)
        _, layer_results = ref.extract_features(x, padding_mask=mask)
    for ours, (theirs, _, _) in zip(out.hidden_states, layer_results, strict=True):
        torch.testing.assert_close(ours[~mask], theirs.transpose(0, 1)[~mask], atol=TOLERANCE, rtol=TOLERANCE)


def test_abs_conformer_with_time_reduction_follows_the_published_loop() -> None:
    """Embed at 20 ms with fairseq's blocks, the Conv1d reduction, fairseq's conformer layers at 40 ms."""
    model = _student()
    ours = model.encoder
    ref = _fairseq(model, "TransformerEncoder")
    state = {k: v for k, v in ours.state_dict().items() if not k.startswith("layers.0.")}
    state = {(f"layers.{int(k.split('.')[1]) - 1}." + k.split(".", 2)[2] if k.startswith("layers.") else k): v
             for k, v in state.items()}
    ref.load_state_dict(state, strict=True)
    tr = ours.layers[0]
    lengths = torch.tensor([13, 9])
    mask = torch.arange(13)[None] >= lengths[:, None]
    x = torch.randn(2, 13, model.config.encoder_embed_dim)
    with torch.no_grad():
        out = ours(x, lengths, mask)
        y = x.masked_fill(mask[..., None], 0.0)
        y = ref.layer_norm(y + ref.pos_conv(y.transpose(1, 2)).transpose(1, 2))
        y = torch.nn.functional.conv1d(y.transpose(1, 2), tr.weight, tr.bias, stride=2).permute(2, 0, 1)
        reduced = torch.stack(mask.split(2, dim=1)[:-1]).any(-1).transpose(0, 1)
        assert torch.equal(reduced, out.padding_mask)
        for k, layer in enumerate(ref.layers):
            y, _ = layer(y, self_attn_padding_mask=reduced)
            torch.testing.assert_close(out.hidden_states[k][~reduced], y.transpose(0, 1)[~reduced],
                                       atol=TOLERANCE, rtol=TOLERANCE)


@pytest.mark.parametrize("pos_enc_type", ["rel_pos", "rope"])
def test_positional_conformer_is_fairseqs_conformer_encoder(pos_enc_type: str) -> None:
    model = _student(attn_type="espnet", pos_enc_type=pos_enc_type, enable_tr_layer=False)
    ref = _fairseq(model, "ConformerEncoder")
    missing, unexpected = ref.load_state_dict(model.encoder.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("pos_conv.") for k in missing)  # fairseq builds it, never runs it
    lengths = torch.tensor([12, 8])
    mask = torch.arange(12)[None] >= lengths[:, None]
    x = torch.randn(2, 12, model.config.encoder_embed_dim)
    with torch.no_grad():
        out = model.encoder(x, lengths, mask)
        _, layer_results = ref.extract_features(x, padding_mask=mask, tgt_layer=model.config.encoder_layers - 1)
    assert len(layer_results) == len(out.hidden_states)
    for ours, (theirs, _) in zip(out.hidden_states, layer_results, strict=True):
        torch.testing.assert_close(ours[~mask], theirs.transpose(0, 1)[~mask], atol=TOLERANCE, rtol=TOLERANCE)
