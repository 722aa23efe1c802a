"""fhb.nn.positional: the weight-normalised positional conv, fairseq-named."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fhb.nn.positional import SamePad, WeightNormConv1d, conv_positional_embedding

C, G = 16, 4


def _torch_weight_norm(conv: WeightNormConv1d) -> nn.Conv1d:
    """``torch.nn.utils.weight_norm(Conv1d, dim=2)`` holding ``conv``'s parameters."""
    ref = nn.Conv1d(C, C, conv.kernel, padding=conv.kernel // 2, groups=G)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in favour of parametrizations; fairseq uses it
        ref = nn.utils.weight_norm(ref, name="weight", dim=2)
    ref.load_state_dict(conv.state_dict(), strict=True)
    return ref


@pytest.mark.parametrize("kernel", [8, 7])
def test_equals_torch_weight_norm(kernel: int) -> None:
    conv = WeightNormConv1d(C, kernel, G)
    with torch.no_grad():
        conv.weight_g.mul_(torch.rand_like(conv.weight_g) + 0.5)  # g no longer ||v||
        conv.bias.normal_()
    ref = _torch_weight_norm(conv)
    assert [n for n, _ in conv.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert [n for n, _ in conv.named_parameters()] == ["bias", "weight_g", "weight_v"]
    x = torch.randn(2, C, 20)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), ref(x), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(conv.weight(), ref.weight, atol=0, rtol=0)


def test_shapes_of_the_parameters_and_the_output() -> None:
    conv = WeightNormConv1d(C, 8, G)
    assert conv.weight_g.shape == (1, 1, 8) and conv.weight_v.shape == (C, C // G, 8) and conv.bias.shape == (C,)
    assert conv(torch.randn(2, C, 20)).shape == (2, C, 21)  # an even kernel adds a frame
    assert WeightNormConv1d(C, 7, G)(torch.randn(2, C, 20)).shape == (2, C, 20)
    with pytest.raises(ValueError, match="divisible"):
        WeightNormConv1d(C, 8, 3)


def test_weight_is_g_times_direction_of_v() -> None:
    conv = WeightNormConv1d(C, 8, G)
    torch.testing.assert_close(conv.weight(), conv.weight_v)  # initialised with g = ||v||
    with torch.no_grad():
        before = conv.weight().clone()
        conv.weight_v.mul_(3.0)  # the scale of v does not matter
        torch.testing.assert_close(conv.weight(), before)
        conv.weight_g.mul_(2.0)  # g does, per kernel position
        torch.testing.assert_close(conv.weight(), 2 * before)
    norms = torch.linalg.vector_norm(conv.weight(), dim=(0, 1))
    torch.testing.assert_close(norms, conv.weight_g.flatten())


def test_same_pad() -> None:
    x = torch.arange(10.0).view(1, 1, 10)
    assert torch.equal(SamePad(4)(x), x[..., :9])
    assert SamePad(3)(x) is x


@pytest.mark.parametrize("kernel", [8, 7])
def test_embedding_keeps_the_length_and_fairseq_names(kernel: int) -> None:
    pos = conv_positional_embedding(C, kernel, G)
    assert list(pos.state_dict()) == ["0.bias", "0.weight_g", "0.weight_v"]
    assert [type(m) for m in pos] == [WeightNormConv1d, SamePad, nn.GELU]
    assert pos(torch.randn(3, C, 13)).shape == (3, C, 13)


def test_zero_padding_after_an_utterance_leaves_it_unchanged() -> None:
    """The conv pads with zeros, so zero frames after the end are what it sees anyway."""
    pos = conv_positional_embedding(C, 8, G)
    x = torch.randn(1, C, 12)
    padded = torch.cat([x, torch.zeros(1, C, 9)], dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(pos(padded)[..., :12], pos(x), atol=1e-6, rtol=1e-5)
        garbage = torch.cat([x, torch.randn(1, C, 9)], dim=-1)
        assert not torch.allclose(pos(garbage)[..., :12], pos(x), atol=1e-4)


@pytest.mark.reference
def test_equals_fairseq_make_conv_pos() -> None:
    pytest.importorskip("fairseq")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fairseq.models.wav2vec.wav2vec2 import make_conv_pos

        ref = make_conv_pos(C, 8, G)
    ours = conv_positional_embedding(C, 8, G)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, C, 15)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-5)
