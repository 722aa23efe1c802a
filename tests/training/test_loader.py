"""LakeLoader on small float16 lakes written with the storage writer (the plan alone: test_epoch.py)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from fhb.errors import FhbError
from fhb.nn.frames import conv_output_length
from fhb.storage import LakeMeta, TargetCodec, TeacherMeta, open_lake
from fhb.training.loader import Batch, LakeLoader
from tests import lakes
from tests.lakes import Utt

LAYERS = (1, 2, 3)
DIM = 16


def write_lake(path: Path, dtype: str = "float16", n_utts: int = 30, n_shards: int = 3,
               chunk_frames: int = 64, cnn: bool = False, seed: int = 0) -> Path:
    """A lake with one split 'train': ``n_utts`` random utterances (0.3-2.5 s) over shards."""
    rng = np.random.default_rng(seed)
    meta = LakeMeta(
        teacher=TeacherMeta("tiny", "0" * 64, {}, num_layers=4, dim=DIM),
        layers=LAYERS, dtype=dtype, codec=TargetCodec.default(dtype, chunk_frames),
        cnn_features=cnn, cnn_dim=8 if cnn else None,
    )

    def utt(i: int) -> Utt:
        n = int(rng.integers(4800, 40000))
        t = conv_output_length(n)
        audio = rng.integers(-30000, 30000, size=n).astype(np.int16)
        targets = rng.standard_normal((len(LAYERS), t, DIM)).astype(np.float32)
        c = rng.standard_normal((t, 8)).astype(np.float32) if cnn else None
        return Utt(f"utt-{i:04d}", "spk", "ch", "text", audio, targets, c)

    shards = {f"shard-{s:03d}": [utt(int(i)) for i in idx]
              for s, idx in enumerate(np.array_split(np.arange(n_utts), n_shards))}
    return lakes.write_lake(path, meta, {"train": shards}, background=False)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lake(tmp_path_factory.mktemp("lake") / "lake")


def ids_of(batches: list[Batch]) -> list[str]:
    return [u for b in batches for u in b.utt_ids]


def test_every_utterance_once_per_epoch_and_deterministic(lake: Path) -> None:
    loader = LakeLoader(lake, ["train"], None, batch_size=4, workers=0, window_blocks=3)
    epoch0 = list(loader)
    ids = ids_of(epoch0)
    assert sorted(ids) == sorted(open_lake(lake)["train"].utterance_ids)
    assert len(epoch0) == len(loader)
    again = LakeLoader(lake, ["train"], None, batch_size=4, workers=0, window_blocks=3)
    assert ids_of(list(again)) == ids
    loader.set_epoch(1)
    ids1 = ids_of(list(loader))
    assert sorted(ids1) == sorted(ids) and ids1 != ids
    other_seed = LakeLoader(lake, ["train"], None, batch_size=4, workers=0, seed=7, window_blocks=3)
    assert ids_of(list(other_seed)) != ids


def test_batch_seconds_budget(lake: Path) -> None:
    loader = LakeLoader(lake, ["train"], None, batch_seconds=5.0, workers=0)
    batches = list(loader)
    assert Counter(ids_of(batches)) == Counter(open_lake(lake)["train"].utterance_ids)
    for b in batches[:-1] if len(batches) > 1 else []:
        # Padded audio within the budget unless a single utterance exceeds it.
        assert len(b) == 1 or b.wavs.numel() <= 5.0 * 16000


def test_targets_and_audio_equal_the_lake(lake: Path) -> None:
    view = open_lake(lake)["train"]
    loader = LakeLoader(lake, ["train"], [3, 1], batch_size=5, workers=0)
    for batch in loader:
        assert batch.targets is not None and batch.targets.dtype == torch.float16
        b, n_layers, t_max, d = batch.targets.shape
        assert (n_layers, d) == (2, DIM) and t_max == int(batch.target_lengths.max())
        assert batch.wavs.shape == (b, int(batch.wav_lengths.max()))
        for i, u in enumerate(batch.utt_ids):
            t, n = int(batch.target_lengths[i]), int(batch.wav_lengths[i])
            assert t == view.num_frames(u) and n == view.num_samples(u)
            want = view.targets(u, [3, 1])
            np.testing.assert_array_equal(batch.targets[i, :, :t].float().numpy(), want)
            assert not batch.targets[i, :, t:].any()
            np.testing.assert_array_equal(batch.wavs[i, :n].numpy(), view.audio(u) / np.float32(32768))
            assert not batch.wavs[i, n:].any()


def test_two_ranks_disjoint_covering_equal_length(lake: Path) -> None:
    kw = dict(batch_size=3, workers=0, world_size=2, window_blocks=2)
    r0 = LakeLoader(lake, ["train"], [1], rank=0, **kw)
    r1 = LakeLoader(lake, ["train"], [1], rank=1, **kw)
    b0, b1 = list(r0), list(r1)
    assert len(b0) == len(b1) == len(r0) == len(r1)
    ids0, ids1 = set(ids_of(b0)), set(ids_of(b1))
    assert not ids0 & ids1
    plan = r0.plan()
    dropped = plan.dropped_utterances
    all_ids = set(open_lake(lake)["train"].utterance_ids)
    assert len(ids0 | ids1) == len(all_ids) - dropped
    assert ids0 | ids1 <= all_ids


def test_crops_frame_aligned_and_targets_sliced(lake: Path) -> None:
    view = open_lake(lake)["train"]
    loader = LakeLoader(lake, ["train"], None, batch_size=4, workers=0, max_seconds=1.0)
    cropped = 0
    for batch in loader:
        for i, u in enumerate(batch.utt_ids):
            n, t = int(batch.wav_lengths[i]), int(batch.target_lengths[i])
            full = view.audio(u)
            if len(full) <= 16000:
                assert n == len(full)
                continue
            cropped += 1
            assert n == 16000 and t == conv_output_length(16000)
            wav = (batch.wavs[i, :n].numpy() * 32768).round().astype(np.int16)
            starts = [s for s in range(0, len(full) - n + 1, 320) if np.array_equal(full[s : s + n], wav)]
            assert len(starts) == 1, "crop must start on a 320-sample boundary"
            k = starts[0] // 320
            want = view.targets(u)[:, k : k + t]
            np.testing.assert_array_equal(batch.targets[i, :, :t].float().numpy(), want)
    assert cropped > 5


@pytest.mark.parametrize("workers", [0, 2])
def test_int8_targets_dequantised_over_scale_blocks_crops_and_workers(tmp_path: Path, workers: int) -> None:
    """int8 codes and their scale rows go through the window's chunk-major decode: utterances that
    start mid-block, span several scale blocks and chunks, cropped at random frames, built by
    worker processes, equal the random-access reader's dequantised targets."""
    rng = np.random.default_rng(5)
    codec = dataclasses.replace(TargetCodec.default("int8", 64), scale_block_frames=16)
    meta = LakeMeta(teacher=TeacherMeta("tiny", "0" * 64, {}, num_layers=4, dim=DIM), layers=LAYERS,
                    dtype="int8", codec=codec, cnn_features=True, cnn_dim=8)
    utts = []
    for i in range(14):
        n = int(rng.integers(4800, 40000))
        t = conv_output_length(n)
        utts.append(Utt(f"utt-{i:04d}", "spk", "ch", "text", rng.integers(-30000, 30000, size=n).astype(np.int16),
                        rng.standard_normal((len(LAYERS), t, DIM)).astype(np.float32) * rng.uniform(0.1, 10),
                        rng.standard_normal((t, 8)).astype(np.float32)))
    path = lakes.write_lake(tmp_path / "lake", meta, {"train": {"shard-000": utts[:9], "shard-001": utts[9:]}},
                            background=False)
    view = open_lake(path)["train"]
    cropped = 0
    with LakeLoader(path, ["train"], None, batch_size=3, workers=workers, window_blocks=2, max_seconds=1.0,
                    cnn_features=True, seed=1) as loader:
        for batch in loader:
            assert batch.targets.dtype == torch.float32 and batch.cnn is not None
            for i, u in enumerate(batch.utt_ids):
                n, t = int(batch.wav_lengths[i]), int(batch.target_lengths[i])
                full = view.audio(u)
                wav = (batch.wavs[i, :n].numpy() * 32768).round().astype(np.int16)
                k = next(s for s in range(0, len(full) - n + 1, 320) if np.array_equal(full[s : s + n], wav)) // 320
                cropped += k > 0
                np.testing.assert_allclose(batch.targets[i, :, :t].numpy(), view.targets(u)[:, k : k + t], rtol=0,
                                           atol=1e-6)
                np.testing.assert_allclose(batch.cnn[i, :t].numpy(), view.cnn_features(u)[k : k + t], rtol=0,
                                           atol=1e-6)
                assert not batch.targets[i, :, t:].any() and not batch.cnn[i, t:].any()
    assert cropped > 3


def test_resume_mid_epoch_yields_the_rest(lake: Path) -> None:
    kw = dict(batch_size=3, workers=0, window_blocks=2)
    loader = LakeLoader(lake, ["train"], [2], **kw)
    loader.set_epoch(3)
    full = list(loader)
    first = LakeLoader(lake, ["train"], [2], **kw)
    first.set_epoch(3)
    it = iter(first)
    for _ in range(4):
        next(it)
    state = first.state_dict()
    assert state["epoch"] == 3 and state["batches_done"] == 4 and state["seed"] == 0
    resumed = LakeLoader(lake, ["train"], [2], **kw)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # the trainer's usual call keeps the position
    rest = list(resumed)
    assert [b.utt_ids for b in rest] == [b.utt_ids for b in full[4:]]
    for a, b in zip(rest, full[4:]):
        assert torch.equal(a.targets, b.targets) and torch.equal(a.wavs, b.wavs)
    assert resumed.state_dict()["batches_done"] == len(full)


def test_resume_does_not_decode_done_batches(lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fhb.training import loader as mod

    loader = LakeLoader(lake, ["train"], [1], batch_size=3, workers=0, window_blocks=2)
    n = len(loader)
    loader.load_state_dict({"epoch": 0, "batches_done": n - 1, "seed": 0})
    built: list[int] = []
    real = mod._WindowReader.build
    monkeypatch.setattr(mod._WindowReader, "build", lambda self, item: built.append(len(item.batches)) or real(self, item))
    assert len(list(loader)) == 1 and built == [1]


def test_workers_0_and_2_identical(lake: Path) -> None:
    kw = dict(batch_size=4, window_blocks=2, max_seconds=1.5, seed=3)
    a = list(LakeLoader(lake, ["train"], None, workers=0, **kw))
    with LakeLoader(lake, ["train"], None, workers=2, prefetch=2, **kw) as loader:
        b = list(loader)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.utt_ids == y.utt_ids
        for f in ("wavs", "wav_lengths", "targets", "target_lengths"):
            assert torch.equal(getattr(x, f), getattr(y, f))


def test_missing_layer_split_cnn_refused(lake: Path) -> None:
    with pytest.raises(FhbError, match=r"missing \[4\].*--layers"):
        LakeLoader(lake, ["train"], [1, 4], batch_size=2)
    with pytest.raises(FhbError, match="dev"):
        LakeLoader(lake, ["dev"], None, batch_size=2)
    with pytest.raises(FhbError, match="CNN"):
        LakeLoader(lake, ["train"], None, batch_size=2, cnn_features=True)
    with pytest.raises(FhbError, match="exactly one"):
        LakeLoader(lake, ["train"], None)


def test_audio_only(lake: Path) -> None:
    batches = list(LakeLoader(lake, ["train"], [], batch_size=8, workers=0))
    assert all(b.targets is None for b in batches)
    assert len(ids_of(batches)) == 30


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_other_dtypes_and_cnn(tmp_path: Path, dtype: str) -> None:
    path = write_lake(tmp_path / "lake", dtype=dtype, n_utts=12, n_shards=2, cnn=True)
    view = open_lake(path)["train"]
    want_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    for batch in LakeLoader(path, ["train"], None, batch_size=5, workers=0, cnn_features=True):
        assert batch.targets.dtype == want_dtype and batch.cnn is not None
        for i, u in enumerate(batch.utt_ids):
            t = int(batch.target_lengths[i])
            np.testing.assert_allclose(batch.targets[i, :, :t].float().numpy(), view.targets(u), rtol=0, atol=1e-6)
            np.testing.assert_allclose(batch.cnn[i, :t].float().numpy(), view.cnn_features(u), rtol=0, atol=1e-6)
