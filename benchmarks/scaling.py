"""How extraction cost grows with hours of audio and dask workers (HuBERT Base, CPU).

    python benchmarks/scaling.py [--quick]

Extracts 1/4, 1/2 and all of a generated corpus (LibriSpeech-like lengths) with a LocalCluster of
1 and then 2 worker processes (the same total torch threads: the cores divided among the
workers), fits wall = fixed + slope × audio per worker count, and writes
docs/extract_scaling.png (wall time vs audio, one line per worker count) and a table to
docs/benchmarks.md with the projected extraction time of 100 h and 960 h on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import DOCS, emit, generated_audio, librispeech_like_lengths, machine, record  # noqa: E402
from benchmarks.extract import write_corpus  # noqa: E402
from fhb.pipeline.teacher import save_random_checkpoint  # noqa: E402
from fhb.stages.extract import run_extract  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="≤ 2 min: 80 s of audio at most")
    args = parser.parse_args()
    total = 80.0 if args.quick else 240.0
    lengths = librispeech_like_lengths(total, high=20.0, mean=8.0, seed=3)
    wavs = generated_audio(lengths, seed=3)
    cores = os.cpu_count() or 1
    rows, fits = [], {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        ckpt = save_random_checkpoint(tmp / "hubert-base.pt", "hubert-base", seed=0)
        fractions = (0.25, 0.5, 1.0)
        corpora = {}
        for f in fractions:
            n = max(1, int(round(len(wavs) * f)))
            root = tmp / f"corpus-{f}" / "LibriSpeech"
            write_corpus(root, wavs[:n])
            corpora[f] = (root, sum(lengths[:n]) / 16000)
        for workers in (1, 2):
            points = []
            for f in fractions:
                root, audio_s = corpora[f]
                shard_hours = audio_s / 3600 / 4  # four shards: work for every worker
                start = time.perf_counter()
                run_extract(ckpt, root, ["train-clean-100"], tmp / f"lake-{workers}-{f}", workers=workers,
                            threads=max(1, cores // workers), shard_hours=shard_hours)
                wall = time.perf_counter() - start
                points.append((audio_s, wall))
                rows.append(f"| {workers} | {audio_s:.0f} | {wall:.1f} | {wall / audio_s:.3f} |")
            x, y = np.array(points).T
            slope, fixed = np.polyfit(x, y, 1)
            fits[workers] = (float(slope), float(fixed), points)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for workers, (slope, fixed, points) in fits.items():
        x, y = np.array(points).T
        (dots,) = ax.plot(x, y, "o", label=f"{workers} worker(s): {fixed:.1f} s + {slope:.3f} × audio")
        grid = np.linspace(0, x.max(), 20)
        ax.plot(grid, fixed + slope * grid, "-", alpha=0.6, color=dots.get_color())
    ax.set_xlabel("audio extracted (s)")
    ax.set_ylabel("wall time of fhb extract (s)")
    ax.set_title(f"extraction scaling, HuBERT Base, {cores} CPU cores")
    ax.legend()
    fig.tight_layout()
    png = DOCS.parent / "extract_scaling.png"
    fig.savefig(png, dpi=100)
    best = min(fits, key=lambda w: fits[w][0])
    slope = fits[best][0]
    record(
        "Extraction scaling: hours of audio and dask workers (HuBERT Base, CPU)",
        f"""`python benchmarks/scaling.py{' --quick' if args.quick else ''}` — {machine()}.
Three corpus sizes, a LocalCluster of 1 and of 2 worker processes (torch threads = cores ÷ workers),
four shards per run. ![wall time vs audio](extract_scaling.png)

| workers | audio (s) | wall (s) | wall ÷ audio |
|---|---|---|---|
{chr(10).join(rows)}

Linear fits, wall = fixed + slope × audio: {'; '.join(f'{w} worker(s): {f[1]:.1f} s + {f[0]:.3f} × audio' for w, f in fits.items())}.
Cost grows linearly with audio (the fixed part is the cluster start, the scan and the teacher
load); on {cores} cores, 2 workers of {max(1, cores // 2)} thread(s) and 1 worker of {cores} threads use the same
cores, so the slope barely moves: more workers pay off with more cores or machines (one task per
shard, no shared state). Projected on this machine at slope {slope:.3f}: {slope * 100:.0f} h of wall time for
train-clean-100 (100 h of audio), {slope * 960:.0f} h for 960 h — which is why extraction belongs on
GPUs (`benchmarks/gpu.sh`) or many machines (`--scheduler`).
""",
    )
    emit("scaling", {"fits": {str(w): {"slope": round(f[0], 4), "fixed_s": round(f[1], 2)} for w, f in fits.items()},
                     "projected_hours_100h": round(slope * 100, 1), "projected_hours_960h": round(slope * 960, 1)})


if __name__ == "__main__":
    main()
