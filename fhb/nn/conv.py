"""Convolutional feature extractor of the wav2vec 2.0 family, with fairseq's parameter names.

A block ``conv_layers.N`` is ``(Conv1d, Dropout[, norm], GELU)``; the names of its children are
positional, as in fairseq (``conv_layers.0.0.weight``, the first-layer GroupNorm at
``conv_layers.0.2``, a layer-norm-mode LayerNorm at ``conv_layers.N.2.1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fhb.nn.frames import ConvSpec, conv_output_lengths


def _fp32(param: torch.Tensor | None) -> torch.Tensor | None:
    """An affine parameter in float32 (None when the norm has none)."""
    return None if param is None else param.float()


class Fp32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (fairseq's ``Fp32GroupNorm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x T`` -> ``B x C x T``."""
        out = F.group_norm(x.float(), self.num_groups, _fp32(self.weight), _fp32(self.bias), self.eps)
        return out.type_as(x)


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (fairseq's ``Fp32LayerNorm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``... x C`` -> ``... x C``."""
        out = F.layer_norm(x.float(), self.normalized_shape, _fp32(self.weight), _fp32(self.bias), self.eps)
        return out.type_as(x)


class TransposeLast(nn.Module):
    """Swap the last two dimensions (``B x C x T`` <-> ``B x T x C``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -1)


def _channel_layer_norm(dim: int) -> nn.Sequential:
    """LayerNorm over channels of a ``B x C x T`` tensor, named like fairseq (``.1.weight``)."""
    return nn.Sequential(TransposeLast(), Fp32LayerNorm(dim, elementwise_affine=True), TransposeLast())


def conv_block(
    in_dim: int,
    spec: ConvSpec,
    norm: str | None,
    conv_bias: bool,
    dropout: float = 0.0,
) -> nn.Sequential:
    """One ``(Conv1d, Dropout[, norm], GELU)`` block.

    Args:
        in_dim: input channels.
        spec: ``(channels, kernel, stride)``.
        norm: ``"group"`` (per-channel GroupNorm over time), ``"layer"`` or None.
        conv_bias: whether the conv has a bias.
        dropout: dropout after the conv.
    """
    dim, kernel, stride = spec
    conv = nn.Conv1d(in_dim, dim, kernel, stride=stride, bias=conv_bias)
    nn.init.kaiming_normal_(conv.weight)
    parts: list[nn.Module] = [conv, nn.Dropout(dropout)]
    if norm == "group":
        parts.append(Fp32GroupNorm(dim, dim, affine=True))
    elif norm == "layer":
        parts.append(_channel_layer_norm(dim))
    elif norm is not None:
        raise ValueError(f"unknown conv norm {norm!r}; expected 'group', 'layer' or None")
    parts.append(nn.GELU())
    return nn.Sequential(*parts)


class FeatureExtractor(nn.Module):
    """Waveform -> frame features by a stack of strided 1-D convolutions.

    Args:
        conv_layers: the blocks (see :func:`conv_block`), in order.
        specs: their ``(channels, kernel, stride)``, for the length arithmetic.
    """

    def __init__(self, conv_layers: nn.ModuleList, specs: Sequence[ConvSpec]) -> None:
        super().__init__()
        if len(conv_layers) != len(specs):
            raise ValueError(f"Expected one spec per conv block. Found: {len(specs)} specs, {len(conv_layers)} blocks")
        self.conv_layers = conv_layers
        self.specs: list[ConvSpec] = list(specs)

    @property
    def out_dim(self) -> int:
        """Channels of the last block."""
        return self.specs[-1][0]

    def forward(
        self, wavs: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the stack.

        Args:
            wavs: ``B x S`` waveforms.
            lengths: ``B`` valid sample counts, or None.

        Returns:
            ``B x C x T`` features (channels first, as fairseq returns them) and ``B`` valid
            frame counts (None when ``lengths`` is None).
        """
        if wavs.ndim != 2:
            raise ValueError(f"Expected a B x S waveform batch. Found: {list(wavs.shape)}")
        x = wavs.unsqueeze(1)
        for block in self.conv_layers:
            x = block(x)
        out_lengths = None if lengths is None else conv_output_lengths(lengths, self.specs)
        return x, out_lengths


def build_feature_extractor(
    specs: Sequence[ConvSpec], mode: str = "default", conv_bias: bool = False, dropout: float = 0.0
) -> FeatureExtractor:
    """Assemble a :class:`FeatureExtractor` the way fairseq's ``ConvFeatureExtractionModel`` does.

    Args:
        specs: ``(channels, kernel, stride)`` per layer.
        mode: ``"default"`` (GroupNorm in the first layer only) or ``"layer_norm"`` (LayerNorm in
            every layer).
        conv_bias: conv biases on or off.
        dropout: dropout after each conv.
    """
    if mode not in ("default", "layer_norm"):
        raise ValueError(f"unknown extractor_mode {mode!r}; expected 'default' or 'layer_norm'")
    blocks = nn.ModuleList()
    in_dim = 1
    for i, spec in enumerate(specs):
        norm = "layer" if mode == "layer_norm" else ("group" if i == 0 else None)
        blocks.append(conv_block(in_dim, spec, norm, conv_bias, dropout))
        in_dim = spec[0]
    return FeatureExtractor(blocks, specs)
