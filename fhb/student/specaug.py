"""SpecAugment on the student's input features (``train.specaug: True`` with the ``specaug:`` section).

The published code (``utils/specaug.py``, ``SpecAug``) applies it only to its mel-spectrogram
front-end. fhb's students read waveforms, so it is applied where the waveform student's input
features are: the conv stack's output ``B x T' x C``, before the feature LayerNorm (where the
published mel student applies it: before its mel head and LayerNorm), in training only. The
targets stay the teacher's outputs on the clean audio (the lake's, or the online teacher's on the
unmasked batch).

Per batch, in the published order: time warp (``apply_time_warp``), ``num_freq_mask`` channel
masks, ``num_time_mask`` time masks. Each mask of each utterance has a width drawn from
``[lo, hi)`` of its ``*_mask_width_range`` and a start drawn from ``[0, max(1, D - widest))``
(``D``: channels, or the batch's padded frames), and is filled with 0 (``replace_with_zero``) or
with the mean of the whole batch's features (detached). ``adaptive`` scales the time masks with
``D``: ``min(int(adaptive_number_ratio * D), max_n_time_masks)`` masks of width below
``min(hi, int(adaptive_size_ratio * D))``. The time warp moves a centre frame drawn from
``[w, t - w)`` to ``[c - w, c + w) + 1`` by bicubic interpolation over the utterance's ``t`` valid
frames (``w = time_warp_window``; utterances of ``2 w`` frames or fewer are left as they are).

Every draw comes from torch's global CPU generator (seeded by the run's seed and saved in its
checkpoints), so masks are the same on CPU and CUDA, deterministic for a seed and unchanged by a
resume.

Deliberate differences from the published code: the published mel student passes a ``B x C x T``
tensor where ``SpecAug`` expects ``B x T x C``, so its "time" masks cover mel channels and its
"freq" masks frames; here time masks cover frames and channel masks channels, as the section's
names say. The published student also masks during validation; fhb's dev loss is on clean input.
The published adaptive width can reach ``randint(0, 0)`` (an error) for utterances under 25
frames; fhb keeps at least the range ``[lo, lo + 1)``.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from fhb.errors import FhbError
from fhb.student.config import typed_value

if TYPE_CHECKING:
    from fhb.student.config import FitConfig

__all__ = ["SpecAugConfig", "SpecAugment", "spec_augment"]


@dataclass(frozen=True)
class SpecAugConfig:
    """The ``specaug:`` section (defaults: the published ``SpecAug`` class's).

    Attributes:
        apply_time_warp / time_warp_window / time_warp_mode: the time warp and its window ``w``
            and interpolation mode.
        apply_freq_mask / freq_mask_width_range / num_freq_mask: channel masks.
        apply_time_mask / time_mask_width_range / num_time_mask: time masks.
        adaptive / adaptive_number_ratio / adaptive_size_ratio / max_n_time_masks: time masks
            scaled with the batch's frames.
        replace_with_zero: fill masks with 0 (False: with the batch's mean).
    """

    apply_time_warp: bool = True
    time_warp_window: int = 5
    time_warp_mode: str = "bicubic"
    apply_freq_mask: bool = True
    freq_mask_width_range: tuple[int, int] = (0, 20)
    num_freq_mask: int = 2
    apply_time_mask: bool = True
    time_mask_width_range: tuple[int, int] = (0, 100)
    num_time_mask: int = 2
    adaptive_number_ratio: float = 0.04
    adaptive_size_ratio: float = 0.04
    max_n_time_masks: int = 20
    adaptive: bool = False
    replace_with_zero: bool = True

    @classmethod
    def from_dict(cls, section: Mapping[str, Any], source: str = "config") -> SpecAugConfig:
        """Build and validate from a ``specaug:`` mapping (missing keys take the defaults).

        Raises:
            FhbError: an unknown key, a value of the wrong type or range, naming the key.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in section if k not in names)
        if unknown:
            raise FhbError(f"{source}: specaug: unknown keys {unknown}; expected only {sorted(names)}; "
                           "remove or rename them")
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for name, value in section.items():
            kwargs[name] = typed_value(source, f"specaug.{name}", value, hints[name])
        cfg = cls(**kwargs)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        """Refuse settings the published code rejects or that cannot mask anything sensible.

        Raises:
            FhbError: naming the key, the value found and the fix.
        """
        if not (self.apply_time_warp or self.apply_freq_mask or self.apply_time_mask):
            raise FhbError(f"{source}: specaug: expected at least one of apply_time_warp, apply_freq_mask, "
                           "apply_time_mask true, found none (the published SpecAug asserts it); enable one "
                           "or set train.specaug: False")
        for key in ("freq_mask_width_range", "time_mask_width_range"):
            lo, hi = getattr(self, key)
            if not 0 <= lo < hi:
                raise FhbError(f"{source}: specaug.{key}: expected [lo, hi] with 0 <= lo < hi, found "
                               f"{[lo, hi]}; e.g. [0, 27]")
        for key in ("num_freq_mask", "num_time_mask", "max_n_time_masks", "time_warp_window"):
            if getattr(self, key) < 0:
                raise FhbError(f"{source}: specaug.{key}: expected an int >= 0, found {getattr(self, key)}; "
                               "fix the value")
        if self.time_warp_mode not in ("bicubic", "bilinear"):
            raise FhbError(f"{source}: specaug.time_warp_mode: expected 'bicubic' or 'bilinear', "
                           f"found {self.time_warp_mode!r}; set time_warp_mode: bicubic")


class SpecAugment(nn.Module):
    """Time warp and masks on ``B x T x C`` features, in training mode only (no parameters).

    Args:
        cfg: the ``specaug:`` section.
    """

    def __init__(self, cfg: SpecAugConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def extra_repr(self) -> str:
        return repr(self.cfg)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``B x T x C`` features, ``B`` valid frames -> the augmented ``B x T x C`` (unchanged in eval mode)."""
        if not self.training:
            return features
        cfg = self.cfg
        x = features
        if cfg.apply_time_warp:
            x = self._time_warp(x, lengths)
        if cfg.apply_freq_mask:
            x = self._mask(x, axis=2, width=cfg.freq_mask_width_range, count=cfg.num_freq_mask)
        if cfg.apply_time_mask:
            count, (lo, hi) = cfg.num_time_mask, cfg.time_mask_width_range
            if cfg.adaptive:
                frames = x.shape[1]
                if cfg.adaptive_number_ratio > 0:
                    count = min(int(cfg.adaptive_number_ratio * frames), cfg.max_n_time_masks)
                if cfg.adaptive_size_ratio > 0:
                    hi = max(min(hi, int(cfg.adaptive_size_ratio * frames)), lo + 1)
            x = self._mask(x, axis=1, width=(lo, hi), count=count)
        return x

    def _mask(self, x: torch.Tensor, axis: int, width: tuple[int, int], count: int) -> torch.Tensor:
        """``count`` masks per utterance along ``axis`` (1: frames, 2: channels), widths in ``[lo, hi)``."""
        b, size = x.shape[0], x.shape[axis]
        lengths = torch.randint(width[0], width[1], (b, count)).unsqueeze(2)
        widest = int(lengths.max()) if count else 0
        starts = torch.randint(0, max(1, size - widest), (b, count)).unsqueeze(2)
        positions = torch.arange(size)[None, None, :]
        mask = ((starts <= positions) & (positions < starts + lengths)).any(dim=1)  # B x size
        mask = (mask.unsqueeze(2) if axis == 1 else mask.unsqueeze(1)).to(x.device)
        value = 0.0 if self.cfg.replace_with_zero else float(x.detach().float().mean())
        return x.masked_fill(mask, value)

    def _time_warp(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Warp each utterance's valid frames around a random centre (padded frames untouched)."""
        w, mode = self.cfg.time_warp_window, self.cfg.time_warp_mode
        rows = []
        for i in range(x.shape[0]):
            t = int(lengths[i])
            row = x[i]
            if t - w > w:
                centre = int(torch.randint(w, t - w, (1,))[0])
                warped = int(torch.randint(centre - w, centre + w, (1,))[0]) + 1
                valid = row[None, None, :t]  # 1 x 1 x t x C
                c = valid.shape[-1]
                left = F.interpolate(valid[:, :, :centre], (warped, c), mode=mode, align_corners=False)
                right = F.interpolate(valid[:, :, centre:], (t - warped, c), mode=mode, align_corners=False)
                row = torch.cat([left[0, 0], right[0, 0], row[t:]], dim=0)
            rows.append(row)
        return torch.stack(rows)


def spec_augment(fit: FitConfig) -> SpecAugment | None:
    """The student's `SpecAugment` when ``train.specaug`` is on (None otherwise)."""
    if not fit.train.get("specaug"):
        return None
    return SpecAugment(SpecAugConfig.from_dict(fit.specaug))
