"""The attention and value-relation terms against the published formulas (train.py's
``calculate_loss``, retyped below as the oracle), the student's relations against its own attention,
and the config checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fhb.errors import FhbError
from fhb.nn.relations import Relations, attention_relations
from fhb.student.attention_loss import attention_terms
from fhb.student.config import FitConfig, load_packaged_config
from fhb.student.model import build_student


def _published_attn(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """train.py's attention term on ``(B*H) x T x T`` logits, as published."""
    if kind == "mse":
        loss = F.mse_loss(pred, target, reduction="none")
        inf_count = torch.any(loss.isinf(), 1).count_nonzero() * loss.size(-1)
        nan_count = torch.any(loss.isnan(), 1).count_nonzero() * loss.size(-1)
        loss[loss.isinf()] = 0
        loss[loss.isnan()] = 0
        return loss.sum() / (loss.numel() - inf_count - nan_count)
    loss = F.kl_div(F.log_softmax(pred, dim=-1), F.softmax(target, dim=-1), reduction="none")
    loss[loss.isinf()] = 0
    return loss.sum(dim=-1).mean()


def _published_v_rel(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    loss = F.kl_div(F.log_softmax(pred, dim=-1), F.softmax(target, dim=-1), reduction="none")
    return loss.sum(dim=-1).mean()


def _relations(batch: int = 2, heads: int = 3, frames: int = 7, lengths: list[int] | None = None,
               seed: int = 0) -> Relations:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, heads, frames, frames, generator=gen) * 3
    values = torch.randn(batch, heads, frames, frames, generator=gen) * 2
    if lengths is not None:
        mask = torch.arange(frames)[None, :] >= torch.tensor(lengths)[:, None]
        logits = logits.masked_fill(mask[:, None, None, :], float("-inf"))
    return Relations(logits, values)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, *x.shape[-2:])


@pytest.mark.parametrize("kind", ["mse", "kldiv"])
@pytest.mark.parametrize("lengths", [None, [7, 4]])
def test_attention_term_is_the_published_one(kind: str, lengths: list[int] | None) -> None:
    student, teacher = _relations(lengths=lengths, seed=1), _relations(lengths=lengths, seed=2)
    ours = attention_terms(student, teacher, attn_type=kind, with_attn=True, with_v_rel=True)
    expected = _published_attn(_flat(student.logits), _flat(teacher.logits), kind)
    if kind == "kldiv" and lengths is not None:
        # published: 0 * -inf = NaN at padded keys; fhb: what it intends (0 log 0 = 0 there)
        assert torch.isnan(expected)
        kl = F.kl_div(F.log_softmax(_flat(student.logits), -1), F.softmax(_flat(teacher.logits), -1), reduction="none")
        expected = torch.nan_to_num(kl, nan=0.0, posinf=0.0).sum(-1).mean()
    torch.testing.assert_close(ours.attn, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.v_rel, _published_v_rel(_flat(student.values), _flat(teacher.values)),
                               rtol=1e-6, atol=1e-7)


def test_terms_are_off_when_their_weight_is_zero_and_shapes_must_match() -> None:
    a, b = _relations(seed=1), _relations(seed=2)
    terms = attention_terms(a, b, attn_type="mse", with_attn=False, with_v_rel=False)
    assert float(terms.attn) == 0.0 and float(terms.v_rel) == 0.0
    with pytest.raises(FhbError, match="head count and frame rate"):
        attention_terms(a, _relations(heads=2), attn_type="mse", with_attn=True, with_v_rel=False)


def test_mask_padding_leaves_padded_rows_out() -> None:
    student, teacher = _relations(lengths=[7, 4], seed=1), _relations(lengths=[7, 4], seed=2)
    valid = torch.arange(7)[None, :] < torch.tensor([7, 4])[:, None]
    masked = attention_terms(student, teacher, attn_type="kldiv", with_attn=True, with_v_rel=True, valid=valid)
    # utterance by utterance, cropped to its frames, weighted by its rows
    kl_rows, v_rows = [], []
    for i, n in enumerate([7, 4]):
        s, t = student.logits[i, :, :n, :n], teacher.logits[i, :, :n, :n]
        kl_rows.append(F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="none").sum(-1).flatten())
        s, t = student.values[i, :, :n, :n], teacher.values[i, :, :n, :n]
        v_rows.append(F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="none").sum(-1).flatten())
    torch.testing.assert_close(masked.attn, torch.cat(kl_rows).mean())
    torch.testing.assert_close(masked.v_rel, torch.cat(v_rows).mean())


def _attention_config(**train: object) -> FitConfig:
    cfg = load_packaged_config("tiny").to_dict()
    cfg["distiller"]["enable_tr_layer"] = False
    cfg["train"].update(train)
    return FitConfig.from_dict(cfg)


def test_student_relations_are_its_own_attention() -> None:
    """softmax(logits) @ v through out_proj is what the student's last attention block returns."""
    fit = _attention_config(attn_loss_weight=1.0)
    torch.manual_seed(0)
    model = build_student(fit.distiller).eval()
    model.return_attention = True
    wavs = torch.randn(2, 8000)
    out = model(wavs, torch.tensor([8000, 5000]))
    rel = out.last_attention
    assert rel is not None
    layer = model.encoder.layers[-1]
    x = out.hidden_states[-2]
    attn = layer.self_attn
    b, t, d = x.shape
    v = attn.v_proj(x).view(b, t, attn.num_heads, attn.head_dim).transpose(1, 2)
    mixed = (torch.softmax(rel.logits, -1) @ v).transpose(1, 2).reshape(b, t, d)
    torch.testing.assert_close(attn.out_proj(mixed), attn(x, out.hidden_padding_mask), rtol=1e-5, atol=1e-5)
    assert torch.isinf(rel.logits[1, :, :, int(out.hidden_lengths[1]):]).all()
    again = attention_relations(x, attn, out.hidden_padding_mask)
    assert torch.equal(again.values, rel.values)


def test_config_accepts_the_attention_losses_and_refuses_what_cannot_run() -> None:
    fit = _attention_config(attn_loss_weight=0.5, attn_loss_type="mse", v_rel_loss_weight=0.1)
    assert fit.loss.attn_loss_weight == 0.5 and fit.loss.v_rel_loss_weight == 0.1
    with pytest.raises(FhbError, match="attn_loss_type.*'mse' or 'kldiv'"):
        _attention_config(attn_loss_weight=1.0, attn_loss_type="l2")
    with pytest.raises(FhbError, match="v_rel_loss_weight: expected a weight >= 0"):
        _attention_config(v_rel_loss_weight=-1.0)
    cfg = load_packaged_config("tiny").to_dict()
    cfg["train"]["attn_loss_weight"] = 1.0
    with pytest.raises(FhbError, match="enable_tr_layer: expected False"):
        FitConfig.from_dict(cfg)


def test_required_layers_add_the_attention_input_layer() -> None:
    from fhb.student.loss import DistillLoss, required_teacher_layers

    fit = _attention_config(attn_loss_weight=1.0, distil_random_layer=0, random_layer_weight=0.0)
    fit = FitConfig.from_dict({**fit.to_dict(), "distiller": {**fit.to_dict()["distiller"], "pred_layer_id": "[2]"}})
    assert required_teacher_layers(fit, 3) == [2, 3]
    assert required_teacher_layers(fit, 12) == [3, 11]
    loss = DistillLoss(dataclasses.replace(fit.loss, rec_loss_weight=0.0), 1, student=fit.distiller)
    assert loss.required_layers == [] and loss.needs_cnn_targets  # a one-layer teacher's layer-1 input comes from the CNN features
