"""The teacher's attention logits and value relations, recomputed on the training device.

The published code distils the attention of the teacher's **last** layer ``N`` (``layer_results[-1]``)
into the student's last layer. The lake stores no attention map: fhb recomputes it from what the
lake already holds, so it costs zero bytes per frame.

* Layer ``N``'s input is the stored output of layer ``N - 1`` (fhb's layer numbering, fairseq's
  ``encoder.layers[N-2]``). Post-LN teachers (HuBERT / wav2vec 2.0 Base, ``layer_norm_first:
  False``) feed it to the attention as is; pre-LN teachers (Large) first apply layer ``N``'s
  ``self_attn_layer_norm``, as fairseq's layer does.
* For a one-layer teacher, layer 1's input is the encoder's embedding: the stored CNN features
  (``post_extract_proj`` output, ``fhb extract --cnn-features``), padded frames zeroed, plus the
  teacher's positional conv, then (post-LN only) the encoder's ``layer_norm`` — recomputed here with
  the teacher's ``pos_conv`` rather than stored at extraction (zero extra bytes again).
* The ``q/k/v`` projections (and the LayerNorm / ``pos_conv`` when needed) come from the teacher the
  lake carries (`fhb.pipeline.lake_teacher`); only those tensors are kept, then moved to the device.

The online teacher (``--online-teacher``) produces the same targets through the same code: its
layer ``N - 1`` output (what it would have written to the lake) goes through the same module,
built from the live teacher's weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from fhb.errors import FhbError
from fhb.nn.positional import conv_positional_embedding
from fhb.nn.relations import Relations, attention_relations
from fhb.nn.wav2vec2 import BackboneConfig
from fhb.student.config import LossConfig
from fhb.pipeline.lake_teacher import load_lake_teacher_state
from fhb.pipeline.teacher import Teacher

__all__ = ["TeacherAttention", "attention_for_run", "attention_input_layer", "teacher_attention_from_lake",
           "teacher_attention_from_teacher"]


def attention_input_layer(num_teacher_layers: int) -> int | None:
    """The stored teacher layer whose output is the distilled layer's input: ``N - 1`` (None: the
    teacher has one layer, whose input comes from the CNN features)."""
    return num_teacher_layers - 1 if num_teacher_layers > 1 else None


class _Projections(nn.Module):
    """A layer's ``q_proj``, ``k_proj``, ``v_proj`` (no ``out_proj``: the relations do not need it)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Expected dim divisible by num_heads. Found: dim={dim}, num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)


class TeacherAttention(nn.Module):
    """The teacher's layer ``layer``: its attention relations from its stored input (frozen).

    Parameter names mirror fairseq's (``self_attn.q_proj.weight``, ``self_attn_layer_norm.weight``,
    ``pos_conv.0.weight_g``, ``layer_norm.weight``) so :meth:`from_state` loads by name.

    Args:
        arch: the teacher's architecture.
        layer: the layer (``1..N``) whose attention is distilled.
    """

    def __init__(self, arch: BackboneConfig, layer: int) -> None:
        super().__init__()
        if not 1 <= layer <= arch.encoder_layers:
            raise ValueError(f"Expected a teacher layer in 1..{arch.encoder_layers}. Found: {layer}")
        dim = arch.encoder_embed_dim
        self.layer = layer
        self.layer_norm_first = arch.layer_norm_first
        self.self_attn = _Projections(dim, arch.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim) if arch.layer_norm_first else None
        self.pos_conv = conv_positional_embedding(dim, arch.conv_pos, arch.conv_pos_groups) if layer == 1 else None
        self.layer_norm = nn.LayerNorm(dim) if layer == 1 and not arch.layer_norm_first else None
        self.requires_grad_(False)
        self.eval()

    @property
    def num_heads(self) -> int:
        """The teacher's attention heads ``H``."""
        return self.self_attn.num_heads

    def state_names(self) -> dict[str, str]:
        """This module's parameter name -> the fairseq name in the teacher's state dict."""
        prefix = f"encoder.layers.{self.layer - 1}."
        out = {}
        for name, _ in self.named_parameters():
            if name.startswith(("self_attn.", "self_attn_layer_norm.")):
                out[name] = prefix + name
            else:  # pos_conv.*, layer_norm.*: the encoder's
                out[name] = "encoder." + name
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], arch: BackboneConfig, layer: int) -> TeacherAttention:
        """Build from a teacher's state dict (fairseq names), copying only the tensors it needs.

        Raises:
            FhbError: a needed tensor is missing from ``state``.
        """
        module = cls(arch, layer)
        names = module.state_names()
        missing = sorted(v for v in names.values() if v not in state)
        if missing:
            raise FhbError(
                f"teacher weights: expected {missing[0]} (and {len(missing) - 1} more) for the attention loss "
                f"on layer {layer}, found none; the stored teacher is incomplete: rerun fhb lake add-teacher"
            )
        module.load_state_dict({k: state[v] for k, v in names.items()}, strict=True)
        return module

    def embed(self, features: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """Layer 1's input from ``B x T x D`` CNN features (``post_extract_proj`` output)."""
        assert self.pos_conv is not None, "embed is for layer 1"
        if padding_mask is not None:
            features = features.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = features + self.pos_conv(features.transpose(1, 2)).transpose(1, 2)
        return self.layer_norm(x) if self.layer_norm is not None else x

    @torch.no_grad()
    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor | None = None) -> Relations:
        """Relations of the teacher's layer ``layer`` (float32).

        Args:
            hidden: ``B x T x D``: the stored output of layer ``layer - 1``, or for layer 1 the
                stored CNN features; zero at padded frames (as the lake's batches are).
            lengths: ``B`` valid frames (None: nothing padded).

        Returns:
            :class:`Relations` ``B x H x T x T`` (``-inf`` logits at padded keys).
        """
        x = hidden.float()
        frames = x.shape[1]
        mask = None
        if lengths is not None:
            lengths = lengths.to(x.device)
            if bool((lengths < frames).any()):
                mask = torch.arange(frames, device=x.device)[None, :] >= lengths[:, None]
        if self.layer == 1:
            x = self.embed(x, mask)
        if self.self_attn_layer_norm is not None:
            x = self.self_attn_layer_norm(x)
        return attention_relations(x, self.self_attn, mask)


def teacher_attention_from_lake(lake: str | os.PathLike[str], layer: int | None = None) -> TeacherAttention:
    """The lake's teacher's attention module for ``layer`` (default: its last layer), CPU, float32.

    Raises:
        FhbError: the lake stores no teacher (naming ``fhb lake add-teacher``), or a damaged one.
    """
    stored, state = load_lake_teacher_state(lake)
    arch = BackboneConfig.from_fairseq(stored.config)
    return TeacherAttention.from_state(state, arch, arch.encoder_layers if layer is None else layer)


def teacher_attention_from_teacher(teacher: Teacher, layer: int | None = None) -> TeacherAttention:
    """The same module built from a live teacher's weights (the ``--online-teacher`` baseline)."""
    state = teacher.model.state_dict()
    return TeacherAttention.from_state(state, teacher.arch, teacher.num_layers if layer is None else layer)


def attention_for_run(
    loss: LossConfig, num_teacher_layers: int, lake: str | os.PathLike[str], teacher: Teacher | None = None
) -> TeacherAttention | None:
    """The teacher's last layer for a run's attention terms (None when they are off): from the live
    ``teacher`` when given (``--online-teacher``), else from the teacher ``lake`` carries.

    Raises:
        FhbError: no stored teacher; or an online one-layer teacher (its layer 1 needs the CNN
            features, which the online baseline does not compute).
    """
    if loss.attn_loss_weight <= 0 and loss.v_rel_loss_weight <= 0:
        return None
    if teacher is not None:
        if attention_input_layer(num_teacher_layers) is None:
            raise FhbError(
                "--online-teacher with a one-layer teacher and attn_loss_weight or v_rel_loss_weight > 0: "
                "expected a teacher of at least 2 layers, found 1; train from the lake (--cnn-features)"
            )
        return teacher_attention_from_teacher(teacher)
    return teacher_attention_from_lake(lake)
