"""fhb.nn.attention: fairseq-named multi-head self-attention with a key-padding mask."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fhb.nn.attention import SelfAttention
from tests.nn.conftest import pad_batch

D, H = 16, 4


def test_shape_and_divisibility() -> None:
    attn = SelfAttention(D, H)
    assert attn(torch.randn(3, 7, D)).shape == (3, 7, D)
    assert attn(torch.randn(2, 5, D), torch.zeros(2, 5, dtype=torch.bool)).shape == (2, 5, D)
    with pytest.raises(ValueError, match="divisible"):
        SelfAttention(10, 4)


def test_fairseq_parameter_names_and_registration_order() -> None:
    """fairseq's ``MultiheadAttention`` registers k, v, q, out (optimizer states follow this order)."""
    names = [name for name, _ in SelfAttention(D, H).named_parameters()]
    assert names == [f"{p}_proj.{w}" for p in ("k", "v", "q", "out") for w in ("weight", "bias")]


def test_equals_torch_multihead_attention() -> None:
    """The same product as ``nn.MultiheadAttention`` given the same weights, with a padding mask."""
    attn = SelfAttention(D, H).eval()
    ref = nn.MultiheadAttention(D, H, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        ref.out_proj.weight.copy_(attn.out_proj.weight)
        ref.out_proj.bias.copy_(attn.out_proj.bias)
    x = torch.randn(3, 9, D)
    mask = torch.arange(9)[None, :] >= torch.tensor([9, 6, 2])[:, None]
    with torch.no_grad():
        expected, _ = ref(x, x, x, key_padding_mask=mask, need_weights=False)
        got = attn(x, mask)
    torch.testing.assert_close(got[0], expected[0], atol=1e-6, rtol=1e-5)
    for i, n in enumerate([9, 6, 2]):
        torch.testing.assert_close(got[i, :n], expected[i, :n], atol=1e-6, rtol=1e-5)


def test_padded_keys_do_not_affect_valid_outputs() -> None:
    attn = SelfAttention(D, H).eval()
    x = torch.randn(2, 8, D)
    mask = torch.arange(8)[None, :] >= torch.tensor([8, 5])[:, None]
    garbage = x.clone()
    garbage[1, 5:] = 1e3 * torch.randn(3, D)
    with torch.no_grad():
        a, b = attn(x, mask), attn(garbage, mask)
        unmasked = attn(garbage)
    torch.testing.assert_close(a[1, :5], b[1, :5], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a[0], b[0], atol=0, rtol=0)
    assert not torch.allclose(unmasked[1, :5], a[1, :5], atol=1e-3)  # without the mask it would


def test_batch_invariant() -> None:
    """An utterance alone equals its valid frames in a padded batch of others."""
    attn = SelfAttention(D, H).eval()
    items = [torch.randn(n, D) for n in (11, 4, 7)]
    batch, lengths, mask = pad_batch(items, fill=3.0)
    with torch.no_grad():
        out = attn(batch, mask)
        for i, x in enumerate(items):
            torch.testing.assert_close(out[i, : lengths[i]], attn(x[None])[0], atol=1e-6, rtol=1e-5)


def test_all_false_mask_equals_no_mask() -> None:
    attn = SelfAttention(D, H).eval()
    x = torch.randn(2, 6, D)
    with torch.no_grad():
        assert torch.equal(attn(x, torch.zeros(2, 6, dtype=torch.bool)), attn(x))


def test_attention_dropout_only_in_training() -> None:
    attn = SelfAttention(D, H, dropout=0.5)
    x = torch.randn(2, 6, D)
    with torch.no_grad():
        assert not torch.equal(attn(x), attn(x))
        attn.eval()
        assert torch.equal(attn(x), attn(x))
