"""FitHuBERT's time-reduction layer: merge each ``f`` consecutive frames into one.

It sits at ``encoder.layers[0]``, between the positional embedding and the first encoder layer.
Three kinds, as the published ``tr_layer_type`` (state-dict keys in brackets, ``D`` = model
dimension, ``f`` = ``tr_reduce_factor``):

* ``conv1d`` (FitHuBERT) -- :class:`TimeReduction`: a ``D -> D`` Conv1d, kernel = stride = ``f``
  (``encoder.layers.0.weight`` ``D x D x f``, ``.bias``).
* ``fc1`` -- :class:`LinearTimeReduction`: the ``f`` frames of a group concatenated channel-wise
  (frame-major: ``[x_{f t}, x_{f t + 1}, ...]``), then ``Linear(f D, D)``
  (``encoder.layers.0.weight`` ``D x f D``, ``.bias``).
* ``fc2`` -- :class:`MlpTimeReduction`: the same concatenation, then ``Linear(f D, f D)``, GELU,
  ``Linear(f D, D)`` (``encoder.layers.0.0.*``, ``encoder.layers.0.2.*``).

No norm, residual or dropout. ``T`` frames become ``T // f``: a trailing incomplete group is
dropped, and a reduced frame is padding as soon as one of its source frames is. The published
``fc1`` instead zero-pads ``f - T % f`` frames (``f`` whole frames when ``T`` is already a
multiple: one spurious frame more than the reduced padding mask has) and runs only on CPU; its
``fc2`` is never called as a reduction layer (a TypeError). fhb gives both the ``conv1d`` frame
rule (see the README's faithfulness section).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TIME_REDUCTION_TYPES", "LinearTimeReduction", "MlpTimeReduction", "TimeReduction", "TimeReductionLayer",
           "build_time_reduction", "group_frames"]


def _check_frames(x: torch.Tensor, factor: int) -> None:
    if x.shape[1] < factor:
        raise ValueError(
            f"Expected at least {factor} frames for the time-reduction layer. Found: {list(x.shape)}"
        )


def group_frames(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``B x T x D`` -> ``B x (T // f) x (f D)``: each group's frames side by side, frame-major.

    The trailing ``T % f`` frames are dropped.
    """
    _check_frames(x, factor)
    batch, frames, dim = x.shape
    keep = frames - frames % factor
    return x[:, :keep].reshape(batch, keep // factor, factor * dim)


class _Reduce:
    """Frame and mask arithmetic shared by every time-reduction layer (``factor`` = ``f``)."""

    factor: int

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


class TimeReduction(_Reduce, nn.Conv1d):
    """``conv1d``: merge each ``f`` frames by a ``D -> D`` Conv1d (kernel = stride = f).

    Args:
        dim: model dimension ``D``.
        factor: ``f`` (2 for FitHuBERT: 20 ms -> 40 ms frames).
    """

    def __init__(self, dim: int, factor: int) -> None:
        nn.Conv1d.__init__(self, dim, dim, kernel_size=factor, stride=factor)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``B x T x D`` -> ``B x (T // f) x D``.

        Raises:
            ValueError: ``T < f`` (the published code fails inside the conv).
        """
        _check_frames(x, self.factor)
        return nn.Conv1d.forward(self, x.transpose(1, 2)).transpose(1, 2)


class LinearTimeReduction(_Reduce, nn.Linear):
    """``fc1``: :func:`group_frames` then ``Linear(f D, D)``.

    Args:
        dim: model dimension ``D``.
        factor: ``f``.
    """

    def __init__(self, dim: int, factor: int) -> None:
        nn.Linear.__init__(self, dim * factor, dim)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``B x T x D`` -> ``B x (T // f) x D``."""
        return nn.Linear.forward(self, group_frames(x, self.factor))


class MlpTimeReduction(_Reduce, nn.Sequential):
    """``fc2``: :func:`group_frames` then ``Linear(f D, f D)``, GELU, ``Linear(f D, D)``.

    Args:
        dim: model dimension ``D``.
        factor: ``f``.
    """

    def __init__(self, dim: int, factor: int) -> None:
        wide = dim * factor
        nn.Sequential.__init__(self, nn.Linear(wide, wide), nn.GELU(), nn.Linear(wide, dim))
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``B x T x D`` -> ``B x (T // f) x D``."""
        return nn.Sequential.forward(self, group_frames(x, self.factor))


TimeReductionLayer = TimeReduction | LinearTimeReduction | MlpTimeReduction
"""Any of the three reduction layers."""

_KINDS: dict[str, type[TimeReduction] | type[LinearTimeReduction] | type[MlpTimeReduction]] = {
    "conv1d": TimeReduction,
    "fc1": LinearTimeReduction,
    "fc2": MlpTimeReduction,
}

TIME_REDUCTION_TYPES: tuple[str, ...] = tuple(_KINDS)
"""The ``tr_layer_type`` values."""


def build_time_reduction(kind: str, dim: int, factor: int) -> TimeReductionLayer:
    """A fresh reduction layer of ``tr_layer_type`` ``kind`` (``conv1d``, ``fc1`` or ``fc2``)."""
    try:
        return _KINDS[kind](dim, factor)
    except KeyError:
        raise ValueError(f"Expected tr_layer_type in {list(_KINDS)}. Found: {kind!r}") from None
