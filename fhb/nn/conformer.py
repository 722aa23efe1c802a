"""The conformer layer of fairseq's wav2vec 2.0 conformer, fairseq-named, batch-first.

:class:`ConformerLayer` computes what fairseq's ``ConformerEncoderLayer`` computes (macaron
feed-forward halves around self-attention and a convolution module, then LayerNorm), on
``B x T x D`` instead of ``T x B x D``, with the same parameter names and registration order, so a
fairseq state dict loads strictly::

    ffn1                    LayerNorm, Linear(D, F), swish, dropout, Linear(F, D), dropout
    self_attn_layer_norm
    self_attn               fairseq MHA (k_proj, v_proj, q_proj, out_proj) | ESPnet attention
                            (linear_q, linear_k, linear_v, linear_out [, linear_pos, pos_bias_u,
                            pos_bias_v | rotary_emb.inv_freq])
    conv_module             LayerNorm, pointwise Conv1d(D, 2D), GLU, depthwise Conv1d(K),
                            BatchNorm1d, swish, pointwise Conv1d(D, D), dropout
    ffn2
    final_layer_norm

``x = x + ffn1(x) / 2; x = x + attn(LN(x)); x = x + conv(x); x = LN(x + ffn2(x) / 2)``.

Attention kinds (``attn_type`` / ``pos_enc_type`` of the published config):

* ``attn_type: ''`` -- fairseq's ``MultiheadAttention`` (:class:`~fhb.nn.attention.SelfAttention`).
* ``espnet`` + ``abs`` -- ESPnet's attention: the same product under other names.
* ``espnet`` + ``rel_pos`` -- Transformer-XL relative positions (:func:`relative_positions` gives
  the encoding, one per encoder forward).
* ``espnet`` + ``rope`` -- rotary positions, applied (as fairseq does) to the layer's input per
  head-sized chunk before ``linear_q`` / ``linear_k``.

As in fairseq, padded frames are masked in attention only: the depthwise convolution and
BatchNorm (batch statistics in training) see them, so a conformer's outputs near an utterance's
end depend on the padding after it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fhb.nn.attention import SelfAttention

__all__ = [
    "ATTENTION_KINDS",
    "ConformerLayer",
    "ConvolutionModule",
    "EspnetAttention",
    "FeedForward",
    "build_conformer_layer",
    "relative_positions",
]

ATTENTION_KINDS: tuple[tuple[str, str], ...] = (("", "abs"), ("espnet", "abs"), ("espnet", "rel_pos"),
                                               ("espnet", "rope"))
"""``(attn_type, pos_enc_type)`` pairs a conformer layer can run."""


class FeedForward(nn.Module):
    """Pre-LN feed-forward half of a conformer layer (fairseq's ``FeedForwardModule``).

    Args:
        dim: model dimension ``D``.
        hidden: hidden size ``F``.
        dropout: after the activation and after ``w_2``.
    """

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim)
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x T x D`` -> ``B x T x D``."""
        return self.dropout2(self.w_2(self.dropout1(F.silu(self.w_1(self.layer_norm(x))))))


class ConvolutionModule(nn.Module):
    """Conformer convolution block (fairseq's ``ConvolutionModule``, no biases).

    Args:
        dim: model dimension ``D``.
        kernel: depthwise kernel size ``K`` (odd: 'same' padding).
        dropout: on the output.
    """

    def __init__(self, dim: int, kernel: int, dropout: float) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"Expected an odd depthwise kernel size. Found: {kernel}")
        self.layer_norm = nn.LayerNorm(dim)
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, kernel_size=1, bias=False)
        self.depthwise_conv = nn.Conv1d(dim, dim, kernel, padding=(kernel - 1) // 2, groups=dim, bias=False)
        self.batch_norm = nn.BatchNorm1d(dim)
        self.pointwise_conv2 = nn.Conv1d(dim, dim, kernel_size=1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x T x D`` -> ``B x T x D``."""
        x = self.layer_norm(x).transpose(1, 2)
        x = F.glu(self.pointwise_conv1(x), dim=1)
        x = F.silu(self.batch_norm(self.depthwise_conv(x)))
        return self.dropout(self.pointwise_conv2(x)).transpose(1, 2)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _Rotary(nn.Module):
    """Holds fairseq's ``rotary_emb.inv_freq`` buffer; rotates ``B x T x H x d`` chunks."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x T x H x d`` -> the same, each frame ``t`` rotated by ``t * inv_freq`` (fp32 angles)."""
        inv_freq: torch.Tensor = self.inv_freq  # type: ignore[assignment]
        t = torch.arange(x.shape[1], device=x.device).type_as(inv_freq)
        freqs = torch.einsum("i,j->ij", t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)[None, :, None, :]
        return (x * emb.cos() + _rotate_half(x) * emb.sin()).to(x.dtype)


class EspnetAttention(nn.Module):
    """ESPnet's multi-head self-attention as fairseq ships it (``abs``, ``rel_pos`` or ``rope``).

    Args:
        dim: model dimension ``D``.
        num_heads: heads ``H``.
        dropout: attention-probability dropout.
        pos_enc_type: ``abs``, ``rel_pos`` or ``rope``.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, pos_enc_type: str = "abs") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Expected dim divisible by num_heads. Found: dim={dim}, num_heads={num_heads}")
        if pos_enc_type not in ("abs", "rel_pos", "rope"):
            raise ValueError(f"Expected pos_enc_type abs, rel_pos or rope. Found: {pos_enc_type!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.pos_enc_type = pos_enc_type
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        if pos_enc_type == "rel_pos":
            self.linear_pos = nn.Linear(dim, dim, bias=False)
            self.pos_bias_u = nn.Parameter(torch.empty(num_heads, self.head_dim))
            self.pos_bias_v = nn.Parameter(torch.empty(num_heads, self.head_dim))
            nn.init.xavier_uniform_(self.pos_bias_u)
            nn.init.xavier_uniform_(self.pos_bias_v)
        elif pos_enc_type == "rope":
            self.rotary_emb = _Rotary(self.head_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``B x T x D`` -> ``B x H x T x d``."""
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None, pos_emb: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend.

        Args:
            x: ``B x T x D``.
            key_padding_mask: ``B x T`` bool, True at padding.
            pos_emb: ``1 x (2T - 1) x D`` from :func:`relative_positions` (``rel_pos`` only).

        Returns:
            ``B x T x D``.
        """
        batch, frames, dim = x.shape
        qk_input = x
        if self.pos_enc_type == "rope":
            qk_input = self.rotary_emb(x.view(batch, frames, self.num_heads, self.head_dim)).view(batch, frames, dim)
        q = self._heads(self.linear_q(qk_input))
        k = self._heads(self.linear_k(qk_input))
        v = self._heads(self.linear_v(x))
        if self.pos_enc_type == "rel_pos":
            if pos_emb is None:
                raise ValueError("Expected pos_emb for rel_pos attention. Found: None")
            p = self._heads(self.linear_pos(pos_emb))  # 1 x H x (2T-1) x d
            q = q.transpose(1, 2)  # B x T x H x d
            ac = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
            bd = _rel_shift(torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1)))
            scores = (ac + bd) / math.sqrt(self.head_dim)
        else:
            scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        out = torch.matmul(self.dropout(torch.softmax(scores, dim=-1)), v)
        return self.linear_out(out.transpose(1, 2).reshape(batch, frames, dim))


def _rel_shift(x: torch.Tensor) -> torch.Tensor:
    """``B x H x T x (2T - 1)`` scores against relative positions ``T-1 .. -(T-1)`` -> ``B x H x T x T``
    (entry ``i, j`` scores position ``i - j``; Transformer-XL's shift)."""
    batch, heads, frames, positions = x.shape
    padded = torch.cat([x.new_zeros(batch, heads, frames, 1), x], dim=-1)
    padded = padded.view(batch, heads, positions + 1, frames)
    return padded[:, :, 1:].reshape(batch, heads, frames, positions)[:, :, :, : positions // 2 + 1]


def relative_positions(frames: int, dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """fairseq's ``RelPositionalEncoding`` for ``frames`` frames: ``1 x (2T - 1) x D``.

    Row ``i`` encodes the relative position ``T - 1 - i`` (``sin`` at even, ``cos`` at odd
    channels); computed for the length at hand (fairseq precomputes 100,000 positions, the same
    values).
    """
    position = torch.arange(frames - 1, -frames, -1, dtype=torch.float32, device=device)[:, None]
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / dim))
    pe = torch.zeros(2 * frames - 1, dim, device=device)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe[None].to(dtype)


class ConformerLayer(nn.Module):
    """One conformer layer (fairseq's ``ConformerEncoderLayer``; see the module docstring).

    Args:
        ffn1: first feed-forward half.
        self_attn: :class:`SelfAttention` (fairseq MHA) or :class:`EspnetAttention`.
        conv_module: convolution block.
        ffn2: second feed-forward half.
        dropout: after attention.
    """

    def __init__(
        self,
        ffn1: FeedForward,
        self_attn: SelfAttention | EspnetAttention,
        conv_module: ConvolutionModule,
        ffn2: FeedForward,
        dropout: float,
    ) -> None:
        super().__init__()
        dim = ffn1.w_1.in_features
        self.ffn1 = ffn1
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.self_attn_dropout = nn.Dropout(dropout)
        self.self_attn = self_attn
        self.conv_module = conv_module
        self.ffn2 = ffn2
        self.final_layer_norm = nn.LayerNorm(dim)

    @property
    def uses_relative_positions(self) -> bool:
        """True when :meth:`forward` needs ``pos_emb``."""
        return isinstance(self.self_attn, EspnetAttention) and self.self_attn.pos_enc_type == "rel_pos"

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None, pos_emb: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``B x T x D`` -> ``B x T x D``; ``key_padding_mask`` ``B x T`` (True = pad); ``pos_emb``
        from :func:`relative_positions` for ``rel_pos`` attention."""
        x = x + 0.5 * self.ffn1(x)
        h = self.self_attn_layer_norm(x)
        if isinstance(self.self_attn, EspnetAttention):
            h = self.self_attn(h, key_padding_mask, pos_emb)
        else:
            h = self.self_attn(h, key_padding_mask)
        x = x + self.self_attn_dropout(h)
        x = x + self.conv_module(x)
        return self.final_layer_norm(x + 0.5 * self.ffn2(x))


def build_conformer_layer(
    dim: int,
    ffn_dim: int,
    num_heads: int,
    dropout: float,
    depthwise_kernel: int = 31,
    attn_type: str = "",
    pos_enc_type: str = "abs",
) -> ConformerLayer:
    """A fresh :class:`ConformerLayer` as fairseq builds it (every dropout is ``dropout``).

    Raises:
        ValueError: an ``(attn_type, pos_enc_type)`` pair not in :data:`ATTENTION_KINDS`.
    """
    if (attn_type, pos_enc_type) not in ATTENTION_KINDS:
        raise ValueError(f"Expected (attn_type, pos_enc_type) in {list(ATTENTION_KINDS)}. "
                         f"Found: {(attn_type, pos_enc_type)}")
    attention: SelfAttention | EspnetAttention
    if attn_type == "espnet":
        attention = EspnetAttention(dim, num_heads, dropout, pos_enc_type)
    else:
        attention = SelfAttention(dim, num_heads, dropout)
    return ConformerLayer(
        FeedForward(dim, ffn_dim, dropout),
        attention,
        ConvolutionModule(dim, depthwise_kernel, dropout),
        FeedForward(dim, ffn_dim, dropout),
        dropout,
    )
