"""The student model: published keys and counts, frame arithmetic, masks, invariances."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fhb.errors import FhbError
from fhb.nn.frames import conv_output_length
from fhb.pipeline.teacher import load_teacher
from fhb.student import (
    FitConfig,
    FitHuBERT,
    StudentConfig,
    build_fit_student,
    build_student,
    load_packaged_config,
    strip_for_inference,
)
from fhb.student.time_reduction import TimeReduction
from tests.student.published import keys_of, read_keys

TRAIN_PARAMS = 31_629_632
INFER_PARAMS = 22_492_064


@pytest.mark.parametrize("name", ["fithubert", "fitwav2vec2"])
def test_published_keys_shapes_order_and_counts(name: str) -> None:
    model = build_fit_student(load_packaged_config(name), teacher_dim=768)
    state = model.state_dict()
    assert keys_of(state) == read_keys("fithubert_keys_train.tsv")
    assert keys_of(strip_for_inference(state)) == read_keys("fithubert_keys_infer.tsv")
    assert model.num_parameters() == sum(p.numel() for p in model.parameters()) == TRAIN_PARAMS
    assert model.num_parameters(inference=True) == INFER_PARAMS
    model.disable_projection_heads()
    assert keys_of(model.state_dict()) == read_keys("fithubert_keys_infer.tsv")
    assert model.num_parameters() == model.num_parameters(inference=True) == INFER_PARAMS


@pytest.mark.parametrize(
    ("changes", "params", "keys"),
    [
        ({"enable_tr_layer": False}, 25_171_712, {"proj_head.0.lin_proj.weight": (768, 480)}),
        ({"layerwise_proj": False}, 22_261_664,
         {"upsampler.weight": (480, 480, 2), "proj_head.0.weight": (480, 480), "proj_head.2.layer.weight": (768, 480)}),
        ({"layerwise_proj": False, "pred_layer_id": (3, 7, 11)}, 23_462_240,
         {"proj_head.0.weight": (1440, 480), "proj_head.2.weight": (3, 480, 768), "proj_head.2.bias": (1, 1, 3, 768)}),
    ],
)
def test_published_variants(changes: dict, params: int, keys: dict) -> None:
    model = build_student(dataclasses.replace(StudentConfig(), **changes))
    state = model.state_dict()
    assert model.num_parameters() == params
    for key, shape in keys.items():
        assert tuple(state[key].shape) == shape
    if not changes.get("enable_tr_layer", True):
        assert "upsampler.weight" not in state and "encoder.layers.0.self_attn.k_proj.weight" in state


def test_teacher_dim_must_match_heads() -> None:
    with pytest.raises(FhbError, match="pred_head_final_dim"):
        build_student(StudentConfig(), teacher_dim=1024)


@pytest.mark.parametrize(
    ("samples", "cnn", "hidden", "projected"),
    [(16000, 49, 24, 48), (16320, 50, 25, 50), (16640, 51, 25, 50), (720, 2, 1, 2)],
)
def test_time_reduction_frame_arithmetic(tiny_model: FitHuBERT, samples: int, cnn: int, hidden: int, projected: int) -> None:
    tiny_model.eval()
    specs = tiny_model.feature_extractor.specs
    assert conv_output_length(samples, specs) == cnn
    with torch.no_grad():
        out = tiny_model(torch.randn(1, samples))
    assert out.cnn_features.shape[1] == cnn
    assert all(h.shape[1] == hidden for h in out.hidden_states)
    assert out.reduced is not None and out.reduced.shape[1] == hidden
    assert all(p.shape == (1, projected, 64) for p in out.projections)
    assert (int(out.cnn_lengths), int(out.hidden_lengths), int(out.projection_lengths)) == (cnn, hidden, projected)


def test_too_short_is_a_clear_error(tiny_model: FitHuBERT) -> None:
    assert tiny_model.min_samples() == 720
    with pytest.raises(FhbError, match="at least 720 samples"):
        tiny_model(torch.randn(1, 719))
    with pytest.raises(FhbError, match="at least 720 samples"):
        tiny_model(torch.randn(2, 4000), torch.tensor([4000, 700]))


def test_padded_batch_shapes_lengths_and_masks(tiny_model: FitHuBERT) -> None:
    lengths = torch.tensor([16640, 12000, 5000])
    wavs = torch.randn(3, 16640) * (torch.arange(16640)[None] < lengths[:, None])
    out = tiny_model(wavs, lengths)
    cnn = [conv_output_length(int(n), tiny_model.feature_extractor.specs) for n in lengths]
    assert out.cnn_lengths.tolist() == cnn == [51, 37, 15]
    assert out.hidden_lengths.tolist() == [n // 2 for n in cnn]
    assert out.projection_lengths.tolist() == [2 * (n // 2) for n in cnn]
    assert out.cnn_features.shape == (3, 51, 48)
    assert len(out.hidden_states) == 3 and all(h.shape == (3, 25, 48) for h in out.hidden_states)
    assert len(out.projections) == 3 and all(p.shape == (3, 50, 64) for p in out.projections)
    assert out.last_hidden_state is out.projections[-1]
    assert out.cnn_padding_mask is not None and out.hidden_padding_mask is not None
    assert out.cnn_padding_mask.sum(1).tolist() == [51 - n for n in cnn]
    assert out.hidden_padding_mask.sum(1).tolist() == [25 - n // 2 for n in cnn]
    full = tiny_model(wavs[:1, :16640], None)
    assert full.cnn_padding_mask is None and full.hidden_padding_mask is None  # nothing padded: no mask


def test_mask_reduction_is_any_of_group_and_drops_the_tail() -> None:
    tr = TimeReduction(8, 2)
    mask = torch.tensor([[False] * 7, [False] * 4 + [True] * 3, [False] * 3 + [True] * 4])
    reduced = tr.reduce_mask(mask)
    assert reduced.tolist() == [[False] * 3, [False, False, True], [False, True, True]]
    lengths = (~mask).sum(1)
    assert tr.reduce_lengths(lengths).tolist() == (~reduced).sum(1).tolist() == [3, 2, 1]


def _alone_and_batched(model: FitHuBERT, wavs: list[torch.Tensor], per_utterance_cnn: bool) -> list[tuple]:
    lengths = torch.tensor([len(w) for w in wavs])
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    with torch.no_grad():
        if per_utterance_cnn:
            feats = [model.extract_features(w[None])[0][0] for w in wavs]
            cnn_lengths = torch.tensor([f.shape[0] for f in feats])
            out = model.forward_features(torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), cnn_lengths)
        else:
            out = model(batch, lengths)
        pairs = []
        for i, w in enumerate(wavs):
            alone = model(w[None])
            n_h, n_p = int(out.hidden_lengths[i]), int(out.projection_lengths[i])
            pairs += [(out.hidden_states[k][i, :n_h], alone.hidden_states[k][0]) for k in range(3)]
            pairs += [(out.projections[k][i, :n_p], alone.projections[k][0]) for k in range(3)]
    return pairs


def test_transformer_part_is_batch_invariant(tiny_model: FitHuBERT) -> None:
    """Given each utterance's own CNN features, the rest is batch-invariant (eval mode)."""
    tiny_model.eval()
    torch.manual_seed(1)
    wavs = [torch.randn(n) for n in (16640, 9000, 3000)]
    for ours, alone in _alone_and_batched(tiny_model, wavs, per_utterance_cnn=True):
        assert ours.shape == alone.shape
        torch.testing.assert_close(ours, alone, atol=1e-5, rtol=1e-5)


def test_groupnorm_makes_the_padded_cnn_batch_dependent(tiny_model: FitHuBERT, tiny_config: FitConfig) -> None:
    """As published, the first conv's GroupNorm normalises over padded frames too; without it
    (extractor_mode: layer_norm) the whole student is batch-invariant."""
    tiny_model.eval()
    torch.manual_seed(1)
    wavs = [torch.randn(n) for n in (16640, 9000, 3000)]
    worst = max((a - b).abs().max().item() for a, b in _alone_and_batched(tiny_model, wavs, per_utterance_cnn=False))
    assert worst > 1e-3
    torch.manual_seed(0)
    ln = build_student(dataclasses.replace(tiny_config.distiller, extractor_mode="layer_norm")).eval()
    for ours, alone in _alone_and_batched(ln, wavs, per_utterance_cnn=False):
        torch.testing.assert_close(ours, alone, atol=1e-5, rtol=1e-5)


def test_dropout_only_in_training(tiny_model: FitHuBERT) -> None:
    wav = torch.randn(1, 8000)
    tiny_model.train()
    assert not torch.equal(tiny_model(wav).projections[0], tiny_model(wav).projections[0])
    tiny_model.eval()
    assert torch.equal(tiny_model(wav).projections[0], tiny_model(wav).projections[0])


def _conv_grad(config: StudentConfig, mult: float) -> torch.Tensor | None:
    torch.manual_seed(0)
    model = build_student(dataclasses.replace(config, feature_grad_mult=mult)).eval()
    model(torch.randn(1, 4000, generator=torch.Generator().manual_seed(3))).projections[-1].sum().backward()
    return model.feature_extractor.conv_layers[0][0].weight.grad


def test_feature_grad_mult(tiny_config: FitConfig) -> None:
    full = _conv_grad(tiny_config.distiller, 1.0)
    scaled = _conv_grad(tiny_config.distiller, 0.1)
    assert full is not None and scaled is not None
    torch.testing.assert_close(scaled, 0.1 * full)
    assert _conv_grad(tiny_config.distiller, 0.0) is None


def test_inference_layout_keeps_the_last_head(tiny_model: FitHuBERT) -> None:
    tiny_model.eval()
    wav = torch.randn(2, 9000)
    with torch.no_grad():
        train = tiny_model(wav)
        inference_keys = list(strip_for_inference(tiny_model.state_dict()))
        tiny_model.disable_projection_heads()
        infer = tiny_model(wav)
    assert tiny_model.is_inference and infer.projections == []
    assert list(tiny_model.state_dict()) == inference_keys
    assert torch.equal(infer.last_hidden_state, train.projections[-1])


def test_split_head_outputs_one_prediction_per_layer_id(tiny_config: FitConfig) -> None:
    cfg = dataclasses.replace(tiny_config.distiller, layerwise_proj=False, pred_layer_id=(0, 2))
    model = build_student(cfg).eval()
    out = model(torch.randn(2, 8000))
    assert len(out.projections) == 2 and out.projections[0].shape == (2, 2 * (24 // 2), 64)
    assert out.last_hidden_state.shape == (2, 24, 48)  # the upsampled encoder output, as published


def test_pre_ln_and_no_time_reduction_run(tiny_config: FitConfig) -> None:
    cfg = dataclasses.replace(tiny_config.distiller, layer_norm_first=True, enable_tr_layer=False)
    out = build_student(cfg).eval()(torch.randn(2, 8000), torch.tensor([8000, 6000]))
    assert out.hidden_states[0].shape[1] == out.projections[0].shape[1] == out.cnn_features.shape[1] == 24
    assert out.projection_lengths.tolist() == out.cnn_lengths.tolist()


def test_cnn_proj_head_with_a_cnn_loss(tiny_config: FitConfig) -> None:
    model = build_student(tiny_config.distiller, cnn_loss_weight=1.0)
    assert model.cnn_proj_head is not None
    assert model(torch.randn(1, 4000)).cnn_features.shape[-1] == 64
    assert "cnn_proj_head.1.weight" not in strip_for_inference(model.state_dict())


def test_init_from_teacher(tiny_teacher_path) -> None:
    teacher = load_teacher(tiny_teacher_path).model
    arch = StudentConfig.from_dict(
        {"conv_feature_layers": "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2", "encoder_layers": 3,
         "encoder_embed_dim": 64, "encoder_ffn_embed_dim": 128, "encoder_attention_heads": 4, "conv_pos": 16,
         "conv_pos_groups": 4, "pred_head_final_dim": 64, "pred_layer_id": "[2]", "dropout_input": 0.0,
         "init_conv_layers": True, "init_encoder_layers": 2}
    )
    with pytest.raises(FhbError, match="init_conv_layers"):
        build_student(arch)
    student = build_student(arch, teacher=teacher)
    for key, value in teacher.feature_extractor.state_dict().items():
        assert torch.equal(student.feature_extractor.state_dict()[key], value)
    assert torch.equal(student.post_extract_proj.weight, teacher.post_extract_proj.weight)
    for i in range(2):  # teacher layer i -> student transformer layer i (behind the TR conv)
        assert torch.equal(student.encoder.layers[1 + i].fc1.weight, teacher.encoder.layers[i].fc1.weight)
    assert not torch.equal(student.encoder.layers[3].fc1.weight, teacher.encoder.layers[2].fc1.weight)
    wrong = dataclasses.replace(StudentConfig(), init_conv_layers=True)
    with pytest.raises(FhbError, match="teacher's shapes"):
        build_student(wrong, teacher=teacher)


@pytest.mark.parametrize("enable_tr_layer", [True, False])
def test_first_layer_input_is_what_the_first_transformer_layer_receives(
    tiny_config: FitConfig, enable_tr_layer: bool
) -> None:
    """s3prl's ``hidden_states[0]``: the reduction output, else the embedding (once read by a hook)."""
    cfg = dataclasses.replace(tiny_config.distiller, enable_tr_layer=enable_tr_layer)
    torch.manual_seed(0)
    model = build_student(cfg).eval()
    model.disable_projection_heads()
    received: list[torch.Tensor] = []
    first = model.encoder.layers[model.encoder.first_transformer]
    first.register_forward_pre_hook(lambda _m, args: received.append(args[0]))
    embedded: list[torch.Tensor] = []
    model.encoder.dropout.register_forward_hook(lambda _m, _i, out: embedded.append(out))
    lengths = torch.tensor([8000, 6000])
    wavs = torch.randn(2, 8000) * (torch.arange(8000)[None] < lengths[:, None])
    with torch.no_grad():
        out = model(wavs, lengths)
    assert out.first_layer_input is not None
    assert out.first_layer_input.shape == out.hidden_states[0].shape
    assert torch.equal(out.first_layer_input, received[-1])
    if enable_tr_layer:
        assert out.reduced is not None and torch.equal(out.first_layer_input, out.reduced)
        assert out.first_layer_input.shape[1] == embedded[-1].shape[1] // 2
    else:
        assert out.reduced is None and torch.equal(out.first_layer_input, embedded[-1])
