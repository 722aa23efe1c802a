"""fhb.nn.conv: fp32 norms, fairseq-named conv blocks, the feature extractor and its lengths."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fhb.nn.conv import Fp32GroupNorm, Fp32LayerNorm, build_feature_extractor, conv_block
from fhb.nn.frames import HUBERT_CONV_LAYERS, conv_output_length

SPECS = [(8, k, s) for _, k, s in HUBERT_CONV_LAYERS]
"""HuBERT's kernels and strides (16000 samples -> 49 frames) with 8 channels."""


def test_fp32_norms_equal_torch_norms_in_float32() -> None:
    x = torch.randn(2, 6, 30)
    group, ref_group = Fp32GroupNorm(6, 6), nn.GroupNorm(6, 6)
    layer, ref_layer = Fp32LayerNorm(30), nn.LayerNorm(30)
    for norm, ref in ((group, ref_group), (layer, ref_layer)):
        with torch.no_grad():
            norm.weight.normal_()
            norm.bias.normal_()
        ref.load_state_dict(norm.state_dict())
        torch.testing.assert_close(norm(x), ref(x), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp32_norms_compute_in_float32_and_return_the_input_dtype(dtype: torch.dtype) -> None:
    x = (torch.randn(2, 6, 30) * 50 + 300).to(dtype)  # large mean: low precision would lose the variance
    for norm in (Fp32GroupNorm(3, 6), Fp32LayerNorm(30), Fp32LayerNorm(30, elementwise_affine=False)):
        out = norm(x)
        assert out.dtype == dtype
        assert torch.equal(out, norm(x.float()).to(dtype))


def test_block_layout_and_names() -> None:
    """``(Conv1d, Dropout[, norm], GELU)``: fairseq's positional child names."""
    group = conv_block(1, (8, 10, 5), "group", conv_bias=False)
    assert [type(m) for m in group] == [nn.Conv1d, nn.Dropout, Fp32GroupNorm, nn.GELU]
    assert list(group.state_dict()) == ["0.weight", "2.weight", "2.bias"]
    layer = conv_block(8, (8, 3, 2), "layer", conv_bias=True, dropout=0.2)
    assert list(layer.state_dict()) == ["0.weight", "0.bias", "2.1.weight", "2.1.bias"]
    assert layer[1].p == 0.2
    bare = conv_block(8, (8, 3, 2), None, conv_bias=False)
    assert [type(m) for m in bare] == [nn.Conv1d, nn.Dropout, nn.GELU]
    with pytest.raises(ValueError, match="unknown conv norm"):
        conv_block(8, (8, 3, 2), "batch", conv_bias=False)


def test_extractor_names_by_mode() -> None:
    default = build_feature_extractor(SPECS)
    keys = list(default.state_dict())
    assert keys[:3] == ["conv_layers.0.0.weight", "conv_layers.0.2.weight", "conv_layers.0.2.bias"]
    assert keys[3:] == [f"conv_layers.{i}.0.weight" for i in range(1, 7)]  # GroupNorm in layer 0 only
    layer_norm = build_feature_extractor(SPECS, mode="layer_norm", conv_bias=True)
    assert list(layer_norm.state_dict())[:4] == [
        "conv_layers.0.0.weight", "conv_layers.0.0.bias", "conv_layers.0.2.1.weight", "conv_layers.0.2.1.bias"
    ]
    assert len(layer_norm.state_dict()) == 4 * len(SPECS)
    with pytest.raises(ValueError, match="extractor_mode"):
        build_feature_extractor(SPECS, mode="group")


@pytest.mark.parametrize("mode", ["default", "layer_norm"])
def test_shapes_and_lengths(mode: str) -> None:
    """``B x S`` -> ``B x C x T``, ``T`` and the valid lengths from the frame arithmetic."""
    extractor = build_feature_extractor(SPECS, mode=mode).eval()
    assert extractor.out_dim == 8
    lengths = torch.tensor([16000, 12345, 400])
    out, out_lengths = extractor(torch.randn(3, 16000), lengths)
    assert out.shape == (3, 8, 49)
    assert out_lengths is not None
    assert out_lengths.tolist() == [conv_output_length(int(n)) for n in lengths] == [49, 38, 1]
    out, none = extractor(torch.randn(2, 720))
    assert out.shape == (2, 8, 2) and none is None


def test_extractor_refuses_bad_input() -> None:
    extractor = build_feature_extractor(SPECS)
    with pytest.raises(ValueError, match="B x S"):
        extractor(torch.randn(16000))
    with pytest.raises(ValueError, match="one spec per conv block"):
        type(extractor)(extractor.conv_layers, SPECS[:-1])


def test_layer_norm_mode_valid_frames_ignore_padding_but_group_norm_does_not() -> None:
    """Valid frames only see valid samples; only the first layer's GroupNorm (over time) mixes in the
    padding, which is why the teacher runs its conv front-end per utterance."""
    wav = torch.randn(9000)
    padded = torch.cat([wav, torch.randn(7000)])[None]  # not even zeros
    frames = conv_output_length(9000)
    for mode, invariant in (("layer_norm", True), ("default", False)):
        extractor = build_feature_extractor(SPECS, mode=mode).eval()
        with torch.no_grad():
            alone, _ = extractor(wav[None])
            batched, _ = extractor(padded)
        assert alone.shape[-1] == frames
        assert torch.allclose(alone, batched[..., :frames], atol=1e-5) is invariant


@pytest.mark.reference
@pytest.mark.parametrize(("mode", "conv_bias"), [("default", False), ("layer_norm", True)])
def test_equals_fairseq_conv_feature_extraction_model(mode: str, conv_bias: bool) -> None:
    pytest.importorskip("fairseq")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel

    ref = ConvFeatureExtractionModel(SPECS, dropout=0.0, mode=mode, conv_bias=conv_bias).eval()
    ours = build_feature_extractor(SPECS, mode=mode, conv_bias=conv_bias).eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    ours.load_state_dict(ref.state_dict(), strict=True)
    wavs = torch.randn(2, 5000)
    with torch.no_grad():
        torch.testing.assert_close(ours(wavs)[0], ref(wavs), atol=0, rtol=0)
