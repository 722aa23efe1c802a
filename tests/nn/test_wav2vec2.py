"""fhb.nn.wav2vec2: the backbone's typed config (read from fairseq's) and its fairseq-named model."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from fhb.nn.frames import HUBERT_CONV_LAYERS, parse_conv_layers
from fhb.nn.wav2vec2 import Backbone, BackboneConfig, build_backbone, conv_layers_to_string

PUBLISHED = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"
TINY_CONV = "[(8, 10, 5)] + [(8, 3, 2)] * 4 + [(8, 2, 2)] * 2"
TINY = {
    "encoder_layers": 2, "encoder_embed_dim": 16, "encoder_ffn_embed_dim": 32, "encoder_attention_heads": 4,
    "conv_feature_layers": TINY_CONV, "conv_pos": 8, "conv_pos_groups": 4,
}


def _tiny(**changes: object) -> BackboneConfig:
    return BackboneConfig.from_fairseq({**TINY, **changes})


def test_from_fairseq_reads_fields_parses_layers_and_keeps_the_rest() -> None:
    cfg = BackboneConfig.from_fairseq(
        {"_name": "hubert", "conv_feature_layers": PUBLISHED, "encoder_layers": 24, "layer_norm_first": True,
         "dropout": None, "label_rate": 50}
    )
    assert cfg.conv_feature_layers == tuple(HUBERT_CONV_LAYERS)
    assert (cfg.encoder_layers, cfg.layer_norm_first, cfg.dropout) == (24, True, 0.1)  # None: the default
    assert cfg.extra == {"_name": "hubert", "dropout": None, "label_rate": 50}
    assert cfg.cnn_dim == 512


def test_to_fairseq_round_trips_and_writes_the_published_string() -> None:
    cfg = _tiny(layer_norm_first=True, activation_fn="gelu_accurate")
    out = cfg.to_fairseq()
    assert out["conv_feature_layers"] == TINY_CONV
    assert set(out) == {f.name for f in dataclasses.fields(BackboneConfig)} - {"extra"}
    assert BackboneConfig.from_fairseq(out) == cfg
    assert BackboneConfig().to_fairseq()["conv_feature_layers"] == PUBLISHED


def test_unsupported_options_are_refused_not_ignored() -> None:
    for key, value in (("pos_conv_depth", 5), ("layer_type", "conformer"), ("conv_pos_batch_norm", True)):
        with pytest.raises(ValueError, match=f"{key}={value!r} is not supported"):
            BackboneConfig.from_fairseq({**TINY, key: value})
    assert _tiny(pos_conv_depth=1, layer_type="transformer", conv_pos_batch_norm=None).encoder_layers == 2


def test_unsupported_table_is_a_class_constant_not_a_field() -> None:
    names = {f.name for f in dataclasses.fields(BackboneConfig)}
    assert "_UNSUPPORTED" not in names and "_UNSUPPORTED" not in BackboneConfig().to_fairseq()
    assert "_UNSUPPORTED" not in repr(BackboneConfig())
    with pytest.raises(TypeError):
        BackboneConfig(_UNSUPPORTED=())  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "specs",
    [HUBERT_CONV_LAYERS, [(4, 3, 2)], [(4, 3, 2), (8, 3, 2), (4, 3, 2)], [(1, 1, 1)] * 3 + [(2, 2, 2)]],
)
def test_conv_layers_string_round_trip(specs: list[tuple[int, int, int]]) -> None:
    text = conv_layers_to_string(specs)
    assert parse_conv_layers(text) == list(specs)
    assert conv_layers_to_string(tuple(specs)) == text


def test_conv_layers_string_groups_runs() -> None:
    assert conv_layers_to_string([(4, 3, 2), (4, 3, 2), (8, 1, 1)]) == "[(4, 3, 2)] * 2 + [(8, 1, 1)]"


def test_backbone_names_shapes_and_projection() -> None:
    model = build_backbone(_tiny())
    assert isinstance(model, Backbone)
    keys = list(model.state_dict())
    assert keys[0] == "feature_extractor.conv_layers.0.0.weight"
    assert {"layer_norm.weight", "post_extract_proj.weight", "encoder.pos_conv.0.weight_g",
            "encoder.layers.1.self_attn.q_proj.bias", "encoder.layer_norm.bias"} <= set(keys)
    assert model.layer_norm.normalized_shape == (8,) and model.post_extract_proj is not None
    features, _ = model.feature_extractor(torch.randn(2, 16000))
    assert features.shape == (2, 8, 49)
    assert model.project(features).shape == (2, 49, 16)
    same = build_backbone(_tiny(encoder_embed_dim=8, conv_pos_groups=2, encoder_attention_heads=2))
    assert same.post_extract_proj is None and "post_extract_proj.weight" not in same.state_dict()
    assert same.project(features).shape == (2, 49, 8)


def test_backbone_follows_its_config() -> None:
    cfg = _tiny(extractor_mode="layer_norm", conv_bias=True, layer_norm_first=True, encoder_layerdrop=0.2,
                dropout_input=0.3)
    model = build_backbone(cfg)
    assert "feature_extractor.conv_layers.3.2.1.weight" in model.state_dict()
    assert "feature_extractor.conv_layers.3.0.bias" in model.state_dict()
    assert model.encoder.layer_norm_first and all(layer.layer_norm_first for layer in model.encoder.layers)
    assert (model.encoder.layerdrop, model.dropout_input.p, len(model.encoder.layers)) == (0.2, 0.3, 2)


@pytest.mark.reference
@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_equals_fairseq_wav2vec2_model(layer_norm_first: bool) -> None:
    """fairseq's ``Wav2Vec2Model`` of the same config: the same names and shapes once the
    pre-training heads are dropped, and the same output."""
    pytest.importorskip("fairseq")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

        fields = {**TINY, "layer_norm_first": layer_norm_first, "extractor_mode": "layer_norm" if layer_norm_first
                  else "default"}
        ref = Wav2Vec2Model(Wav2Vec2Config(**fields, latent_vars=4, latent_groups=2, final_dim=8)).eval()
    ours = build_backbone(BackboneConfig.from_fairseq(fields)).eval()
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith(("mask_emb", "project_q.", "final_proj."))}
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in state.items()}
    ours.load_state_dict(state, strict=True)
    wav = torch.randn(1, 16320)  # 50 frames: no padding to fairseq's multiple
    with torch.no_grad():
        expected = ref.extract_features(wav, padding_mask=None, mask=False)["x"]
        features, _ = ours.feature_extractor(wav)
        got = ours.encoder.final_norm(ours.encoder(ours.project(features))[-1])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
