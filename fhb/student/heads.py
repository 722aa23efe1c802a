"""Prediction heads of the FitHuBERT student: student hidden states -> teacher-sized targets.

Two published layouts:

* :class:`LayerWiseProjHead` (``layerwise_proj: True``, FitHuBERT): one head per transformer
  layer, ``proj_head.{i}.upsampler`` (ConvTranspose1d, kernel = stride = f, undoing the time
  reduction) then ``proj_head.{i}.lin_proj`` (``D -> D_t``). No activation.
* :func:`split_head` (``layerwise_proj: False``, DistilHuBERT): ``Linear(D, inter * N)``, GELU,
  :class:`SplitLinear` giving ``N`` predictions from the last layer (``proj_head.0``,
  ``proj_head.2``).
"""

from __future__ import annotations

import torch
from torch import nn


def upsample(upsampler: nn.ConvTranspose1d | None, x: torch.Tensor) -> torch.Tensor:
    """``B x T x D`` -> ``B x (f * T) x D`` by a ConvTranspose1d over time (identity for None)."""
    if upsampler is None:
        return x
    return upsampler(x.transpose(1, 2)).transpose(1, 2)


class LayerWiseProjHead(nn.Module):
    """Upsample back to the CNN frame rate, then project to the teacher's dimension.

    Args:
        in_dim: student dimension ``D``.
        out_dim: teacher dimension ``D_t``; no ``lin_proj`` when equal to ``in_dim``.
        reduce_factor: ``f`` of the time-reduction layer; no ``upsampler`` when None.
    """

    def __init__(self, in_dim: int, out_dim: int, reduce_factor: int | None) -> None:
        super().__init__()
        self.upsampler: nn.ConvTranspose1d | None = None
        if reduce_factor is not None:
            self.upsampler = nn.ConvTranspose1d(in_dim, in_dim, kernel_size=reduce_factor, stride=reduce_factor)
        self.lin_proj: nn.Linear | None = nn.Linear(in_dim, out_dim) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x T2 x D`` -> ``B x (f * T2) x D_t``."""
        x = upsample(self.upsampler, x)
        return self.lin_proj(x) if self.lin_proj is not None else x


class SplitLinear(nn.Module):
    """``N`` independent ``inter -> out`` projections of an ``N * inter`` input (DistilHuBERT).

    ``N > 1``: parameters ``weight`` (``N x inter x out``) and ``bias`` (``1 x 1 x N x out``),
    both uniform in ``±inter^-0.5``. ``N == 1``: a plain ``layer = Linear(inter, out)``.

    Args:
        in_dim: ``inter``.
        in_split: ``N``.
        out_dim: ``out``.
    """

    def __init__(self, in_dim: int, in_split: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.in_split = in_split
        self.out_dim = out_dim
        if in_split > 1:
            bound = in_dim**-0.5
            self.weight = nn.Parameter(torch.empty(in_split, in_dim, out_dim).uniform_(-bound, bound))
            self.bias = nn.Parameter(torch.empty(1, 1, in_split, out_dim).uniform_(-bound, bound))
        else:
            self.layer = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x T x (N * inter)`` -> ``B x T x (N * out)``."""
        if self.in_split == 1:
            return self.layer(x)
        batch, frames, _ = x.shape
        x = x.reshape(batch, frames, self.in_split, self.in_dim)
        out = torch.einsum("btni,nio->btno", x, self.weight) + self.bias
        return out.reshape(batch, frames, self.in_split * self.out_dim)


def split_head(dim: int, inter_dim: int, num_targets: int, out_dim: int) -> nn.Sequential:
    """DistilHuBERT's head: ``Linear(D, inter * N)``, GELU, :class:`SplitLinear`.

    Maps ``B x T x D`` to ``B x T x (N * out)``; see :func:`split_predictions`.
    """
    return nn.Sequential(
        nn.Linear(dim, inter_dim * num_targets), nn.GELU(), SplitLinear(inter_dim, num_targets, out_dim)
    )


def split_predictions(pred: torch.Tensor, num_targets: int) -> list[torch.Tensor]:
    """``B x T x (N * out)`` -> ``N`` tensors ``B x T x out``."""
    batch, frames, _ = pred.shape
    return list(pred.reshape(batch, frames, num_targets, -1).unbind(2))
