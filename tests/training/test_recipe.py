"""Issue 13: ``fhb distill`` follows the published recipe by default (one test group per item).

1. padding: sorted bucketing gives the published batches; extract writes length order; the
   ``epoch`` metrics record; 2. the effective batch over ranks; 3. early stopping and the best
   checkpoints; 4. the scheduler skips the updates the grad scaler skips, the loss is fp32;
5. the downstream protocol in the READMEs; 6. train losses averaged over ranks, the last partial
   batch kept. (The schedule's values and the s3prl update are in ``test_optim.py``.)
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fhb.errors import FhbError
from fhb.nn.frames import conv_output_length
from fhb.training.epoch import PlanEntry, plan_epoch
from fhb.training.selection import Selection
from fhb.training.trainer import Schedule, TrainConfig
from tests.training.test_trainer import _trainer, _write_lake

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_lake(tmp_path_factory.mktemp("recipe") / "lake")


# -- 1. padding -------------------------------------------------------------------------------


def _lengths(n: int, seed: int = 0) -> list[int]:
    """LibriSpeech-like utterance lengths in samples (a stand-in for real lengths: 1-35 s, mode ~14 s)."""
    rng = np.random.default_rng(seed)
    return [int(x) for x in np.clip(rng.gamma(6.0, 2.3, size=n), 1.0, 35.0) * 16000]


def _entries(lengths: list[int], chunk: int = 2048) -> list[PlanEntry]:
    out, offset = [], 0
    for n in lengths:
        frames = conv_output_length(n)
        out.append(PlanEntry(0, offset, frames, n))
        offset += frames
    return out


def _published_share(lengths: list[int], batch_size: int) -> float:
    frames = sorted((conv_output_length(n) for n in lengths), reverse=True)
    batches = [frames[k : k + batch_size] for k in range(0, len(frames), batch_size)]
    total = sum(len(b) * b[0] for b in batches)
    return sum(len(b) * b[0] - sum(b) for b in batches) / total


def test_sorted_bucketing_gives_the_published_batches_and_little_padding() -> None:
    """Whatever the storage order, sorted bucketing forms the published batches (the whole set
    sorted by length, fixed batches of 3): the same padding share, far below window bucketing's."""
    lengths = _lengths(3000)
    kw: dict[str, Any] = dict(chunk_frames=2048, seed=0, epoch=0, frames_of=conv_output_length, batch_size=3)
    manifest = _entries(lengths)
    window = plan_epoch(manifest, **kw)
    sorted_plan = plan_epoch(manifest, bucketing="sorted", **kw)
    assert sorted_plan.padded_frames_share() == pytest.approx(_published_share(lengths, 3))
    assert sorted_plan.padded_frames_share() < 0.05 * window.padded_frames_share()
    every = sorted(u.utt for b in sorted_plan.ranks[0] for u in b.utts)
    assert every == list(range(len(lengths)))  # each utterance once; the last partial batch is kept
    # only the order of the batches is random: other epochs have the same batches in another order
    other = plan_epoch(manifest, bucketing="sorted", **{**kw, "epoch": 1})
    batches = lambda p: [tuple(u.utt for u in b.utts) for b in p.ranks[0]]  # noqa: E731
    assert sorted(batches(other)) == sorted(batches(sorted_plan)) and batches(other) != batches(sorted_plan)


def test_sorted_bucketing_on_a_length_ordered_lake_reads_contiguous_windows() -> None:
    """On a lake in length order (what `fhb extract` writes) a window's batches are neighbouring
    rows: the chunks a window touches are about those of its frames, as with window bucketing."""
    lengths = sorted(_lengths(3000), reverse=True)
    ents = _entries(lengths)
    plan = plan_epoch(ents, chunk_frames=2048, seed=0, epoch=0, frames_of=conv_output_length, batch_size=3,
                      bucketing="sorted")
    windows: dict[int, set[int]] = {}
    for b in plan.ranks[0]:
        for u in b.utts:
            e = ents[u.utt]
            windows.setdefault(b.window, set()).update(range(e.frame_offset // 2048,
                                                             (e.frame_offset + e.num_frames - 1) // 2048 + 1))
    touched = sum(len(c) for c in windows.values()) * 2048
    valid = sum(e.num_frames for e in ents)
    assert touched / valid < 1.6  # benchmarks/padding.py: 1.50 on train-clean-100 (window bucketing: 1.56)


def test_sorted_bucketing_by_seconds_and_refusals() -> None:
    lengths = _lengths(200)
    plan = plan_epoch(_entries(lengths), chunk_frames=2048, seed=0, epoch=0, frames_of=conv_output_length,
                      batch_seconds=60.0, bucketing="sorted")
    for b in plan.ranks[0]:
        assert len(b.utts) * max(u.num_samples for u in b.utts) <= 60 * 16000 or len(b.utts) == 1
    with pytest.raises(FhbError, match="bucketing: expected one of"):
        plan_epoch(_entries(lengths), chunk_frames=2048, seed=0, epoch=0, frames_of=conv_output_length,
                   batch_size=3, bucketing="global")


def test_extract_plans_shards_in_length_order() -> None:
    """`plan_shards` orders each split longest first (ties by id) across shards; ``manifest`` keeps ids."""
    from fhb.pipeline.corpus import Manifest, Utterance
    from fhb.stages.shard_plan import plan_shards

    utts = [Utterance(utt_id=f"1-2-{i:04d}", split="train-clean-100", path=Path(f"/x/{i}.flac"), speaker="1",
                      chapter="2", transcript="", num_samples=n)
            for i, n in enumerate([16000, 48000, 32000, 48000, 8000])]
    manifest = Manifest(utterances=list(utts), problems=[])
    jobs = plan_shards(manifest, ["train-clean-100"], shard_hours=3 / 3600, include_problems=False)
    ids = [u for job in jobs["train-clean-100"] for u in job.utt_ids]
    assert ids == ["1-2-0001", "1-2-0003", "1-2-0002", "1-2-0000", "1-2-0004"]
    assert len(jobs["train-clean-100"]) > 1
    kept = plan_shards(manifest, ["train-clean-100"], 3 / 3600, include_problems=False, order="manifest")
    assert [u for job in kept["train-clean-100"] for u in job.utt_ids] == [u.utt_id for u in utts]


# -- 3. early stopping and the best checkpoints (and 1.'s epoch record) -----------------------


def test_selection_keeps_the_best_and_stops_after_patience(tmp_path: Path) -> None:
    sel = Selection(tmp_path, keep_best=2, patience=2)
    first = sel.offer(1, 3.0)
    assert first.write == tmp_path / "student-00000001.pt" and first.improved
    assert sel.offer(2, 2.0).improved
    third = sel.offer(3, 2.5)  # among the 2 best: written, update 1's file dropped
    assert third.write is not None and third.drop == (tmp_path / "student-00000001.pt",) and not third.improved
    assert sel.offer(4, 2.7).write is None and sel.should_stop()
    assert sel.best is not None and (sel.best.step, sel.best.dev_loss) == (2, 2.0)
    again = Selection(tmp_path, keep_best=2, patience=2)
    again.load_state_dict(json.loads(json.dumps(sel.state_dict())))
    assert again.kept == sel.kept and again.should_stop()
    assert not Selection(tmp_path, keep_best=0, patience=None).should_stop()


def test_fit_evaluates_each_epoch_stops_early_and_keeps_the_best(lake: Path, tmp_path: Path) -> None:
    """Dev loss after every epoch (one update per epoch here), early stop after 2 evaluations
    without improvement, the 2 best students kept, an ``epoch`` record per epoch with its padding."""
    tr = _trainer(lake, accumulate=5)  # 5 batches per epoch: one update per epoch
    tr.total_steps = 6
    losses = iter([3.0, 2.0, 2.5, 2.6, 1.0, 1.0])
    tr.evaluate = lambda: {"kind": "eval", "step": tr.global_step, "split": "train",  # type: ignore[method-assign]
                           "dev_loss": next(losses), "layer_losses": {}, "batches": 1, "seconds": 0.0}
    written: list[Path] = []

    def write(path: Path) -> None:
        path.write_text("student")
        written.append(path)

    sched = Schedule(log_every=1, eval_each_epoch=True, early_stopping_patience=2, keep_best=2)
    fitted = tr.fit(tmp_path, sched, write_student=write)
    assert fitted.stopped_early and tr.global_step == 4 and tr.finished
    assert fitted.best is not None and fitted.best.step == 2
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["student-00000002.pt", "student-00000003.pt"]
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3]
    assert all(0.0 <= r["padded_frames_share"] < 1.0 for r in epochs)
    assert epochs[0]["padded_frames_share"] == pytest.approx(tr.loader.plan(0).padded_frames_share())
    assert [r["kind"] for r in recs].count("eval") == 4 and recs[-1]["kind"] == "early_stop"
    assert [r["improved"] for r in recs if r["kind"] == "eval"] == [True, True, False, False]


def test_train_config_reads_gpus_patience_and_keep_best() -> None:
    cfg = TrainConfig.from_yaml({"gpus": [0, 1], "early_stopping_patience": 4, "keep_best": 1})
    assert (cfg.gpus, cfg.early_stopping_patience, cfg.keep_best) == (2, 4, 1)
    assert (TrainConfig().early_stopping_patience, TrainConfig().keep_best) == (15, 3)  # the published callbacks


# -- 2. the effective batch -------------------------------------------------------------------


def test_published_accumulate_keeps_the_effective_batch_over_ranks() -> None:
    """batch 3 x accumulate 4 x gpus 2 = 24 utterances per update, whatever the number of ranks."""
    from fhb.stages.distill import published_accumulate

    published = TrainConfig(batch_size=3, accumulate_grad_batches=4, gpus=2)
    assert [published_accumulate(published, w, "cfg") for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(FhbError, match=r"8 micro-batches per update: expected a multiple of the 3 ranks.*--accumulate"):
        published_accumulate(published, 3, "cfg")


def test_distill_resolves_accumulate_from_ranks_and_records_it(tmp_path: Path, lake: Path) -> None:
    from fhb.stages.distill import resolve_settings as _resolve
    from fhb.student.config import load_fithubert_yaml

    fit = load_fithubert_yaml(ROOT / "fhb" / "configs" / "fithubert.yaml")
    common: dict[str, Any] = dict(
        cache=lake, config=Path("fithubert.yaml"), out=tmp_path, splits=["train"], dev_split=None, steps=1,
        epochs=None, batch_size=None, batch_seconds=None, max_seconds=None, precision=None, device="cpu",
        workers=0, prefetch=1, seed=0, online_teacher=None, log_every=1, eval_every=None, save_every=None,
        keep_checkpoints=None, clip_grad_norm=None, weight_decay=None, lr=None)
    one = _resolve(fit, accumulate=None, world_size=1, **common)
    assert (one.accumulate, one.accumulate_source, one.batch_size) == (8, "yaml", 3)
    assert _resolve(fit, accumulate=None, world_size=2, **common).accumulate == 4
    explicit = _resolve(fit, accumulate=3, world_size=3, **common)  # the flag overrides (and is recorded so)
    assert (explicit.accumulate, explicit.accumulate_source) == (3, "--accumulate")
    assert one.dev_split is None and one.export == "last"  # no dev-clean in this lake: nothing to select by
    assert (one.bucketing, one.early_stopping_patience, one.keep_best) == ("sorted", 15, 3)


# -- 4. the scheduler and the loss's precision ------------------------------------------------


def test_scheduler_does_not_advance_on_updates_the_scaler_skips(lake: Path) -> None:
    tr = _trainer(lake, accumulate=1)
    tr.scaler = torch.amp.GradScaler("cpu", enabled=True)  # fp16's scaler (CUDA in practice)
    p = next(tr.model.parameters())
    hook = p.register_hook(lambda g: g * float("inf"))
    skipped = tr.step()
    hook.remove()
    assert not skipped.applied and tr.scheduler.last_epoch == 0
    applied = tr.step()
    assert applied.applied and tr.scheduler.last_epoch == 1
    assert applied.lr == pytest.approx(skipped.lr)  # the skipped update did not use up a schedule step


def test_loss_is_computed_in_fp32_under_reduced_precision() -> None:
    """Under autocast the published mse_loss runs in fp32; fhb's loss is fp32 for bf16/fp16 outputs too."""
    from fhb.student.config import load_fithubert_yaml
    from fhb.training.trainer import build_model_and_loss

    fit = load_fithubert_yaml(ROOT / "fhb" / "configs" / "tiny.yaml")
    model, loss_fn, _ = build_model_and_loss(fit, 0, 3)
    wavs = torch.randn(2, 16000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(wavs, torch.tensor([16000, 12000]))
    assert out.projections[0].dtype == torch.bfloat16
    t = conv_output_length(16000)
    targets = {k: torch.randn(2, t, 64, dtype=torch.float16) for k in (1, 2, 3)}
    res = loss_fn(out, targets, torch.tensor([t, t]))
    assert res.total.dtype == torch.float32 and all(v.dtype == torch.float32 for v in res.per_layer.values())


# -- 5. the downstream protocol ---------------------------------------------------------------


def test_readmes_give_the_papers_protocol_and_the_weighted_sum() -> None:
    from fhb.stages.export import _README

    for text in (_README, (ROOT / "README.md").read_text(encoding="utf-8")):
        assert "-s last_hidden_state" in text and "-s hidden_states" in text
        assert "paper" in text


# -- 6. DDP: mean train losses, the last partial batch ----------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mean_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from fhb.training.distributed import DistInfo, all_reduce_mean, broadcast_from_main

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    info = DistInfo(rank=rank, world_size=2, local_rank=rank)
    got = all_reduce_mean([1.0 + rank, 10.0 * rank], info)
    main = broadcast_from_main(5.0 if rank == 0 else -1.0, info)
    Path(out, f"rank-{rank}.json").write_text(json.dumps([got, main]))
    dist.destroy_process_group()


def test_logged_losses_are_the_mean_over_ranks(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_mean_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for r in (0, 1):
        got, main = json.loads((tmp_path / f"rank-{r}.json").read_text())
        assert got == pytest.approx([1.5, 5.0]) and main == 5.0


def test_last_partial_batch_is_kept_and_rank_equalising_is_counted() -> None:
    """One rank: every utterance, the last batch short. Two ranks: the extra batches of the longer
    rank are dropped for the epoch and counted (the ``epoch`` record's ``dropped_utterances``)."""
    lengths = _lengths(100)
    kw: dict[str, Any] = dict(chunk_frames=2048, seed=0, epoch=0, frames_of=conv_output_length, batch_size=3,
                              bucketing="sorted")
    one = plan_epoch(_entries(lengths), **kw)
    assert sum(len(b.utts) for b in one.ranks[0]) == 100 and len(one.ranks[0][-1].utts) in (1, 2, 3)
    assert one.dropped_utterances == 0
    two = plan_epoch(_entries(lengths), world_size=2, **kw)
    kept = sum(len(b.utts) for r in two.ranks for b in r)
    assert kept + two.dropped_utterances == 100 and len(two.ranks[0]) == len(two.ranks[1])
