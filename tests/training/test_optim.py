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
    # s3prl counts the update before scheduling it: update k (1-based) runs at warmup_linear(k).
    assert lrs == pytest.approx([warmup_linear(s + 1, 8, 0.25) for s in range(8)])
    assert lrs[0] == pytest.approx(1 / (0.25 * 8)) and max(lrs) == pytest.approx(1.0)


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


# -- issue 13, item 4: the exact schedule and s3prl's AdamW update ------------------------------


def test_first_update_has_nonzero_lr_k_over_w_t() -> None:
    """Update k of the warm-up runs at k / (w * T): the first one is not wasted at lr 0."""
    net = _Net()
    opt, sched = build_optimizer(net, OptimConfig(lr=1e-3, warmup_proportion=0.05), total_steps=1000)
    seen = []
    for _ in range(3):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1e-3 * k / (0.05 * 1000) for k in (1, 2, 3)])


def _s3prl_reference(p: torch.Tensor, grads: list[torch.Tensor], lrs: list[float], betas: tuple[float, float],
                     eps: float, wd: float) -> torch.Tensor:
    """A direct transcription of s3prl's Lamb(adam=True, correct_bias=True) step, float64."""
    p = p.double().clone()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    b1, b2 = betas
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = g.double()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        step_size = lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
        p = p - step_size * (m / (v.sqrt() + eps) + wd * p)
    return p


def test_s3prl_adamw_matches_the_published_update_and_differs_from_torch_early() -> None:
    """`S3prlAdamW` is s3prl's update (eps on sqrt(v), decay scaled by the bias correction); torch's
    AdamW differs measurably in the first updates, with tiny gradients (where eps matters)."""
    from fhb.training.optim import S3prlAdamW

    torch.manual_seed(0)
    p0 = torch.randn(64, dtype=torch.float64)
    grads = [1e-5 * torch.randn(64, dtype=torch.float64) for _ in range(20)]
    lrs = [1e-3] * 20
    ours = torch.nn.Parameter(p0.clone())
    opt = S3prlAdamW([{"params": [ours], "weight_decay": 0.01}], lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
    ref_torch = torch.nn.Parameter(p0.clone())
    topt = torch.optim.AdamW([ref_torch], lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    for g in grads:
        ours.grad, ref_torch.grad = g.clone(), g.clone()
        opt.step()
        topt.step()
    expected = _s3prl_reference(p0, grads, lrs, (0.9, 0.98), 1e-6, 0.01)
    torch.testing.assert_close(ours.detach(), expected, rtol=0, atol=1e-12)
    assert (ref_torch.detach() - expected).abs().max() > 1e-5  # the documented difference, measured


def test_default_optimizer_is_s3prl_and_torch_is_an_option() -> None:
    from fhb.training.optim import S3prlAdamW

    net = _Net()
    assert isinstance(build_optimizer(net, OptimConfig(), total_steps=10)[0], S3prlAdamW)
    torch_cfg = OptimConfig.from_yaml(None, impl="torch")
    assert isinstance(build_optimizer(net, torch_cfg, total_steps=10)[0], torch.optim.AdamW)
    with pytest.raises(FhbError, match="expected s3prl or torch"):
        OptimConfig.from_yaml(None, impl="adam")
