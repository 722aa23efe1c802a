"""The wav2vec 2.0 / HuBERT backbone (what the teacher runs), its typed config and builder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import nn

from fhb.nn.conv import FeatureExtractor, build_feature_extractor
from fhb.nn.encoder import TransformerEncoder
from fhb.nn.frames import HUBERT_CONV_LAYERS, ConvSpec, parse_conv_layers
from fhb.nn.positional import conv_positional_embedding
from fhb.nn.transformer import build_transformer_layers


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture of a wav2vec 2.0-family backbone, with fairseq's field names.

    Built once from a checkpoint's model config by :meth:`from_fairseq`, which refuses options
    fhb does not implement rather than ignoring them.
    """

    extractor_mode: str = "default"
    conv_feature_layers: tuple[ConvSpec, ...] = tuple(HUBERT_CONV_LAYERS)
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    conv_pos: int = 128
    conv_pos_groups: int = 16
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    feature_grad_mult: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    _UNSUPPORTED: ClassVar[tuple[tuple[str, Any], ...]] = (
        ("pos_conv_depth", 1),
        ("layer_type", "transformer"),
        ("conv_pos_batch_norm", False),
    )

    @property
    def cnn_dim(self) -> int:
        """Channels of the conv front-end's output."""
        return self.conv_feature_layers[-1][0]

    @classmethod
    def from_fairseq(cls, cfg: Mapping[str, Any]) -> BackboneConfig:
        """Read fairseq's model config (``cfg['model']`` or ``vars(args)``).

        Raises:
            ValueError: naming the option when the checkpoint uses one fhb does not implement.
        """
        for key, supported in cls._UNSUPPORTED:
            value = cfg.get(key, supported)
            if value is not None and value != supported:
                raise ValueError(
                    f"model option {key}={value!r} is not supported (fhb implements {key}={supported!r})"
                )
        kwargs: dict[str, Any] = {}
        for name in (f.name for f in fields(cls)):
            if name == "extra" or name not in cfg or cfg[name] is None:
                continue
            kwargs[name] = cfg[name]
        if "conv_feature_layers" in kwargs:
            kwargs["conv_feature_layers"] = tuple(parse_conv_layers(kwargs["conv_feature_layers"]))
        known = set(kwargs)
        kwargs["extra"] = {k: v for k, v in cfg.items() if k not in known}
        return cls(**kwargs)

    def to_fairseq(self) -> dict[str, Any]:
        """The fields as fairseq names them (``conv_feature_layers`` as its string form)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out["conv_feature_layers"] = conv_layers_to_string(self.conv_feature_layers)
        return out


def conv_layers_to_string(specs: tuple[ConvSpec, ...] | list[ConvSpec]) -> str:
    """``[(512, 10, 5), (512, 3, 2), (512, 3, 2)]`` -> ``'[(512, 10, 5)] + [(512, 3, 2)] * 2'``."""
    parts: list[str] = []
    i = 0
    specs = list(specs)
    while i < len(specs):
        j = i
        while j < len(specs) and specs[j] == specs[i]:
            j += 1
        run = j - i
        parts.append(f"[{tuple(specs[i])}]" + (f" * {run}" if run > 1 else ""))
        i = j
    return " + ".join(parts)


class Backbone(nn.Module):
    """Conv front-end, LayerNorm, ``post_extract_proj`` and transformer encoder.

    Children are named like fairseq's ``HubertModel``/``Wav2Vec2Model`` (``feature_extractor``,
    ``layer_norm``, ``post_extract_proj``, ``encoder``), so their state dicts load by name once the
    pre-training heads are dropped.
    """

    def __init__(
        self,
        feature_extractor: FeatureExtractor,
        post_extract_proj: nn.Linear | None,
        encoder: TransformerEncoder,
        dropout_input: float = 0.0,
    ) -> None:
        super().__init__()
        self.feature_extractor = feature_extractor
        self.layer_norm = nn.LayerNorm(feature_extractor.out_dim)
        self.post_extract_proj = post_extract_proj
        self.dropout_input = nn.Dropout(dropout_input)
        self.encoder = encoder

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """``B x C x T`` conv output -> ``B x T x D`` encoder input (LayerNorm, projection)."""
        x = self.layer_norm(features.transpose(1, 2))
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return x


def build_backbone(config: BackboneConfig) -> Backbone:
    """Assemble a :class:`Backbone` from its config (fresh random weights)."""
    extractor = build_feature_extractor(
        list(config.conv_feature_layers), config.extractor_mode, config.conv_bias
    )
    dim = config.encoder_embed_dim
    proj = nn.Linear(config.cnn_dim, dim) if config.cnn_dim != dim else None
    layers = build_transformer_layers(config)
    encoder = TransformerEncoder(
        conv_positional_embedding(dim, config.conv_pos, config.conv_pos_groups),
        layers,
        layer_norm_first=config.layer_norm_first,
        dropout=config.dropout,
        layerdrop=config.encoder_layerdrop,
    )
    return Backbone(extractor, proj, encoder, config.dropout_input)
