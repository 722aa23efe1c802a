"""S3PRL ``UpstreamExpert`` for a FitHuBERT student exported by fhb.

Dependencies: torch and pyyaml only (safetensors when installed). The model code lives in
``_fhb/``: fhb's own student modules, bundled at export time (see ``_fhb/BUNDLE.json`` for their
fhb version and sha256).

Weights: ``-k fithubert.safetensors``, or ``-k fithubert.ckpt``, in which case a
``fithubert.safetensors`` next to it is read instead (same tensors, no pickle) when the
``safetensors`` package is installed.

What ``forward`` returns for ``L`` waveform samples (``T' = conv frames``, 20 ms at 16 kHz;
``f`` = the time-reduction factor, 2 for FitHuBERT, 1 without the reduction layer;
``T2 = T' // f``; ``D`` = ``encoder_embed_dim``):

* ``hidden_states``: ``encoder_layers + 1`` tensors, each ``B x T2 x D``, one frame rate
  (``get_downsample_rates("hidden_states") = 320 * f``: 640 for FitHuBERT), so S3PRL's
  weighted-sum featurizer works:

  - index 0: the input of the first transformer layer. With the time-reduction layer that is
    its output (the Conv1d over the positional-conv + LayerNorm embedding, at 40 ms); without it,
    the embedding itself (``x + pos_conv(x)``, then the post-LN ``encoder.layer_norm``).
  - index ``i`` (1..L): the output of transformer layer ``i`` (fhb's teacher-layer numbering;
    fairseq's ``encoder.layers[i]`` with the reduction layer at ``layers[0]``).

* ``last_hidden_state``: the published FitHuBERT upstream's ``last_hidden_state``: the last
  prediction head (``final_proj``: ConvTranspose1d upsampler, Linear D -> 768) applied to the
  last layer, ``B x (f * T2) x D_t`` at 20 ms (``get_downsample_rates = 320``). Use
  ``-s last_hidden_state`` to reproduce the published features.

Frames of padded utterances beyond their length are padding (computed with the reduced
length ``T2_b = T'_b // f``); the first conv's GroupNorm sees the padded batch, as in the
published model.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from collections.abc import Mapping
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from ._fhb.nn.frames import total_stride
from ._fhb.student.config import FitConfig
from ._fhb.student.model import FitHuBERT, build_fit_student

__all__ = ["UpstreamExpert"]

STUDENT_PREFIX = "student_model."
TEACHER_PREFIX = "teacher_model."
SAMPLE_RATE = 16000


def _read_safetensors(path: str) -> Mapping[str, Any]:
    """The tensors of an fhb ``.safetensors`` export and the config in its metadata (if any).

    safetensors is optional for this upstream, hence imported by name.
    """
    safetensors = importlib.import_module("safetensors")
    with safetensors.safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
    stored = metadata.get("fhb_config")
    tensors = importlib.import_module("safetensors.torch").load_file(path)
    return {"model": tensors, "config": json.loads(stored) if stored else None}


def _read_checkpoint(ckpt: str) -> Mapping[str, Any]:
    """The student's weights and stored config: safetensors when available (``ckpt`` itself, or
    the ``.safetensors`` next to it), else ``torch.load`` (tensors and plain containers only)."""
    if ckpt.endswith(".safetensors"):
        if importlib.util.find_spec("safetensors") is None:
            raise RuntimeError(f"{ckpt}: reading it needs the safetensors package: pip install safetensors")
        return _read_safetensors(ckpt)
    sibling = os.path.splitext(ckpt)[0] + ".safetensors"
    if os.path.isfile(sibling) and importlib.util.find_spec("safetensors") is not None:
        return _read_safetensors(sibling)
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the fix
        raise RuntimeError(
            f"{ckpt}: could not be read with torch.load(weights_only=True) ({type(exc).__name__}: {exc}). "
            "The published Lightning files pickle optimizer classes; convert them once with "
            "`fhb import-checkpoint CKPT --config YAML --out RUN` and `fhb export-s3prl --run RUN --out DIR`, "
            "then use DIR/fithubert.ckpt"
        ) from None
    if not isinstance(state, Mapping):
        raise RuntimeError(f"{ckpt}: expected a checkpoint dict, found {type(state).__name__}")
    return state


def _student_weights(ckpt: str, state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``student_model.*`` of a Lightning ``state_dict`` (prefix removed), or fhb's ``model``."""
    if "state_dict" in state:
        weights = state["state_dict"]
        student = {k[len(STUDENT_PREFIX):]: v for k, v in weights.items() if k.startswith(STUDENT_PREFIX)}
    elif "model" in state:  # fhb's own student format
        student = dict(state["model"])
    else:
        student = {}
    if not student:
        raise RuntimeError(f"{ckpt}: expected student_model.* weights in state_dict, found none")
    return student


def _read_config(ckpt: str, model_config: str | None, state: Mapping[str, Any]) -> FitConfig:
    """The yaml given with ``-g``, else the config stored in the checkpoint."""
    if model_config:
        with open(model_config, encoding="utf-8") as f:
            return FitConfig.from_dict(yaml.safe_load(f), str(model_config))
    hparams = state.get("hyper_parameters")
    stored = hparams.get("cfg") if isinstance(hparams, Mapping) else state.get("config")
    if not isinstance(stored, Mapping):
        raise RuntimeError(f"{ckpt}: no config stored in the checkpoint; pass -g fithubert.yaml")
    return FitConfig.from_dict(stored, f"{ckpt} (stored config)")


class UpstreamExpert(nn.Module):
    """A FitHuBERT student as an S3PRL upstream (see the module docstring for the outputs).

    Args:
        ckpt: ``fithubert.ckpt`` (Lightning layout, ``student_model.<key>``, all heads; a
            ``fithubert.safetensors`` next to it is preferred) or ``fithubert.safetensors``.
        model_config: ``fithubert.yaml`` (its ``distiller:`` section builds the model); None
            reads ``hyper_parameters['cfg']`` from ``ckpt``.
    """

    def __init__(self, ckpt: str, model_config: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        state = _read_checkpoint(ckpt)
        config = _read_config(ckpt, model_config, state)
        # as the published upstream: the weights come from the file, never from a teacher
        distiller = dataclasses.replace(config.distiller, init_conv_layers=False, init_encoder_layers=0)
        model = build_fit_student(dataclasses.replace(config, distiller=distiller))
        weights = _student_weights(ckpt, state)
        if not any(k.startswith("proj_head.") for k in weights):
            model.disable_projection_heads()
        model.load_state_dict(weights, strict=True)
        model.disable_projection_heads()
        model.eval()
        self.model: FitHuBERT = model
        self.config = config
        stride = total_stride(model.front_specs)
        self._rates = {"hidden_states": stride * model.reduce_factor, "last_hidden_state": stride}

    def get_downsample_rates(self, key: str) -> int:
        """Waveform samples per frame of output ``key`` (640 / 320 for FitHuBERT, see above)."""
        try:
            return self._rates[key]
        except KeyError:
            raise ValueError(f"unknown feature {key!r}; expected one of {sorted(self._rates)}") from None

    def forward(self, wavs: list[torch.Tensor]) -> dict[str, Any]:
        """Run the student on S3PRL's input.

        Args:
            wavs: ``B`` 1-D float32 waveforms at 16 kHz (unnormalised, as FitHuBERT was trained).

        Returns:
            ``{"hidden_states": [B x T2 x D] * (L + 1), "last_hidden_state": B x (f*T2) x D_t}``.
        """
        if not wavs or any(w.dim() != 1 for w in wavs):
            raise ValueError(f"Expected a non-empty list of 1-D waveforms. Found: {[list(w.shape) for w in wavs]}")
        device = next(self.model.parameters()).device
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long, device=device)
        padded = pad_sequence([w.to(device, torch.float32) for w in wavs], batch_first=True)
        out = self.model(padded, lengths)
        assert out.first_layer_input is not None  # the student's forward always sets it
        hidden = [out.first_layer_input, *out.hidden_states]
        return {"hidden_states": hidden, "last_hidden_state": out.last_hidden_state}
