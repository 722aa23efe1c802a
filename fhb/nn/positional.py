"""Convolutional relative positional embedding (wav2vec 2.0's ``pos_conv``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d with weight normalisation over kernel positions (``dim=2``).

    Holds ``weight_g`` (``1 x 1 x K``), ``weight_v`` (``C x C/G x K``) and ``bias`` like
    ``torch.nn.utils.weight_norm(conv, dim=2)`` does, so fairseq checkpoints load by name.
    """

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        if dim % groups:
            raise ValueError(f"Expected the embedding dim to be divisible by conv_pos_groups. Found: {dim} % {groups}")
        self.kernel = kernel
        self.groups = groups
        weight = torch.empty(dim, dim // groups, kernel)
        nn.init.normal_(weight, mean=0.0, std=math.sqrt(4.0 / (kernel * dim)))
        # torch.nn.utils.weight_norm's registration order: bias, weight_g, weight_v
        self.bias = nn.Parameter(torch.zeros(dim))
        self.weight_g = nn.Parameter(torch.linalg.vector_norm(weight, dim=(0, 1), keepdim=True))
        self.weight_v = nn.Parameter(weight)

    def weight(self) -> torch.Tensor:
        """The effective ``C x C/G x K`` kernel ``v * g / ||v||``."""
        return torch._weight_norm(self.weight_v, self.weight_g, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x T`` -> ``B x C x (T + 1 - K % 2)`` (padding ``K // 2`` on both sides)."""
        return F.conv1d(x, self.weight(), self.bias, padding=self.kernel // 2, groups=self.groups)


class SamePad(nn.Module):
    """Drop the extra last frame an even kernel adds, so the output has the input's length."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x T'`` -> ``B x C x T``."""
        return x[:, :, : -self.remove] if self.remove else x


def conv_positional_embedding(dim: int, kernel: int, groups: int) -> nn.Sequential:
    """``pos_conv``: ``(WeightNormConv1d, SamePad, GELU)``; maps ``B x C x T`` to ``B x C x T``.

    Named like fairseq: ``pos_conv.0.weight_g``, ``pos_conv.0.weight_v``, ``pos_conv.0.bias``.
    """
    return nn.Sequential(WeightNormConv1d(dim, kernel, groups), SamePad(kernel), nn.GELU())
