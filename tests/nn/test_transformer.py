"""fhb.nn.transformer: one post-LN / pre-LN layer, fairseq-named, and the config-sized stack."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from fhb.nn.transformer import TransformerLayer, activation, build_transformer_layer, build_transformer_layers
from tests.nn.conftest import pad_batch

D, FFN, H = 16, 32, 4


def _layer(layer_norm_first: bool, **kwargs: float) -> TransformerLayer:
    layer = build_transformer_layer(D, FFN, H, layer_norm_first=layer_norm_first, **kwargs)
    with torch.no_grad():  # non-trivial norms, so a misplaced LayerNorm shows
        for norm in (layer.self_attn_layer_norm, layer.final_layer_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0, 0.1)
    return layer.eval()


def test_activations() -> None:
    x = torch.randn(50)
    assert torch.equal(activation("gelu")(x), F.gelu(x))
    assert torch.equal(activation("gelu_accurate")(x), F.gelu(x, approximate="tanh"))
    assert torch.equal(activation("relu")(x), F.relu(x))
    assert torch.equal(activation("linear")(x), x)
    half = x.to(torch.bfloat16)
    assert torch.equal(activation("gelu")(half), F.gelu(half.float()).to(torch.bfloat16))  # fp32 inside
    with pytest.raises(ValueError, match="unknown activation_fn 'swish'"):
        activation("swish")


def test_fairseq_names_and_order() -> None:
    names = [n for n, _ in _layer(False).named_parameters()]
    assert names == [
        *(f"self_attn.{p}_proj.{w}" for p in ("k", "v", "q", "out") for w in ("weight", "bias")),
        "self_attn_layer_norm.weight", "self_attn_layer_norm.bias",
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
        "final_layer_norm.weight", "final_layer_norm.bias",
    ]
    layer = _layer(False)
    assert (layer.fc1.in_features, layer.fc1.out_features, layer.fc2.out_features) == (D, FFN, D)


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_post_ln_and_pre_ln_formulas(layer_norm_first: bool) -> None:
    """Post-LN: ``LN2(h + FFN(h))``, ``h = LN1(x + Attn(x))``; pre-LN: ``h + FFN(LN2(h))``,
    ``h = x + Attn(LN1(x))``."""
    layer = _layer(layer_norm_first)
    x = torch.randn(2, 9, D)
    mask = torch.arange(9)[None, :] >= torch.tensor([9, 5])[:, None]
    ln1, ln2, attn = layer.self_attn_layer_norm, layer.final_layer_norm, layer.self_attn

    def ffn(h: torch.Tensor) -> torch.Tensor:
        return layer.fc2(F.gelu(layer.fc1(h)))

    with torch.no_grad():
        if layer_norm_first:
            h = x + attn(ln1(x), mask)
            expected = h + ffn(ln2(h))
        else:
            h = ln1(x + attn(x, mask))
            expected = ln2(h + ffn(h))
        got = layer(x, mask)
    assert got.shape == (2, 9, D)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_post_ln_output_is_normalised_pre_ln_is_not() -> None:
    x = 5 + 3 * torch.randn(2, 9, D)
    post, pre = _layer(False), _layer(True)
    pre.load_state_dict(post.state_dict())
    for layer in (post, pre):
        with torch.no_grad():
            layer.final_layer_norm.weight.fill_(1.0)
            layer.final_layer_norm.bias.zero_()
    with torch.no_grad():
        out_post, out_pre = post(x), pre(x)
    torch.testing.assert_close(out_post.mean(-1), torch.zeros(2, 9), atol=1e-5, rtol=0)
    assert out_pre.mean(-1).abs().min() > 1.0  # the residual stream keeps the input's offset


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_padding_and_batch_invariance(layer_norm_first: bool) -> None:
    layer = _layer(layer_norm_first)
    items = [torch.randn(n, D) for n in (10, 3, 6)]
    batch, lengths, mask = pad_batch(items, fill=-7.0)
    with torch.no_grad():
        out = layer(batch, mask)
        for i, x in enumerate(items):
            torch.testing.assert_close(out[i, : lengths[i]], layer(x[None])[0], atol=1e-5, rtol=1e-5)


def test_dropout_only_in_training() -> None:
    layer = _layer(False, dropout=0.3, attention_dropout=0.3, activation_dropout=0.3)
    assert (layer.dropout1.p, layer.dropout2.p, layer.dropout3.p, layer.self_attn.dropout) == (0.3, 0.3, 0.3, 0.3)
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        assert torch.equal(layer(x), layer(x))
        layer.train()
        assert not torch.equal(layer(x), layer(x))


@dataclass
class _Fields:
    """The :class:`~fhb.nn.transformer.EncoderFields` of a small config."""

    encoder_layers: int = 3
    encoder_embed_dim: int = D
    encoder_ffn_embed_dim: int = FFN
    encoder_attention_heads: int = H
    layer_norm_first: bool = True
    activation_fn: str = "relu"
    dropout: float = 0.1
    attention_dropout: float = 0.2
    activation_dropout: float = 0.3


def test_layers_sized_by_a_config() -> None:
    cfg = _Fields()
    layers = build_transformer_layers(cfg)
    assert len(layers) == 3
    assert list(layers.state_dict())[0] == "0.self_attn.k_proj.weight"
    for layer in layers:
        assert (layer.fc1.in_features, layer.fc1.out_features, layer.self_attn.num_heads) == (D, FFN, H)
        assert layer.layer_norm_first and layer.activation_fn is activation("relu")
        assert (layer.dropout1.p, layer.self_attn.dropout, layer.dropout2.p) == (0.1, 0.2, 0.3)
    assert not torch.equal(layers[0].fc1.weight, layers[1].fc1.weight)  # fresh weights each


@pytest.mark.reference
@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_equals_fairseq_transformer_sentence_encoder_layer(layer_norm_first: bool) -> None:
    pytest.importorskip("fairseq")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fairseq.models.wav2vec.wav2vec2 import TransformerSentenceEncoderLayer

    ref = TransformerSentenceEncoderLayer(D, FFN, H, activation_fn="gelu", layer_norm_first=layer_norm_first).eval()
    ours = _layer(layer_norm_first)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 7, D)
    mask = torch.arange(7)[None, :] >= torch.tensor([7, 4])[:, None]
    with torch.no_grad():
        expected = ref(x.transpose(0, 1), self_attn_padding_mask=mask)[0].transpose(0, 1)
        got = ours(x, mask)
    for i, n in enumerate([7, 4]):
        torch.testing.assert_close(got[i, :n], expected[i, :n], atol=1e-5, rtol=1e-5)
