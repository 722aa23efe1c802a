"""The distillation loss: the random-layer scheme by hand, narrowing, L1/MSE, cosine, masks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fhb.errors import FhbError
from fhb.student import (
    DistillLoss,
    FitConfig,
    LossConfig,
    StudentConfig,
    StudentOutput,
    load_packaged_config,
    required_teacher_layers,
)

B, T, D = 2, 6, 4


def _output(heads: int = 3, frames: int = T, lengths: list[int] | None = None, seed: int = 0) -> StudentOutput:
    g = torch.Generator().manual_seed(seed)
    projections = [torch.randn(B, frames, D, generator=g) for _ in range(heads)]
    lengths_t = torch.tensor(lengths or [frames] * B)
    return StudentOutput(
        projections=projections,
        hidden_states=[torch.zeros(B, frames // 2, 3)] * heads,
        last_hidden_state=projections[-1],
        cnn_features=torch.randn(B, frames + 1, D, generator=g),
        cnn_lengths=lengths_t + 1,
        hidden_lengths=lengths_t // 2,
        projection_lengths=lengths_t,
        cnn_padding_mask=None,
        hidden_padding_mask=None,
    )


def _targets(layers: int = 3, frames: int = T + 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, layers, frames, D, generator=torch.Generator().manual_seed(seed))


def _student(heads: int = 3, **changes: object) -> StudentConfig:
    return dataclasses.replace(StudentConfig(), encoder_layers=heads, pred_layer_id=(heads - 1,), **changes)


def test_random_layers_by_hand() -> None:
    """0.1 * sum MSE(head_l, teacher layer l+1) + 1.0 * MSE(head_last, teacher layer N)."""
    loss = DistillLoss(LossConfig(distil_random_layer=2, random_layer_weight=0.1), 3, student=_student())
    out, targets = _output(), _targets()
    result = loss(out, targets)
    narrowed = targets[:, :, :T]  # teacher has T+1 frames (odd T'): the last one is dropped
    by_hand = {k: ((out.projections[k - 1] - narrowed[:, k - 1]) ** 2).mean() for k in (1, 2, 3)}
    for k in (1, 2, 3):
        torch.testing.assert_close(result.per_layer[k], by_hand[k])
    expected = 0.1 * by_hand[1] + 0.1 * by_hand[2] + by_hand[3]
    torch.testing.assert_close(result.rec, expected)
    torch.testing.assert_close(result.total, expected)
    assert result.weights == {1: 0.1, 2: 0.1, 3: 1.0}
    assert float(result.sim) == float(result.cnn) == 0.0


def test_published_stacked_form_matches() -> None:
    """The published computation: stack, weight layers [:-1], mean over (B, T, D), sum."""
    loss = DistillLoss(LossConfig(distil_random_layer=2, random_layer_weight=0.1), 3, student=_student())
    out, targets = _output(), _targets()
    pairs = loss.pairs()
    pred = torch.stack([out.projections[p.head] for p in pairs], dim=1)
    target = torch.stack([targets[:, p.layer - 1] for p in pairs], dim=1).narrow(2, 0, pred.shape[2])
    rec = F.mse_loss(pred, target, reduction="none")
    rec[:, :-1] = rec[:, :-1] * 0.1
    torch.testing.assert_close(loss(out, targets).rec, rec.mean((0, 2, 3)).sum())


def test_fithubert_pairs_every_layer() -> None:
    cfg = load_packaged_config("fithubert")
    loss = DistillLoss(cfg.loss, 12, student=cfg.distiller)
    pairs = loss.pairs()
    assert sorted((p.head, p.layer, p.weight) for p in pairs) == [(h, h + 1, 0.1) for h in range(11)] + [(11, 12, 1.0)]
    assert required_teacher_layers(cfg, 12) == list(range(1, 13))


def test_l1_and_mse() -> None:
    out, targets = _output(), _targets()
    for kind, fn in (("mse", F.mse_loss), ("l1", F.l1_loss)):
        loss = DistillLoss(LossConfig(rec_loss_type=kind, distil_random_layer=0, random_layer_weight=0), 3,
                           student=_student())
        torch.testing.assert_close(loss(out, targets).rec, fn(out.projections[2], targets[:, 2, :T]))


def test_fixed_layers_average() -> None:
    student = dataclasses.replace(_student(), pred_layer_id=(0, 2))
    loss = DistillLoss(LossConfig(distil_random_layer=0, random_layer_weight=0), 3, student=student)
    out, targets = _output(), _targets()
    pred = torch.stack([out.projections[0], out.projections[2]], 1)
    target = torch.stack([targets[:, 0], targets[:, 2]], 1)[:, :, :T]
    torch.testing.assert_close(loss(out, targets).rec, F.mse_loss(pred, target))
    assert loss.required_layers == [1, 3]


def test_split_head_pairs_predictions_in_order() -> None:
    student = dataclasses.replace(_student(), layerwise_proj=False, pred_layer_id=(0, 2))
    loss = DistillLoss(LossConfig(distil_random_layer=0, random_layer_weight=0), 3, student=student)
    assert [(p.head, p.layer) for p in loss.pairs()] == [(0, 1), (1, 3)]


def test_sim_term_is_distilhubert_cosine() -> None:
    cfg = LossConfig(rec_loss_weight=0.0, sim_loss_weight=1.0, distil_random_layer=0, random_layer_weight=0)
    loss = DistillLoss(cfg, 3, student=_student())
    out, targets = _output(), _targets()
    cos = F.cosine_similarity(out.projections[2], targets[:, 2, :T], dim=-1)
    result = loss(out, targets)
    torch.testing.assert_close(result.sim, (-F.logsigmoid(cos)).mean())
    torch.testing.assert_close(result.total, result.sim)
    assert result.per_layer == {}


def test_sim_with_random_layers_is_weighted_like_rec() -> None:
    cfg = LossConfig(sim_loss_weight=2.0, distil_random_layer=2, random_layer_weight=0.1)
    loss = DistillLoss(cfg, 3, student=_student())
    out, targets = _output(), _targets()
    sims = [(-F.logsigmoid(F.cosine_similarity(out.projections[k], targets[:, k, :T], dim=-1))).mean() for k in range(3)]
    result = loss(out, targets)
    torch.testing.assert_close(result.sim, 0.1 * sims[0] + 0.1 * sims[1] + sims[2])
    torch.testing.assert_close(result.total, result.rec + 2.0 * result.sim)


def test_draws_are_deterministic_and_resumable() -> None:
    cfg = LossConfig(distil_random_layer=3, random_layer_weight=0.1)
    student = _student(heads=8)
    a = DistillLoss(cfg, 8, student=student, generator=torch.Generator().manual_seed(5))
    b = DistillLoss(cfg, 8, student=student, generator=torch.Generator().manual_seed(5))
    assert a.random_layers == b.random_layers
    assert len(set(a.random_layers)) == 3 and all(0 <= h < 7 for h in a.random_layers)
    g = torch.Generator().manual_seed(9)
    draws = [a.resample(g) for _ in range(5)]
    assert len({tuple(d) for d in draws}) > 1
    c = DistillLoss(cfg, 8, student=student)
    c.load_state_dict(a.state_dict())
    out, targets = _output(heads=8), _targets(layers=8)
    torch.testing.assert_close(c(out, targets).total, a(out, targets).total)
    assert a.required_layers == list(range(1, 9))
    with pytest.raises(FhbError, match="another config"):
        c.load_state_dict({"random_layers": [7, 0, 1]})


def test_target_formats_and_missing_layers() -> None:
    loss = DistillLoss(LossConfig(distil_random_layer=2, random_layer_weight=0.1), 3, student=_student())
    out, targets = _output(), _targets()
    expected = loss(out, targets).total
    torch.testing.assert_close(loss(out, list(targets.unbind(1))).total, expected)
    torch.testing.assert_close(loss(out, {k: targets[:, k - 1] for k in (1, 2, 3)}).total, expected)
    with pytest.raises(FhbError, match="teacher layer 2"):
        loss(out, {1: targets[:, 0], 3: targets[:, 2]})
    with pytest.raises(FhbError, match="at least B x 6"):
        loss(out, targets[:, :, :5])


def test_mask_padding_excludes_padded_frames() -> None:
    lengths = [T, 3]
    out, targets = _output(lengths=lengths), _targets()
    published = DistillLoss(LossConfig(distil_random_layer=0, random_layer_weight=0), 3, student=_student())
    masked = DistillLoss(LossConfig(distil_random_layer=0, random_layer_weight=0, mask_padding=True), 3,
                         student=_student())
    pred, target = out.projections[2], targets[:, 2, :T]
    torch.testing.assert_close(published(out, targets).rec, F.mse_loss(pred, target))
    sq = (pred - target) ** 2
    by_hand = torch.cat([sq[0, :T].reshape(-1), sq[1, :3].reshape(-1)]).mean()
    torch.testing.assert_close(masked(out, targets).rec, by_hand)
    garbage = targets.clone()
    garbage[1, :, 3:] = 1e6  # padded teacher frames change nothing with mask_padding
    torch.testing.assert_close(masked(out, garbage).rec, by_hand)
    shorter = masked(out, targets, target_lengths=torch.tensor([4, 3]))
    torch.testing.assert_close(shorter.rec, torch.cat([sq[0, :4].reshape(-1), sq[1, :3].reshape(-1)]).mean())


def test_cnn_loss_is_l1_on_projected_features() -> None:
    loss = DistillLoss(LossConfig(cnn_loss_weight=0.5, distil_random_layer=2, random_layer_weight=0.1), 3,
                       student=_student())
    out, targets = _output(), _targets()
    cnn_targets = torch.randn(B, T + 1, D)
    result = loss(out, targets, cnn_targets=cnn_targets)
    torch.testing.assert_close(result.cnn, F.l1_loss(out.cnn_features, cnn_targets))
    torch.testing.assert_close(result.total, result.rec + 0.5 * result.cnn)
    with pytest.raises(FhbError, match="cnn_targets"):
        loss(out, targets)


def test_required_teacher_layers() -> None:
    cfg = load_packaged_config("fithubert")
    fixed = FitConfig.from_dict({**cfg.to_dict(), "train": {**cfg.train, "distil_random_layer": 0,
                                                             "random_layer_weight": 0}})
    assert required_teacher_layers(fixed, 12) == [12]
    three = dataclasses.replace(fixed, distiller=dataclasses.replace(fixed.distiller, pred_layer_id=(3, 7, 11)))
    assert required_teacher_layers(three, 12) == [4, 8, 12]
    off = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, rec_loss_weight=0.0))
    assert required_teacher_layers(off, 12) == []
    with pytest.raises(FhbError, match="encoder_layers"):
        required_teacher_layers(cfg, 3)  # a 12-layer student cannot pair its heads with 3 teacher layers
    with pytest.raises(FhbError, match="pred_layer_id"):
        required_teacher_layers(three, 6)


def test_on_a_real_student(tiny_model, tiny_config) -> None:
    loss = DistillLoss(tiny_config.loss, 3, student=tiny_config.distiller)
    lengths = torch.tensor([16000, 9000])
    out = tiny_model(torch.randn(2, 16000), lengths)
    targets = torch.randn(2, 3, 49, 64)  # the teacher's 49 frames; the student predicts 48
    result = loss(out, targets, target_lengths=torch.tensor([49, 27]))
    result.total.backward()
    assert torch.isfinite(result.total)
    assert tiny_model.proj_head[0].lin_proj.weight.grad is not None
    assert tiny_model.upsampler.weight.grad is None  # the published dead weights stay untouched
