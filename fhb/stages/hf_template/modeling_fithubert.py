"""transformers model of a FitHuBERT student exported by fhb (``trust_remote_code=True``).

Dependencies: torch, transformers and the standard library. The model is fhb's own
``FitHuBERT`` (``fhb_student_model.py`` and the ``fhb_*.py`` modules it imports, bundled at
export time, see ``fhb_bundle.json``); this file only adapts its inputs and outputs.

What ``forward`` returns for a ``B x S`` batch (``T' = `` conv frames, 20 ms at 16 kHz; ``f`` =
``config.reduce_factor``, 2 for FitHuBERT; ``T2 = T' // f``; ``D = config.hidden_size``):

* ``hidden_states`` (with ``output_hidden_states=True``): ``L + 1`` tensors ``B x T2 x D``, one
  frame rate (``config.frame_stride`` samples: 640 = 40 ms for FitHuBERT). Index 0 is the input of
  the first transformer layer (the time-reduction Conv1d's output; without that layer the
  embedding after the positional conv), index ``i`` the output of transformer layer ``i``: the
  same list as the S3PRL upstream's ``hidden_states``.
* ``last_hidden_state``: the last transformer layer's output (``hidden_states[-1]`` for post-LN
  students), ``B x T2 x D``, as for every transformers speech encoder.
* ``prediction``: the published FitHuBERT upstream's ``last_hidden_state``: the last prediction
  head (ConvTranspose1d upsampler, Linear ``D -> 768``) on the last layer,
  ``B x (f * T2) x 768`` at 20 ms.

``attention_mask`` (``B x S``, 1 = sample, 0 = padding after the end) gives each utterance's
length; the first conv's GroupNorm sees the padded batch, as in the published model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_fithubert import FitHuBERTConfig
from .fhb_nn_frames import conv_output_lengths
from .fhb_student_config import StudentConfig
from .fhb_student_model import FitHuBERT, build_student

__all__ = ["FitHuBERTModel", "FitHuBERTModelOutput", "FitHuBERTPreTrainedModel"]


@dataclass
class FitHuBERTModelOutput(ModelOutput):
    """What :meth:`FitHuBERTModel.forward` returns (see the module docstring for the shapes).

    Attributes:
        last_hidden_state: ``B x T2 x D``, the last transformer layer's output.
        hidden_states: ``L + 1`` tensors ``B x T2 x D`` (with ``output_hidden_states=True``).
        prediction: ``B x (f * T2) x D_t``, the published upstream's ``last_hidden_state``.
    """

    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    prediction: torch.FloatTensor | None = None


class FitHuBERTPreTrainedModel(PreTrainedModel):
    """Loading and saving of :class:`FitHuBERTModel` (transformers' ``PreTrainedModel``)."""

    config_class = FitHuBERTConfig
    base_model_prefix = "fithubert"
    main_input_name = "input_values"
    input_modalities = "audio"

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing to do: fhb's builder initialises every parameter, and the export holds them all."""


class FitHuBERTModel(FitHuBERTPreTrainedModel):
    """fhb's FitHuBERT student in its inference layout (``student.final_proj`` = the last head).

    Args:
        config: :class:`FitHuBERTConfig`; its ``distiller`` section builds the student.
    """

    def __init__(self, config: FitHuBERTConfig) -> None:
        super().__init__(config)
        student_config = StudentConfig.from_dict(config.distiller or {}, "config.json distiller")
        # the weights come from model.safetensors, never from a teacher
        student_config = dataclasses.replace(student_config, init_conv_layers=False, init_encoder_layers=0)
        self.student: FitHuBERT = build_student(student_config)
        self.student.disable_projection_heads()
        self.post_init()

    def hidden_state_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        """``B`` valid samples -> ``B`` valid frames of ``hidden_states`` (conv frames // f)."""
        frames = conv_output_lengths(input_lengths, self.student.front_specs)
        return torch.div(frames, self.student.reduce_factor, rounding_mode="floor")

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: object,
    ) -> FitHuBERTModelOutput | tuple[torch.Tensor, ...]:
        """Run the student.

        Args:
            input_values: ``B x S`` float waveforms at 16 kHz (not normalised), zero-padded.
            attention_mask: ``B x S``, 1 for samples, 0 for padding (None: nothing padded).
            output_hidden_states: return ``hidden_states`` (default: the config's).
            return_dict: a :class:`FitHuBERTModelOutput` (default) or a tuple.
        """
        if input_values.ndim != 2:
            raise ValueError(f"Expected a B x S waveform batch. Found: {list(input_values.shape)}")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if return_dict is None:
            return_dict = self.config.return_dict
        lengths = None if attention_mask is None else attention_mask.sum(-1).to(torch.long)
        embedded: list[torch.Tensor] = []
        # the embedding (index 0 without a time-reduction layer) is the encoder dropout's output
        hook = self.student.encoder.dropout.register_forward_hook(lambda _m, _i, out: embedded.append(out))
        try:
            out = self.student(input_values, lengths)
        finally:
            hook.remove()
        first = out.reduced if out.reduced is not None else embedded[-1]
        hidden = (first, *out.hidden_states)
        output = FitHuBERTModelOutput(
            last_hidden_state=self.student.encoder.final_norm(out.hidden_states[-1]),
            hidden_states=hidden if output_hidden_states else None,
            prediction=out.last_hidden_state,
        )
        return output if return_dict else output.to_tuple()
