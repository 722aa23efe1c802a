"""FitHuBERT's time-reduction layer: a strided Conv1d that halves the frame rate.

It sits at ``encoder.layers[0]`` (state-dict keys ``encoder.layers.0.weight`` ``D x D x f`` and
``encoder.layers.0.bias``), between the positional embedding and the first transformer layer.
Kernel = stride = ``f`` (``tr_reduce_factor``), no padding, no activation, norm, residual or
dropout: ``T`` frames become ``T // f``; a trailing incomplete group is dropped.
"""

from __future__ import annotations

import torch
from torch import nn


class TimeReduction(nn.Conv1d):
    """Merge each ``f`` consecutive frames into one by a ``D -> D`` Conv1d (kernel = stride = f).

    Args:
        dim: model dimension ``D``.
        factor: ``f`` (2 for FitHuBERT: 20 ms -> 40 ms frames).
    """

    def __init__(self, dim: int, factor: int) -> None:
        super().__init__(dim, dim, kernel_size=factor, stride=factor)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``B x T x D`` -> ``B x (T // f) x D``.

        Raises:
            ValueError: ``T < f`` (the published code fails inside the conv).
        """
        if x.shape[1] < self.factor:
            raise ValueError(
                f"Expected at least {self.factor} frames for the time-reduction layer. "
                f"Found: {list(x.shape)}"
            )
        return super().forward(x.transpose(1, 2)).transpose(1, 2)

    def reduce_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """``B`` valid frame counts -> valid counts after reduction: ``lengths // f``.

        A reduced frame is padding as soon as one of its ``f`` source frames is (the published
        mask rule: ``any`` over each group), so only complete valid groups stay valid.
        """
        return torch.div(lengths, self.factor, rounding_mode="floor")

    def reduce_mask(self, padding_mask: torch.Tensor) -> torch.Tensor:
        """``B x T`` padding mask (True = pad) -> ``B x (T // f)``: any-of-group, tail dropped."""
        batch, frames = padding_mask.shape
        keep = frames - frames % self.factor
        return padding_mask[:, :keep].reshape(batch, keep // self.factor, self.factor).any(-1)
