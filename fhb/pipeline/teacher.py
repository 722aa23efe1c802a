"""The teacher: a fairseq HuBERT / wav2vec 2.0 checkpoint rebuilt natively, without fairseq.

``load_teacher(path)`` reads the checkpoint through fhb's restricted unpickler, rebuilds the
backbone with fairseq's parameter names and loads the state dict strictly. ``Teacher.extract``
returns every requested transformer layer per utterance, batch-invariantly: the conv front-end
(whose first GroupNorm normalises over time, so padding would change it) runs per utterance, and
only the transformer is batched, with a key-padding mask.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from fhb.errors import FhbError
from fhb.nn.frames import conv_output_length
from fhb.nn.wav2vec2 import Backbone, BackboneConfig, build_backbone
from fhb.pipeline.checkpoint_io import (
    CheckpointError,
    checkpoint_config,
    checkpoint_task_config,
    load_checkpoint,
    sha256_file,
)
from fhb.pipeline.ctc_layout import CTC_MODELS, HEAD_KEYS, unwrap_ctc
from fhb.pipeline.fairseq_layout import ARCHS, save_random_checkpoint
from fhb.pipeline.precision import autocast_context
from fhb.storage.ctc_labels import LETTERS

__all__ = ["ARCHS", "Teacher", "TeacherSpec", "build_teacher", "load_teacher", "read_teacher_spec", "save_random_checkpoint"]

log = logging.getLogger(__name__)

SUPPORTED_MODELS = ("hubert", "wav2vec2", *CTC_MODELS)
"""fairseq model names (``cfg.model._name``) fhb can rebuild: pre-trained, and fine-tuned with CTC
(``hubert_ctc``/``wav2vec_ctc``: the backbone plus its output layer, see `fhb.pipeline.ctc_layout`)."""

PRETRAINING_ONLY = ("final_proj.", "label_embs_concat", "mask_emb", "quantizer.", "project_q.", "target_glu.")
"""State-dict keys (prefixes) used only by the pre-training objective; dropped on load."""

DEFAULT_BATCH_SAMPLES = 16000 * 160
"""Padded samples per transformer batch in :meth:`Teacher.extract` (160 s of audio)."""


def _drop_pretraining_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(PRETRAINING_ONLY)}


@dataclass
class TeacherIdentity:
    """What identifies a teacher and rebuilds its backbone (shared by `Teacher` and `TeacherSpec`).

    Attributes:
        path: checkpoint file.
        sha256: hex digest of the checkpoint file.
        config: the checkpoint's model config (fairseq field names, plain dict).
        arch: ``BackboneConfig`` built from it.
        model_name: ``"hubert"``, ``"wav2vec2"``, or a fine-tuned ``"hubert_ctc"`` / ``"wav2vec_ctc"``
            (``config`` is then the wrapped pre-trained model's, and the model has the CTC output
            layer ``proj``).
        normalize: whether fairseq's task normalised each waveform (zero mean, unit variance)
            before the model.
    """

    path: Path
    sha256: str
    config: dict[str, Any]
    arch: BackboneConfig
    model_name: str
    normalize: bool

    @property
    def num_layers(self) -> int:
        """Transformer layers ``L`` (12 for Base)."""
        return self.arch.encoder_layers

    @property
    def dim(self) -> int:
        """Model dimension ``D`` (768 for Base)."""
        return self.arch.encoder_embed_dim

    @property
    def is_ctc(self) -> bool:
        """A fine-tuned CTC teacher (its model has the output layer ``proj``)."""
        return self.model_name in CTC_MODELS

    @property
    def ctc_vocab(self) -> tuple[str, ...] | None:
        """A CTC teacher's output symbols (the published ``dict.ltr.txt`` letters, checked at load); None otherwise."""
        return LETTERS if self.is_ctc else None


@dataclass
class Teacher(TeacherIdentity):
    """A loaded teacher (its identity, see `TeacherIdentity`, plus the model). Build it with
    :func:`load_teacher` (or `fhb.pipeline.lake_teacher.load_lake_teacher`); :meth:`prepare` applies
    ``normalize``.

    Attributes:
        model: the backbone, in eval mode.
        device: where the model runs.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (autocast on CUDA; fp32 on CPU).
    """

    model: Backbone
    device: torch.device
    precision: str = "fp32"
    max_batch_samples: int = DEFAULT_BATCH_SAMPLES

    def num_frames(self, num_samples: int) -> int:
        """Frames the teacher produces for ``num_samples`` samples (conv arithmetic)."""
        return conv_output_length(num_samples, self.arch.conv_feature_layers)

    def prepare(self, wav: torch.Tensor) -> torch.Tensor:
        """A decoded ``S`` float32 waveform -> what fairseq's model gets (normalised if the task did)."""
        wav = wav.to(torch.float32)
        return F.layer_norm(wav, wav.shape) if self.normalize else wav

    def _layers(self, layers: Sequence[int] | None) -> list[int]:
        if layers is None:
            return list(range(1, self.num_layers + 1))
        out = [int(k) for k in layers]
        bad = [k for k in out if not 1 <= k <= self.num_layers]
        if bad or not out:
            raise FhbError(
                f"layers {bad or out} are not transformer layers of this teacher: "
                f"it has layers 1..{self.num_layers}"
            )
        return out

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The precision's autocast on CUDA; fp32 on any other device."""
        return autocast_context(self.device, self.precision if self.device.type == "cuda" else "fp32")

    def _batches(self, lengths: Sequence[int]) -> Iterator[list[int]]:
        """Indices grouped by similar length, each group under ``max_batch_samples`` padded."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
        batch: list[int] = []
        for i in order:
            longest = lengths[batch[0]] if batch else lengths[i]
            if batch and longest * (len(batch) + 1) > self.max_batch_samples:
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    @overload
    def extract(
        self, wavs: Sequence[torch.Tensor], layers: Sequence[int] | None = ..., cnn_features: Literal[False] = ...
    ) -> list[torch.Tensor]: ...

    @overload
    def extract(
        self, wavs: Sequence[torch.Tensor], layers: Sequence[int] | None = ..., *, cnn_features: Literal[True]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]: ...

    def extract(
        self, wavs: Sequence[torch.Tensor], layers: Sequence[int] | None = None, cnn_features: bool = False
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Hidden states of every utterance.

        Args:
            wavs: ``S_i`` float32 waveforms at 16 kHz, the values fairseq's model gets
                (see :meth:`prepare`).
            layers: transformer layers, numbered ``1..num_layers`` (None: all, in order). Layer
                ``k`` is what fairseq's ``encoder.layers[k-1]`` returns.
            cnn_features: also return the ``post_extract_proj`` output.

        Returns:
            One float32 CPU tensor ``L x T_i x D`` per utterance, in input order; with
            ``cnn_features`` also one ``T_i x D`` tensor per utterance.
        """
        wanted = self._layers(layers)
        depth = max(wanted)
        index = torch.tensor([k - 1 for k in wanted])
        lengths = [int(w.shape[-1]) for w in wavs]
        for i, (w, n) in enumerate(zip(wavs, lengths)):
            if w.ndim != 1 or self.num_frames(n) < 1:
                raise FhbError(
                    f"utterance {i}: expected a 1-D waveform of at least 400 samples. Found: shape {list(w.shape)}"
                )
        targets: list[torch.Tensor | None] = [None] * len(wavs)
        cnn: list[torch.Tensor | None] = [None] * len(wavs)
        with torch.inference_mode(), self._autocast():
            for batch in self._batches(lengths):
                feats = [self._front_end(wavs[i]) for i in batch]
                frames = torch.tensor([f.shape[0] for f in feats], device=self.device)
                x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
                mask = None
                if bool((frames < x.shape[1]).any()):
                    mask = torch.arange(x.shape[1], device=self.device)[None, :] >= frames[:, None]
                outs = torch.stack(self.model.encoder(x, mask, num_layers=depth))  # depth x B x T x D
                outs = outs.index_select(0, index.to(self.device)).float().cpu()
                for j, i in enumerate(batch):
                    n = int(frames[j])
                    targets[i] = outs[:, j, :n].contiguous()
                    if cnn_features:
                        cnn[i] = feats[j].float().cpu()
        result = [t for t in targets if t is not None]
        if cnn_features:
            return result, [c for c in cnn if c is not None]
        return result

    def ctc_logits(self, wavs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The fine-tuned teacher's CTC output per utterance: ``T_i x V`` float32 CPU logits.

        As fairseq's ``Wav2VecEncoder`` in eval mode: the output layer ``proj`` on the encoder's
        output (the last layer, after the final LayerNorm of pre-LN models).
        """
        if not self.is_ctc:
            raise FhbError(f"teacher {self.path}: expected a fine-tuned CTC teacher (hubert_ctc / wav2vec_ctc), "
                           f"found a pre-trained '{self.model_name}' one; pass the fine-tuned checkpoint")
        return [self.logits_of_last(h[0]) for h in self.extract(wavs, layers=[self.num_layers])]

    def logits_of_last(self, last: torch.Tensor) -> torch.Tensor:
        """A CTC teacher's ``T x V`` logits from its last layer's ``T x D`` output (as `extract` returns it)."""
        proj: torch.nn.Linear = self.model.proj  # type: ignore[assignment]
        with torch.inference_mode(), self._autocast():
            return proj(self.model.encoder.final_norm(last.to(self.device))).float().cpu()

    def _front_end(self, wav: torch.Tensor) -> torch.Tensor:
        """One ``S`` waveform -> ``T x D`` encoder input (conv, LayerNorm, projection)."""
        features, _ = self.model.feature_extractor(wav.to(self.device, torch.float32).unsqueeze(0))
        return self.model.project(features)[0]


def _model_name(cfg: dict[str, Any], path: Path) -> str:
    name = str(cfg.get("_name") or "")
    if name not in SUPPORTED_MODELS:
        hint = ""
        if name.endswith("_ctc") or name.endswith("_seq2seq"):
            hint = " (a fine-tuned model fhb cannot rebuild: use the pre-trained checkpoint it was fine-tuned from)"
        raise CheckpointError(
            f"{path} holds a fairseq '{name or 'unknown'}' model{hint}; fhb's teacher reads "
            f"{', '.join(SUPPORTED_MODELS)} checkpoints (HuBERT / wav2vec 2.0 Base/Large, pre-trained or CTC fine-tuned)"
        )
    return name


def _unpack(path: Path, ckpt: dict[str, Any], cfg: dict[str, Any]
            ) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """(model name, backbone model config, task config, state without pre-training-only keys);
    a fine-tuned CTC checkpoint is unwrapped (`unwrap_ctc`)."""
    name = _model_name(cfg, path)
    if name in CTC_MODELS:
        model, task, state = unwrap_ctc(path, cfg, ckpt["model"])
    else:
        model, task, state = cfg, checkpoint_task_config(ckpt), ckpt["model"]
    return name, model, task, _drop_pretraining_keys(state)


def _layer_count(state: dict[str, torch.Tensor], prefix: str) -> int:
    """How many numbered sub-modules ``prefix<i>.`` the state dict holds."""
    return len({k[len(prefix):].split(".", 1)[0] for k in state if k.startswith(prefix)})


class _MetaBuild(TorchFunctionMode):
    """Builds a model on the meta device without torch's Python reference ops.

    ``nn.init``'s initialisers (whose values the checkpoint replaces) are skipped and
    ``torch.linalg.vector_norm`` (weight norm's ``g``) gets its output shape directly: on meta
    tensors both go through ``torch._refs``, whose first call imports ``torch._dynamo`` (~1 s,
    once per process: as long as reading the checkpoint and assigning its weights together).
    """

    _INIT = frozenset({getattr(torch.nn.init, n) for n in (
        "normal_", "uniform_", "constant_", "zeros_", "ones_", "kaiming_normal_", "kaiming_uniform_",
        "xavier_normal_", "xavier_uniform_", "trunc_normal_", "orthogonal_") if hasattr(torch.nn.init, n)}
        | {torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.zero_, torch.Tensor.fill_})

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self._INIT:
            return args[0] if args else kwargs.get("tensor", kwargs.get("self"))
        if func is torch.linalg.vector_norm:
            x = args[0] if args else kwargs["input"]
            if x.device.type == "meta":
                dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
                keepdim = bool(kwargs.get("keepdim", args[3] if len(args) > 3 else False))
                dims = set(range(x.ndim)) if dim is None else {d % x.ndim for d in ((dim,) if isinstance(dim, int) else dim)}
                shape = [1 if i in dims else n for i, n in enumerate(x.shape) if keepdim or i not in dims]
                return torch.empty(shape, dtype=x.dtype, device="meta")
        return func(*args, **kwargs)


def _meta_backbone(path: Path, arch: BackboneConfig, state: dict[str, torch.Tensor]) -> Backbone:
    """The model of ``arch`` on the meta device, once its layer counts match the weights.

    The config comes from the (untrusted) file: a config asking for more layers than the weights
    hold (``encoder_layers: 1000000``) is refused before anything is built, and one that cannot
    be built (a dim that is not a number, heads that do not divide it) gives a CheckpointError.
    """
    counts = {"encoder_layers": (arch.encoder_layers, _layer_count(state, "encoder.layers.")),
              "conv_feature_layers": (len(arch.conv_feature_layers),
                                      _layer_count(state, "feature_extractor.conv_layers."))}
    for key, (configured, stored) in counts.items():
        if configured != stored:
            raise CheckpointError(
                f"{path}: the config says {key} = {configured!r} layers but the weights hold {stored}; "
                f"the checkpoint is inconsistent: use the original file from its publisher"
            )
    try:
        with torch.device("meta"), _MetaBuild():
            return build_backbone(arch)
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as exc:  # 0 heads: dim % 0
        raise CheckpointError(f"{path}: its model config cannot be built ({type(exc).__name__}: {exc}); "
                              "use the original file") from None


def _meta_model(path: Path, model_name: str, arch: BackboneConfig, state: dict[str, torch.Tensor]) -> Backbone:
    """`_meta_backbone`, plus the CTC output layer ``proj`` (``V x D``, from the weights) of a fine-tuned teacher."""
    model = _meta_backbone(path, arch, state)
    if model_name in CTC_MODELS:
        weight = state.get(HEAD_KEYS[0])
        if weight is None or tuple(weight.shape) != (len(LETTERS), arch.encoder_embed_dim):
            raise CheckpointError(
                f"{path}: a CTC teacher expected its output layer proj.weight [{len(LETTERS)} x {arch.encoder_embed_dim}] "
                f"(the published dict.ltr.txt letters), found {None if weight is None else list(weight.shape)}; "
                f"use a teacher fine-tuned on LibriSpeech letters")
        with torch.device("meta"), _MetaBuild():
            model.proj = torch.nn.Linear(arch.encoder_embed_dim, int(weight.shape[0]))
    return model


@dataclass
class TeacherSpec(TeacherIdentity):
    """What a checkpoint declares (its `TeacherIdentity`), read without building the model (see
    :func:`read_teacher_spec`).

    Attributes:
        size: file size in bytes and ``mtime_ns``: with them a worker can check that the file it
            loads is the one that was hashed, instead of hashing it again.
        mtime_ns: see ``size``.
    """

    size: int
    mtime_ns: int


def _spec_from_checkpoint(path: Path, ckpt: dict[str, Any], sha256: str | None) -> TeacherSpec:
    try:
        cfg = checkpoint_config(ckpt)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    name = _model_name(cfg, path)
    try:
        cfg, task = _unpack(path, ckpt, cfg)[1:3]
    except CheckpointError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        arch = BackboneConfig.from_fairseq(cfg)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if not isinstance(task.get("normalize", False), bool):
        raise CheckpointError(f"{path}: task option normalize should be true or false, found "
                              f"{task['normalize']!r}; use the original file from its publisher")
    stat = path.stat()
    return TeacherSpec(
        path=path, sha256=sha256 if sha256 is not None else sha256_file(path), config=dict(cfg), arch=arch,
        model_name=name, normalize=bool(task.get("normalize", False)), size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
    )


def read_teacher_spec(path: str | Path) -> TeacherSpec:
    """A checkpoint's config, architecture and sha256, without loading its weights.

    The tensors are mapped to the ``meta`` device, so only the pickled metadata is read (a few
    milliseconds for HuBERT Base, against ~0.3 s to read and ~0.5 s to build the model); the
    sha256 still reads the whole file once. The client of ``fhb extract`` uses this; the workers
    load the weights (:func:`load_teacher`) and reuse the digest.

    Raises:
        CheckpointError: as :func:`load_teacher`, except for weight mismatches (not checked here).
    """
    path = Path(path)
    ckpt = load_checkpoint(path, map_location="meta")
    spec = _spec_from_checkpoint(path, ckpt, None)
    state = _unpack(path, ckpt, checkpoint_config(ckpt))[3]
    _check_state(path, spec.model_name, _meta_model(path, spec.model_name, spec.arch, state), state)
    return spec


def _check_state(path: Path, name: str, model: Backbone, state: dict[str, torch.Tensor]) -> None:
    """The checkpoint's weights must have exactly the model's names and shapes."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: the weights do not match a {name} model of this config "
            f"(missing: {missing[:5]}{'…' if len(missing) > 5 else ''}; "
            f"unexpected: {unexpected[:5]}{'…' if len(unexpected) > 5 else ''})"
        )
    bad = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{path}: the weights do not fit the architecture: size mismatch for {k}: "
            f"{list(state[k].shape)} in the checkpoint, {list(expected[k].shape)} in the model"
        )


def _run_device(device: str | torch.device, precision: str) -> torch.device:
    if precision not in ("fp32", "fp16", "bf16"):
        raise FhbError(f"precision {precision!r} is not one of fp32, fp16, bf16")
    device = torch.device(device)
    if precision != "fp32" and device.type != "cuda":
        raise FhbError(f"precision {precision} needs --device cuda; on {device.type} use fp32")
    return device


def build_teacher(
    state: Mapping[str, torch.Tensor],
    *,
    path: Path,
    sha256: str,
    config: dict[str, Any],
    model_name: str,
    normalize: bool,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    max_batch_samples: int = DEFAULT_BATCH_SAMPLES,
) -> Teacher:
    """A teacher from its backbone's state dict (fairseq names, pre-training-only keys dropped)
    and the model config it belongs to: what :func:`load_teacher` does once the checkpoint is read,
    and how ``fhb.pipeline.lake_teacher`` rebuilds a lake's stored teacher.

    The model is built on the meta device and the tensors are assigned (no copy when their dtype
    is the model's); names and shapes must match exactly.

    Args:
        state: ``{fairseq name: tensor}``.
        path: the file the weights came from (for messages; ``Teacher.path``).
        sha256: the teacher's identity: the digest of the original checkpoint file.
        config: the fairseq model config (``cfg.model``).
        model_name: ``"hubert"`` or ``"wav2vec2"``.
        normalize: whether the task normalised each waveform.
        device, precision, max_batch_samples: as :func:`load_teacher`.

    Raises:
        CheckpointError: a config that cannot be built, or weights that do not match it.
    """
    device = _run_device(device, precision)
    if model_name not in SUPPORTED_MODELS:
        raise CheckpointError(f"{path}: model {model_name!r} is not one of {', '.join(SUPPORTED_MODELS)}")
    try:
        arch = BackboneConfig.from_fairseq(config)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    # Built on the meta device: no random initialisation of ~95M parameters that the checkpoint
    # overwrites anyway (half of the load time); the checkpoint's tensors are then assigned.
    state = dict(state)
    model = _meta_model(path, model_name, arch, state)
    _check_state(path, model_name, model, state)
    expected = model.state_dict()
    state = {k: v.to(expected[k].dtype).contiguous() for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.eval().to(device)
    return Teacher(
        model=model,
        path=path,
        sha256=sha256,
        config=config,
        arch=arch,
        model_name=model_name,
        normalize=normalize,
        device=device,
        precision=precision,
        max_batch_samples=max_batch_samples,
    )


def load_teacher(
    path: str | Path,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    max_batch_samples: int = DEFAULT_BATCH_SAMPLES,
    *,
    sha256: str | None = None,
) -> Teacher:
    """Load a fairseq HuBERT / wav2vec 2.0 pre-training checkpoint, without fairseq.

    Args:
        path: the ``.pt`` file (fairseq trainer layout: ``cfg`` or legacy ``args``, ``model``).
        device: where to run it.
        precision: ``fp32``, ``fp16`` or ``bf16`` (the last two on CUDA only).
        max_batch_samples: padded samples per transformer batch in ``extract``.
        sha256: the file's digest when the caller already computed it (e.g. from
            :func:`read_teacher_spec` in another process); ``None`` hashes the file.

    Raises:
        CheckpointError: unreadable, hostile, truncated or unsupported checkpoints, and state
            dicts whose keys do not match the architecture (naming the keys).
    """
    path = Path(path)
    device = _run_device(device, precision)
    ckpt = load_checkpoint(path)
    spec = _spec_from_checkpoint(path, ckpt, sha256)
    teacher = build_teacher(
        _unpack(path, ckpt, checkpoint_config(ckpt))[3], path=path, sha256=spec.sha256, config=spec.config,
        model_name=spec.model_name, normalize=spec.normalize, device=device, precision=precision,
        max_batch_samples=max_batch_samples,
    )
    log.info(
        "loaded %s teacher %s: %d layers, dim %d, normalize=%s", teacher.model_name, path.name, teacher.num_layers,
        teacher.dim, teacher.normalize,
    )
    return teacher
