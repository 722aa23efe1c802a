"""Checkpoints: published layout out and in, Lightning files with foreign metadata, fhb's format."""

from __future__ import annotations

import contextlib
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fhb.errors import FhbError
from fhb.student import (
    FitConfig,
    FitHuBERT,
    DistillLoss,
    build_fit_student,
    load_fithubert_yaml,
    load_student,
    load_student_checkpoint,
    packaged_config_path,
    save_published_checkpoint,
    save_student,
    strip_for_inference,
)


def _assert_same_state(a: FitHuBERT, b: FitHuBERT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def test_published_save_load_is_bitwise(tmp_path: Path, tiny_model: FitHuBERT, tiny_config: FitConfig) -> None:
    ckpt, yaml_path = save_published_checkpoint(tiny_model, tiny_config, tmp_path / "fithubert.ckpt", global_step=7)
    assert yaml_path == tmp_path / "fithubert.yaml"
    raw = torch.load(ckpt, weights_only=True)  # plain containers and tensors only
    assert set(raw) == {"epoch", "global_step", "pytorch-lightning_version", "state_dict", "hparams_name",
                        "hyper_parameters"}
    assert all(k.startswith("student_model.") for k in raw["state_dict"])
    assert raw["hyper_parameters"]["cfg"]["distiller"]["pred_layer_id"] == "[2]"
    assert load_fithubert_yaml(yaml_path) == tiny_config
    for yaml_arg in (None, yaml_path):
        model, config = load_student(ckpt, yaml_arg)
        assert config == tiny_config
        _assert_same_state(model, tiny_model)
    loaded = load_student_checkpoint(ckpt)
    assert (loaded.kind, loaded.step) == ("lightning", 7)


def test_full_published_layout_round_trip(tmp_path: Path) -> None:
    config = load_fithubert_yaml(packaged_config_path("fithubert"))
    model = build_fit_student(config)
    ckpt, _ = save_published_checkpoint(model, config, tmp_path / "fithubert.ckpt")
    loaded, _ = load_student(ckpt)
    _assert_same_state(loaded, model)
    assert len(loaded.state_dict()) == 264


class _Schedule:
    """Stands for s3prl.optimizers.WarmupLinearSchedule while pickling."""

    def __init__(self) -> None:
        self.warmup, self.t_total = 0.05, 1000


class _AttributeDict(dict):
    """Stands for pytorch_lightning.utilities.parsing.AttributeDict while pickling."""


@contextlib.contextmanager
def _foreign_classes() -> Iterator[None]:
    """Make the s3prl / Lightning classes a published .ckpt names resolvable while saving."""
    names = {
        "s3prl": None, "s3prl.optimizers": ("WarmupLinearSchedule", _Schedule),
        "pytorch_lightning": None, "pytorch_lightning.utilities": None,
        "pytorch_lightning.utilities.parsing": ("AttributeDict", _AttributeDict),
    }
    saved = {name: sys.modules.get(name) for name in names}
    for name, entry in names.items():
        module = types.ModuleType(name)
        if entry:
            cls_name, cls = entry
            cls.__module__, cls.__qualname__ = name, cls_name
            setattr(module, cls_name, cls)
        sys.modules[name] = module
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _lightning_ckpt(path: Path, model: FitHuBERT, config: FitConfig, **changes: object) -> Path:
    """A file shaped like the published train.py's: teacher weights, s3prl optimizer state, ..."""
    state = {"teacher_model.model.encoder.layers.0.fc1.weight": torch.randn(8, 4),
             "teacher_model.model.mask_emb": torch.randn(4)}
    state.update({f"student_model.{k}": v for k, v in model.state_dict().items()})
    hparams = _AttributeDict(cfg=config.to_dict())
    ckpt = {
        "epoch": 3, "global_step": 120, "pytorch-lightning_version": "1.5.10", "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}}}, "callbacks": {"EarlyStopping{'monitor': 'v_loss'}": {"wait_count": 0}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 5e-4, "schedule": _Schedule(), "params": [0]}]}],
        "lr_schedulers": [], "native_amp_scaling_state": {"scale": 65536.0}, "hparams_name": "kwargs",
        "hyper_parameters": hparams,
    }
    ckpt.update(changes)
    with _foreign_classes():
        torch.save(ckpt, path)
    return path


def test_published_lightning_file_loads_strictly(tmp_path: Path, tiny_model: FitHuBERT, tiny_config: FitConfig) -> None:
    path = _lightning_ckpt(tmp_path / "last.ckpt", tiny_model, tiny_config)
    loaded = load_student_checkpoint(path)
    assert (loaded.kind, loaded.epoch, loaded.step, loaded.config) == ("lightning", 3, 120, tiny_config)
    assert loaded.optimizer["param_groups"][0]["lr"] == 5e-4
    _assert_same_state(loaded.model, tiny_model)

    state = {f"student_model.{k}": v for k, v in tiny_model.state_dict().items()}
    extra = dict(state, **{"student_model.proj_head.3.lin_proj.weight": torch.zeros(64, 48)})
    with pytest.raises(FhbError, match=r"unexpected: \['proj_head.3.lin_proj.weight'\]"):
        load_student(_lightning_ckpt(tmp_path / "extra.ckpt", tiny_model, tiny_config, state_dict=extra))
    missing = {k: v for k, v in state.items() if "encoder.layers.2.fc1" not in k}
    with pytest.raises(FhbError, match=r"missing: \['encoder.layers.2.fc1.bias'"):
        load_student(_lightning_ckpt(tmp_path / "missing.ckpt", tiny_model, tiny_config, state_dict=missing))
    other = dict(state, **{"something.else": torch.zeros(1)})
    with pytest.raises(FhbError, match="something.else"):
        load_student(_lightning_ckpt(tmp_path / "other.ckpt", tiny_model, tiny_config, state_dict=other))


def test_yaml_overrides_and_mismatch_is_named(tmp_path: Path, tiny_model: FitHuBERT, tiny_config: FitConfig) -> None:
    path = _lightning_ckpt(tmp_path / "last.ckpt", tiny_model, tiny_config, hyper_parameters={})
    with pytest.raises(FhbError, match="pass yaml_path"):
        load_student(path)
    with pytest.raises(FhbError, match="do not match"):
        load_student(path, packaged_config_path("fithubert"))


def test_unsupported_stored_config_fails(tmp_path: Path, tiny_model: FitHuBERT, tiny_config: FitConfig) -> None:
    cfg = tiny_config.to_dict()
    cfg["distiller"]["pos_conv_depth"] = 5
    path = _lightning_ckpt(tmp_path / "last.ckpt", tiny_model, tiny_config, hyper_parameters={"cfg": cfg})
    with pytest.raises(FhbError, match="pos_conv_depth"):
        load_student(path)


def test_fhb_run_format(tmp_path: Path, tiny_model: FitHuBERT, tiny_config: FitConfig) -> None:
    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=1e-3)
    tiny_model(torch.randn(1, 4000)).projections[-1].sum().backward()
    optimizer.step()
    loss = DistillLoss(tiny_config.loss, 3, student=tiny_config.distiller)
    path = save_student(tiny_model, tiny_config, tmp_path / "step.pt", epoch=2, step=10,
                                   optimizer=optimizer.state_dict(), loss=loss.state_dict(),
                                   teacher={"sha256": "ab" * 32, "num_layers": 3})
    raw = torch.load(path, weights_only=True)
    assert (raw["format"], raw["version"], raw["layout"]) == ("fhb-student", 1, "training")
    loaded = load_student_checkpoint(path)
    assert (loaded.kind, loaded.epoch, loaded.step, loaded.config) == ("fhb", 2, 10, tiny_config)
    _assert_same_state(loaded.model, tiny_model)
    fresh = torch.optim.AdamW(loaded.model.parameters(), lr=1e-3)
    fresh.load_state_dict(loaded.optimizer)
    assert loaded.loss == loss.state_dict() and loaded.teacher["num_layers"] == 3
    raw["version"] = 2
    torch.save(raw, tmp_path / "future.pt")
    with pytest.raises(FhbError, match="version 2"):
        load_student(tmp_path / "future.pt")


def test_inference_state_dict(tmp_path: Path, tiny_model: FitHuBERT, tiny_config: FitConfig) -> None:
    torch.save(strip_for_inference(tiny_model.state_dict()), tmp_path / "infer.pt")
    with pytest.raises(FhbError, match="yaml_path"):
        load_student(tmp_path / "infer.pt")
    tiny_config_path = tmp_path / "tiny.yaml"
    tiny_config_path.write_text(tiny_config.to_yaml())
    model, _ = load_student(tmp_path / "infer.pt", tiny_config_path)
    assert model.is_inference
    wav = torch.randn(1, 6000)
    tiny_model.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(model(wav).last_hidden_state, tiny_model(wav).projections[-1])
    with pytest.raises(FhbError, match="inference layout"):
        save_published_checkpoint(model, tiny_config, tmp_path / "x.ckpt")


class _Exploit:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


def test_hostile_and_broken_files(tmp_path: Path) -> None:
    torch.save({"state_dict": {}, "x": _Exploit()}, tmp_path / "evil.ckpt")
    with pytest.raises(FhbError, match="system"):
        load_student(tmp_path / "evil.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(FhbError, match="could not be read"):
        load_student(tmp_path / "junk.ckpt")
    with pytest.raises(FhbError, match="found nothing"):
        load_student(tmp_path / "absent.ckpt")
