"""fhb.nn.conformer: equal to fairseq's ConformerEncoderLayer on the same weights (every attention kind)."""

from __future__ import annotations

import warnings

import pytest
import torch

from fhb.nn.conformer import ATTENTION_KINDS, build_conformer_layer, relative_positions

D, FFN, H, K = 32, 48, 4, 7


def _fairseq_layer(attn_type: str, pos_enc_type: str) -> torch.nn.Module:
    pytest.importorskip("fairseq")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fairseq.modules.conformer_layer import ConformerWav2Vec2EncoderLayer

    return ConformerWav2Vec2EncoderLayer(
        embed_dim=D, ffn_embed_dim=FFN, attention_heads=H, dropout=0.1, use_fp16=True,
        depthwise_conv_kernel_size=K, activation_fn="swish", attn_type=attn_type, pos_enc_type=pos_enc_type,
    )


@pytest.mark.reference
@pytest.mark.parametrize(("attn_type", "pos_enc_type"), ATTENTION_KINDS)
@pytest.mark.parametrize("training", [False, True])
def test_equals_fairseq_conformer_layer(attn_type: str, pos_enc_type: str, training: bool) -> None:
    ref = _fairseq_layer(attn_type, pos_enc_type)
    ours = build_conformer_layer(D, FFN, H, 0.1, K, attn_type, pos_enc_type)
    with torch.no_grad():  # non-trivial BatchNorm statistics and position biases
        for name, buf in ref.named_buffers():
            if "running" in name:
                buf.uniform_(0.5, 1.5)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    # dropout off, BatchNorm in the requested mode (batch statistics in training)
    for model in (ref, ours):
        model.train(training)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout) or type(module).__name__ == "FairseqDropout":
                module.p = 0.0
    if isinstance(ours.self_attn.dropout, float):  # fhb's SelfAttention keeps a probability
        ours.self_attn.dropout = 0.0
    x = torch.randn(2, 9, D)
    mask = torch.arange(9)[None, :] >= torch.tensor([9, 6])[:, None]
    pos = None
    if pos_enc_type == "rel_pos":
        from fairseq.modules import RelPositionalEncoding

        pos_tbc = RelPositionalEncoding(1000, D)(x.transpose(0, 1))
        pos = relative_positions(9, D, x.dtype, x.device)
        torch.testing.assert_close(pos, pos_tbc.transpose(0, 1), rtol=0, atol=0)
    expected = ref(x.transpose(0, 1), self_attn_padding_mask=mask, position_emb=None if pos is None else pos_tbc)[0]
    got = ours(x, mask, pos)
    for i, n in enumerate([9, 6]):
        torch.testing.assert_close(got[i, :n], expected.transpose(0, 1)[i, :n], atol=2e-5, rtol=2e-5)
    if training:
        # gradients flow through every parameter
        got.sum().backward()
        assert all(p.grad is not None for p in ours.parameters())


def test_odd_kernel_and_known_kinds_only() -> None:
    with pytest.raises(ValueError, match="odd"):
        build_conformer_layer(D, FFN, H, 0.0, 4)
    with pytest.raises(ValueError, match="attn_type"):
        build_conformer_layer(D, FFN, H, 0.0, K, "", "rel_pos")


def test_relative_positions_rows() -> None:
    pe = relative_positions(3, 4, torch.float32, torch.device("cpu"))
    assert pe.shape == (1, 5, 4)
    # row i encodes position 2 - i: sin at even channels, cos at odd ones
    torch.testing.assert_close(pe[0, :, 0], torch.sin(torch.tensor([2.0, 1.0, 0.0, -1.0, -2.0])))
    torch.testing.assert_close(pe[0, :, 1], torch.cos(torch.tensor([2.0, 1.0, 0.0, -1.0, -2.0])))
