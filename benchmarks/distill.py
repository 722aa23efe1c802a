"""Stage 2 cost: cached-target training vs the online teacher, HuBERT-Base teacher, FitHuBERT student.

    python benchmarks/distill.py [--quick] [--utterances N] [--workers W]

One run, CPU, fp32, the same LibriSpeech-like utterances (~5 s each) in batches of 4:

(a) teacher forward alone (HuBERT-Base-shaped random teacher) on the batches the loader plans,
(b) student training step alone on the same batches, read into RAM beforehand (forward, loss,
    backward, AdamW step),
(c) cached step: `run_distill` from a lake of the same utterances (loader wait included),
(d) online step: `run_distill --online-teacher` (the teacher runs on every batch).

Figures: online ÷ cached against the ideal (a+b) ÷ b, as a share (goal ≥ 0.9: the cached run
saves what the teacher costs), and cached ÷ in-RAM (goal ≤ 1.10: the loader hides behind the
step). Per-step times are medians over the steps after the first (warm-up) one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

from benchmarks.common import emit, generated_audio, librispeech_like_lengths, machine, record  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "fhb" / "configs" / "fithubert.yaml"
SPLIT = "train-clean-100"
BATCH = 4


def write_lake(path: Path, teacher, wavs_int16: list[np.ndarray], targets: list[torch.Tensor]) -> None:
    """A lake of the utterances with every teacher layer (float16), via the storage writer."""
    from fhb.storage import LakeMeta, ShardWriter, SplitInfo, TeacherMeta, create_lake, update_split_listing

    meta = create_lake(path, LakeMeta(
        teacher=TeacherMeta(name=teacher.model_name, sha256=teacher.sha256, config={"arch": "hubert-base"},
                            num_layers=teacher.num_layers, dim=teacher.dim, path=str(teacher.path)),
        layers=tuple(range(1, teacher.num_layers + 1)), dtype="float16", splits={SPLIT: SplitInfo()},
    ))
    per_shard = 8
    names = []
    for s in range(0, len(wavs_int16), per_shard):
        names.append(f"shard-{s // per_shard:05d}")
        with ShardWriter(path, SPLIT, names[-1], meta) as w:
            for i in range(s, min(s + per_shard, len(wavs_int16))):
                w.add(f"0-0-{i:04d}", "0", "0", "", wavs_int16[i], targets[i].numpy())
            w.commit()
    update_split_listing(path, SPLIT, names)


def median_step_seconds(run_dir: Path) -> float:
    """Median wall time per update (loader wait included) from metrics.jsonl, first update skipped."""
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [1.0 / r["steps_per_s"] for r in recs if r.get("kind") == "train" and r["step"] > 1]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="≤ 2 min: 24 utterances of ~2.5 s (6 batches)")
    parser.add_argument("--utterances", type=int, default=None, help="utterances (default 24 quick, 40 full)")
    parser.add_argument("--seconds", type=float, default=None, help="mean utterance length (default 2.5 quick, 5 full)")
    parser.add_argument("--workers", type=int, default=1, help="loader processes for the cached run")
    args = parser.parse_args()
    n_utts = args.utterances or (24 if args.quick else 40)
    mean_s = args.seconds or (2.5 if args.quick else 5.0)
    n_utts -= n_utts % BATCH
    from fhb.pipeline.teacher import load_teacher, save_random_checkpoint
    from fhb.stages.distill import run_distill
    from fhb.student.config import load_fithubert_yaml
    from fhb.training.evaluation import compute_loss
    from fhb.training.optim import OptimConfig, build_optimizer
    from fhb.training.trainer import build_model_and_loss

    lengths = librispeech_like_lengths(n_utts * mean_s, low=0.8 * mean_s, high=1.2 * mean_s, mean=mean_s)[:n_utts]
    wavs = generated_audio(lengths)
    wavs_int16 = [(w.numpy() * 32767).round().astype(np.int16) for w in wavs]
    wavs = [torch.from_numpy(x.astype(np.float32) / 32768) for x in wavs_int16]  # what the lake gives back
    t_start = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        tpath = save_random_checkpoint(tmp / "hubert-base.pt", "hubert-base", seed=0)
        teacher = load_teacher(tpath)
        batches = [list(range(i, i + BATCH)) for i in range(0, n_utts, BATCH)]

        # (a) teacher forward alone, per batch of 4.
        targets: list[torch.Tensor] = [torch.empty(0)] * n_utts
        teacher.extract([teacher.prepare(wavs[0])])  # warm-up
        t_teacher = []
        for b in batches:
            t0 = time.perf_counter()
            outs = teacher.extract([teacher.prepare(wavs[i]) for i in b])
            t_teacher.append(time.perf_counter() - t0)
            for i, o in zip(b, outs):
                targets[i] = o
        a = statistics.median(t_teacher)
        write_lake(tmp / "lake", teacher, wavs_int16, targets)

        # (b) student step alone, targets in RAM (the same code path as the trainer's step).
        fit = load_fithubert_yaml(CONFIG)
        model, loss_fn, _ = build_model_and_loss(fit, 0, teacher.num_layers)
        opt, sched = build_optimizer(model, OptimConfig.from_yaml(fit.optimizer), total_steps=len(batches) + 3)
        layers = list(range(1, teacher.num_layers + 1))
        # The batches the cached run will train on (same loader plan: seed 0, epoch 0), read
        # into RAM beforehand, so (b) and (c) differ only in where the targets come from.
        from fhb.training.loader import LakeLoader

        with LakeLoader(tmp / "lake", [SPLIT], layers, batch_size=BATCH, seed=0, workers=0) as loader:
            loader.set_epoch(0)
            ram = [(bt.wavs.clone(), bt.wav_lengths.clone(), bt.targets.clone(), bt.target_lengths.clone())
                   for bt in loader]
        # (a) again, on exactly those batches: the teacher's share of an online step.
        t_teacher = []
        for w, wl, _, _ in ram:
            t0 = time.perf_counter()
            teacher.extract([teacher.prepare(w[j, : int(n)]) for j, n in enumerate(wl)])
            t_teacher.append(time.perf_counter() - t0)
        a = statistics.median(t_teacher)
        t_student = []
        for w, wl, t, tl in ram[:1] * 2 + ram:  # two warm-up steps (allocator, AdamW state), then timed
            t0 = time.perf_counter()
            lv = compute_loss(loss_fn, model(w, wl), t.float(), layers, tl, None)
            lv.total.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            t_student.append(time.perf_counter() - t0)
        b_step = statistics.median(t_student[2:])
        del model, opt, ram

        # (c) cached and (d) online runs of the real stage, same batches (one epoch each).
        common = dict(splits=[SPLIT], steps=len(batches), batch_size=BATCH, accumulate=1, precision="fp32",
                      device="cpu", seed=0, log_every=1, progress=False)
        run_distill(tmp / "lake", CONFIG, tmp / "cached", workers=args.workers, **common)
        c = median_step_seconds(tmp / "cached")
        cached_wait = statistics.median(
            json.loads(x)["loader_wait_share"] for x in (tmp / "cached" / "metrics.jsonl").read_text().splitlines()[1:]
        )
        run_distill(tmp / "lake", CONFIG, tmp / "online", workers=0, online_teacher=tpath, **common)
        d = median_step_seconds(tmp / "online")

    ideal = (a + b_step) / b_step
    speedup = d / c
    share = speedup / ideal
    overhead = c / b_step
    figures = {
        "teacher_forward_s": round(a, 3), "student_step_ram_s": round(b_step, 3), "cached_step_s": round(c, 3),
        "online_step_s": round(d, 3), "online_over_cached": round(speedup, 3), "ideal_speedup": round(ideal, 3),
        "share_of_ideal": round(share, 3), "cached_over_ram": round(overhead, 3),
        "cached_loader_wait_share": round(cached_wait, 3), "utterances": n_utts, "batch": BATCH,
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "quick": args.quick, "workers": args.workers, "mean_seconds": mean_s, "seconds": round(time.perf_counter() - t_start, 1),
    }
    md = f"""Machine: {machine()}. `python benchmarks/distill.py{' --quick' if args.quick else ''}`: HuBERT-Base-shaped
random teacher, FitHuBERT student (`fhb/configs/fithubert.yaml`), CPU fp32, {n_utts} generated utterances
of {0.8 * mean_s:.1f}–{1.2 * mean_s:.1f} s in batches of {BATCH}, (a) and (b) on the very batches the loader plans for (c), read into RAM first; medians per step (first step skipped), loader workers {args.workers}.

| figure | value | goal |
|---|---|---|
| (a) teacher forward, per batch | {a:.2f} s | |
| (b) student step, targets in RAM | {b_step:.2f} s | |
| (c) cached step (`fhb distill` from the lake) | {c:.2f} s | |
| (d) online step (`--online-teacher`) | {d:.2f} s | |
| online ÷ cached | {speedup:.2f}× | |
| ideal (a+b) ÷ b | {ideal:.2f}× | |
| share of ideal | {share:.0%} | ≥ 90 % |
| cached ÷ in-RAM | {overhead:.2f} | ≤ 1.10 |
| loader-wait share (cached) | {cached_wait:.1%} | |

1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs: on a
shared machine (load above the CPU count) the per-step figures swing by several times between runs,
and so do the ratios; only figures from an otherwise idle machine support the goals.
"""
    record("Stage 2: cached vs online teacher (distill)", md)
    emit("distill", figures)


if __name__ == "__main__":
    main()
