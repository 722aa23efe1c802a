"""The optimiser (`fhb.training.optim`): the published grouping, schedule and yaml section."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fhb.errors import FhbError
from fhb.student.config import load_fithubert_yaml
from fhb.student.model import build_student
from fhb.training.optim import (
    PUBLISHED_WEIGHT_DECAY,
    OptimConfig,
    build_optimizer,
    parameter_groups,
    warmup_linear,
)

TINY = Path(__file__).resolve().parents[2] / "fhb" / "configs" / "tiny.yaml"


def test_published_optimizer_grouping_and_schedule() -> None:
    """Weight decay 0.01 on every non-bias tensor (norm weights too), 0 on biases; warmup_linear."""
    fit = load_fithubert_yaml(TINY)
    model = build_student(fit.distiller)
    opt, sched = build_optimizer(model, OptimConfig.from_yaml(fit.optimizer), total_steps=100)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("bias" in names[id(p)] for p in no_decay["params"])
    assert any("layer_norm" in names[id(p)] for p in decay["params"])
    assert warmup_linear(0, 100, 0.05) == 0.0
    assert warmup_linear(5, 100, 0.05) == pytest.approx(1.0)
    assert warmup_linear(50, 100, 0.05) == pytest.approx(50 / 95)
    assert warmup_linear(100, 100, 0.05) == 0.0
    over = OptimConfig.from_yaml(fit.optimizer, weight_decay=1e-6)
    opt2, _ = build_optimizer(model, over, total_steps=100)
    assert opt2.param_groups[0]["weight_decay"] == 1e-6


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 2)
        self.norm = torch.nn.LayerNorm(2)
        self.frozen = torch.nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_parameter_groups_split_on_bias_and_skip_frozen() -> None:
    net = _Net()
    decay, no_decay = parameter_groups(net, 0.5)
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net.proj.weight), id(net.norm.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(net.proj.bias), id(net.norm.bias)}


@pytest.mark.parametrize("step, expected", [(0, 0.0), (1, 0.1), (5, 0.5), (10, 1.0), (55, 0.5), (100, 0.0),
                                            (120, 0.0)])
def test_warmup_linear_values(step: int, expected: float) -> None:
    """Linear warm-up over 10 % of 100 steps, then linear decay to 0 at 100 (never negative)."""
    assert warmup_linear(step, 100, 0.1) == pytest.approx(expected)


def test_scheduler_follows_warmup_linear() -> None:
    net = _Net()
    opt, sched = build_optimizer(net, OptimConfig(lr=1.0, warmup_proportion=0.25), total_steps=8)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([warmup_linear(s, 8, 0.25) for s in range(8)])
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(1.0)


def test_from_yaml_defaults_overrides_and_refusals() -> None:
    cfg = OptimConfig.from_yaml({"lr": 2e-4, "betas": [0.8, 0.9], "weight_decay": 1e-6})
    assert (cfg.lr, cfg.betas, cfg.yaml_weight_decay) == (2e-4, (0.8, 0.9), 1e-6)
    assert cfg.effective_weight_decay == PUBLISHED_WEIGHT_DECAY  # the yaml's decay is ignored, as published
    assert OptimConfig.from_yaml(None, weight_decay=0.1, lr=1e-3).effective_weight_decay == 0.1
    assert OptimConfig.from_yaml(None, lr=1e-3).lr == 1e-3
    for bad in ({"name": "SGD"}, {"warmup_proportion": 1.0}, {"lr": 0}, {"lr": "fast"}):
        with pytest.raises(FhbError):
            OptimConfig.from_yaml(bad)
    with pytest.raises(FhbError, match="total training steps"):
        build_optimizer(_Net(), OptimConfig(), total_steps=0)
