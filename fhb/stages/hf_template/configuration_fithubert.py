"""transformers configuration of a FitHuBERT student exported by fhb (``trust_remote_code=True``).

Dependencies: torch, transformers and the standard library. ``distiller`` is fhb's ``distiller:``
section (the published FitHuBERT yaml's architecture keys); ``modeling_fithubert.py`` builds the
student from it with fhb's own code (``fhb_*.py``).
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

__all__ = ["FitHuBERTConfig"]


class FitHuBERTConfig(PreTrainedConfig):
    """A FitHuBERT student's architecture.

    Attributes:
        distiller: the ``distiller:`` section (``StudentConfig.to_dict()`` of fhb).
        hidden_size: ``D`` of the transformer layers (``encoder_embed_dim``).
        num_hidden_layers: transformer layers ``L`` (``hidden_states`` has ``L + 1`` entries).
        reduce_factor: ``f`` of the time-reduction layer (1 without it).
        frame_stride: waveform samples per ``hidden_states`` frame (``320 * f``: 640 = 40 ms).
        prediction_stride: samples per frame of ``prediction`` (320 = 20 ms).
        prediction_dim: feature size of ``prediction`` (the teacher's ``D``, 768 for HuBERT Base).
        sampling_rate: Hz of the input waveform.
    """

    model_type = "fithubert"

    distiller: dict[str, Any] | None = None
    hidden_size: int = 480
    num_hidden_layers: int = 12
    reduce_factor: int = 2
    frame_stride: int = 640
    prediction_stride: int = 320
    prediction_dim: int = 768
    sampling_rate: int = 16000

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Samples per ``hidden_states`` frame (what transformers' pipelines chunk by)."""
        return self.frame_stride
