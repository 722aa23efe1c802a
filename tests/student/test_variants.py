"""Student variants (issue 12 option 5): time-reduction kinds, conformer and mel students,
delete_projections, and the config rules around them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from fhb.errors import FhbError
from fhb.student import FitConfig, StudentConfig, build_student, load_packaged_config
from fhb.student.time_reduction import LinearTimeReduction, MlpTimeReduction, TimeReduction, group_frames


def _tiny(**changes: Any) -> StudentConfig:
    return dataclasses.replace(load_packaged_config("tiny").distiller, **changes)


def test_group_frames_is_the_published_channel_concat() -> None:
    x = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)
    g = group_frames(x, 2)
    assert g.shape == (2, 3, 6)
    # published concat_channelwise: result[t] = cat(x[2t], x[2t + 1]) (its spurious padded group aside)
    for t in range(3):
        torch.testing.assert_close(g[:, t], torch.cat([x[:, 2 * t], x[:, 2 * t + 1]], dim=-1))


def test_fc1_equals_a_conv1d_with_regrouped_weights() -> None:
    fc1, conv = LinearTimeReduction(4, 3), TimeReduction(4, 3)
    with torch.no_grad():  # W_fc[o, j * D + c] = W_conv[o, c, j]
        conv.weight.copy_(fc1.weight.view(4, 3, 4).permute(0, 2, 1))
        conv.bias.copy_(fc1.bias)
    x = torch.randn(2, 10, 4)
    torch.testing.assert_close(fc1(x), conv(x))
    assert fc1(x).shape == (2, 3, 4)


def test_fc2_is_linear_gelu_linear_with_published_keys() -> None:
    fc2 = MlpTimeReduction(4, 2)
    assert [(k, tuple(v.shape)) for k, v in fc2.state_dict().items()] == [
        ("0.weight", (8, 8)), ("0.bias", (8,)), ("2.weight", (4, 8)), ("2.bias", (4,))]
    x = torch.randn(1, 5, 4)
    g = group_frames(x, 2)
    torch.testing.assert_close(fc2(x), fc2[2](torch.nn.functional.gelu(fc2[0](g))))
    mask = torch.tensor([[False, False, False, True, True]])
    assert fc2.reduce_mask(mask).tolist() == [[False, True]]


@pytest.mark.parametrize("kind", ["fc1", "fc2"])
def test_students_with_linear_reduction(kind: str) -> None:
    model = build_student(_tiny(tr_layer_type=kind)).eval()
    state = model.state_dict()
    key = "encoder.layers.0.weight" if kind == "fc1" else "encoder.layers.0.0.weight"
    assert tuple(state[key].shape) == ((48, 96) if kind == "fc1" else (96, 96))
    assert abs(float(state[key].std()) - 0.02) < 0.005  # init_bert_params, as the published encoder.apply
    wavs = torch.randn(2, 16000)
    out = model(wavs, torch.tensor([16000, 9000]))
    assert out.hidden_states[0].shape == (2, 24, 48) and out.hidden_lengths.tolist() == [24, 13]


@pytest.mark.parametrize(
    ("changes", "absent", "present"),
    [
        ({"layer_type": "conformer"}, [], ["encoder.pos_conv.0.weight_v", "encoder.layers.1.self_attn.q_proj.weight",
                                          "encoder.layers.1.conv_module.batch_norm.running_mean"]),
        ({"layer_type": "conformer", "attn_type": "espnet", "pos_enc_type": "rel_pos"}, ["encoder.pos_conv.0.weight_v"],
         ["encoder.layers.1.self_attn.linear_pos.weight", "encoder.layers.3.self_attn.pos_bias_u"]),
        ({"layer_type": "conformer", "attn_type": "espnet", "pos_enc_type": "rope"}, ["encoder.pos_conv.0.weight_v"],
         ["encoder.layers.1.self_attn.rotary_emb.inv_freq"]),
        ({"n_mels": 80, "enable_log_mel": True}, ["feature_extractor.conv_layers.0.0.weight"],
         ["mel_transform.spectrogram.window", "mel_transform.mel_scale.fb", "mel_spec_head.conv_layers.3.weight"]),
        ({"n_mels": 40, "mel_spec_head_conv_layers": ()}, ["mel_spec_head.conv_layers.0.weight"],
         ["mel_transform.mel_scale.fb", "post_extract_proj.weight"]),
    ],
)
def test_variant_keys_and_shapes(changes: dict, absent: list[str], present: list[str]) -> None:
    model = build_student(_tiny(**changes)).eval()
    state = model.state_dict()
    assert not [k for k in absent if k in state] and all(k in state for k in present)
    out = model(torch.randn(2, 16000), torch.tensor([16000, 9000]))
    assert out.cnn_features.shape[:2] == (2, 49) and out.cnn_lengths.tolist() == [49, 27]
    assert [p.shape for p in out.projections] == [(2, 48, 64)] * 3
    if changes.get("n_mels"):
        assert model.front_specs == ((model.front_dim, 400, 320),) and model.min_samples() == 720


def test_mel_head_default_follows_the_published_yaml() -> None:
    cfg = _tiny(n_mels=80)
    assert cfg.front_dim == 512 and build_student(cfg).post_extract_proj.in_features == 512  # type: ignore[union-attr]


def _fit(distiller: dict | None = None, train: dict | None = None) -> FitConfig:
    data = load_packaged_config("tiny").to_dict()
    data["distiller"].update(distiller or {})
    data["train"].update(train or {})
    return FitConfig.from_dict(data, "my.yaml")


@pytest.mark.parametrize(
    ("distiller", "train", "match"),
    [
        ({"layer_type": "conformer", "pos_enc_type": "rel_pos"}, {}, "attn_type: espnet"),
        ({"layer_type": "conformer", "depthwise_conv_kernel_size": 4}, {}, "odd"),
        ({"layer_type": "conformer", "init_encoder_layers": 1}, {}, "init_encoder_layers: 0"),
        ({"layer_type": "conformer", "pos_enc_type": "alibi", "attn_type": "espnet"}, {}, "pos_enc_type"),
        ({"n_mels": 80, "mel_spec_head_conv_layers": "[(64, 4, 1)]"}, {}, "odd kernel"),
        ({"n_mels": 80, "mel_spec_head_conv_layers": "[(64, 3, 2)]"}, {}, "stride 1"),
        ({"n_mels": 80, "init_conv_layers": True}, {}, "no conv stack"),
        ({}, {"delete_projections": True}, "rec_loss_weight"),
        ({}, {"delete_projections": True, "rec_loss_weight": 0}, "nothing trains"),
        ({}, {"delete_projections": True, "rec_loss_weight": 0, "cnn_loss_weight": 1.0}, "cnn_proj_head"),
    ],
)
def test_variant_config_errors_name_key_and_fix(distiller: dict, train: dict, match: str) -> None:
    with pytest.raises(FhbError, match=match) as info:
        _fit(distiller, train)
    assert "my.yaml" in str(info.value)


def test_delete_projections_builds_the_inference_layout() -> None:
    from fhb.student import build_fit_student

    fit = _fit({"encoder_embed_dim": 64, "pred_head_final_dim": 64},
               {"delete_projections": True, "rec_loss_weight": 0, "cnn_loss_weight": 1.0})
    model = build_fit_student(fit)
    assert model.is_inference and model.proj_head is None and model.final_proj is not None
    assert model.cnn_proj_head is None
    assert FitConfig.from_dict(fit.to_dict()).loss.delete_projections


def test_variant_configs_round_trip() -> None:
    fit = _fit({"layer_type": "conformer", "attn_type": "espnet", "pos_enc_type": "rope", "tr_layer_type": "fc2",
                "n_mels": 64, "enable_log_mel": True})
    assert FitConfig.from_dict(fit.to_dict()) == fit
