"""Multi-head self-attention with fairseq's parameter names and PyTorch's fused kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Self-attention over ``B x T x D`` with a key-padding mask.

    Parameters are ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` (fairseq's
    ``MultiheadAttention`` names); the product runs in ``scaled_dot_product_attention``.

    Args:
        dim: model dimension ``D``.
        num_heads: heads ``H``; ``D`` must be divisible by it.
        dropout: attention-probability dropout (training only).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Expected dim divisible by num_heads. Found: dim={dim}, num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        # fairseq's registration order (k, v, q, out): optimizer states index parameters by it
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend.

        Args:
            x: ``B x T x D``.
            key_padding_mask: ``B x T`` bool, True at padded frames (never attended to).

        Returns:
            ``B x T x D``.
        """
        batch, frames, dim = x.shape
        shape = (batch, frames, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        attn_mask = None
        if key_padding_mask is not None and bool(key_padding_mask.any()):
            attn_mask = ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, frames, dim))
