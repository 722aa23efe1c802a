"""The student's optimiser and learning-rate schedule: the published FitHuBERT behaviour.

FitHuBERT's ``optimizer: {name: AdamW_with_schedule, lr: 5e-4, warmup_proportion: 0.05, betas:
[0.9, 0.98], eps: 1e-6, weight_decay: 1e-6}`` resolves, at the s3prl commit it pins, to
``Lamb(..., adam=True, correct_bias=True, schedule='warmup_linear')``, which is AdamW with a
schedule built into the optimiser:

- **Parameter groups.** Every parameter whose name contains ``bias`` gets weight decay 0.0; every
  other parameter (LayerNorm/GroupNorm weights and the positional conv's ``weight_g``/``weight_v``
  included) gets weight decay **0.01**. The groups set their decay explicitly, so the yaml's
  ``weight_decay: 1e-6`` has **no effect** in the published code. fhb reproduces that by default
  (``weight_decay=None`` -> `PUBLISHED_WEIGHT_DECAY`); pass a number (``--weight-decay``) to
  override the non-bias group's decay instead (e.g. the yaml's 1e-6 if that is what you meant).
- **Schedule** (``warmup_linear``, progress ``p = t / t_total``, ``w = warmup_proportion``):
  ``p / w`` while ``p < w``, then ``max((p - 1) / (w - 1), 0)``: linear warm-up from 0, then
  linear decay to 0 at ``t_total``. The first update runs at factor 0 (``t = 0``), as s3prl's does.
- Decoupled weight decay: torch's `AdamW` multiplies parameters by ``1 - lr·wd`` before the Adam
  step; s3prl's Lamb adds ``wd·p`` to the Adam update and scales both by ``lr`` — the same update.
- **No gradient clipping** in the published code (Lamb has none, the Lightning trainer sets no
  ``gradient_clip_val``); fhb's default ``clip_grad_norm`` is therefore ``None`` (off).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from fhb.errors import FhbError

logger = logging.getLogger(__name__)

PUBLISHED_WEIGHT_DECAY = 0.01
"""Decay the published code applies to every non-bias parameter (the yaml's value is ignored)."""


@dataclass(frozen=True)
class OptimConfig:
    """The ``optimizer`` section of the yaml, validated, plus fhb's overrides.

    ``weight_decay``: decay of the non-bias group; ``None`` = the published 0.01.
    ``yaml_weight_decay``: the yaml's value, kept for the record (it has no effect by default).
    """

    lr: float = 5e-4
    warmup_proportion: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float | None = None
    yaml_weight_decay: float = 1e-6

    @property
    def effective_weight_decay(self) -> float:
        """Decay applied to non-bias parameters."""
        return PUBLISHED_WEIGHT_DECAY if self.weight_decay is None else self.weight_decay

    @classmethod
    def from_yaml(cls, section: Mapping[str, Any] | None, weight_decay: float | None = None,
                  lr: float | None = None, warmup_proportion: float | None = None) -> OptimConfig:
        """Parse the yaml ``optimizer`` section; keyword arguments (CLI flags) override it."""
        s = dict(section or {})
        name = s.get("name", "AdamW_with_schedule")
        if name != "AdamW_with_schedule":
            raise FhbError(
                f"optimizer.name: expected 'AdamW_with_schedule' (the published FitHuBERT optimiser), "
                f"found {name!r}; set optimizer.name to AdamW_with_schedule"
            )
        try:
            betas = tuple(float(b) for b in s.get("betas", (0.9, 0.98)))
            cfg = cls(
                lr=float(lr if lr is not None else s.get("lr", 5e-4)),
                warmup_proportion=float(
                    warmup_proportion if warmup_proportion is not None else s.get("warmup_proportion", 0.05)
                ),
                betas=(betas[0], betas[1]),
                eps=float(s.get("eps", 1e-6)),
                weight_decay=None if weight_decay is None else float(weight_decay),
                yaml_weight_decay=float(s.get("weight_decay", 1e-6)),
            )
        except (TypeError, ValueError, IndexError) as e:
            raise FhbError(f"optimizer section {s}: expected numbers for lr, betas, eps, warmup_proportion ({e})") from e
        if not 0.0 <= cfg.warmup_proportion < 1.0:
            raise FhbError(
                f"optimizer.warmup_proportion: expected a value in [0, 1), found {cfg.warmup_proportion}; "
                f"use e.g. 0.05"
            )
        if cfg.lr <= 0:
            raise FhbError(f"optimizer.lr: expected > 0, found {cfg.lr}")
        return cfg


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """s3prl's grouping: names containing ``bias`` without decay, all others with ``weight_decay``."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if "bias" in name else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_linear(step: int, total_steps: int, warmup_proportion: float) -> float:
    """s3prl's ``warmup_linear`` factor at update ``step`` (0-based) of ``total_steps``."""
    progress = step / max(total_steps, 1)
    if progress < warmup_proportion:
        return progress / warmup_proportion
    return max((progress - 1.0) / (warmup_proportion - 1.0), 0.0)


def build_optimizer(
    model: torch.nn.Module, cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.AdamW, LambdaLR]:
    """AdamW (published grouping) and its ``warmup_linear`` schedule over ``total_steps`` updates.

    Call ``scheduler.step()`` once after each ``optimizer.step()``.
    """
    if total_steps < 1:
        raise FhbError(f"total training steps: expected >= 1, found {total_steps}; train for more steps or epochs")
    groups = parameter_groups(model, cfg.effective_weight_decay)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    sched = LambdaLR(opt, lambda s: warmup_linear(s, total_steps, cfg.warmup_proportion))
    logger.info(
        "AdamW lr %.3g, betas %s, eps %.1g, weight decay %.3g on %d non-bias tensors (yaml value %.1g %s), "
        "warm-up %d of %d steps", cfg.lr, cfg.betas, cfg.eps, cfg.effective_weight_decay, len(groups[0]["params"]),
        cfg.yaml_weight_decay, "ignored, as published" if cfg.weight_decay is None else "overridden",
        int(cfg.warmup_proportion * total_steps), total_steps,
    )
    return opt, sched
