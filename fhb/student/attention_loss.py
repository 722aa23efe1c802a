"""The published attention-distribution and value-relation losses (``attn_loss_weight``,
``attn_loss_type``, ``v_rel_loss_weight``), between the student's last layer and the teacher's.

Both sides are :class:`fhb.nn.relations.Relations` ``B x H x T x T`` per head (the published code
compares them per head, so the student needs the teacher's head count; head dims may differ).

* ``attn_loss_type: mse``: squared error of the attention **logits** (before the softmax), averaged
  over every element whose logits are finite: the published code divides the sum by the element count
  minus the ``inf``/``nan`` columns, i.e. padded key columns (``-inf`` on both sides) are left out,
  every query row counts.
* ``attn_loss_type: kldiv``: ``KL(softmax(teacher) || softmax(student))`` over keys (``F.kl_div`` of
  the student's ``log_softmax`` against the teacher's probabilities), elements that are ``inf`` set
  to 0, summed over keys and averaged over the ``B x H x T`` query rows. Padded keys contribute 0
  (``0 log 0``); the published code gets ``0 * -inf = nan`` there (NaN loss on any padded batch),
  so fhb computes what it evidently intends.
* ``v_rel_loss_weight``: the same KL of the value relations ``(v / sqrt(d_h)) v^T``, no mask (as
  published: padded keys are in the softmax), summed over keys, averaged over rows.

With ``mask_padding: True`` (fhb's extension) padded query rows are left out of every mean and
padded keys out of the value-relation softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fhb.errors import FhbError
from fhb.nn.relations import Relations

__all__ = ["AttentionTerms", "attention_mse", "relation_kldiv", "attention_terms"]


def _rows_mean(values: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``B x H x T`` per-row values over all rows, or the rows where ``rows`` (``B x T``)."""
    if rows is None:
        return values.mean()
    mask = rows[:, None, :].to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def attention_mse(student: torch.Tensor, teacher: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Published ``mse`` attention loss of ``B x H x T x T`` logits (see the module docstring)."""
    finite = torch.isfinite(student) & torch.isfinite(teacher)
    if rows is not None:
        finite = finite & rows[:, None, :, None]
    diff = student.masked_fill(~finite, 0.0) - teacher.masked_fill(~finite, 0.0)
    return (diff * diff).sum() / finite.sum().clamp(min=1)


def relation_kldiv(student: torch.Tensor, teacher: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``KL(softmax(teacher) || softmax(student))`` over the last axis of ``B x H x T x T`` logits,
    non-finite elements set to 0, summed over keys, averaged over query rows (all, or ``rows``)."""
    p = torch.softmax(teacher, dim=-1)
    log_q = torch.log_softmax(student, dim=-1)
    finite_q = torch.isfinite(log_q)
    elem = torch.xlogy(p, p) - p * log_q.masked_fill(~finite_q, 0.0)
    elem = elem.masked_fill(~finite_q, 0.0)  # published: loss[loss.isinf()] = 0
    return _rows_mean(elem.sum(dim=-1), rows)


@dataclass(frozen=True)
class AttentionTerms:
    """The attention and value-relation terms of one batch (unweighted scalars; 0 when off)."""

    attn: torch.Tensor
    v_rel: torch.Tensor


def _key_masked(values: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``values`` with padded key columns (``keys`` ``B x T`` False) set to ``-inf``."""
    return values.masked_fill(~keys[:, None, None, :], float("-inf"))


def attention_terms(
    student: Relations,
    teacher: Relations,
    *,
    attn_type: str,
    with_attn: bool,
    with_v_rel: bool,
    valid: torch.Tensor | None = None,
) -> AttentionTerms:
    """The published terms from both sides' relations.

    Args:
        student: the student's last layer, ``B x H x T x T``.
        teacher: the teacher's last layer, same shape.
        attn_type: ``mse`` or ``kldiv``.
        with_attn / with_v_rel: which terms to compute (the other is 0).
        valid: ``B x T`` valid frames for ``mask_padding: True`` (None: the published means).

    Raises:
        FhbError: the two sides' shapes differ.
    """
    if student.logits.shape != teacher.logits.shape:
        raise FhbError(
            f"attention loss: expected the student's last-layer attention (B x H x T x T) "
            f"{list(student.logits.shape)} to match the teacher's, found {list(teacher.logits.shape)}; the "
            "student needs the teacher's head count and frame rate (enable_tr_layer: False)"
        )
    zero = student.logits.new_zeros((), dtype=torch.float32)
    attn = v_rel = zero
    s_logits, t_logits = student.logits.float(), teacher.logits.float()
    if with_attn:
        if attn_type == "mse":
            attn = attention_mse(s_logits, t_logits, valid)
        else:
            attn = relation_kldiv(s_logits, t_logits, valid)
    if with_v_rel:
        s_values, t_values = student.values.float(), teacher.values.float()
        if valid is not None:
            s_values, t_values = _key_masked(s_values, valid), _key_masked(t_values, valid)
        v_rel = relation_kldiv(s_values, t_values, valid)
    return AttentionTerms(attn, v_rel)
