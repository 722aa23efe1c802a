"""Typed configuration of a FitHuBERT run: the published yaml, validated once.

The published yaml (``fhb/configs/fithubert.yaml``) has six sections. Two are typed here:

* ``distiller`` -> :class:`StudentConfig`, the architecture. Every key of the published yaml is a
  field; its default is the published yaml's value (so ``StudentConfig()`` *is* FitHuBERT; the
  published ``CustomStudentModelConfig`` defaults differ and build a broken model, e.g.
  ``tr_layer_type: fc1`` and ``required_seq_len_multiple: 2``). Unknown keys and keys fhb cannot
  honour raise :class:`~fhb.errors.FhbError` naming the key, the value and the fix.
* the loss keys of ``train`` -> :class:`LossConfig`.

``teacher``, ``train`` (all of it, including the loss keys), ``optimizer``, ``data`` and
``specaug`` are kept as plain dicts for the stage that owns them. :class:`FitConfig` holds all of
it and writes it back with :meth:`FitConfig.to_dict` (conv layer specs and ``pred_layer_id`` as the
strings the published code ``eval``s, so a yaml fhb writes also loads there).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

from fhb.errors import FhbError
from fhb.files import read_small
from fhb.nn.conformer import ATTENTION_KINDS
from fhb.nn.frames import ConvSpec, parse_conv_layers
from fhb.nn.mel import MEL_HOP, MEL_WINDOW
from fhb.nn.transformer import activation
from fhb.nn.wav2vec2 import conv_layers_to_string
from fhb.student.time_reduction import TIME_REDUCTION_TYPES

__all__ = [
    "PACKAGED_CONFIGS",
    "FitConfig",
    "LossConfig",
    "StudentConfig",
    "load_fithubert_yaml",
    "load_packaged_config",
    "packaged_config_path",
]

FITHUBERT_CONV_LAYERS: tuple[ConvSpec, ...] = (
    ((128, 10, 5),) + ((256, 1, 1),) + ((256, 3, 2),) * 4 + ((512, 1, 1),) + ((512, 2, 2),) * 2
)
"""FitHuBERT's thin conv stack: HuBERT's stride 320 and receptive field 400 with fewer channels."""

MEL_HEAD_CONV_LAYERS: tuple[ConvSpec, ...] = ((128, 7, 1), (256, 5, 1), (512, 5, 1), (512, 5, 1))

PACKAGED_CONFIGS: tuple[str, ...] = ("fithubert", "fitwav2vec2", "distilhubert", "tiny")
"""Names of the yaml files shipped in :mod:`fhb.configs`."""

CONFIG_MAX_BYTES = 1 << 20
"""The largest yaml fhb reads as a config (the published ones are ~3 kB)."""

SECTIONS: tuple[str, ...] = ("teacher", "train", "distiller", "optimizer", "data", "specaug")


MAX_STUDENT_PARAMETERS = 2_000_000_000
"""Largest student a config may ask for (8 GB of fp32 weights; FitHuBERT has 22 M)."""


_MAX_WEIGHT = 1e6
"""Largest loss weight or gradient multiplier (larger ones only overflow the loss to inf)."""


def _error(source: str, key: str, expected: str, found: Any, fix: str) -> FhbError:
    """An FhbError naming the key, what was expected, what was found and the fix."""
    return FhbError(f"{source}: {key}: expected {expected}, found {found!r}; {fix}")


@dataclass(frozen=True)
class StudentConfig:
    """The ``distiller:`` section: the student's architecture (fairseq/FitHuBERT field names).

    Defaults are the published ``fithubert.yaml`` values. Fields marked *inert* are accepted
    because the published yaml has them, and do nothing for this student (as in the published
    code).

    Attributes:
        extractor_mode: ``default`` (GroupNorm over time in the first conv) or ``layer_norm``.
        conv_feature_layers: ``(channels, kernel, stride)`` per conv layer (parsed without eval).
        feature_grad_mult: gradient scale into the conv stack (0: frozen, 1: plain).
        conv_bias: conv biases on or off.
        n_mels: 0 (conv front-end) or the mel bins of the mel-spectrogram front-end (80).
        enable_log_mel: ``log(mel + 1e-15)`` (mel front-end only).
        mel_spec_head_conv_layers: the mel front-end's conv head (stride 1, odd kernels; ``()``: none).
        conv_pos: taps of the convolutional positional embedding.
        conv_pos_groups: its groups.
        pos_conv_depth: must be 1.
        max_positions: inert (fhb computes relative positions for the length at hand).
        layer_type: ``transformer`` or ``conformer`` (fairseq's wav2vec 2.0 conformer layers).
        encoder_layers: transformer layers (and layer-wise heads).
        encoder_embed_dim: model dimension ``D``.
        encoder_ffn_embed_dim: feed-forward dimension.
        encoder_attention_heads: attention heads.
        activation_fn: feed-forward activation.
        layer_norm_first: pre-LN (True) or post-LN (False) layers.
        depthwise_conv_kernel_size: the conformer's depthwise kernel (odd).
        attn_type: conformer attention: ``''`` (fairseq) or ``espnet``.
        pos_enc_type: conformer positions: ``abs`` (the positional conv), ``rel_pos`` or ``rope``
            (espnet only; no positional conv).
        fp16: inert (precision is a training option).
        dropout: residual and embedding dropout.
        attention_dropout: attention-probability dropout.
        activation_dropout: dropout after the feed-forward activation.
        encoder_layerdrop: probability of skipping a transformer layer in training.
        dropout_input: dropout on the projected CNN features.
        final_dim: inert.
        pred_head_final_dim: output dimension of the prediction heads (the teacher's ``D``).
        pred_head_inter_dim: hidden size of the DistilHuBERT-style head (0: ``D``).
        layerwise_proj: one head per layer (FitHuBERT) or a DistilHuBERT-style split head.
        pred_layer_id: 0-based teacher layers predicted when ``distil_random_layer`` is 0.
        init_conv_layers: copy the teacher's conv stack (needs the teacher's weights).
        init_encoder_layers: copy ``pos_conv`` and the first n teacher layers (needs them too).
        enable_tr_layer: insert the time-reduction Conv1d before the first layer.
        tr_conv1d_kernel: inert (the published code always uses ``tr_reduce_factor``).
        tr_layer_index: must be 0.
        tr_reduce_factor: time-reduction factor ``f`` (kernel = stride = f).
        tr_layer_type: ``conv1d``, ``fc1`` or ``fc2`` (see :mod:`fhb.student.time_reduction`).
        checkpoint_activations: must be False.
        required_seq_len_multiple: must be 1 with the time-reduction layer; inert without it.
        crop_seq_to_multiple: drop trailing CNN frames to a multiple of this.
    """

    extractor_mode: str = "default"
    conv_feature_layers: tuple[ConvSpec, ...] = FITHUBERT_CONV_LAYERS
    feature_grad_mult: float = 1.0
    conv_bias: bool = False
    n_mels: int = 0
    enable_log_mel: bool = False
    mel_spec_head_conv_layers: tuple[ConvSpec, ...] = MEL_HEAD_CONV_LAYERS
    conv_pos: int = 128
    conv_pos_groups: int = 16
    pos_conv_depth: int = 1
    max_positions: int = 100000
    layer_type: str = "transformer"
    encoder_layers: int = 12
    encoder_embed_dim: int = 480
    encoder_ffn_embed_dim: int = 480
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    depthwise_conv_kernel_size: int = 31
    attn_type: str = ""
    pos_enc_type: str = "abs"
    fp16: bool = True
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.05
    final_dim: int = 256
    pred_head_final_dim: int = 768
    pred_head_inter_dim: int = 0
    layerwise_proj: bool = True
    pred_layer_id: tuple[int, ...] = (11,)
    init_conv_layers: bool = False
    init_encoder_layers: int = 0
    enable_tr_layer: bool = True
    tr_conv1d_kernel: int = 2
    tr_layer_index: int = 0
    tr_reduce_factor: int = 2
    tr_layer_type: str = "conv1d"
    checkpoint_activations: bool = False
    required_seq_len_multiple: int = 1
    crop_seq_to_multiple: int = 1

    @property
    def cnn_dim(self) -> int:
        """Channels of the conv stack's output (512 for FitHuBERT)."""
        return self.conv_feature_layers[-1][0]

    @property
    def front_specs(self) -> tuple[ConvSpec, ...]:
        """The front-end's frame arithmetic as conv specs: ``conv_feature_layers``, or one
        ``(C, 400, 320)`` window for the mel spectrogram (the same 20 ms frames)."""
        if self.n_mels <= 0:
            return self.conv_feature_layers
        return ((self.front_dim, MEL_WINDOW, MEL_HOP),)

    @property
    def front_dim(self) -> int:
        """Channels of the front-end's output: the conv stack's, the mel head's, or ``n_mels``."""
        if self.n_mels <= 0:
            return self.cnn_dim
        return self.mel_spec_head_conv_layers[-1][0] if self.mel_spec_head_conv_layers else self.n_mels

    @property
    def reduce_factor(self) -> int:
        """Frames merged by the time-reduction layer (1 without it)."""
        return self.tr_reduce_factor if self.enable_tr_layer else 1

    @classmethod
    def from_dict(cls, section: Mapping[str, Any], source: str = "config") -> StudentConfig:
        """Build and validate from a ``distiller:`` mapping; missing keys take the defaults.

        Raises:
            FhbError: an unknown key, a value of the wrong type, or an option fhb cannot honour.
        """
        if not isinstance(section, Mapping):
            raise _error(source, "distiller", "a mapping of architecture keys", type(section).__name__,
                         "give the distiller: section as in fhb/configs/fithubert.yaml")
        names = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in section if k not in names)
        if unknown:
            raise FhbError(
                f"{source}: distiller: unknown keys {unknown}; expected only the keys of the "
                f"published FitHuBERT config ({len(names)} keys, see fhb/configs/fithubert.yaml); "
                "remove or rename them"
            )
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for name, value in section.items():
            key = f"distiller.{name}"
            if name == "mel_spec_head_conv_layers" and value in ("", None, "None"):
                # no mel head: the published dataclass default is '', and ex.yaml writes None, which
                # yaml reads as the string 'None' and the published model eval()s to None
                kwargs[name] = ()
            elif name in ("conv_feature_layers", "mel_spec_head_conv_layers"):
                kwargs[name] = _conv_layers(source, key, value)
            elif name == "pred_layer_id":
                kwargs[name] = _int_list(source, key, value)
            else:
                kwargs[name] = typed_value(source, key, value, hints[name])
        return _validated(cls(**kwargs), source)

    def validate(self, source: str = "config") -> None:
        """Refuse options fhb does not implement and inconsistent sizes.

        Raises:
            FhbError: naming the key, the value found, and the fix.
        """
        for key, expected, fix in _UNSUPPORTED:
            found = getattr(self, key)
            if found != expected:
                raise _error(source, f"distiller.{key}", repr(expected), found, fix)
        _check_variants(self, source)
        if self.enable_tr_layer:
            if self.tr_layer_index != 0:
                raise _error(source, "distiller.tr_layer_index", "0", self.tr_layer_index,
                             "a time-reduction layer after transformer layer 0 leaves the first heads at "
                             "the full frame rate and the rest at 1/f (the published loss cannot stack "
                             "them); set tr_layer_index: 0")
            if self.required_seq_len_multiple != 1:
                raise _error(source, "distiller.required_seq_len_multiple", "1 with enable_tr_layer",
                             self.required_seq_len_multiple,
                             "the published encoder pads at the full frame rate and unpads at 1/f, which "
                             "drops real frames; set required_seq_len_multiple: 1")
            if self.tr_reduce_factor < 1:
                raise _error(source, "distiller.tr_reduce_factor", "an int >= 1", self.tr_reduce_factor,
                             "set tr_reduce_factor: 2")
        if self.extractor_mode not in ("default", "layer_norm"):
            raise _error(source, "distiller.extractor_mode", "'default' or 'layer_norm'",
                         self.extractor_mode, "set extractor_mode: default")
        try:
            activation(self.activation_fn)
        except ValueError as exc:
            raise _error(source, "distiller.activation_fn", "a fairseq activation", self.activation_fn,
                         str(exc)) from None
        positive = ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
                    "encoder_attention_heads", "conv_pos", "conv_pos_groups", "pred_head_final_dim",
                    "crop_seq_to_multiple", "required_seq_len_multiple")
        for key in positive:
            if getattr(self, key) < 1:
                raise _error(source, f"distiller.{key}", "an int >= 1", getattr(self, key),
                             "see fhb/configs/fithubert.yaml for working values")
        parameters = self.parameter_estimate()
        if parameters > MAX_STUDENT_PARAMETERS:
            raise _error(source, "distiller", f"a student of at most {MAX_STUDENT_PARAMETERS:.0e} parameters",
                         f"about {parameters:.2e} parameters (encoder_layers={self.encoder_layers}, "
                         f"encoder_embed_dim={self.encoder_embed_dim}, encoder_ffn_embed_dim="
                         f"{self.encoder_ffn_embed_dim}, conv_pos={self.conv_pos}, pred_head_inter_dim="
                         f"{self.pred_head_inter_dim})",
                         "see fhb/configs/fithubert.yaml for working sizes")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise _error(source, "distiller.encoder_attention_heads",
                         f"a divisor of encoder_embed_dim={self.encoder_embed_dim}",
                         self.encoder_attention_heads, "change the heads or the dimension")
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise _error(source, "distiller.conv_pos_groups",
                         f"a divisor of encoder_embed_dim={self.encoder_embed_dim}",
                         self.conv_pos_groups, "change the groups or the dimension")
        for key in ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop", "dropout_input"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise _error(source, f"distiller.{key}", "a probability in [0, 1]", getattr(self, key),
                             "fix the value")
        if self.crop_seq_to_multiple > 1000:
            raise _error(source, "distiller.crop_seq_to_multiple", "at most 1000 CNN frames (20 s)",
                         self.crop_seq_to_multiple, "the published value is 1")
        if not 0 <= self.feature_grad_mult <= _MAX_WEIGHT:  # NaN fails too
            raise _error(source, "distiller.feature_grad_mult", f"a number >= 0 and <= {_MAX_WEIGHT:g}",
                         self.feature_grad_mult,
                         "0 freezes the conv stack, 1 trains it normally")
        if self.pred_head_inter_dim < 0:
            raise _error(source, "distiller.pred_head_inter_dim", "an int >= 0 (0: encoder_embed_dim)",
                         self.pred_head_inter_dim, "set pred_head_inter_dim: 0")
        if not 0 <= self.init_encoder_layers <= self.encoder_layers:
            raise _error(source, "distiller.init_encoder_layers", f"0..{self.encoder_layers}",
                         self.init_encoder_layers, "set init_encoder_layers: 0")
        negative = [i for i in self.pred_layer_id if i < 0]
        if negative:
            raise _error(source, "distiller.pred_layer_id", "0-based layer indices >= 0",
                         list(self.pred_layer_id), "write e.g. '[11]' for the last of 12 layers")
        if self.layerwise_proj:
            beyond = [i for i in self.pred_layer_id if i >= self.encoder_layers]
            if beyond:
                raise _error(source, "distiller.pred_layer_id",
                             f"head indices < encoder_layers={self.encoder_layers} (layerwise_proj)",
                             list(self.pred_layer_id), "use indices of the student's layers")

    def parameter_estimate(self) -> int:
        """Roughly how many parameters the student has (checked before anything is allocated)."""
        d, f, layers = self.encoder_embed_dim, self.encoder_ffn_embed_dim, self.encoder_layers
        conv, c_in = 0, 1
        for channels, kernel, _ in self.conv_feature_layers:
            conv += c_in * channels * kernel
            c_in = channels
        encoder = layers * (4 * d * d + 2 * d * f)
        if self.layer_type == "conformer":  # two feed-forward halves and the convolution module
            encoder = layers * (7 * d * d + 4 * d * f + d * self.depthwise_conv_kernel_size)
        positional = d * (d // max(self.conv_pos_groups, 1)) * self.conv_pos
        if self.layerwise_proj:
            heads = layers * d * self.pred_head_final_dim
        else:  # the split head: d -> inter x n -> n x final
            inter, n = self.pred_head_inter_dim or d, max(len(self.pred_layer_id), 1)
            heads = d * inter * n + inter * n * self.pred_head_final_dim
        reduction = d * d * self.tr_reduce_factor if self.enable_tr_layer else 0
        if self.enable_tr_layer and self.tr_layer_type == "fc2":
            reduction += (d * self.tr_reduce_factor) ** 2
        return int(conv + c_in * d + encoder + positional + heads + reduction)

    def to_dict(self) -> dict[str, Any]:
        """The ``distiller:`` section as the published code reads it (specs as strings)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("conv_feature_layers", "mel_spec_head_conv_layers"):
                value = conv_layers_to_string(value)
            elif f.name == "pred_layer_id":
                value = str(list(value))
            out[f.name] = value
        return out


_UNSUPPORTED: tuple[tuple[str, Any, str], ...] = (
    ("pos_conv_depth", 1, "only the single weight-normalised positional conv is implemented; set pos_conv_depth: 1"),
    ("checkpoint_activations", False, "activation checkpointing is not implemented; set "
                                      "checkpoint_activations: False (the student is small)"),
)

LAYER_TYPES: tuple[str, ...] = ("transformer", "conformer")
"""``layer_type`` values (fhb.nn.transformer / fhb.nn.conformer layers)."""


def _check_variants(cfg: StudentConfig, source: str) -> None:
    """The student variants (issue 12 option 5): mel front-end, conformer layers, reduction kinds."""
    if cfg.enable_tr_layer and cfg.tr_layer_type not in TIME_REDUCTION_TYPES:
        raise _error(source, "distiller.tr_layer_type", f"one of {list(TIME_REDUCTION_TYPES)}",
                     cfg.tr_layer_type, "set tr_layer_type: conv1d")
    if cfg.layer_type not in LAYER_TYPES:
        raise _error(source, "distiller.layer_type", f"one of {list(LAYER_TYPES)}", cfg.layer_type,
                     "set layer_type: transformer")
    if cfg.layer_type == "conformer":
        if (cfg.attn_type, cfg.pos_enc_type) not in ATTENTION_KINDS:
            raise _error(source, "distiller.attn_type/pos_enc_type",
                         f"one of {[list(k) for k in ATTENTION_KINDS]}", [cfg.attn_type, cfg.pos_enc_type],
                         "relative and rotary positions need ESPnet attention (the published code raises a "
                         "TypeError for rel_pos and ignores rope with fairseq attention); set attn_type: espnet "
                         "or pos_enc_type: abs")
        if cfg.depthwise_conv_kernel_size < 1 or cfg.depthwise_conv_kernel_size % 2 != 1:
            raise _error(source, "distiller.depthwise_conv_kernel_size", "an odd int >= 1",
                         cfg.depthwise_conv_kernel_size, "set depthwise_conv_kernel_size: 31")
        if cfg.init_encoder_layers:
            raise _error(source, "distiller.init_encoder_layers", "0 with layer_type: conformer",
                         cfg.init_encoder_layers, "the teacher's transformer layers do not fit conformer "
                         "layers; set init_encoder_layers: 0")
    elif (cfg.attn_type, cfg.pos_enc_type) != ("", "abs"):
        raise _error(source, "distiller.attn_type/pos_enc_type", "['', 'abs'] with layer_type: transformer",
                     [cfg.attn_type, cfg.pos_enc_type], "they select conformer attention; set "
                     "layer_type: conformer, or attn_type: '' and pos_enc_type: abs")
    if cfg.n_mels < 0:
        raise _error(source, "distiller.n_mels", "0 (conv front-end) or the mel bins (80)", cfg.n_mels,
                     "set n_mels: 0")
    if cfg.n_mels == 0:
        if cfg.enable_log_mel:
            raise _error(source, "distiller.enable_log_mel", "False with n_mels: 0", True,
                         "the log applies to the mel front-end only (the published code asserts this); "
                         "set enable_log_mel: False or n_mels: 80")
        return
    if cfg.init_conv_layers:
        raise _error(source, "distiller.init_conv_layers", "False with the mel front-end (n_mels > 0)", True,
                     "the student has no conv stack to copy the teacher's into; set init_conv_layers: False")
    for channels, kernel, stride in cfg.mel_spec_head_conv_layers:
        if channels < 1 or kernel < 1 or kernel % 2 != 1 or stride != 1:
            raise _error(source, "distiller.mel_spec_head_conv_layers", "(channels, odd kernel, stride 1) layers",
                         conv_layers_to_string(cfg.mel_spec_head_conv_layers),
                         "the head keeps the 20 ms frame count (padding kernel // 2), which an even kernel or "
                         "a stride breaks; use e.g. '[(128, 7, 1)] + [(256, 5, 1)] + [(512, 5, 1)] * 2'")


@dataclass(frozen=True)
class LossConfig:
    """The loss keys of the ``train:`` section (see :class:`fhb.student.loss.DistillLoss`).

    Attributes:
        rec_loss_weight: weight of the reconstruction loss.
        rec_loss_type: ``mse`` or ``l1``.
        sim_loss_weight: weight of DistilHuBERT's cosine term ``-logsigmoid(cos)``.
        cnn_loss_weight: weight of the L1 loss between the student's and the teacher's
            ``post_extract_proj`` outputs.
        attn_loss_weight: weight of the last layer's attention-distribution loss (the teacher's
            attention is recomputed from the lake: `fhb.student.attention_targets`).
        attn_loss_type: ``mse`` (logits) or ``kldiv`` (distributions); inert unless
            ``attn_loss_weight`` > 0.
        v_rel_loss_weight: weight of the last layer's value-relation loss.
        distil_random_layer: intermediate layers drawn each epoch (0: use ``pred_layer_id``).
        random_layer_weight: weight of each drawn intermediate layer (the last layer has 1).
        delete_projections: train without prediction heads: the student starts in the inference
            layout (:meth:`~fhb.student.model.FitHuBERT.disable_projection_heads`, as the published
            code does before training), so only losses that read no head may be on (CNN,
            attention, value relation); reconstruction and cosine weights must be 0.
        mask_padding: fhb extension, default False (the published behaviour: padded frames count
            in the means). True excludes padded frames from every mean.
    """

    rec_loss_weight: float = 1.0
    rec_loss_type: str = "mse"
    sim_loss_weight: float = 0.0
    cnn_loss_weight: float = 0.0
    attn_loss_weight: float = 0.0
    attn_loss_type: str = "kldiv"
    v_rel_loss_weight: float = 0.0
    distil_random_layer: int = 11
    random_layer_weight: float = 0.1
    delete_projections: bool = False
    mask_padding: bool = False

    @classmethod
    def from_train(cls, train: Mapping[str, Any], source: str = "config") -> LossConfig:
        """Read the loss keys of a ``train:`` mapping (other keys belong to the training stage).

        Raises:
            FhbError: a value of the wrong type or an option fhb cannot honour.
        """
        hints = typing.get_type_hints(cls)
        kwargs = {
            f.name: typed_value(source, f"train.{f.name}", train[f.name], hints[f.name])
            for f in fields(cls)
            if f.name in train
        }
        return _validated(cls(**kwargs), source)

    def validate(self, source: str = "config") -> None:
        """Refuse losses fhb cannot compute from the lake and inconsistent settings.

        Raises:
            FhbError: naming the key, the value found, and the fix.
        """
        if self.rec_loss_type not in ("mse", "l1"):
            raise _error(source, "train.rec_loss_type", "'mse' or 'l1'", self.rec_loss_type,
                         "set rec_loss_type: mse")
        for key in ("rec_loss_weight", "sim_loss_weight", "cnn_loss_weight", "random_layer_weight"):
            if not 0 <= getattr(self, key) <= _MAX_WEIGHT:  # NaN fails too
                raise _error(source, f"train.{key}", f"a weight >= 0 and <= {_MAX_WEIGHT:g}", getattr(self, key),
                             "fix the value")
        for key in ("attn_loss_weight", "v_rel_loss_weight"):
            if getattr(self, key) < 0:
                raise _error(source, f"train.{key}", "a weight >= 0", getattr(self, key), "fix the value")
        if self.attn_loss_weight > 0 and self.attn_loss_type not in ("mse", "kldiv"):
            raise _error(source, "train.attn_loss_type", "'mse' or 'kldiv'", self.attn_loss_type,
                         "set attn_loss_type: kldiv")
        if self.distil_random_layer < 0:
            raise _error(source, "train.distil_random_layer", "an int >= 0", self.distil_random_layer,
                         "set it to encoder_layers - 1 (11) or 0")
        if self.distil_random_layer == 0 and self.random_layer_weight != 0:
            raise _error(source, "train.random_layer_weight", "0 when distil_random_layer is 0",
                         self.random_layer_weight,
                         "random_layer_weight only weights randomly drawn layers (the published code "
                         "asserts this); set it to 0 or set distil_random_layer > 0")

    def to_dict(self) -> dict[str, Any]:
        """The loss keys as they appear in ``train:`` (``mask_padding`` only when True)."""
        out = dataclasses.asdict(self)
        if not self.mask_padding:
            del out["mask_padding"]  # keep published yamls unchanged
        return out


@dataclass(frozen=True)
class FitConfig:
    """A whole FitHuBERT yaml: the typed student and loss, the other sections as plain dicts.

    Attributes:
        distiller: the student's architecture.
        loss: the loss keys of ``train``.
        teacher: ``teacher:`` section (``teacher_model``).
        train: the whole ``train:`` section as read (loss keys included; :attr:`loss` wins).
        optimizer: ``optimizer:`` section.
        data: ``data:`` section.
        specaug: ``specaug:`` section (`fhb.student.specaug.SpecAugConfig`, used when ``train.specaug``).
        extra: top-level sections other than the six published ones, kept for round trips.
    """

    distiller: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    teacher: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    specaug: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], source: str = "config") -> FitConfig:
        """Build and validate from a parsed yaml mapping.

        Args:
            config: the mapping (``yaml.safe_load`` of a FitHuBERT yaml).
            source: what to call it in errors (the file name).

        Raises:
            FhbError: a missing ``distiller`` section, a section that is not a mapping, or any
                error of :meth:`StudentConfig.from_dict` / :meth:`LossConfig.from_train`.
        """
        if not isinstance(config, Mapping):
            raise _error(source, "(top level)", "a mapping with a distiller: section",
                         type(config).__name__, "see fhb/configs/fithubert.yaml")
        if "distiller" not in config:
            raise _error(source, "distiller", "a distiller: section (the student's architecture)",
                         sorted(map(str, config)), "see fhb/configs/fithubert.yaml")
        sections: dict[str, dict[str, Any]] = {}
        for name in SECTIONS:
            value = config.get(name)
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise _error(source, name, "a mapping", type(value).__name__,
                             "see fhb/configs/fithubert.yaml for the layout")
            sections[name] = copy.deepcopy(dict(value))
        specaug = sections["train"].get("specaug", False)
        if specaug not in (False, None, True):
            raise _error(source, "train.specaug", "true or false", specaug, "fix the value")
        if specaug:
            from fhb.student.specaug import SpecAugConfig

            SpecAugConfig.from_dict(sections["specaug"], source)  # validated once, here
        distiller = StudentConfig.from_dict(sections["distiller"], source)
        loss = LossConfig.from_train(sections["train"], source)
        _check_together(distiller, loss, source)
        extra = {str(k): copy.deepcopy(v) for k, v in config.items() if k not in SECTIONS}
        return cls(distiller=distiller, loss=loss, teacher=sections["teacher"], train=sections["train"],
                   optimizer=sections["optimizer"], data=sections["data"], specaug=sections["specaug"],
                   extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The yaml mapping, plain containers only (what ``hyper_parameters['cfg']`` holds)."""
        out: dict[str, Any] = {
            "teacher": copy.deepcopy(self.teacher),
            "train": {**copy.deepcopy(self.train), **self.loss.to_dict()},
            "distiller": self.distiller.to_dict(),
            "optimizer": copy.deepcopy(self.optimizer),
            "data": copy.deepcopy(self.data),
            "specaug": copy.deepcopy(self.specaug),
        }
        out.update(copy.deepcopy(self.extra))
        return out

    def to_yaml(self) -> str:
        """:meth:`to_dict` as yaml text, sections and keys in the published order."""
        import yaml  # lazily: the transformers export bundles this module for torch + stdlib only

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, width=1000)


def _check_together(student: StudentConfig, loss: LossConfig, source: str) -> None:
    """Checks that need both the student and the loss settings."""
    if loss.delete_projections:
        _check_without_heads(student, loss, source)
    if loss.distil_random_layer > 0:
        if not student.layerwise_proj:
            raise _error(source, "train.distil_random_layer", "0 with layerwise_proj: False",
                         loss.distil_random_layer,
                         "random layers need one head per layer (layerwise_proj: True); with the "
                         "DistilHuBERT-style head set distil_random_layer: 0 and choose pred_layer_id")
        if loss.distil_random_layer > student.encoder_layers - 1:
            raise _error(source, "train.distil_random_layer",
                         f"at most encoder_layers - 1 = {student.encoder_layers - 1}",
                         loss.distil_random_layer, "it draws from the student's intermediate layers")
    elif not student.pred_layer_id and (loss.rec_loss_weight > 0 or loss.sim_loss_weight > 0):
        raise _error(source, "distiller.pred_layer_id", "at least one layer when distil_random_layer is 0",
                     [], "list the 0-based teacher layers to predict, e.g. '[3, 7, 11]'")
    if (loss.attn_loss_weight > 0 or loss.v_rel_loss_weight > 0) and student.enable_tr_layer:
        raise _error(source, "distiller.enable_tr_layer", "False with attn_loss_weight or v_rel_loss_weight > 0",
                     True, "the student's last-layer attention then spans T/f frames against the teacher's T "
                     "(the published code fails on the shapes); set enable_tr_layer: False or the weights to 0")


def _check_without_heads(student: StudentConfig, loss: LossConfig, source: str) -> None:
    """``delete_projections``: the published code deletes the heads before training, so every loss
    that reads them crashes there; fhb asks for a loss that can train the student without them."""
    for key in ("rec_loss_weight", "sim_loss_weight"):
        if getattr(loss, key) != 0:
            raise _error(source, f"train.{key}", "0 with delete_projections: True", getattr(loss, key),
                         "the reconstruction and cosine losses read the prediction heads that "
                         f"delete_projections removes (the published code then fails); set {key}: 0 or "
                         "delete_projections: False")
    if loss.cnn_loss_weight > 0 and student.pred_head_final_dim != student.encoder_embed_dim:
        raise _error(source, "train.delete_projections", "False when cnn_loss_weight > 0 and "
                     "encoder_embed_dim != pred_head_final_dim", True,
                     "the CNN loss then needs cnn_proj_head, a head that delete_projections removes; "
                     "set delete_projections: False or cnn_loss_weight: 0")
    if loss.cnn_loss_weight + loss.attn_loss_weight + loss.v_rel_loss_weight <= 0:
        raise _error(source, "train.delete_projections", "a loss that reads no head (cnn_loss_weight, "
                     "attn_loss_weight or v_rel_loss_weight > 0)", True,
                     "without heads and without those losses nothing trains the student; set "
                     "delete_projections: False")


_Config = TypeVar("_Config", "StudentConfig", "LossConfig")


def _validated(config: _Config, source: str) -> _Config:
    """``config`` once its ``validate(source)`` passed (every config section is checked on build)."""
    config.validate(source)
    return config


def typed_value(source: str, key: str, value: Any, kind: Any) -> Any:
    """Check a yaml value against a field type: a scalar (ints are accepted for floats) or an int
    range ``tuple[int, int]`` (a list ``[lo, hi]``; an int ``n`` reads as ``(0, n)``, as the
    published SpecAugment's ``MaskAlongAxis`` reads it)."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = _is_int(value)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is str:
        ok = isinstance(value, str)
    elif kind == tuple[int, int]:
        value = [0, value] if _is_int(value) else value
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) for v in value)
        value = tuple(value) if ok else value
    else:  # pragma: no cover - every field type is listed above
        raise AssertionError(f"no check for {kind}")
    if not ok:
        expected = f"a {kind.__name__}" if isinstance(kind, type) else "a list [lo, hi] of two ints"
        raise _error(source, key, expected, value, "fix the value's type in the yaml")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _conv_layers(source: str, key: str, value: Any) -> tuple[ConvSpec, ...]:
    if not isinstance(value, (str, list, tuple)):
        raise _error(source, key, "a conv layer string like '[(512, 10, 5)] + [(512, 3, 2)] * 4'",
                     value, "fix the value")
    try:
        return tuple(parse_conv_layers(value))
    except (ValueError, TypeError) as exc:
        raise _error(source, key, "a conv layer string like '[(512, 10, 5)] + [(512, 3, 2)] * 4'",
                     value, str(exc)) from None


def _int_list(source: str, key: str, value: Any) -> tuple[int, ...]:
    """``'[3, 7, 11]'`` or ``[3, 7, 11]`` -> ``(3, 7, 11)`` (``ast.literal_eval``, never eval)."""
    parsed = value
    if isinstance(value, str):
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed = None
    if isinstance(parsed, int) and not isinstance(parsed, bool):
        parsed = [parsed]
    if not isinstance(parsed, (list, tuple)) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in parsed
    ):
        raise _error(source, key, "a list of layer indices like '[11]' or '[3, 7, 11]'", value, "fix the value")
    return tuple(int(i) for i in parsed)


def load_fithubert_yaml(path: str | Path) -> FitConfig:
    """Read and validate a FitHuBERT yaml (the published layout; see ``fhb/configs``).

    ``path`` may also name a packaged config (see :data:`PACKAGED_CONFIGS`).

    Raises:
        FhbError: the file is missing or not yaml, or the config is invalid (see
            :meth:`FitConfig.from_dict`).
    """
    if str(path) in PACKAGED_CONFIGS and not Path(path).exists():
        path = Path(str(packaged_config_path(str(path))))
    path = Path(path)
    try:
        text = read_small(path, CONFIG_MAX_BYTES, "config").decode("utf-8")
    except FileNotFoundError:
        raise FhbError(f"{path}: config file not found; expected a FitHuBERT yaml; check the path "
                       f"or use one of fhb's packaged configs {list(PACKAGED_CONFIGS)}") from None
    except UnicodeDecodeError as exc:
        raise FhbError(f"{path}: expected a UTF-8 yaml file, found undecodable bytes at offset {exc.start}; "
                       f"save the config as UTF-8") from None
    return _parse(text, str(path))


def safe_yaml_load(text: str) -> Any:
    """``yaml.safe_load`` that refuses anchors' aliases (``*name``).

    An alias bomb (``a: &a [x, x]``, ``b: &b [*a, *a]``, ...) is a few hundred bytes that expand
    to billions of nodes when anything walks the result; no fhb config needs aliases, so the
    first one is refused before anything is built.

    Raises:
        yaml.YAMLError: not yaml, or an alias.
    """
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102 - yaml's hook
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, "aliases (*name) are not supported in fhb configs; write the values out",
                    event.start_mark)
            return super().compose_node(parent, index)

    loader = NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _parse(text: str, source: str) -> FitConfig:
    import yaml

    try:
        data = safe_yaml_load(text)
    except yaml.YAMLError as exc:
        raise FhbError(f"{source}: not valid yaml ({exc}); fix the syntax") from None
    return FitConfig.from_dict(data, source)


def packaged_config_path(name: str) -> Traversable:
    """The packaged yaml ``name`` (one of :data:`PACKAGED_CONFIGS`) in :mod:`fhb.configs`.

    Raises:
        FhbError: an unknown name.
    """
    if name not in PACKAGED_CONFIGS:
        raise FhbError(f"no packaged config {name!r}; expected one of {list(PACKAGED_CONFIGS)}; "
                       "or pass the path of your own yaml")
    return resources.files("fhb.configs").joinpath(f"{name}.yaml")


def load_packaged_config(name: str) -> FitConfig:
    """:func:`load_fithubert_yaml` for a config shipped with fhb (see :data:`PACKAGED_CONFIGS`)."""
    resource = packaged_config_path(name)
    return _parse(resource.read_text(encoding="utf-8"), f"fhb/configs/{name}.yaml")
