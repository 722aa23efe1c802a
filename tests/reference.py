"""Helpers for reference tests: run fairseq itself on a checkpoint and capture every layer."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def load_fairseq_model(path: Path) -> torch.nn.Module:
    """fairseq's own model for a checkpoint (skips the test when fairseq is not installed)."""
    pytest.importorskip("fairseq", reason="reference tests need fairseq-fixed (make setup installs it)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fairseq import checkpoint_utils

        models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    return models[0].eval()


def fairseq_layers(model: torch.nn.Module, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run fairseq on one ``S`` waveform; return ``L x T x D`` layer outputs and ``T x D`` CNN features.

    Layer ``k`` is what ``model.encoder.layers[k-1]`` returns (captured by a forward hook), the
    CNN features what ``post_extract_proj`` returns.
    """
    captured: dict[str, list[torch.Tensor]] = {"layers": [], "cnn": []}
    hooks = [
        layer.register_forward_hook(lambda m, i, o: captured["layers"].append(o[0].transpose(0, 1)))
        for layer in model.encoder.layers
    ]
    hooks.append(model.post_extract_proj.register_forward_hook(lambda m, i, o: captured["cnn"].append(o)))
    try:
        with torch.inference_mode():
            model.extract_features(wav[None], padding_mask=None, mask=False)
    finally:
        for hook in hooks:
            hook.remove()
    frames = captured["cnn"][0].shape[1]
    # fairseq pads the sequence to a multiple of 2 with a masked frame; drop it.
    layers = torch.stack([x[0, :frames] for x in captured["layers"]])
    return layers, captured["cnn"][0][0]
