"""One transformer layer of the wav2vec 2.0 family (post-LN or pre-LN), fairseq-named."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fhb.nn.attention import SelfAttention


def _gelu_fp32(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x.float()).type_as(x)


def _gelu_tanh_fp32(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x.float(), approximate="tanh").type_as(x)


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": _gelu_fp32,
    "gelu_accurate": _gelu_tanh_fp32,
    "relu": F.relu,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """fairseq's activation by name (``gelu`` runs in float32, as fairseq's does)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation_fn {name!r}; expected one of {sorted(_ACTIVATIONS)}") from None


class TransformerLayer(nn.Module):
    """Self-attention + feed-forward with residuals, LayerNorm after (post-LN) or before (pre-LN).

    Children are named like fairseq's ``TransformerSentenceEncoderLayer``: ``self_attn``,
    ``self_attn_layer_norm``, ``fc1``, ``fc2``, ``final_layer_norm``.

    Args:
        self_attn: the attention block.
        fc1: ``D -> F`` linear.
        fc2: ``F -> D`` linear.
        layer_norm_first: pre-LN when True (wav2vec 2.0 / HuBERT Large), post-LN otherwise (Base).
        activation_fn: name of the FFN activation.
        dropout: residual dropout.
        activation_dropout: dropout after the activation.
    """

    def __init__(
        self,
        self_attn: SelfAttention,
        fc1: nn.Linear,
        fc2: nn.Linear,
        layer_norm_first: bool,
        activation_fn: str = "gelu",
        dropout: float = 0.1,
        activation_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dim = fc1.in_features
        self.self_attn = self_attn
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = fc1
        self.fc2 = fc2
        self.final_layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = layer_norm_first
        self.activation_fn = activation(activation_fn)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(activation_dropout)
        self.dropout3 = nn.Dropout(dropout)

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout2(self.activation_fn(self.fc1(x))))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``B x T x D`` -> ``B x T x D``; ``key_padding_mask`` is ``B x T``, True at padding."""
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(self.self_attn_layer_norm(x), key_padding_mask))
            return x + self.dropout3(self._feed_forward(self.final_layer_norm(x)))
        x = self.self_attn_layer_norm(x + self.dropout1(self.self_attn(x, key_padding_mask)))
        return self.final_layer_norm(x + self.dropout3(self._feed_forward(x)))


def build_transformer_layer(
    dim: int,
    ffn_dim: int,
    num_heads: int,
    layer_norm_first: bool,
    activation_fn: str = "gelu",
    dropout: float = 0.1,
    attention_dropout: float = 0.1,
    activation_dropout: float = 0.0,
) -> TransformerLayer:
    """A :class:`TransformerLayer` with fresh sub-blocks (see its arguments)."""
    return TransformerLayer(
        SelfAttention(dim, num_heads, attention_dropout),
        nn.Linear(dim, ffn_dim),
        nn.Linear(ffn_dim, dim),
        layer_norm_first=layer_norm_first,
        activation_fn=activation_fn,
        dropout=dropout,
        activation_dropout=activation_dropout,
    )


class EncoderFields(Protocol):
    """The fairseq config fields that size a stack of transformer layers (teacher and student
    configs both carry them under these names)."""

    encoder_layers: int
    encoder_embed_dim: int
    encoder_ffn_embed_dim: int
    encoder_attention_heads: int
    layer_norm_first: bool
    activation_fn: str
    dropout: float
    attention_dropout: float
    activation_dropout: float


def build_transformer_layers(cfg: EncoderFields) -> nn.ModuleList:
    """``cfg.encoder_layers`` fresh :class:`TransformerLayer` s sized by a fairseq-style config."""
    return nn.ModuleList(
        build_transformer_layer(
            cfg.encoder_embed_dim,
            cfg.encoder_ffn_embed_dim,
            cfg.encoder_attention_heads,
            layer_norm_first=cfg.layer_norm_first,
            activation_fn=cfg.activation_fn,
            dropout=cfg.dropout,
            attention_dropout=cfg.attention_dropout,
            activation_dropout=cfg.activation_dropout,
        )
        for _ in range(cfg.encoder_layers)
    )
