"""The yaml configs: packaged files, validation, round trips, refusals that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from fhb.errors import FhbError
from fhb.student import (
    PACKAGED_CONFIGS,
    FitConfig,
    LossConfig,
    StudentConfig,
    load_fithubert_yaml,
    load_packaged_config,
    packaged_config_path,
)


def _fithubert_dict() -> dict[str, Any]:
    return yaml.safe_load(packaged_config_path("fithubert").read_text())


def test_packaged_configs_load() -> None:
    for name in PACKAGED_CONFIGS:
        assert isinstance(load_packaged_config(name), FitConfig)


def test_fithubert_is_the_default_and_published_values() -> None:
    cfg = load_packaged_config("fithubert")
    assert cfg.distiller == StudentConfig()
    assert cfg.loss == LossConfig()
    d = cfg.distiller
    assert d.conv_feature_layers == ((128, 10, 5), (256, 1, 1)) + ((256, 3, 2),) * 4 + ((512, 1, 1),) + ((512, 2, 2),) * 2
    assert (d.encoder_layers, d.encoder_embed_dim, d.encoder_ffn_embed_dim, d.encoder_attention_heads) == (12, 480, 480, 12)
    assert (d.pred_layer_id, d.tr_layer_type, d.tr_reduce_factor, d.dropout_input) == ((11,), "conv1d", 2, 0.05)
    assert (cfg.loss.distil_random_layer, cfg.loss.random_layer_weight) == (11, 0.1)
    assert cfg.teacher == {"teacher_model": "hubert_base_ls960.pt"}
    assert cfg.optimizer["lr"] == 5e-4 and cfg.optimizer["betas"] == [0.9, 0.98]
    assert cfg.train["batch_size"] == 3 and cfg.train["accumulate_grad_batches"] == 4


def test_fitwav2vec2_differs_only_in_teacher_and_output_dir() -> None:
    a, b = load_packaged_config("fithubert").to_dict(), load_packaged_config("fitwav2vec2").to_dict()
    assert b["teacher"] == {"teacher_model": "wav2vec_small.pt"}
    assert b["train"]["output_dir"] == "FitW2V2-960h"
    b["teacher"], b["train"]["output_dir"] = a["teacher"], a["train"]["output_dir"]
    assert a == b


def test_round_trip_and_published_strings(tmp_path: Path) -> None:
    cfg = load_packaged_config("fithubert")
    out = cfg.to_dict()
    assert len(out["distiller"]) == 42
    assert out["distiller"]["pred_layer_id"] == "[11]"
    assert out["distiller"]["conv_feature_layers"] == (
        "[(128, 10, 5)] + [(256, 1, 1)] + [(256, 3, 2)] * 4 + [(512, 1, 1)] + [(512, 2, 2)] * 2"
    )
    assert "mask_padding" not in out["train"]  # published yamls stay published
    assert FitConfig.from_dict(out) == cfg
    path = tmp_path / "x.yaml"
    path.write_text(cfg.to_yaml())
    assert load_fithubert_yaml(path) == cfg


def test_tiny_matches_the_tiny_teacher(tiny_config: FitConfig) -> None:
    d = tiny_config.distiller
    assert d.pred_head_final_dim == 64 and d.encoder_layers == 3
    assert tiny_config.loss.distil_random_layer <= 3 - 1


def test_unknown_distiller_key_is_named() -> None:
    data = _fithubert_dict()
    data["distiller"]["encoder_layer"] = 12
    with pytest.raises(FhbError, match=r"unknown keys \['encoder_layer'\]"):
        FitConfig.from_dict(data, "my.yaml")


@pytest.mark.parametrize(
    ("section", "key", "value", "match"),
    [
        ("distiller", "n_mels", -1, "n_mels: 0"),
        ("distiller", "enable_log_mel", True, "n_mels: 80"),
        ("distiller", "layer_type", "lstm", "layer_type: transformer"),
        ("distiller", "attn_type", "espnet", "layer_type: conformer"),
        ("distiller", "pos_enc_type", "rel_pos", "pos_enc_type: abs"),
        ("distiller", "pos_conv_depth", 5, "pos_conv_depth: 1"),
        ("distiller", "tr_layer_type", "fc3", "tr_layer_type: conv1d"),
        ("distiller", "tr_layer_index", 1, "tr_layer_index: 0"),
        ("distiller", "required_seq_len_multiple", 2, "required_seq_len_multiple: 1"),
        ("distiller", "checkpoint_activations", True, "checkpointing is not implemented"),
        ("distiller", "encoder_layers", "12", "expected a int"),
        ("distiller", "encoder_attention_heads", 7, "divisor"),
        ("distiller", "pred_layer_id", "[12]", "head indices"),
        ("distiller", "pred_layer_id", "__import__('os').system('true')", "list of layer indices"),
        ("distiller", "conv_feature_layers", "__import__('os').system('true')", "conv layer string"),
        ("distiller", "extractor_mode", "group", "extractor_mode"),
        ("distiller", "activation_fn", "swish", "activation"),
        # supported since issue 12, but not with fithubert.yaml's time reduction (published: a shape error)
        ("train", "attn_loss_weight", 1.0, "enable_tr_layer: expected False"),
        ("train", "v_rel_loss_weight", 0.5, "enable_tr_layer: expected False"),
        ("train", "specaug", "yes", "true or false"),  # SpecAugment is supported now (tests/student/test_specaug.py)
        ("train", "rec_loss_type", "kl", "'mse' or 'l1'"),
        ("train", "delete_projections", True, "delete_projections"),
        ("train", "distil_random_layer", 12, "at most encoder_layers - 1"),
    ],
)
def test_unsupported_values_fail_naming_the_key(section: str, key: str, value: Any, match: str) -> None:
    data = _fithubert_dict()
    data[section][key] = value
    with pytest.raises(FhbError, match=match) as info:
        FitConfig.from_dict(data, "my.yaml")
    assert key in str(info.value) and "my.yaml" in str(info.value)


def test_random_weight_needs_random_layers() -> None:
    data = _fithubert_dict()
    data["train"]["distil_random_layer"] = 0
    with pytest.raises(FhbError, match="random_layer_weight"):
        FitConfig.from_dict(data)
    data["train"]["random_layer_weight"] = 0
    assert FitConfig.from_dict(data).loss.distil_random_layer == 0


def test_random_layers_need_layerwise_heads() -> None:
    data = _fithubert_dict()
    data["distiller"]["layerwise_proj"] = False
    with pytest.raises(FhbError, match="layerwise_proj"):
        FitConfig.from_dict(data)


def test_inert_keys_and_partial_sections() -> None:
    cfg = StudentConfig.from_dict({"encoder_layers": 4, "pred_layer_id": [3], "final_dim": 7, "tr_conv1d_kernel": 9, "mel_spec_head_conv_layers": ""})
    assert cfg.encoder_layers == 4 and cfg.final_dim == 7 and cfg.mel_spec_head_conv_layers == ()
    assert dataclasses.replace(cfg, encoder_layers=12, pred_layer_id=(11,), final_dim=256, tr_conv1d_kernel=2,
                               mel_spec_head_conv_layers=StudentConfig().mel_spec_head_conv_layers) == StudentConfig()


def test_missing_file_and_section(tmp_path: Path) -> None:
    with pytest.raises(FhbError, match="not found"):
        load_fithubert_yaml(tmp_path / "nope.yaml")
    (tmp_path / "x.yaml").write_text("train: {}\n")
    with pytest.raises(FhbError, match="distiller"):
        load_fithubert_yaml(tmp_path / "x.yaml")
    with pytest.raises(FhbError, match="fithubert"):
        load_packaged_config("fitbert")


def test_mask_padding_is_an_fhb_extension() -> None:
    data = _fithubert_dict()
    data["train"]["mask_padding"] = True
    cfg = FitConfig.from_dict(data)
    assert cfg.loss.mask_padding
    assert cfg.to_dict()["train"]["mask_padding"] is True
