"""FitHuBERT's distillation loss, computed from cached teacher layers.

Which head predicts which teacher layer (teacher layers numbered ``1..N``; fhb's layer ``k`` is
s3prl's hidden state ``k`` and fairseq's ``encoder.layers[k-1]`` output):

* ``distil_random_layer = k > 0`` (FitHuBERT: 11 of 12): ``k`` of the student's intermediate heads
  ``0..L-2`` are drawn (:meth:`DistillLoss.resample`, at start and after every epoch in the
  published code); head ``l`` predicts teacher layer ``l + 1`` with weight
  ``random_layer_weight``; the last head predicts the teacher's last layer ``N`` with weight 1.
  With ``k = L - 1`` every intermediate layer is drawn, so the draw only reorders them and
  ``rec = 0.1 * sum_{l=1..11} MSE(head_{l-1}, layer_l) + MSE(head_11, layer_12)``.
* ``distil_random_layer = 0``: ``pred_layer_id`` (0-based teacher layers) with equal weights
  ``1/n`` (the published mean over the stacked layers); layer-wise heads use head ``i`` for id
  ``i``, the split head its ``j``-th prediction for the ``j``-th id.

Each per-layer loss is a mean over batch, frames and channels of the prediction against the target
narrowed to the prediction's length (the student's ``f * (T' // f)`` frames: the teacher's last frame
is dropped when ``T'`` is odd). Padded frames count in the means, as published; with
``mask_padding: True`` they are left out (each mean is over valid frames only: frames before
``min(prediction length, target length)``).

With ``attn_loss_weight`` / ``v_rel_loss_weight > 0`` the loss adds the published attention terms of
the last layers (`fhb.student.attention_loss`): the teacher's are recomputed from its stored layer
``N - 1`` (`fhb.student.attention_targets`), which :attr:`DistillLoss.required_layers` then includes.

Deviations, all in combinations the published code cannot run: the cosine term with random layers
is weighted like the reconstruction term (published: a shape error), and the cosine term is
computed whenever ``sim_loss_weight > 0`` (published: only when ``rec_loss_weight > 0`` too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fhb.errors import FhbError
from fhb.student.attention_loss import attention_terms
from fhb.student.attention_targets import TeacherAttention, attention_input_layer
from fhb.student.config import FitConfig, LossConfig, StudentConfig
from fhb.student.model import StudentOutput

__all__ = ["DistillLoss", "LayerPair", "LossResult", "required_teacher_layers"]

Targets = torch.Tensor | Sequence[torch.Tensor] | Mapping[int, torch.Tensor]
"""Teacher layers: ``B x N x T x D`` (layer ``k`` at index ``k-1``), a sequence of ``N`` tensors
``B x T x D``, or a mapping ``{k: B x T x D}`` holding at least the required layers."""


@dataclass(frozen=True)
class LayerPair:
    """One term of the loss: prediction ``head`` against teacher layer ``layer`` (1-based)."""

    head: int
    layer: int
    weight: float


@dataclass
class LossResult:
    """The loss of one batch.

    Attributes:
        total: ``rec_w * rec + sim_w * sim + cnn_w * cnn + attn_w * attn + v_rel_w * v_rel`` (scalar).
        per_layer: teacher layer ``k`` -> its unweighted reconstruction loss (scalar; ``k = N``
            is the published validation loss ``v_loss``).
        weights: teacher layer ``k`` -> its weight in ``rec`` and ``sim``.
        rec: ``sum_k weights[k] * per_layer[k]`` (0 when ``rec_loss_weight`` is 0).
        sim: the weighted cosine term (0 when ``sim_loss_weight`` is 0).
        cnn: the CNN feature L1 loss (0 when ``cnn_loss_weight`` is 0).
        attn: the last layer's attention loss (0 when ``attn_loss_weight`` is 0).
        v_rel: the last layer's value-relation loss (0 when ``v_rel_loss_weight`` is 0).
    """

    total: torch.Tensor
    per_layer: dict[int, torch.Tensor]
    weights: dict[int, float]
    rec: torch.Tensor
    sim: torch.Tensor
    cnn: torch.Tensor
    attn: torch.Tensor | None = None
    v_rel: torch.Tensor | None = None


def _student_layout(student: StudentConfig | None, num_teacher_layers: int) -> tuple[int, bool, tuple[int, ...]]:
    """``(heads, layerwise, pred_layer_id)``; without a config, one layer-wise head per teacher layer."""
    if student is None:
        return num_teacher_layers, True, (num_teacher_layers - 1,)
    return student.encoder_layers, student.layerwise_proj, student.pred_layer_id


def _fixed_pairs(layerwise: bool, ids: Sequence[int]) -> list[LayerPair]:
    """The pairs of fixed mode: ``pred_layer_id`` with equal weights (the published mean)."""
    if not ids:
        return []
    weight = 1.0 / len(ids)
    return [LayerPair(i if layerwise else j, i + 1, weight) for j, i in enumerate(ids)]


def required_teacher_layers(cfg: FitConfig, num_teacher_layers: int) -> list[int]:
    """Teacher layers (``1..N``) the loss can ask for over a whole run, ascending.

    Random mode needs every layer a draw can pick (``1..L-1``) and the last (``N``); fixed mode
    the layers of ``pred_layer_id``. Empty when neither the reconstruction nor the cosine term is
    on. Stage two refuses a lake that lacks any of them. (``cnn_loss_weight > 0`` also needs the
    teacher's CNN features, which are not a layer.)

    Raises:
        FhbError: the student asks for layers the teacher does not have.
    """
    return DistillLoss(cfg.loss, num_teacher_layers, student=cfg.distiller).required_layers


class DistillLoss:
    """FitHuBERT's loss (see the module docstring for the layer scheme).

    Args:
        cfg: the loss keys of ``train:``.
        num_teacher_layers: ``N``, the teacher's transformer layers.
        student: the student's architecture (heads, ``layerwise_proj``, ``pred_layer_id``);
            None means one layer-wise head per teacher layer, ``pred_layer_id = [N-1]``.
        generator: draws the random layers (deterministic for a seeded generator); None uses
            ``torch.Generator().manual_seed(0)``.
        teacher_attention: the teacher's last layer for the attention terms (needed to compute
            them; not to list :attr:`required_layers`).

    Raises:
        FhbError: layers the teacher does not have, or a student whose head count differs from
            the teacher's with the attention terms on.
    """

    def __init__(
        self,
        cfg: LossConfig,
        num_teacher_layers: int,
        *,
        student: StudentConfig | None = None,
        generator: torch.Generator | None = None,
        teacher_attention: TeacherAttention | None = None,
    ) -> None:
        self.cfg = cfg
        self.num_teacher_layers = num_teacher_layers
        self.num_heads, self.layerwise, self.pred_layer_id = _student_layout(student, num_teacher_layers)
        self.random_layers: list[int] = []
        self.teacher_attention = teacher_attention
        self._check_layers()
        if teacher_attention is not None and student is not None and self.uses_attention:
            _check_heads(student, teacher_attention)
        if cfg.distil_random_layer > 0:
            self.resample(generator if generator is not None else torch.Generator().manual_seed(0))

    # ------------------------------------------------------------------ which layers

    @property
    def uses_layers(self) -> bool:
        """Whether the reconstruction or cosine term is on (both need teacher layers)."""
        return self.cfg.rec_loss_weight > 0 or self.cfg.sim_loss_weight > 0

    @property
    def uses_attention(self) -> bool:
        """Whether the attention or value-relation term is on (both need the teacher's layer ``N - 1``)."""
        return self.cfg.attn_loss_weight > 0 or self.cfg.v_rel_loss_weight > 0

    @property
    def needs_cnn_targets(self) -> bool:
        """Whether the loss needs the teacher's ``post_extract_proj`` output: the CNN loss, or the
        attention terms of a one-layer teacher (its layer 1's input is recomputed from them)."""
        return self.cfg.cnn_loss_weight > 0 or (
            self.uses_attention and attention_input_layer(self.num_teacher_layers) is None
        )

    def _check_layers(self) -> None:
        n = self.num_teacher_layers
        if self.cfg.distil_random_layer > 0:
            if self.cfg.distil_random_layer > self.num_heads - 1:
                raise FhbError(
                    f"train.distil_random_layer: expected at most the student's layers - 1 = "
                    f"{self.num_heads - 1}, found {self.cfg.distil_random_layer}; lower it"
                )
            if self.num_heads - 1 > n:
                raise FhbError(
                    f"distiller.encoder_layers: random layers pair student head l with teacher layer "
                    f"l + 1, so expected at most {n + 1} student layers for a {n}-layer teacher, found "
                    f"{self.num_heads}; use fewer student layers or distil_random_layer: 0"
                )
        elif self.uses_layers:
            beyond = [i for i in self.pred_layer_id if i >= n]
            if beyond:
                raise FhbError(
                    f"distiller.pred_layer_id: expected 0-based teacher layers < {n}, found {beyond}; "
                    f"the teacher has layers 0..{n - 1} in this numbering"
                )

    @property
    def required_layers(self) -> list[int]:
        """Teacher layers (``1..N``) this loss can ask for (see :func:`required_teacher_layers`),
        with the attention terms' input layer ``N - 1``."""
        layers: set[int] = set()
        if self.uses_layers:
            if self.cfg.distil_random_layer > 0:
                layers = set(range(1, self.num_heads)) | {self.num_teacher_layers}
            else:
                layers = {i + 1 for i in self.pred_layer_id}
        attention_input = attention_input_layer(self.num_teacher_layers)
        if self.uses_attention and attention_input is not None:
            layers.add(attention_input)
        return sorted(layers)

    def pairs(self) -> list[LayerPair]:
        """The terms of the current loss: (head, teacher layer, weight), in the published order."""
        if not self.uses_layers:
            return []
        if self.cfg.distil_random_layer > 0:
            w = self.cfg.random_layer_weight
            last = LayerPair(self.num_heads - 1, self.num_teacher_layers, 1.0)
            return [LayerPair(head, head + 1, w) for head in self.random_layers] + [last]
        return _fixed_pairs(self.layerwise, self.pred_layer_id)

    def resample(self, generator: torch.Generator) -> list[int]:
        """Draw ``distil_random_layer`` of the heads ``0..L-2`` (call after every epoch).

        Returns:
            The drawn heads, in draw order (also kept in :attr:`random_layers`).
        """
        k = self.cfg.distil_random_layer
        if k <= 0:
            return []
        order = torch.randperm(self.num_heads - 1, generator=generator)
        self.random_layers = [int(i) for i in order[:k]]
        return list(self.random_layers)

    def state_dict(self) -> dict[str, list[int]]:
        """The current draw, for resuming a run."""
        return {"random_layers": list(self.random_layers)}

    def load_state_dict(self, state: Mapping[str, Sequence[int]]) -> None:
        """Restore a draw saved by :meth:`state_dict`."""
        layers = [int(i) for i in state["random_layers"]]
        bad = [i for i in layers if not 0 <= i < self.num_heads - 1]
        if bad or len(layers) != max(self.cfg.distil_random_layer, 0):
            raise FhbError(
                f"loss state: expected {self.cfg.distil_random_layer} heads in 0..{self.num_heads - 2}, "
                f"found {layers}; the checkpoint belongs to another config"
            )
        self.random_layers = layers

    # ------------------------------------------------------------------ computing

    def __call__(
        self,
        out: StudentOutput,
        targets: Targets | None,
        target_lengths: torch.Tensor | None = None,
        cnn_targets: torch.Tensor | None = None,
    ) -> LossResult:
        """The loss of one batch.

        Args:
            out: the student's output (training layout: it has ``projections``).
            targets: teacher layers (see :data:`Targets`), ``T >= `` the prediction length.
            target_lengths: ``B`` valid teacher frames (used with ``mask_padding``).
            cnn_targets: ``B x T x D_t`` teacher ``post_extract_proj`` output (CNN loss only).

        Raises:
            FhbError: a required target is missing or shorter than the prediction.
            ValueError: API misuse: an inference-layout student, no targets, or targets of the wrong layout.
        """
        zero = out.cnn_features.new_zeros((), dtype=torch.float32)
        rec = sim = cnn = zero
        per_layer: dict[int, torch.Tensor] = {}
        weights: dict[int, float] = {}
        pairs = self.pairs()
        if pairs:
            if not out.projections:
                raise ValueError(  # API misuse: callers score training students only
                    "the student has no prediction heads (inference layout); expected a training "
                    "student; build it with build_student or load a training checkpoint"
                )
            if targets is None:
                raise ValueError("expected teacher layers for the reconstruction loss, found None")
            rec_terms, sim_terms = [], []
            for pair in pairs:
                pred = out.projections[pair.head].float()  # fp32 loss, as autocast runs mse_loss
                target = self._target(targets, pair.layer, pred)
                valid = self._valid(pred, out.projection_lengths, target_lengths)
                if self.cfg.rec_loss_weight > 0:
                    per_layer[pair.layer] = _masked_mean(self._distance(pred, target), valid)
                    rec_terms.append(pair.weight * per_layer[pair.layer])
                if self.cfg.sim_loss_weight > 0:
                    cos = F.cosine_similarity(pred, target, dim=-1)
                    sim_terms.append(pair.weight * _masked_mean(-F.logsigmoid(cos), valid))
                weights[pair.layer] = pair.weight
            rec = torch.stack(rec_terms).sum() if rec_terms else zero
            sim = torch.stack(sim_terms).sum() if sim_terms else zero
        if self.cfg.cnn_loss_weight > 0:
            cnn = self._cnn(out, cnn_targets, target_lengths)
        total = self.cfg.rec_loss_weight * rec + self.cfg.sim_loss_weight * sim + self.cfg.cnn_loss_weight * cnn
        attn = v_rel = zero
        if self.uses_attention:
            attn, v_rel = self._attention(out, targets, target_lengths, cnn_targets)
            total = total + self.cfg.attn_loss_weight * attn + self.cfg.v_rel_loss_weight * v_rel
        return LossResult(total=total, per_layer=per_layer, weights=weights, rec=rec, sim=sim, cnn=cnn,
                          attn=attn, v_rel=v_rel)

    def _attention(self, out: StudentOutput, targets: Targets | None, target_lengths: torch.Tensor | None,
                   cnn_targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention and value-relation terms (unweighted), teacher side recomputed."""
        if self.teacher_attention is None:
            raise FhbError(
                "train.attn_loss_weight / v_rel_loss_weight > 0: expected the teacher's attention weights "
                "(DistillLoss(teacher_attention=...)), found None; build the loss with the lake's teacher"
            )
        if out.last_attention is None:
            raise FhbError(
                "attention loss: expected the student's last-layer attention, found None; set "
                "model.return_attention = True (build_model_and_loss does)"
            )
        layer = attention_input_layer(self.num_teacher_layers)
        if layer is None:
            if cnn_targets is None:
                raise FhbError(
                    "attention loss of a one-layer teacher: expected the teacher's CNN features (cnn_targets), "
                    "found None; extract the lake with --cnn-features"
                )
            hidden = cnn_targets
        else:
            if targets is None:
                raise FhbError(f"attention loss: expected teacher layer {layer}, found no targets")
            hidden = self._lookup(targets, layer)
        frames = out.last_attention.logits.shape[-1]
        if hidden.shape[1] < frames:
            raise FhbError(
                f"attention loss: expected at least {frames} teacher frames (the student's), found "
                f"{hidden.shape[1]}; the student's conv stack must have the teacher's stride"
            )
        hidden = hidden.narrow(1, 0, frames)
        lengths = target_lengths.clamp(max=frames) if target_lengths is not None else None
        module = self.teacher_attention.to(hidden.device)
        teacher = module(hidden, lengths)
        valid = None
        if self.cfg.mask_padding:
            valid = self._valid(out.hidden_states[-1], out.hidden_lengths, target_lengths)
        terms = attention_terms(out.last_attention, teacher, attn_type=self.cfg.attn_loss_type,
                                with_attn=self.cfg.attn_loss_weight > 0, with_v_rel=self.cfg.v_rel_loss_weight > 0,
                                valid=valid)
        return terms.attn, terms.v_rel

    def _distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.cfg.rec_loss_type == "l1":
            return F.l1_loss(pred, target, reduction="none")
        return F.mse_loss(pred, target, reduction="none")

    def _target(self, targets: Targets, layer: int, pred: torch.Tensor) -> torch.Tensor:
        """Teacher layer ``layer`` narrowed to ``pred``'s frames, in ``pred``'s dtype."""
        target = self._lookup(targets, layer)
        frames = pred.shape[1]
        if target.shape[0] != pred.shape[0] or target.shape[-1] != pred.shape[-1] or target.shape[1] < frames:
            raise FhbError(
                f"teacher layer {layer}: expected at least B x {frames} x {pred.shape[-1]} "
                f"(the prediction {list(pred.shape)}), found {list(target.shape)}; the student's conv "
                "stack must have the teacher's stride and receptive field and pred_head_final_dim its size"
            )
        return target.narrow(1, 0, frames).to(pred.dtype)

    def _lookup(self, targets: Targets, layer: int) -> torch.Tensor:
        """Teacher layer ``layer`` (``B x T x D``) from any :data:`Targets` form."""
        n = self.num_teacher_layers
        if isinstance(targets, torch.Tensor):
            if targets.ndim != 4 or targets.shape[1] != n:
                raise ValueError(
                    f"teacher targets: expected B x {n} x T x D (every teacher layer), found "
                    f"{list(targets.shape)}; pass a mapping {{layer: B x T x D}} for a subset"
                )
            target = targets[:, layer - 1]
        elif isinstance(targets, Mapping):
            if layer not in targets:
                raise FhbError(
                    f"teacher targets: expected teacher layer {layer} (1..{n}), found layers "
                    f"{sorted(targets)}; extract a lake with the layers {self.required_layers}"
                )
            target = targets[layer]
        else:
            if len(targets) != n:
                raise ValueError(
                    f"teacher targets: expected a list of all {n} teacher layers, found {len(targets)}; "
                    "pass a mapping {layer: B x T x D} for a subset"
                )
            target = targets[layer - 1]
        return target

    def _valid(
        self, pred: torch.Tensor, pred_lengths: torch.Tensor, target_lengths: torch.Tensor | None
    ) -> torch.Tensor | None:
        """``B x T`` True at frames counted in the means (None: all, the published behaviour)."""
        if not self.cfg.mask_padding:
            return None
        lengths = pred_lengths.to(pred.device)
        if target_lengths is not None:
            lengths = torch.minimum(lengths, target_lengths.to(pred.device))
        return torch.arange(pred.shape[1], device=pred.device)[None, :] < lengths[:, None]

    def _cnn(self, out: StudentOutput, cnn_targets: torch.Tensor | None, target_lengths: torch.Tensor | None) -> torch.Tensor:
        """L1 between the student's and the teacher's projected CNN features."""
        pred = out.cnn_features.float()  # fp32 loss, as autocast runs l1_loss
        if cnn_targets is None:
            raise FhbError(
                "train.cnn_loss_weight > 0: expected the teacher's CNN features (cnn_targets), found "
                "None; extract a lake with CNN features or set cnn_loss_weight: 0"
            )
        if cnn_targets.shape[-1] != pred.shape[-1] or cnn_targets.shape[1] < pred.shape[1]:
            raise FhbError(
                f"cnn_targets: expected at least B x {pred.shape[1]} x {pred.shape[-1]}, found "
                f"{list(cnn_targets.shape)}; with a student dimension other than the teacher's, "
                "build the student with cnn_loss_weight > 0 so it has a cnn_proj_head"
            )
        target = cnn_targets.narrow(1, 0, pred.shape[1]).to(pred.dtype)
        valid = self._valid(pred, out.cnn_lengths, target_lengths)
        return _masked_mean(F.l1_loss(pred, target, reduction="none"), valid)


def _check_heads(student: StudentConfig, teacher: TeacherAttention) -> None:
    """The published attention terms compare per head: the head counts must agree."""
    if student.encoder_attention_heads != teacher.num_heads:
        raise FhbError(
            f"distiller.encoder_attention_heads: expected the teacher's {teacher.num_heads} with "
            f"attn_loss_weight or v_rel_loss_weight > 0 (the published loss compares attention per head), "
            f"found {student.encoder_attention_heads}; set encoder_attention_heads: {teacher.num_heads}"
        )


def _masked_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``B x T [x D]`` values, over the ``B x T`` frames where ``valid`` (all when None)."""
    if valid is None:
        return values.mean()
    mask = valid.to(values.dtype)
    if values.ndim == 3:
        count = mask.sum() * values.shape[-1]
        mask = mask.unsqueeze(-1)
    else:
        count = mask.sum()
    return (values * mask).sum() / count.clamp(min=1)
