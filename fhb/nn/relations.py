"""One transformer layer's attention logits and value relations, recomputed from its input.

The published FitHuBERT code replaces each layer's ``forward`` to return, next to its output, the
raw attention logits ``(q / sqrt(d_h)) k^T`` (fairseq's ``before_softmax=True``: padded keys are
``-inf``) and the value relation ``(v / sqrt(d_h)) v^T`` (MiniLM's, no mask, no softmax; the loss
applies it). Both only need the layer's input and its ``q/k/v`` projections, so fhb recomputes them
from a hidden state — the teacher's from the lake's stored layer ``k-1``, the student's from its own
layer input — with one function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

__all__ = ["Projections", "Relations", "attention_relations"]


class Projections(Protocol):
    """What the relations need of an attention block (`fhb.nn.attention.SelfAttention` has it)."""

    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    num_heads: int
    head_dim: int


@dataclass(frozen=True)
class Relations:
    """One layer's attention relations, per head.

    Attributes:
        logits: ``B x H x T x T`` attention logits before the softmax (query rows, key columns),
            ``-inf`` at padded keys.
        values: ``B x H x T x T`` value relations ``(v / sqrt(d_h)) v^T`` (no mask).
    """

    logits: torch.Tensor
    values: torch.Tensor


def attention_relations(
    x: torch.Tensor, attn: Projections, key_padding_mask: torch.Tensor | None = None
) -> Relations:
    """Attention logits and value relations of ``attn`` on its input ``x``.

    Args:
        x: ``B x T x D``, what the attention block receives (for a pre-LN layer: after its
            ``self_attn_layer_norm``).
        attn: the block (its ``q_proj``, ``k_proj``, ``v_proj`` and ``num_heads``).
        key_padding_mask: ``B x T`` bool, True at padded frames (their logit columns are ``-inf``).

    Returns:
        :class:`Relations`, in ``x``'s dtype (float32 for float32 input).
    """
    batch, frames, _ = x.shape
    shape = (batch, frames, attn.num_heads, attn.head_dim)
    scaling = attn.head_dim ** -0.5
    q = (attn.q_proj(x) * scaling).view(shape).transpose(1, 2)  # fairseq scales q after the bias
    k = attn.k_proj(x).view(shape).transpose(1, 2)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    logits = q @ k.transpose(-1, -2)
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    values = (v * scaling) @ v.transpose(-1, -2)
    return Relations(logits=logits, values=values)
