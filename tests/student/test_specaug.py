"""SpecAugment on the student's conv features (``train.specaug``; issue 12, option 3).

The reference re-implements the published ``utils/specaug.py`` (glory20h/FitHuBERT at 36d999c:
``TimeWarp.time_warp`` L141-171, ``MaskAlongAxis.mask_along_axis`` L240-297, ``SpecAug.apply_specaug``
L96-103) on a ``B x T x C`` batch of full-length utterances, the layout its names intend.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fhb.errors import FhbError
from fhb.student.config import FitConfig, load_packaged_config
from fhb.student.specaug import SpecAugConfig, SpecAugment, spec_augment
from fhb.training.trainer import build_model_and_loss
from tests.recipes import recipe_dict


def _published_mask(spec: torch.Tensor, dim: int, width: tuple[int, int], num_mask: int, zero: bool,
                    adaptive: bool = False, number_ratio: float = 0.04, size_ratio: float = 0.04,
                    max_masks: int = 20) -> torch.Tensor:
    b, d, hi = spec.shape[0], spec.shape[dim], width[1]
    if dim == 1 & adaptive:  # the published precedence: dim == (1 & adaptive)
        if number_ratio > 0:
            num_mask = min(int(number_ratio * d), max_masks)
        if size_ratio > 0:
            hi = min(width[1], int(size_ratio * d))
    mask_length = torch.randint(width[0], hi, (b, num_mask)).unsqueeze(2)
    mask_pos = torch.randint(0, max(1, d - mask_length.max()), (b, num_mask)).unsqueeze(2)
    aran = torch.arange(d)[None, None, :]
    mask = ((mask_pos <= aran) * (aran < (mask_pos + mask_length))).any(dim=1)
    mask = mask.unsqueeze(2) if dim == 1 else mask.unsqueeze(1)
    value = 0.0 if zero else spec.mean()
    return spec.masked_fill(mask, value)


def _published_warp(x: torch.Tensor, window: int, mode: str = "bicubic") -> torch.Tensor:
    ys = x.new_zeros(x.size())
    for i in range(x.size(0)):
        y = x[i][None, None]  # 1 x 1 x t x C
        t = y.shape[2]
        if t - window <= window:
            ys[i] = x[i]
            continue
        center = torch.randint(window, t - window, (1,))[0]
        warped = torch.randint(center - window, center + window, (1,))[0] + 1
        left = F.interpolate(y[:, :, :center], (warped, y.shape[3]), mode=mode, align_corners=False)
        right = F.interpolate(y[:, :, center:], (t - warped, y.shape[3]), mode=mode, align_corners=False)
        ys[i] = torch.cat([left, right], dim=-2)[0, 0]
    return ys


def _published(x: torch.Tensor, cfg: SpecAugConfig) -> torch.Tensor:
    if cfg.apply_time_warp:
        x = _published_warp(x, cfg.time_warp_window, cfg.time_warp_mode)
    if cfg.apply_freq_mask:
        x = _published_mask(x, 2, cfg.freq_mask_width_range, cfg.num_freq_mask, cfg.replace_with_zero)
    if cfg.apply_time_mask:
        x = _published_mask(x, 1, cfg.time_mask_width_range, cfg.num_time_mask, cfg.replace_with_zero,
                            cfg.adaptive, cfg.adaptive_number_ratio, cfg.adaptive_size_ratio, cfg.max_n_time_masks)
    return x


@pytest.mark.parametrize("changes", [
    {},  # distilhubert.yaml's section: masks filled with the mean, no warp
    {"apply_time_warp": True, "replace_with_zero": True},
    {"adaptive": True, "time_mask_width_range": [0, 30]},
    {"apply_freq_mask": False, "num_time_mask": 5, "time_mask_width_range": [2, 9]},
])
def test_equals_the_published_specaug(changes: dict) -> None:
    """Same global seed, same ``B x T x C`` batch: fhb's output == the published SpecAug's."""
    cfg = SpecAugConfig.from_dict({**load_packaged_config("distilhubert").specaug, **changes})
    x = torch.randn(3, 700, 40)
    torch.manual_seed(7)
    ours = SpecAugment(cfg).train()(x, torch.full((3,), 700))
    torch.manual_seed(7)
    ref = _published(x.clone(), cfg)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert not torch.equal(ours, x)


def test_masks_are_deterministic_train_only_and_keep_gradients() -> None:
    cfg = SpecAugConfig(apply_time_warp=False, replace_with_zero=True, time_mask_width_range=(5, 20),
                        freq_mask_width_range=(2, 6))
    aug = SpecAugment(cfg).train()
    x = torch.ones(2, 200, 32, requires_grad=True)
    torch.manual_seed(1)
    a = aug(x, torch.tensor([200, 150]))
    torch.manual_seed(1)
    assert torch.equal(a, aug(x, torch.tensor([200, 150])))
    zero_frames = (a == 0).all(dim=2).sum(dim=1)  # whole frames masked per utterance
    zero_channels = (a == 0).all(dim=1).sum(dim=1)  # whole channels masked
    assert all(5 <= int(n) <= 2 * 19 for n in zero_frames) and all(2 <= int(n) <= 2 * 5 for n in zero_channels)
    a.sum().backward()
    assert torch.equal(x.grad, (a != 0).float())  # masked features get no gradient, the rest 1
    assert torch.equal(aug.eval()(x, torch.tensor([200, 150])), x)


def test_time_warp_leaves_padding_and_short_utterances() -> None:
    aug = SpecAugment(SpecAugConfig(apply_time_warp=True, apply_freq_mask=False, apply_time_mask=False)).train()
    x = torch.randn(2, 50, 8)
    y = aug(x, torch.tensor([50, 10]))  # 10 frames = 2 w: left as it is
    assert torch.equal(y[1], x[1]) and not torch.equal(y[0], x[0])


@pytest.mark.parametrize(("changes", "match"), [
    ({"time_mask_width_range": [5, 5]}, "lo < hi"),
    ({"num_freq_mask": -1}, "num_freq_mask"),
    ({"masks": 3}, "unknown keys"),
    ({"apply_time_warp": False, "apply_time_mask": False, "apply_freq_mask": False}, "at least one"),
    ({"replace_with_zero": "no"}, "specaug.replace_with_zero"),
    ({"time_warp_mode": "nearest"}, "time_warp_mode"),
])
def test_bad_sections_fail_at_config_load(changes: dict, match: str) -> None:
    data = recipe_dict("distilhubert", {"train": {"specaug": True}, "specaug": changes})
    with pytest.raises(FhbError, match=match):
        FitConfig.from_dict(data, "my.yaml")
    data["train"]["specaug"] = False  # an unused section is not checked (the published code ignores it)
    FitConfig.from_dict(data, "my.yaml")


def test_an_int_width_is_a_range_from_zero() -> None:
    assert SpecAugConfig.from_dict({"time_mask_width_range": 40}).time_mask_width_range == (0, 40)


def test_the_student_masks_its_conv_features_in_training_only() -> None:
    """``train.specaug`` gives the built student its SpecAugment: training outputs change, eval
    outputs and the state dict do not (no parameters)."""
    data = recipe_dict("distilhubert", {"train": {"specaug": True},
                                        "distiller": {"init_conv_layers": False, "init_encoder_layers": 0,
                                                      "dropout": 0.0, "attention_dropout": 0.0, "dropout_input": 0.0}})
    fit = FitConfig.from_dict(data, "specaug")
    plain = dataclasses.replace(fit, train={**fit.train, "specaug": False})
    model, _, _ = build_model_and_loss(fit, 0, 3)
    clean, _, _ = build_model_and_loss(plain, 0, 3)
    assert isinstance(model.specaug, SpecAugment) and clean.specaug is None and spec_augment(plain) is None
    assert model.state_dict().keys() == clean.state_dict().keys()
    wavs = torch.randn(2, 16000)
    torch.manual_seed(0)
    masked = model(wavs).last_hidden_state
    assert not torch.allclose(masked, clean(wavs).last_hidden_state)
    model.eval(), clean.eval()
    torch.testing.assert_close(model(wavs).last_hidden_state, clean(wavs).last_hidden_state, rtol=0, atol=0)
