"""pca/pq/klt lakes in stage 2: the loader hands codes over, `TargetDecoder` rebuilds them on the step's device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fhb.nn.frames import conv_output_length
from fhb.storage import LakeMeta, TargetCodec, TeacherMeta, open_lake
from fhb.storage.fitted import fit_codecs, with_fitted
from fhb.storage.schema import layer_array_name
from fhb.student.config import load_fithubert_yaml
from fhb.student.loss import required_teacher_layers
from fhb.training.loader import LakeLoader
from fhb.training.optim import OptimConfig
from fhb.training.trainer import Trainer, build_model_and_loss
from tests import lakes
from tests.lakes import Utt

CONFIGS = Path(__file__).resolve().parents[2] / "fhb" / "configs"
N_LAYERS, DIM = 3, 64  # the tiny teacher of fhb/configs/tiny.yaml


def write_compact_lake(path: Path, kind: str, n_utts: int = 12, budget: float = 0.1) -> Path:
    """Correlated (low-rank + noise) targets in a ``kind`` lake, codecs fitted on all of them."""
    rng = np.random.default_rng(0)
    base = LakeMeta(teacher=TeacherMeta("tiny", "0" * 64, {}, num_layers=N_LAYERS, dim=DIM),
                    layers=tuple(range(1, N_LAYERS + 1)), dtype="float16", codec=TargetCodec.default("float16", 64))
    mix = rng.standard_normal((N_LAYERS, 8, DIM)).astype(np.float32)
    utts = []
    for i in range(n_utts):
        n = int(rng.integers(4000, 16000))
        t = conv_output_length(n)
        z = rng.standard_normal((N_LAYERS, t, 8)).astype(np.float32)
        targets = np.einsum("ltk,lkd->ltd", z, mix) + 0.05 * rng.standard_normal((N_LAYERS, t, DIM)).astype(np.float32)
        utts.append(Utt(f"utt-{i:04d}", "spk", "ch", "text", rng.integers(-3000, 3000, size=n).astype(np.int16),
                        targets.astype(np.float32)))
    samples = {layer_array_name(k): np.concatenate([u.targets[i] for u in utts]) for i, k in enumerate(base.layers)}
    codecs = fit_codecs(kind, samples, budget)
    meta = with_fitted(base, codecs)
    return lakes.write_lake(path, meta, {"train": {"s0": utts[:7], "s1": utts[7:]}}, fitted=codecs, background=False)


@pytest.fixture(scope="module", params=["pca", "pq", "klt"])
def lake(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_compact_lake(tmp_path_factory.mktemp(request.param) / "lake", request.param)


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_codes_decoded_on_device_equal_cpu_decode(lake: Path, workers: int) -> None:
    split = open_lake(lake)["train"]
    kind = open_lake(lake).meta.dtype
    with LakeLoader(lake, ["train"], [3, 1], batch_size=3, workers=workers, shuffle=True, seed=1) as loader:
        seen = 0
        for batch in loader:
            assert batch.targets is not None and batch.decoder is not None
            assert batch.targets.dtype == (torch.int8 if kind == "pca" else torch.uint8)
            assert batch.targets.shape[-1] * batch.targets.element_size() < 2 * DIM  # fewer bytes than float16
            decoded = batch.float_targets("cpu")
            assert decoded.dtype == torch.float32 and decoded.shape[-1] == DIM
            for b, utt in enumerate(batch.utt_ids):
                t = int(batch.target_lengths[b])
                ref = torch.from_numpy(split.targets(utt, layers=[3, 1]))
                torch.testing.assert_close(decoded[b, :, :t], ref, rtol=1e-4, atol=1e-4)
                assert not decoded[b, :, t:].any()  # padding is zero, like float targets
                seen += 1
    assert seen == len(split)


def test_distill_steps_from_a_compact_lake(lake: Path) -> None:
    fit = load_fithubert_yaml(CONFIGS / "tiny.yaml")
    layers = [int(k) for k in required_teacher_layers(fit, N_LAYERS)]
    loader = LakeLoader(lake, ["train"], layers, batch_size=2, seed=0, workers=0)
    model, loss_fn, gen = build_model_and_loss(fit, 0, N_LAYERS)
    tr = Trainer(model, loss_fn, gen, loader, layers, OptimConfig(lr=1e-3), device=torch.device("cpu"),
                 precision="fp32", accumulate=1, steps=None, epochs=1, dev_loader=loader, dev_split="train")
    results = [tr.step() for _ in range(3)]
    assert all(np.isfinite(r.loss) and r.layer_losses for r in results)
