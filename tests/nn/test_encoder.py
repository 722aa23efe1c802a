"""fhb.nn.encoder: positional embedding + layers, fairseq-named, batch-invariant under padding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fhb.nn.encoder import TransformerEncoder
from fhb.nn.positional import conv_positional_embedding
from fhb.nn.transformer import build_transformer_layer
from tests.nn.conftest import pad_batch

D, L = 16, 3


def _encoder(layer_norm_first: bool = False, layers: int = L, **kwargs: float) -> TransformerEncoder:
    stack = nn.ModuleList(build_transformer_layer(D, 32, 4, layer_norm_first) for _ in range(layers))
    return TransformerEncoder(conv_positional_embedding(D, 8, 4), stack, layer_norm_first, **kwargs).eval()


def test_fairseq_registration_order() -> None:
    """fairseq's ``TransformerEncoder`` registers pos_conv, layers, layer_norm (checkpoints and
    optimizer states list parameters in this order)."""
    keys = list(_encoder().state_dict())
    assert keys[:3] == ["pos_conv.0.bias", "pos_conv.0.weight_g", "pos_conv.0.weight_v"]
    assert keys[3] == "layers.0.self_attn.k_proj.weight"
    assert keys[-2:] == ["layer_norm.weight", "layer_norm.bias"]
    assert [k for k in keys if k.startswith("layers.")][-1] == f"layers.{L - 1}.final_layer_norm.bias"


def test_needs_a_layer_and_takes_its_dim() -> None:
    with pytest.raises(ValueError, match="at least one transformer layer"):
        TransformerEncoder(conv_positional_embedding(D, 8, 4), nn.ModuleList(), False)
    assert _encoder().layer_norm.normalized_shape == (D,)


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_one_output_per_layer(layer_norm_first: bool) -> None:
    encoder = _encoder(layer_norm_first)
    x = torch.randn(2, 11, D)
    with torch.no_grad():
        outs = encoder(x)
        first_two = encoder(x, num_layers=2)
        by_hand = encoder.embed(x)
        for i, layer in enumerate(encoder.layers):
            by_hand = layer(by_hand, None)
            torch.testing.assert_close(outs[i], by_hand, atol=0, rtol=0)
    assert len(outs) == L and all(o.shape == (2, 11, D) for o in outs)
    assert len(first_two) == 2 and all(torch.equal(a, b) for a, b in zip(first_two, outs))


def test_post_ln_normalises_the_embedding_pre_ln_the_output() -> None:
    x = 4 + torch.randn(2, 11, D)
    post, pre = _encoder(False), _encoder(True)
    with torch.no_grad():
        torch.testing.assert_close(post.embed(x).mean(-1), torch.zeros(2, 11), atol=1e-5, rtol=0)
        assert pre.embed(x).mean(-1).abs().min() > 1.0
        last = pre(x)[-1]
        assert torch.equal(pre.final_norm(last), pre.layer_norm(last))
        assert post.final_norm(last) is last


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_padding_does_not_reach_valid_frames(layer_norm_first: bool) -> None:
    """Padded frames are zeroed before ``pos_conv`` and masked in attention: their content is moot."""
    encoder = _encoder(layer_norm_first)
    x = torch.randn(2, 12, D)
    mask = torch.arange(12)[None, :] >= torch.tensor([12, 7])[:, None]
    garbage = x.clone()
    garbage[1, 7:] = 100 * torch.randn(5, D)
    with torch.no_grad():
        for a, b in zip(encoder(x, mask), encoder(garbage, mask), strict=True):
            torch.testing.assert_close(a[:, :7], b[:, :7], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a[0], b[0], atol=0, rtol=0)


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_batch_invariant(layer_norm_first: bool) -> None:
    """An utterance alone gives its valid frames in any padded batch (what the teacher relies on)."""
    encoder = _encoder(layer_norm_first)
    items = [torch.randn(n, D) for n in (13, 5, 9)]
    batch, lengths, mask = pad_batch(items, fill=9.0)
    with torch.no_grad():
        batched = encoder(batch, mask)
        for i, x in enumerate(items):
            alone = encoder(x[None])
            for layer_out, ref in zip(batched, alone, strict=True):
                torch.testing.assert_close(layer_out[i, : lengths[i]], ref[0], atol=1e-5, rtol=1e-5)


def test_layerdrop_only_in_training() -> None:
    encoder = _encoder(layerdrop=1.0, dropout=0.0)
    x = torch.randn(1, 6, D)
    with torch.no_grad():
        assert not torch.equal(encoder(x)[-1], encoder.embed(x))  # eval: every layer runs
        encoder.train()
        for layer in encoder.layers:  # only layerdrop may act: no dropout anywhere
            for m in layer.modules():
                if isinstance(m, nn.Dropout):
                    m.p = 0.0
            layer.self_attn.dropout = 0.0
        assert all(torch.equal(out, encoder.embed(x)) for out in encoder(x))  # all skipped


def test_embedding_dropout_only_in_training() -> None:
    encoder = _encoder(dropout=0.5)
    x = torch.randn(1, 6, D)
    with torch.no_grad():
        assert torch.equal(encoder.embed(x), encoder.embed(x))
        encoder.train()
        assert not torch.equal(encoder.embed(x), encoder.embed(x))
