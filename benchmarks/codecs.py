"""Target codecs: bytes per frame vs the student's quality (issue 14), side by side in one run.

    python benchmarks/codecs.py [--quick] [--steps N] [--threads N]

HuBERT-Base-shaped random teacher (``fhb random-teacher --arch hubert-base``) on the real-speech
fixture (tests/data/mini-librispeech: 7 train, 3 dev utterances, both splits), every layer:

1. a float32 lake (the reference) by ``fhb extract``; every other lake by ``fhb transcode`` from
   it (float32 itself: the noise floor of the student comparison, float16, int8, and pq / klt at
   several error budgets, fitted on the whole train split);
2. per lake and layer: bytes per frame (targets only, `summarize_lake`) and the relative RMS
   error of the dev split (held out from the fit) against the float32 lake;
3. the same ``fhb distill`` run from each lake (a small FitHuBERT-shaped student,
   benchmarks/codecs_student.yaml: the published layout, 12 layers of width 96 with 12 heads to
   the teacher's 768; same seed, batches, 3 s crops and steps), evaluated against the float32 dev
   split: per-layer loss and validation loss, and the increase over the float16-trained student.
   The same run stopped after 1 update is evaluated too, to show how far training moved the loss;
4. loader throughput (utterance-seconds per second, one epoch of the train split, all 12
   layers, in-process) with the decode on the step's device (here the CPU: an upper bound of
   what a GPU pays) timed separately, and the median step time of the distill runs.

Writes the "Target codecs" section of docs/benchmarks.md and docs/codecs_pareto.png. The fixture
is tiny (~21 s of train audio): the fitted codecs see ~1000 frames, so pq's 256 centroids per
sub-space nearly memorise them (the dev error is the honest figure), and the student overfits
seven utterances: read the figures as a method and an order of magnitude (the float32 row gives
the noise floor), and rerun this on real data before trusting a codec at scale. ``--threads``
defaults to 1: on a shared, loaded machine torch's default threads contend and a step gets
tens of times slower.
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

from benchmarks.common import emit, machine, record  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "benchmarks" / "codecs_student.yaml"
FIXTURE = REPO / "tests" / "data" / "mini-librispeech"
PNG = REPO / "docs" / "codecs_pareto.png"
TRAIN, DEV = "train-clean-100", "dev-clean"
FRAMES_PER_HOUR = 3600 * 50
FULL_POINTS = [("float16", None), ("float32", None), ("int8", None), ("pq", 0.1), ("klt", 0.1), ("klt", 0.2),
               ("klt", 0.3), ("klt", 0.5), ("klt", 0.7), ("klt", 0.9)]
QUICK_POINTS = [("float16", None), ("int8", None), ("pca", 0.1), ("pq", 0.1), ("klt", 0.3)]
CROP_SECONDS = 3.0


def label(codec: str, budget: float | None) -> str:
    return codec if budget is None else f"{codec}@{budget:g}"


def dev_errors(lake: Path, ref: Path) -> dict[str, float]:
    """Relative RMS error per layer of the dev split against the float32 lake."""
    from fhb.storage import open_lake
    from fhb.storage.fitted import rel_rms

    a, b = open_lake(lake)[DEV], open_lake(ref)[DEV]
    got = np.concatenate([a.targets(u) for u in a], axis=1)
    want = np.concatenate([b.targets(u) for u in b], axis=1)
    return {f"layer_{k:02d}": rel_rms(got[i], want[i]) for i, k in enumerate(a.meta.layers)}


def loader_figures(lake: Path, repeats: int) -> tuple[float, float]:
    """(utterance-seconds per second of the loader alone, seconds per batch of the device decode).

    Steady state: two untimed epochs first, so that opening the lake and its fitted codecs (sha256
    checked, paid once per run) is not charged to throughput (on the fixture's 7 utterances it
    would otherwise dominate); each batch is dropped at once, as in training, so the loader
    reuses its buffers."""
    from fhb.training.loader import LakeLoader

    decode = []
    with LakeLoader(lake, [TRAIN], None, batch_size=2, workers=0, shuffle=False) as loader:
        for _ in range(2):  # warm-up epochs, which also time the device decode of each batch
            for batch in loader:
                t0 = time.perf_counter()
                batch.float_targets("cpu")
                decode.append(time.perf_counter() - t0)
        audio_s = 0.0
        start = time.perf_counter()
        for _ in range(repeats):
            for batch in loader:  # dropped at once, as a training step does: buffers are reused
                audio_s += float(batch.wav_lengths.sum()) / 16000
        seconds = time.perf_counter() - start
    return audio_s / seconds, statistics.median(decode) if decode else 0.0


def distill_and_evaluate(lake: Path, run: Path, ref: Path, steps: int) -> dict:
    """The benchmark's ``fhb distill`` run from ``lake`` (no dev evaluation while training), then
    ``fhb evaluate --json --any-encoding`` of its student on the float32 lake's dev split."""
    from fhb.stages.distill import run_distill
    from fhb.stages.evaluate import evaluate_run

    run_distill(lake, CONFIG, run, splits=[TRAIN], dev_split="none", steps=steps, batch_size=2, accumulate=1,
                max_seconds=CROP_SECONDS, workers=0, seed=0, log_every=1, progress=False, eval_every=None)
    return evaluate_run(run, ref, DEV, batch_size=2, any_encoding=True)


def median_step_seconds(run_dir: Path) -> float:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [1.0 / r["steps_per_s"] for r in recs if r.get("kind") == "train" and r["step"] > 1]
    return statistics.median(times) if times else float("nan")


def pareto_png(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in rows:
        colour = {"pca": "tab:blue", "pq": "tab:orange", "klt": "tab:purple"}.get(r["codec"], "tab:gray")
        ax.scatter(r["bytes_per_frame_per_layer"], r["dev_loss_increase_pct"], color=colour)
        ax.annotate(r["label"], (r["bytes_per_frame_per_layer"], r["dev_loss_increase_pct"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.axhline(1.0, color="tab:red", lw=0.8, ls="--", label="+1 % (goal)")
    ax.axvline(100.0, color="tab:green", lw=0.8, ls="--", label="100 B/frame/layer (goal)")
    ax.set_xlabel("bytes per frame per layer (targets, on disk)")
    ax.set_ylabel("student dev loss vs float16-trained (%)")
    ax.set_title("Target codecs: size vs student quality (HuBERT-Base-shaped random teacher)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 codec points, 8 distill steps")
    parser.add_argument("--steps", type=int, default=None, help="distill steps per codec (default 8 quick, 240 full)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see the module doc)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.steps or (8 if args.quick else 240)
    points = QUICK_POINTS if args.quick else FULL_POINTS
    from fhb.stages.extract import run_extract
    from fhb.stages.teacher_info import write_random_teacher
    from fhb.stages.option_limits import MAX_FIT_SECONDS
    from fhb.stages.transcode import run_transcode
    from fhb.storage.integrity import summarize_lake

    started = time.perf_counter()
    rows: list[dict] = []
    untrained = float("nan")
    with tempfile.TemporaryDirectory(prefix="fhb-codecs-") as tmp:
        tmp_p = Path(tmp)
        ckpt = tmp_p / "hubert-base-random.pt"
        write_random_teacher(ckpt, "hubert-base", 0)
        ref = tmp_p / "f32"
        run_extract(ckpt, FIXTURE, [TRAIN, DEV], ref, dtype="float32", workers=0, threads=torch.get_num_threads())
        for codec, budget in points:
            name = label(codec, budget)
            lake = tmp_p / name.replace("@", "_")
            t0 = time.perf_counter()
            run_transcode(ref, lake, codec, codec_error=budget or 0.05, fit_seconds=MAX_FIT_SECONDS)  # the whole split
            encode_s = time.perf_counter() - t0
            summary = summarize_lake(lake)
            errors = dev_errors(lake, ref)
            throughput, decode_s = loader_figures(lake, repeats=5 if args.quick else 30)
            run = tmp_p / f"run-{lake.name}"
            ev = distill_and_evaluate(lake, run, ref, steps)
            if codec == "float16":
                untrained = distill_and_evaluate(lake, tmp_p / "run-1-update", ref, 1)["validation_loss"]
            detail = summary.layers_detail
            rows.append({
                "label": name, "codec": codec, "budget": budget,
                "bytes_per_frame_per_layer": summary.bytes_per_frame_per_layer,
                "bytes_per_frame": {k: v.bytes_per_frame for k, v in detail.items()},
                "width": {k: v.width for k, v in detail.items()},
                "fit_rel_rms": {k: v.rel_rms for k, v in detail.items()},
                "dev_rel_rms": errors,
                "per_layer": ev["per_layer"], "validation_loss": ev["validation_loss"],
                "loader_utt_s_per_s": throughput, "decode_s_per_batch": decode_s,
                "step_s": median_step_seconds(run), "transcode_s": encode_s,
            })
            print(json.dumps(rows[-1]), flush=True)
    base = next(r for r in rows if r["codec"] == "float16")
    for r in rows:
        r["dev_loss_increase_pct"] = 100.0 * (r["validation_loss"] / base["validation_loss"] - 1.0)
        r["loader_vs_float16"] = r["loader_utt_s_per_s"] / base["loader_utt_s_per_s"]
        r["step_vs_float16"] = r["step_s"] / base["step_s"]
    pareto_png(rows, PNG)
    layers = list(base["per_layer"])
    mean_err = lambda r: float(np.mean(list(r["dev_rel_rms"].values())))  # noqa: E731
    lines = [
        f"`python benchmarks/codecs.py{' --quick' if args.quick else ''}` ({machine()}; {steps} distill updates per "
        f"codec, batch 2, {CROP_SECONDS:g} s crops, seed 0, a 12-layer width-96 FitHuBERT-shaped student "
        f"(benchmarks/codecs_student.yaml); {time.perf_counter() - started:.0f} s). The float16-trained student's "
        f"validation loss went from {untrained:.5g} after 1 update to {base['validation_loss']:.5g}; the float32 row "
        "(targets within rounding of float16's) shows how much the loss moves when the targets barely change: "
        "differences smaller than that are noise. "
        "HuBERT-Base-shaped **random-weight** teacher on the 10-utterance real-speech fixture, all 12 layers; "
        "every lake transcoded from one float32 lake; codecs fitted on the train split, errors and losses on the "
        "held-out dev split against the float32 lake. Random-weight activations are not real HuBERT's: the rank / "
        "sub-spaces each budget needs come from the data, so rerun this on your teacher before choosing. The "
        "fixture is tiny (≈1000 fitting frames): read loss differences of a few tenths of a percent as noise.",
        "",
        "| codec | B/frame/layer | 100 h, 12 layers | 960 h, 12 layers | width (min-max) | dev rel. RMS (mean) "
        "| validation loss | vs float16 | loader utt-s/s (× f16) | decode ms/batch | step s (× f16) |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = r["bytes_per_frame_per_layer"]
        w = list(r["width"].values())
        lines.append(
            f"| {r['label']} | {b:.0f} | {b * 12 * 100 * FRAMES_PER_HOUR / 1e9:.1f} GB | "
            f"{b * 12 * 960 * FRAMES_PER_HOUR / 1e9:.0f} GB | {min(w)}-{max(w)} | {mean_err(r):.4f} | "
            f"{r['validation_loss']:.5g} | {r['dev_loss_increase_pct']:+.2f} % | {r['loader_utt_s_per_s']:.0f} "
            f"({r['loader_vs_float16']:.2f}×) | {1000 * r['decode_s_per_batch']:.1f} | {r['step_s']:.2f} "
            f"({r['step_vs_float16']:.2f}×) |")
    lines += ["", "Per layer (bytes per frame / dev relative RMS error / student dev loss):", "",
              "| codec | " + " | ".join(layers) + " |", "|---|" + "---:|" * len(layers)]
    for r in rows:
        cells = [f"{r['bytes_per_frame'][k]:.0f} / {r['dev_rel_rms'][k]:.3f} / {r['per_layer'][k]:.4g}" for k in layers]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    lines += ["", "![bytes per frame vs dev-loss increase](codecs_pareto.png)"]
    record("Target codecs: bytes per frame vs student quality", "\n".join(lines))
    emit("codecs", {"rows": [{k: r[k] for k in ("label", "bytes_per_frame_per_layer", "dev_loss_increase_pct",
                                                "loader_vs_float16", "step_vs_float16")} for r in rows]})


if __name__ == "__main__":
    main()
