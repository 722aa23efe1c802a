"""`fhb.training.trainer`: the typed ``train:`` section, `Trainer.step`, resume, `evaluate_split`."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from fhb.errors import FhbError
from fhb.nn.frames import conv_output_length
from fhb.storage import LakeMeta, ShardWriter, SplitInfo, TargetCodec, TeacherMeta, create_lake, update_split_listing
from fhb.student.config import load_fithubert_yaml
from fhb.student.loss import required_teacher_layers
from fhb.training.evaluation import evaluate_split
from fhb.training.loader import LakeLoader
from fhb.training.optim import OptimConfig
from fhb.training.trainer import TrainConfig, Trainer, build_model_and_loss

CONFIGS = Path(__file__).resolve().parents[2] / "fhb" / "configs"
N_LAYERS, DIM = 3, 64  # the tiny teacher of fhb/configs/tiny.yaml


def test_train_config_defaults_published_values_and_refusals() -> None:
    assert TrainConfig.from_yaml({}) == TrainConfig(num_epochs=1, batch_size=1, accumulate_grad_batches=1,
                                                    use_fp16=False)
    published = TrainConfig.from_yaml(load_fithubert_yaml(CONFIGS / "fithubert.yaml").train)
    assert published == TrainConfig(num_epochs=100, batch_size=3, accumulate_grad_batches=4, gpus=2, use_fp16=True)
    assert TrainConfig.from_yaml({"batch_size": 2.0, "num_epochs": None}).batch_size == 2
    for bad in ({"batch_size": 0}, {"accumulate_grad_batches": "4"}, {"num_epochs": 1.5}, {"use_fp16": "yes"},
                {"batch_size": True}):
        key = next(iter(bad))
        with pytest.raises(FhbError, match=f"my.yaml: train.{key}: expected"):
            TrainConfig.from_yaml(bad, "my.yaml")


def _write_lake(path: Path, n_utts: int = 10) -> Path:
    rng = np.random.default_rng(0)
    meta = LakeMeta(teacher=TeacherMeta("tiny", "0" * 64, {}, num_layers=N_LAYERS, dim=DIM),
                    layers=tuple(range(1, N_LAYERS + 1)), dtype="float16",
                    codec=TargetCodec.default("float16", 64).to_dict())
    meta = create_lake(path, meta.with_split("train", SplitInfo()))
    with ShardWriter(path, "train", "shard-000", meta, background=False) as w:
        for i in range(n_utts):
            n = int(rng.integers(4000, 12000))
            targets = rng.standard_normal((N_LAYERS, conv_output_length(n), DIM)).astype(np.float32)
            w.add(f"utt-{i:04d}", "spk", "ch", "text", rng.integers(-3000, 3000, size=n).astype(np.int16), targets)
        w.commit()
    update_split_listing(path, "train", ["shard-000"])
    return path


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_lake(tmp_path_factory.mktemp("trainer") / "lake")


def _trainer(lake: Path, accumulate: int = 2) -> Trainer:
    fit = load_fithubert_yaml(CONFIGS / "tiny.yaml")
    layers = [int(k) for k in required_teacher_layers(fit, N_LAYERS)]
    loader = LakeLoader(lake, ["train"], layers, batch_size=2, seed=0, workers=0)  # 5 batches per epoch
    model, loss_fn, gen = build_model_and_loss(fit, 0, N_LAYERS)
    return Trainer(model, loss_fn, gen, loader, layers, OptimConfig(lr=1e-3), device=torch.device("cpu"),
                   precision="fp32", accumulate=accumulate, steps=None, epochs=2, dev_loader=loader, dev_split="train")


def test_step_accumulates_and_walks_epochs(lake: Path) -> None:
    tr = _trainer(lake)
    assert (tr.batches_per_epoch, tr.updates_per_epoch, tr.total_steps) == (5, 3, 6)
    results = [tr.step() for _ in range(4)]
    assert [(r.step, r.epoch) for r in results] == [(1, 0), (2, 0), (3, 0), (4, 1)]
    assert (tr.epoch, tr.batch_in_epoch) == (1, 2)  # the epoch's last update took the leftover micro-batch
    assert results[0].lr > 0.0 and results[1].lr > 0.0  # s3prl schedules update k at k / T: the first is not at 0
    assert all(np.isfinite(r.loss) and r.layer_losses and r.loader_wait >= 0 for r in results)
    assert set(results[0].layer_losses) <= {f"layer_{k:02d}" for k in range(1, N_LAYERS + 1)}


def test_resumed_trainer_continues_bit_for_bit(lake: Path) -> None:
    straight = _trainer(lake)
    for _ in range(2):
        straight.step()
    state = copy.deepcopy({"step": straight.global_step, **straight.state_dict()})  # as written to disk
    expected = [straight.step() for _ in range(3)]
    resumed = _trainer(lake)
    resumed.load_state_dict(state)
    got = [resumed.step() for _ in range(3)]
    assert [(r.step, r.epoch, r.loss, r.layer_losses, r.lr) for r in got] == [
        (r.step, r.epoch, r.loss, r.layer_losses, r.lr) for r in expected]


def test_evaluate_split_leaves_training_untouched(lake: Path) -> None:
    tr = _trainer(lake)
    tr.model.train()
    rng_before = torch.get_rng_state()
    a = evaluate_split(tr.model, tr.loss_fn, tr.dev_loader, tr.layers, device=tr.device)
    assert tr.model.training and torch.equal(torch.get_rng_state(), rng_before)
    b = evaluate_split(tr.model, tr.loss_fn, tr.dev_loader, tr.layers, device=tr.device)
    assert (a.per_layer, a.last, a.total, a.batches, a.utterances) == (b.per_layer, b.last, b.total, 5, 10)
    assert a.last == a.per_layer[N_LAYERS]
    first = evaluate_split(tr.model, tr.loss_fn, tr.dev_loader, tr.layers, device=tr.device, max_batches=1)
    assert (first.batches, first.utterances) == (1, 2)
    record = tr.evaluate()
    assert record is not None and record["dev_loss"] == a.last and record["batches"] == 5
    assert record["layer_losses"] == a.layers
