"""The FitHuBERT student: thin conv stack, time reduction, thin deep transformer, per-layer heads.

:func:`build_student` assembles :class:`FitHuBERT` from a :class:`StudentConfig` out of the shared
blocks of :mod:`fhb.nn`, with the published parameter names, shapes and order (264 tensors,
31,629,632 parameters for ``fithubert.yaml``; see ``tests/student/data``). The module tree is::

    feature_extractor   conv stack (fhb.nn.conv)             B x S -> B x C x T'  (None with n_mels > 0)
    mel_transform       mel spectrogram (fhb.nn.mel)         B x S -> B x n_mels x T'  (n_mels > 0 only)
    mel_spec_head       conv head over the mel bins          B x n_mels x T' -> B x C x T'  (optional)
    post_extract_proj   Linear(C, D), absent when C == D
    cnn_proj_head       GELU + Linear(D, D_t), only with a CNN loss and D != D_t
    dropout_input
    encoder             pos_conv, layers[0] = time reduction, layers[1..L] transformer | conformer,
                        layer_norm (no pos_conv for conformer rel_pos / rope)
    layer_norm          LayerNorm(C) over the conv features
    upsampler           ConvTranspose1d (used only by the DistilHuBERT-style head)
    proj_head           L layer-wise heads (training) | split head
    final_proj          proj_head[-1] after :meth:`FitHuBERT.disable_projection_heads` (inference)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from fhb.errors import FhbError
from fhb.nn.conformer import build_conformer_layer, relative_positions
from fhb.nn.conv import FeatureExtractor, build_feature_extractor
from fhb.nn.encoder import TransformerEncoder
from fhb.nn.frames import (
    ConvSpec,
    conv_output_lengths,
    lengths_to_padding_mask,
    receptive_field,
    total_stride,
)
from fhb.nn.mel import MelSpecHead, MelSpectrogram
from fhb.nn.positional import conv_positional_embedding
from fhb.nn.relations import Relations, attention_relations
from fhb.nn.transformer import build_transformer_layers
from fhb.student.config import FitConfig, StudentConfig
from fhb.student.heads import LayerWiseProjHead, split_head, split_predictions, upsample
from fhb.student.time_reduction import TimeReductionLayer, build_time_reduction

__all__ = [
    "FitHuBERT",
    "GradMultiply",
    "StudentOutput",
    "TimeReducedEncoder",
    "build_fit_student",
    "build_student",
    "strip_for_inference",
]

log = logging.getLogger(__name__)


class GradMultiply(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` backward (fairseq's GradMultiply)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale  # type: ignore[attr-defined]
        return x.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None  # type: ignore[attr-defined]


@dataclass
class EncoderOutput:
    """What :class:`TimeReducedEncoder` returns.

    Attributes:
        hidden_states: each transformer layer's output, ``B x T2 x D``.
        reduced: the time-reduction layer's output ``B x T2 x D`` (None without it).
        lengths: ``B`` valid frames at the layers' rate (``T2 = T' // f``).
        padding_mask: ``B x T2`` (True = pad), None when nothing is padded.
        first_layer_input: ``B x T2 x D``, what the first transformer layer receives: ``reduced``
            with the time-reduction layer, else the embedding (``x + pos_conv(x)``, post-LN
            ``layer_norm``, dropout).
    """

    hidden_states: list[torch.Tensor]
    reduced: torch.Tensor | None
    lengths: torch.Tensor
    padding_mask: torch.Tensor | None
    first_layer_input: torch.Tensor


class TimeReducedEncoder(TransformerEncoder):
    """:class:`~fhb.nn.encoder.TransformerEncoder` with FitHuBERT's time reduction at ``layers[0]``.

    Embedding (zero padding, ``pos_conv``, post-LN ``layer_norm``, dropout) runs at the CNN rate,
    then the time-reduction layer (if any), then the transformer (or conformer) layers at ``1/f``
    of it with the reduced padding mask (and, for conformer ``rel_pos`` layers, relative positions
    for the reduced length). Children are registered in fairseq's order (``pos_conv``, ``layers``,
    ``layer_norm``).

    Args:
        pos_conv: positional convolution (None for conformer ``rel_pos`` / ``rope`` layers).
        layers: the transformer or conformer layers.
        time_reduction: the reduction layer, or None (``enable_tr_layer: False``).
        layer_norm_first: pre-LN (True) or post-LN (False) layers.
        dropout: dropout after the embedding.
        layerdrop: probability of skipping a transformer layer in training.
        dim: model dimension ``D``.
        relative: pass :func:`~fhb.nn.conformer.relative_positions` to the layers.
    """

    def __init__(
        self,
        pos_conv: nn.Module | None,
        layers: nn.ModuleList,
        time_reduction: TimeReductionLayer | None,
        layer_norm_first: bool,
        dropout: float,
        layerdrop: float,
        dim: int,
        relative: bool = False,
    ) -> None:
        stack = nn.ModuleList(([time_reduction] if time_reduction is not None else []) + list(layers))
        super().__init__(pos_conv, stack, layer_norm_first, dropout=dropout, layerdrop=layerdrop, dim=dim)
        self.first_transformer = 1 if time_reduction is not None else 0
        self.relative = relative

    @property
    def time_reduction(self) -> TimeReductionLayer | None:
        """``layers[0]`` when it is the reduction layer."""
        return self.layers[0] if self.first_transformer else None  # type: ignore[return-value]

    @property
    def num_transformer_layers(self) -> int:
        """Transformer layers ``L`` (without the reduction layer)."""
        return len(self.layers) - self.first_transformer

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, lengths: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> EncoderOutput:
        """Run the encoder.

        Args:
            x: ``B x T' x D`` projected CNN features.
            lengths: ``B`` valid frames of ``x``.
            padding_mask: ``B x T'`` (True = pad), or None when nothing is padded.

        Returns:
            :class:`EncoderOutput` at the reduced rate.
        """
        x = self.embed(x, padding_mask)
        reduced = None
        tr = self.time_reduction
        if tr is not None:
            x = reduced = tr(x)
            lengths = tr.reduce_lengths(lengths)
            padding_mask = tr.reduce_mask(padding_mask) if padding_mask is not None else None
        first_layer_input = x
        pos_emb = relative_positions(x.shape[1], x.shape[2], x.dtype, x.device) if self.relative else None
        hidden: list[torch.Tensor] = []
        for index in range(self.first_transformer, len(self.layers)):
            x = self.run_layer(index, x, padding_mask, pos_emb)
            hidden.append(x)
        return EncoderOutput(hidden, reduced, lengths, padding_mask, first_layer_input)


@dataclass
class StudentOutput:
    """What :meth:`FitHuBERT.forward` returns (``f`` = time-reduction factor, 1 without it).

    Attributes:
        projections: one ``B x T_p x D_t`` prediction per head, in order (layer-wise heads:
            ``T_p = f * (T' // f)``, head ``i`` predicts from transformer layer ``i``; split
            head: one per ``pred_layer_id``); empty after
            :meth:`FitHuBERT.disable_projection_heads`.
        hidden_states: each transformer layer's output, ``B x T2 x D`` (``T2 = T' // f``).
        last_hidden_state: s3prl's ``last_hidden_state``: the last head's prediction (training),
            ``final_proj`` of the encoder output (inference), or the upsampled encoder output
            (split head), as the published model's ``x``.
        cnn_features: ``B x T' x D_c`` ``post_extract_proj`` output (through ``cnn_proj_head``
            when present), before ``dropout_input``: the CNN loss's prediction.
        cnn_lengths: ``B`` valid frames of ``cnn_features`` (the CNN rate, 20 ms).
        hidden_lengths: ``B`` valid frames of ``hidden_states`` (``cnn_lengths // f``).
        projection_lengths: ``B`` valid frames of ``projections`` / ``last_hidden_state``.
        cnn_padding_mask: ``B x T'`` (True = pad), None when nothing is padded.
        hidden_padding_mask: ``B x T2``, None when nothing is padded.
        reduced: the time-reduction layer's output ``B x T2 x D`` (None without it).
        first_layer_input: ``B x T2 x D``, the input of the first transformer layer (s3prl's
            ``hidden_states[0]``): ``reduced`` with the time-reduction layer, else the encoder's
            embedding (``x + pos_conv(x)``, post-LN ``layer_norm``, dropout). :meth:`FitHuBERT.forward`
            always sets it; None only in outputs built by hand.
        last_attention: the last transformer layer's attention logits and value relations
            (``B x H x T2 x T2``), recomputed from its input; only when
            :attr:`FitHuBERT.return_attention` is set (the attention losses), else None.
    """

    projections: list[torch.Tensor]
    hidden_states: list[torch.Tensor]
    last_hidden_state: torch.Tensor
    cnn_features: torch.Tensor
    cnn_lengths: torch.Tensor
    hidden_lengths: torch.Tensor
    projection_lengths: torch.Tensor
    cnn_padding_mask: torch.Tensor | None
    hidden_padding_mask: torch.Tensor | None
    reduced: torch.Tensor | None = None
    first_layer_input: torch.Tensor | None = None
    last_attention: Relations | None = None


class FitHuBERT(nn.Module):
    """The FitHuBERT student (published ``CustomStudentModel``, waveform front-end).

    Build it with :func:`build_student`; the constructor receives the assembled parts.

    Args:
        config: the architecture.
        feature_extractor: conv stack (None with the mel front-end).
        post_extract_proj: ``Linear(C, D)`` or None when ``C == D``.
        cnn_proj_head: ``GELU + Linear(D, D_t)`` for the CNN loss, or None.
        encoder: :class:`TimeReducedEncoder`.
        upsampler: top-level ConvTranspose1d (with the time-reduction layer), else None.
        proj_head: ``ModuleList`` of :class:`LayerWiseProjHead` or the split head, or None.
        mel_transform: the mel front-end (``n_mels > 0``), else None.
        mel_spec_head: its conv head, or None.
    """

    def __init__(
        self,
        config: StudentConfig,
        feature_extractor: FeatureExtractor | None,
        post_extract_proj: nn.Linear | None,
        cnn_proj_head: nn.Module | None,
        encoder: TimeReducedEncoder,
        upsampler: nn.ConvTranspose1d | None,
        proj_head: nn.Module | None,
        mel_transform: MelSpectrogram | None = None,
        mel_spec_head: MelSpecHead | None = None,
    ) -> None:
        super().__init__()
        if (feature_extractor is None) == (mel_transform is None):
            raise ValueError("Expected exactly one front-end (conv stack or mel spectrogram). "
                             f"Found: conv={feature_extractor is not None}, mel={mel_transform is not None}")
        self.config = config
        self.feature_extractor = feature_extractor
        self.mel_transform = mel_transform
        self.mel_spec_head = mel_spec_head
        self.post_extract_proj = post_extract_proj
        self.cnn_proj_head = cnn_proj_head
        self.dropout_input = nn.Dropout(config.dropout_input)
        self.encoder = encoder
        self.layer_norm = nn.LayerNorm(self.front_dim)
        self.upsampler = upsampler
        self.proj_head = proj_head
        self.final_proj: nn.Module | None = None
        self.specaug: nn.Module | None = None  # fhb.student.specaug.SpecAugment (train.specaug); no parameters
        self.return_attention = False  # set for the attention losses (StudentOutput.last_attention)

    # ------------------------------------------------------------------ sizes and frames

    @property
    def reduce_factor(self) -> int:
        """Time-reduction factor ``f`` (1 without the reduction layer)."""
        tr = self.encoder.time_reduction
        return tr.factor if tr is not None else 1

    @property
    def front_specs(self) -> tuple[ConvSpec, ...]:
        """The front-end's frame arithmetic as conv specs: the conv stack's, or one
        ``(C, 400, 320)`` window for the mel spectrogram (same frame count and hop)."""
        return self.config.front_specs

    @property
    def front_dim(self) -> int:
        """Channels ``C`` of the front-end's output (conv stack, mel head, or mel bins)."""
        if self.feature_extractor is not None:
            return self.feature_extractor.out_dim
        if self.mel_spec_head is not None:
            return self.mel_spec_head.out_dim
        assert self.mel_transform is not None
        return self.mel_transform.n_mels

    @property
    def is_inference(self) -> bool:
        """True after :meth:`disable_projection_heads`."""
        return self.proj_head is None

    def min_samples(self) -> int:
        """Shortest waveform the student accepts (720 samples for FitHuBERT: 2 CNN frames)."""
        specs = self.front_specs
        multiple = self.config.crop_seq_to_multiple
        frames = -(-self.reduce_factor // multiple) * multiple  # f frames left after cropping
        return receptive_field(specs) + (frames - 1) * total_stride(specs)

    def num_parameters(self, inference: bool = False) -> int:
        """Parameters of the training model, or of the inference model (:func:`strip_for_inference`).

        31,629,632 / 22,492,064 for ``fithubert.yaml`` (the paper's 31.63M / 22.49M).
        """
        params = dict(self.named_parameters())
        kept = set(strip_for_inference({name: name for name in params}).values()) if inference else set(params)
        return sum(p.numel() for name, p in params.items() if name in kept)

    # ------------------------------------------------------------------ forward

    def extract_features(
        self, wavs: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Front-end (conv stack, or mel spectrogram and its head) and feature LayerNorm.

        Padding is part of the batch here: the first conv's GroupNorm (``extractor_mode:
        default``) normalises over all ``T'`` frames, padded ones included, exactly as the
        published model does on its padded batches.

        Args:
            wavs: ``B x S`` float waveforms (not normalised, as FitHuBERT was trained).
            lengths: ``B`` valid samples (None: all ``S``).

        Returns:
            ``B x T' x C`` normalised CNN features and ``B`` valid frame counts.
        """
        if wavs.ndim != 2:
            raise ValueError(f"Expected a B x S waveform batch. Found: {list(wavs.shape)}")
        shortest = int(wavs.shape[1]) if lengths is None else int(lengths.min())
        if shortest < self.min_samples():
            raise FhbError(
                f"an utterance of {shortest} samples is too short for the student: expected at "
                f"least {self.min_samples()} samples; drop such utterances"
            )
        features, cnn_lengths = self._front_end(wavs, lengths)
        return self.layer_norm(features.transpose(1, 2)), cnn_lengths

    def _front_end(self, wavs: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``B x S`` -> ``B x C x T'`` features and ``B`` valid frame counts: the conv stack (with
        ``feature_grad_mult``), or the mel spectrogram and its head (``feature_grad_mult`` does not
        apply, as published). SpecAugment (training only) masks the conv features, or the mel
        spectrogram before its head, as the published mel student does."""
        if self.mel_transform is not None:
            features = self.mel_transform(wavs)
            frame_lengths = self._frame_lengths(wavs, lengths, features.shape[-1])
            features = self._spec_augmented(features, frame_lengths)
            return (self.mel_spec_head(features) if self.mel_spec_head is not None else features), frame_lengths
        assert self.feature_extractor is not None
        mult = self.config.feature_grad_mult
        if mult > 0:
            features, _ = self.feature_extractor(wavs)
            if mult != 1.0:
                features = GradMultiply.apply(features, mult)
        else:
            with torch.no_grad():
                features = self.feature_extractor(wavs)[0]
        frame_lengths = self._frame_lengths(wavs, lengths, features.shape[-1])
        return self._spec_augmented(features, frame_lengths), frame_lengths

    def _frame_lengths(self, wavs: torch.Tensor, lengths: torch.Tensor | None, frames: int) -> torch.Tensor:
        """``B`` valid front-end frames of ``B x S`` waveforms with ``lengths`` valid samples."""
        if lengths is None:
            return torch.full((wavs.shape[0],), frames, dtype=torch.long, device=wavs.device)
        return conv_output_lengths(lengths.to(wavs.device), self.front_specs).clamp(max=frames)

    def _spec_augmented(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``B x C x T'`` features, masked by the student's SpecAugment when it has one
        (`fhb.student.specaug`; it masks in training mode only)."""
        if self.specaug is None:
            return features
        return self.specaug(features.transpose(1, 2), lengths).transpose(1, 2)

    def forward_features(self, features: torch.Tensor, lengths: torch.Tensor) -> StudentOutput:
        """Everything after the conv stack: projection, encoder, heads.

        This part is batch-invariant: an utterance's valid outputs do not depend on what else is
        in the batch or on its padding (padded frames are zeroed before ``pos_conv`` and masked
        in attention; the reduction and the heads only mix frames within a group).

        Args:
            features: ``B x T' x C`` from :meth:`extract_features`.
            lengths: ``B`` valid frames.
        """
        multiple = self.config.crop_seq_to_multiple
        drop = features.shape[1] % multiple
        if drop:
            features = features[:, :-drop]
        frames = features.shape[1]
        lengths = lengths.clamp(max=frames)
        mask = lengths_to_padding_mask(lengths, frames) if bool((lengths < frames).any()) else None
        x = self.post_extract_proj(features) if self.post_extract_proj is not None else features
        cnn_features = self.cnn_proj_head(x) if self.cnn_proj_head is not None else x
        x = self.dropout_input(x)
        enc = self.encoder(x, lengths, mask)
        projections: list[torch.Tensor] = []
        if self.config.layerwise_proj:
            if self.proj_head is not None:
                projections = [head(h) for head, h in zip(self.proj_head, enc.hidden_states)]
                last = projections[-1]
            else:
                assert self.final_proj is not None
                last = self.final_proj(self.encoder.final_norm(enc.hidden_states[-1]))
        else:
            last = upsample(self.upsampler, self.encoder.final_norm(enc.hidden_states[-1]))
            if self.proj_head is not None:
                projections = split_predictions(self.proj_head(last), len(self.config.pred_layer_id))
        return StudentOutput(
            projections=projections,
            hidden_states=enc.hidden_states,
            last_hidden_state=last,
            cnn_features=cnn_features,
            cnn_lengths=lengths,
            hidden_lengths=enc.lengths,
            projection_lengths=enc.lengths * self.reduce_factor,
            cnn_padding_mask=mask,
            hidden_padding_mask=enc.padding_mask,
            reduced=enc.reduced,
            first_layer_input=enc.first_layer_input,
            last_attention=self._last_attention(enc) if self.return_attention else None,
        )

    def _last_attention(self, enc: EncoderOutput) -> Relations:
        """The last transformer layer's relations, from the input it received (`fhb.nn.relations`)."""
        layer = self.encoder.layers[-1]
        x = enc.hidden_states[-2] if len(enc.hidden_states) > 1 else enc.first_layer_input
        assert x is not None, "the encoder always returns its first layer's input"
        if layer.layer_norm_first:
            x = layer.self_attn_layer_norm(x)
        return attention_relations(x, layer.self_attn, enc.padding_mask)

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor | None = None) -> StudentOutput:
        """Run the student on a padded batch.

        Args:
            wavs: ``B x S`` float waveforms, zero-padded after each utterance's end.
            lengths: ``B`` valid samples per utterance (None: no padding).

        Returns:
            :class:`StudentOutput`.

        Raises:
            FhbError: ``S`` is shorter than :meth:`min_samples`.
        """
        features, cnn_lengths = self.extract_features(wavs, lengths)
        return self.forward_features(features, cnn_lengths)

    # ------------------------------------------------------------------ inference layout

    def disable_projection_heads(self) -> None:
        """Switch to the published inference layout (what the S3PRL upstream holds).

        Layer-wise heads: ``final_proj = proj_head[-1]``, the other heads are dropped; split
        head: dropped. ``cnn_proj_head`` is dropped; the top-level ``upsampler`` is kept.
        """
        if self.proj_head is None:
            return
        if self.config.layerwise_proj:
            self.final_proj = self.proj_head[-1]  # type: ignore[index]
        self.proj_head = None
        self.cnn_proj_head = None


V = TypeVar("V")

_LAYERWISE_HEAD = re.compile(r"^proj_head\.(\d+)\.(upsampler|lin_proj)\.")


def strip_for_inference(state_dict: Mapping[str, V]) -> dict[str, V]:
    """A training state dict -> the published inference key set (220 tensors for FitHuBERT).

    Drops ``cnn_proj_head.*``; with layer-wise heads keeps only the last head, renamed
    ``final_proj.*`` and moved to the end; drops a split head entirely. An inference state dict
    passes through unchanged.
    """
    heads = [int(m.group(1)) for k in state_dict if (m := _LAYERWISE_HEAD.match(k))]
    last = max(heads) if heads else None
    body: dict[str, V] = {}
    final: dict[str, V] = {}
    for key, value in state_dict.items():
        if key.startswith("cnn_proj_head."):
            continue
        if key.startswith("proj_head."):
            match = _LAYERWISE_HEAD.match(key)
            if match and int(match.group(1)) == last:
                final["final_proj." + key.split(".", 2)[2]] = value
            continue
        if key.startswith("final_proj."):
            final[key] = value
            continue
        body[key] = value
    return {**body, **final}


def _init_bert_params(module: nn.Module) -> None:
    """fairseq's ``init_bert_params`` for the encoder: Linear weights N(0, 0.02), biases 0."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _build_layers(cfg: StudentConfig) -> nn.ModuleList:
    """``encoder_layers`` transformer or conformer layers (``layer_type``)."""
    if cfg.layer_type != "conformer":
        return build_transformer_layers(cfg)
    return nn.ModuleList(
        build_conformer_layer(cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim, cfg.encoder_attention_heads,
                              cfg.dropout, cfg.depthwise_conv_kernel_size, cfg.attn_type, cfg.pos_enc_type)
        for _ in range(cfg.encoder_layers)
    )


def _build_encoder(cfg: StudentConfig) -> TimeReducedEncoder:
    dim = cfg.encoder_embed_dim
    layers = _build_layers(cfg)
    tr = build_time_reduction(cfg.tr_layer_type, dim, cfg.tr_reduce_factor) if cfg.enable_tr_layer else None
    # conformer rel_pos / rope: positions come from the attention (fairseq's ConformerEncoder)
    positional = cfg.layer_type == "conformer" and cfg.pos_enc_type != "abs"
    pos_conv = None if positional else conv_positional_embedding(dim, cfg.conv_pos, cfg.conv_pos_groups)
    encoder = TimeReducedEncoder(
        pos_conv,
        layers,
        tr,
        layer_norm_first=cfg.layer_norm_first,
        dropout=cfg.dropout,
        layerdrop=cfg.encoder_layerdrop,
        dim=dim,
        relative=positional and cfg.pos_enc_type == "rel_pos",
    )
    encoder.apply(_init_bert_params)
    return encoder


def _build_front_end(cfg: StudentConfig) -> tuple[FeatureExtractor | None, MelSpectrogram | None, MelSpecHead | None]:
    """The conv stack, or (``n_mels > 0``) the mel spectrogram and its optional head."""
    if cfg.n_mels <= 0:
        return build_feature_extractor(list(cfg.conv_feature_layers), cfg.extractor_mode, cfg.conv_bias), None, None
    head = MelSpecHead(cfg.n_mels, cfg.mel_spec_head_conv_layers) if cfg.mel_spec_head_conv_layers else None
    return None, MelSpectrogram(cfg.n_mels, log=cfg.enable_log_mel), head


def build_student(
    cfg: StudentConfig,
    teacher_dim: int | None = None,
    *,
    cnn_loss_weight: float = 0.0,
    teacher: nn.Module | Mapping[str, torch.Tensor] | None = None,
    delete_projections: bool = False,
) -> FitHuBERT:
    """Assemble a fresh :class:`FitHuBERT` (random weights, training layout).

    Args:
        cfg: the architecture (``distiller:`` section).
        teacher_dim: the teacher's hidden size, checked against ``pred_head_final_dim``
            (None: not checked).
        cnn_loss_weight: ``train.cnn_loss_weight``; when > 0 and ``pred_head_final_dim !=
            encoder_embed_dim`` a ``cnn_proj_head`` is built, as in the published code.
        teacher: the teacher backbone's state dict (the lake's, ``load_lake_teacher_state``) or
            the backbone (``load_teacher(path).model``), needed only for ``init_conv_layers`` /
            ``init_encoder_layers``.
        delete_projections: ``train.delete_projections``: return the student in the inference
            layout (:meth:`FitHuBERT.disable_projection_heads`, after the teacher initialisation,
            as the published code does before training).

    Raises:
        FhbError: ``teacher_dim`` differs from ``pred_head_final_dim``, or teacher
            initialisation is requested without (or with an incompatible) teacher.
    """
    if teacher_dim is not None and teacher_dim != cfg.pred_head_final_dim:
        raise FhbError(
            f"distiller.pred_head_final_dim: expected the teacher's hidden size {teacher_dim}, found "
            f"{cfg.pred_head_final_dim}; set pred_head_final_dim: {teacher_dim}"
        )
    extractor, mel, mel_head = _build_front_end(cfg)
    dim = cfg.encoder_embed_dim
    front_dim = cfg.front_dim
    post_extract_proj = nn.Linear(front_dim, dim) if front_dim != dim else None
    cnn_proj_head = None
    if cnn_loss_weight > 0 and cfg.pred_head_final_dim != dim:
        cnn_proj_head = nn.Sequential(nn.GELU(), nn.Linear(dim, cfg.pred_head_final_dim))
    encoder = _build_encoder(cfg)
    f = cfg.tr_reduce_factor
    upsampler = nn.ConvTranspose1d(dim, dim, kernel_size=f, stride=f) if cfg.enable_tr_layer else None
    proj_head: nn.Module | None
    if cfg.layerwise_proj:
        proj_head = nn.ModuleList(
            LayerWiseProjHead(dim, cfg.pred_head_final_dim, f if cfg.enable_tr_layer else None)
            for _ in range(cfg.encoder_layers)
        )
    elif cfg.pred_layer_id:
        inter = cfg.pred_head_inter_dim if cfg.pred_head_inter_dim > 0 else dim
        proj_head = split_head(dim, inter, len(cfg.pred_layer_id), cfg.pred_head_final_dim)
    else:
        proj_head = None
    model = FitHuBERT(cfg, extractor, post_extract_proj, cnn_proj_head, encoder, upsampler, proj_head, mel, mel_head)
    if cfg.init_conv_layers or cfg.init_encoder_layers:
        from fhb.student.teacher_init import init_from_teacher

        init_from_teacher(model, teacher, conv=cfg.init_conv_layers, layers=cfg.init_encoder_layers)
    if delete_projections:
        model.disable_projection_heads()
    return model


def build_fit_student(
    config: FitConfig, teacher_dim: int | None = None, teacher: nn.Module | Mapping[str, torch.Tensor] | None = None
) -> FitHuBERT:
    """:func:`build_student` for a whole yaml (takes ``cnn_loss_weight`` from ``train:``)."""
    return build_student(
        config.distiller, teacher_dim, cnn_loss_weight=config.loss.cnn_loss_weight, teacher=teacher,
        delete_projections=config.loss.delete_projections,
    )
