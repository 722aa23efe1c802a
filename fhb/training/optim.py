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
- **Schedule** (``warmup_linear``, progress ``p = k / t_total`` at update ``k = 1, 2, ...``,
  ``w = warmup_proportion``): ``p / w`` while ``p < w``, then ``max((p - 1) / (w - 1), 0)``: linear
  warm-up, then linear decay to 0 at ``t_total``. s3prl's optimiser counts its step before applying
  the schedule, so the first update already runs at ``1 / (w * t_total)`` (not 0).
  `build_optimizer`'s scheduler reproduces that (``LambdaLR`` at ``s`` gives update ``s + 1``'s
  factor). The trainer advances it only on updates the optimiser applied: an update that the fp16
  grad scaler skips (inf/NaN gradients) moves neither the schedule nor the optimiser's step count,
  as in s3prl, whose schedule lives inside the optimiser.
- **The update** (`S3prlAdamW`, fhb's default, ``OptimConfig.impl = "s3prl"``): s3prl's
  ``Lamb(adam=True, correct_bias=True)`` step, ``m``/``v`` the moving averages at step ``t``::

      p -= lr_t * sqrt(1 - b2^t) / (1 - b1^t) * (m / (sqrt(v) + eps) + wd * p)

  It differs from `torch.optim.AdamW` (``impl = "torch"``, fhb's earlier choice) in two ways that
  matter only while the bias corrections are far from 1 (the first hundreds of updates with
  ``b2 = 0.98``): ``eps`` is added to ``sqrt(v)``, not to the
  bias-corrected ``sqrt(v / (1 - b2^t))``, and the weight decay is scaled by the bias-correction
  factor (torch multiplies ``p`` by ``1 - lr_t * wd`` instead). The two are otherwise the same
  update; ``tests/training/test_optim.py`` checks `S3prlAdamW` against a direct transcription of the
  formula and measures its distance from torch's. (The formula is s3prl's Lamb family as issue 13
  describes it: ``adam_step = m / (sqrt(v) + eps) + wd * p``, step size ``lr * sqrt(1 - b2^t) /
  (1 - b1^t)`` with ``correct_bias``.)
- **No gradient clipping** in the published code (Lamb has none, the Lightning trainer sets no
  ``gradient_clip_val``); fhb's default ``clip_grad_norm`` is therefore ``None`` (off).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

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
    ``impl``: ``s3prl`` (`S3prlAdamW`, the published update) or ``torch`` (`torch.optim.AdamW`).
    """

    lr: float = 5e-4
    warmup_proportion: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float | None = None
    yaml_weight_decay: float = 1e-6
    impl: Literal["s3prl", "torch"] = "s3prl"

    @property
    def effective_weight_decay(self) -> float:
        """Decay applied to non-bias parameters."""
        return PUBLISHED_WEIGHT_DECAY if self.weight_decay is None else self.weight_decay

    @classmethod
    def from_yaml(cls, section: Mapping[str, Any] | None, weight_decay: float | None = None,
                  lr: float | None = None, warmup_proportion: float | None = None,
                  impl: str = "s3prl") -> OptimConfig:
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
        if not 0 < cfg.lr <= 1e3:  # NaN fails too
            raise FhbError(f"optimizer.lr: expected > 0 and <= 1000, found {cfg.lr}; fix the value")
        if not all(0.0 <= b < 1.0 for b in cfg.betas):
            raise FhbError(f"optimizer.betas: expected two numbers in [0, 1), found {list(cfg.betas)}; use [0.9, 0.98]")
        if not 0.0 < cfg.eps <= 1.0:
            raise FhbError(f"optimizer.eps: expected a number > 0 and <= 1, found {cfg.eps}; use 1.e-6")
        if not 0.0 <= cfg.yaml_weight_decay <= 1e3:
            raise FhbError(f"optimizer.weight_decay: expected a number >= 0 and <= 1000, found "
                           f"{cfg.yaml_weight_decay}; fix the value")
        if impl not in ("s3prl", "torch"):
            raise FhbError(f"--optimizer-impl: expected s3prl or torch, found {impl!r}; pass one of them")
        return dataclasses.replace(cfg, impl=impl)  # type: ignore[arg-type]


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
    """s3prl's ``warmup_linear`` factor at step count ``step`` of ``total_steps``.

    s3prl evaluates it after counting the update, so update ``k`` (1-based) runs at
    ``warmup_linear(k, ...)``; `build_optimizer`'s scheduler does the same.
    """
    progress = step / max(total_steps, 1)
    if progress < warmup_proportion:
        return progress / warmup_proportion
    return max((progress - 1.0) / (warmup_proportion - 1.0), 0.0)


class S3prlAdamW(torch.optim.Optimizer):
    """s3prl's ``Lamb(adam=True, correct_bias=True)`` update (see the module docstring).

    The learning rate of each group is the scheduled one (set by the ``LambdaLR`` of
    `build_optimizer`); the step count ``t`` is per parameter and advances only when `step` runs.
    """

    def __init__(self, params: Iterable[dict[str, Any]], lr: float, betas: tuple[float, float],
                 eps: float) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": 0.0})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                t = state["step"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                update = m / v.sqrt().add_(group["eps"])
                if group["weight_decay"] != 0:
                    update.add_(p, alpha=group["weight_decay"])
                step_size = group["lr"] * math.sqrt(1 - b2**t) / (1 - b1**t)
                p.add_(update, alpha=-step_size)
        return loss


def build_optimizer(
    model: torch.nn.Module, cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """The published optimiser (grouping, update per ``cfg.impl``) and its ``warmup_linear`` schedule.

    Call ``scheduler.step()`` once after each ``optimizer.step()`` that was applied.
    """
    if total_steps < 1:
        raise FhbError(f"total training steps: expected >= 1, found {total_steps}; train for more steps or epochs")
    groups = parameter_groups(model, cfg.effective_weight_decay)
    opt: torch.optim.Optimizer
    if cfg.impl == "s3prl":
        opt = S3prlAdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    # LambdaLR's step s sets the lr of update s + 1 (1-based), which s3prl schedules at step count s + 1.
    sched = LambdaLR(opt, lambda s: warmup_linear(s + 1, total_steps, cfg.warmup_proportion))
    logger.info(
        "AdamW (%s) lr %.3g, betas %s, eps %.1g, weight decay %.3g on %d non-bias tensors (yaml value %.1g %s), "
        "warm-up %d of %d steps", cfg.impl, cfg.lr, cfg.betas, cfg.eps, cfg.effective_weight_decay, len(groups[0]["params"]),
        cfg.yaml_weight_decay, "ignored, as published" if cfg.weight_decay is None else "overridden",
        int(cfg.warmup_proportion * total_steps), total_steps,
    )
    return opt, sched
