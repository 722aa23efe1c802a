"""fhb.nn.frames: samples -> frames arithmetic, the conv-spec parser, padding masks."""

from __future__ import annotations

import pytest
import torch

from fhb.nn.frames import (
    HUBERT_CONV_LAYERS,
    MAX_CONV_LAYERS,
    conv_output_length,
    conv_output_lengths,
    lengths_to_padding_mask,
    parse_conv_layers,
    receptive_field,
    total_stride,
)

PUBLISHED = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
"""HuBERT / wav2vec 2.0's ``conv_feature_layers`` as fairseq's configs write it."""

FIT_STACK = [(128, 10, 5), (256, 1, 1)] + [(256, 3, 2)] * 4 + [(512, 1, 1)] + [(512, 2, 2)] * 2
"""FitHuBERT's thin stack: kernel-1 layers in between, same stride and receptive field."""

ODD_STACK = [(8, 7, 3), (8, 4, 2), (8, 1, 1), (8, 5, 4)]
"""A stack of no published model (odd kernels and strides)."""


@pytest.mark.parametrize(("samples", "frames"), [(16000, 49), (400, 1), (399, 0), (0, 0), (720, 2), (719, 1),
                                                 (16320, 50), (480000, 1499)])
def test_hubert_frame_counts(samples: int, frames: int) -> None:
    assert conv_output_length(samples) == conv_output_length(samples, HUBERT_CONV_LAYERS) == frames


def test_not_num_samples_over_320() -> None:
    """icefall's ``num_samples // 320`` is one frame too many for every length."""
    assert all(conv_output_length(n) == (n - 80) // 320 for n in range(400, 20000, 37))


@pytest.mark.parametrize("stack", [HUBERT_CONV_LAYERS, FIT_STACK, ODD_STACK], ids=["hubert", "fit", "odd"])
def test_vectorised_equals_scalar(stack: list[tuple[int, int, int]]) -> None:
    lengths = torch.cat([torch.arange(0, 2000), torch.randint(0, 10**6, (500,)), torch.tensor([-5, 10**9])])
    got = conv_output_lengths(lengths, stack)
    assert got.dtype == torch.long and got.shape == lengths.shape
    assert got.tolist() == [conv_output_length(int(n), stack) for n in lengths]


def test_vectorised_accepts_int32_and_keeps_the_device() -> None:
    lengths = torch.tensor([16000, 400, 399], dtype=torch.int32)
    assert conv_output_lengths(lengths, HUBERT_CONV_LAYERS).tolist() == [49, 1, 0]


@pytest.mark.parametrize("stack", [HUBERT_CONV_LAYERS, FIT_STACK, ODD_STACK], ids=["hubert", "fit", "odd"])
def test_stride_and_receptive_field_describe_the_stack(stack: list[tuple[int, int, int]]) -> None:
    """The first frame needs ``receptive_field`` samples, every further ``total_stride`` adds one."""
    field, stride = receptive_field(stack), total_stride(stack)
    for k in range(6):
        assert conv_output_length(field + k * stride, stack) == k + 1
        assert conv_output_length(field + k * stride - 1, stack) == k


def test_hubert_stride_and_field() -> None:
    assert (total_stride(HUBERT_CONV_LAYERS), receptive_field(HUBERT_CONV_LAYERS)) == (320, 400)
    assert (total_stride(FIT_STACK), receptive_field(FIT_STACK)) == (320, 400)


def test_parse_the_published_string() -> None:
    assert parse_conv_layers(PUBLISHED) == HUBERT_CONV_LAYERS
    assert parse_conv_layers("  " + PUBLISHED + "\n") == HUBERT_CONV_LAYERS
    assert parse_conv_layers("2 * [(4, 3, 2)] + [(8, 2, 1)]") == [(4, 3, 2), (4, 3, 2), (8, 2, 1)]
    assert parse_conv_layers("[(4, 3, 2), (8, 2, 1)]") == [(4, 3, 2), (8, 2, 1)]
    assert all(type(v) is int for layer in parse_conv_layers(PUBLISHED) for v in layer)


def test_parsed_sequences_pass_through_validated() -> None:
    assert parse_conv_layers([[512, 10, 5], (512, 3, 2)]) == [(512, 10, 5), (512, 3, 2)]
    with pytest.raises(ValueError, match="positive ints"):
        parse_conv_layers([(512, 10)])
    with pytest.raises(ValueError, match="no layers"):
        parse_conv_layers([])


@pytest.mark.parametrize(
    "junk",
    [
        "__import__('os').system('echo pwned')",  # a call: never evaluated
        "[(512, 10, 5)] * 10**9",  # power: not in the language
        "[(512, 10, 5)] * 100000",  # a billion-layer bomb, smaller
        "[(512, 10, 5)] * 1000 * 1000",
        "[(512, 10)]",
        "[(0, 10, 5)]",
        "[(-512, 10, 5)]",
        "[(512.0, 10, 5)]",
        "[(True, 10, 5)]",
        "[('512', 10, 5)]",
        "[(512, 10, 5)] - [(512, 3, 2)]",
        "[x for x in range(3)]",
        "(512, 10, 5)",
        "[]",
        "",
        "[(512, 10, 5)",
        "[" * 5000 + "]" * 5000,
    ],
)
def test_parse_refuses_junk(junk: str) -> None:
    with pytest.raises(ValueError, match=r"conv layer"):
        parse_conv_layers(junk)


def test_parse_accepts_up_to_the_layer_limit() -> None:
    assert len(parse_conv_layers(f"[(2, 1, 1)] * {MAX_CONV_LAYERS}")) == MAX_CONV_LAYERS


def test_padding_mask() -> None:
    mask = lengths_to_padding_mask(torch.tensor([3, 1, 0]))
    assert mask.dtype == torch.bool and mask.shape == (3, 3)
    assert mask.tolist() == [[False, False, False], [False, True, True], [True, True, True]]
    assert lengths_to_padding_mask(torch.tensor([2]), max_len=4).tolist() == [[False, False, True, True]]


@pytest.mark.parametrize("junk", [[5], [(512, 10, True)], [(512, 10, 5.0)], ["abc"]])
def test_parse_refuses_junk_sequences(junk: list) -> None:
    with pytest.raises(ValueError, match="conv layer"):
        parse_conv_layers(junk)
