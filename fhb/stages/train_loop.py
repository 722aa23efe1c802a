"""Stage 2's inner loop: one optimiser update (gradient accumulation, AMP, clipping), evaluation
on the dev split, and the per-window timing figures (steps/s, loader-wait share).

Kept apart from `fhb.stages.distill` (which resolves the configuration, opens the lake, builds
the objects and owns checkpoints) so each piece stays small.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for fp16/bf16 on ``device``; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A `GradScaler`, enabled only for fp16 on CUDA (bf16 and CPU need none)."""
    return torch.amp.GradScaler(device.type, enabled=(precision == "fp16" and device.type == "cuda"))


@dataclass
class LossValues:
    """One micro-batch's losses: ``total`` (differentiable scalar) and per-layer floats.

    ``layers``: name -> value as the published code logs it (``rand_l{i}`` weighted, ``l{last}``
    unweighted); ``last``: the unweighted last-layer loss (the published validation loss).
    """

    total: torch.Tensor
    layers: dict[str, float] = field(default_factory=dict)
    last: float = float("nan")


def pad_targets(targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-utterance ``L x T_i x D`` -> (``B x L x T x D`` zero-padded, ``B`` lengths)."""
    lengths = torch.tensor([t.shape[1] for t in targets], dtype=torch.long)
    b, (n_layers, _, d) = len(targets), targets[0].shape
    out = targets[0].new_zeros((b, n_layers, int(lengths.max()), d))
    for i, t in enumerate(targets):
        out[i, :, : t.shape[1]] = t
    return out, lengths


def online_targets(teacher: Any, wavs: torch.Tensor, wav_lengths: torch.Tensor,
                   layers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the teacher on a batch: ``B x S`` waveforms -> (``B x L x T x D``, ``B`` frame counts).

    Each utterance is cut to its length and prepared as fairseq's task would (`Teacher.prepare`),
    exactly what the extraction stage stores in the lake.
    """
    wavs_cpu = wavs.detach().float().cpu()
    prepared = [teacher.prepare(w[: int(n)]) for w, n in zip(wavs_cpu, wav_lengths.tolist())]
    return pad_targets(teacher.extract(prepared, layers=layers))


class StepTimer:
    """Accumulates wall time spent waiting on the loader vs the whole step, per logging window."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new window."""
        self.start = time.perf_counter()
        self.wait = 0.0
        self.steps = 0

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Time spent in here counts as loader wait."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.wait += time.perf_counter() - t0

    def figures(self) -> tuple[float, float]:
        """(updates per second, loader-wait share) of the window so far."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return self.steps / elapsed, self.wait / elapsed
