"""Extraction wall time vs the pure teacher forward, and bytes/frame/layer + error per dtype.

    python benchmarks/extract.py [--quick] [--seconds 120]

HuBERT-Base-shaped random teacher (cost does not depend on the weights), generated audio in
LibriSpeech-like lengths written as FLAC in the LibriSpeech layout. In one run: (a) pure
``Teacher.extract`` of every utterance on the same batches, (b) ``fhb extract`` (in-process, one
worker, float16, all 12 layers: decode + teacher + encode + compress + write + commit).
Goal (b)/(a) ≤ 1.15. Then each dtype on a subset: bytes per frame per layer on disk and the
relative RMS error per layer against the float32 teacher output.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import emit, generated_audio, librispeech_like_lengths, machine, record  # noqa: E402
from fhb.pipeline.teacher import load_teacher, save_random_checkpoint  # noqa: E402
from fhb.stages.extract import run_extract  # noqa: E402
from fhb.storage.integrity import summarize_lake  # noqa: E402
from fhb.storage.reader import open_lake  # noqa: E402


def write_corpus(root: Path, wavs: list[torch.Tensor], split: str = "train-clean-100") -> None:
    """Generated utterances as LibriSpeech FLAC + transcripts (speaker 1000, chapter 1)."""
    chapter = root / split / "1000" / "1"
    chapter.mkdir(parents=True)
    lines = []
    for i, wav in enumerate(wavs):
        utt = f"1000-1-{i:04d}"
        sf.write(chapter / f"{utt}.flac", (wav.clamp(-1, 1) * 32767).round().short().numpy(), 16000, subtype="PCM_16")
        lines.append(f"{utt} GENERATED AUDIO {i}")
    (chapter / "1000-1.trans.txt").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="≤ 2 min on 2 cores")
    parser.add_argument("--seconds", type=float, default=None, help="audio (default 120)")
    args = parser.parse_args()
    seconds = args.seconds or 120.0
    lengths = librispeech_like_lengths(seconds, high=35.0, mean=12.0, seed=1)
    wavs = generated_audio(lengths, seed=1)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        write_corpus(tmp / "LibriSpeech", wavs)
        ckpt = save_random_checkpoint(tmp / "hubert-base.pt", "hubert-base", seed=0)
        teacher = load_teacher(ckpt, max_batch_samples=200 * 16000)
        decoded = [torch.from_numpy(sf.read(p, dtype="int16")[0].astype(np.float32) / 32768)
                   for p in sorted((tmp / "LibriSpeech").rglob("*.flac"))]
        teacher.extract(decoded[:1])  # warm-up
        start = time.perf_counter()
        teacher.extract(decoded)
        t_teacher = time.perf_counter() - start
        start = time.perf_counter()
        run_extract(ckpt, tmp / "LibriSpeech", ["train-clean-100"], tmp / "lake-f16", workers=0,
                    shard_hours=1.0, batch_seconds=200.0)
        t_extract = time.perf_counter() - start
        ratio = t_extract / t_teacher
        audio_s = sum(lengths) / 16000
        # dtypes on a subset: bytes/frame/layer and error vs the float32 teacher output
        subset = 4 if args.quick else 8
        sub_root = tmp / "sub" / "LibriSpeech"
        write_corpus(sub_root, wavs[:subset])
        reference = teacher.extract([decoded[i] for i in range(subset)])
        rows, dtype_figures = [], {}
        for dtype in ("float32", "float16", "bfloat16", "int8"):
            lake = tmp / f"sub-{dtype}"
            run_extract(ckpt, sub_root, ["train-clean-100"], lake, workers=0, dtype=dtype)
            view = open_lake(lake)["train-clean-100"]
            errs = []
            for i, utt in enumerate(view.utterance_ids):
                got, ref = view.targets(utt), reference[i].numpy()
                errs.append(np.sqrt(((got - ref) ** 2).mean(axis=(1, 2)) / (ref**2).mean(axis=(1, 2))))
            per_layer = np.mean(errs, axis=0)
            bpf = summarize_lake(lake).splits["train-clean-100"].bytes_per_frame_per_layer
            dtype_figures[dtype] = {"bytes_per_frame_per_layer": round(bpf, 1), "max_rel_rms": float(per_layer.max())}
            rows.append(f"| {dtype} | {bpf:.0f} | {per_layer.mean():.2e} | {per_layer.max():.2e} |")
    figures = {"audio_s": round(audio_s, 1), "utterances": len(lengths), "teacher_s": round(t_teacher, 2),
               "extract_s": round(t_extract, 2), "extract_over_teacher": round(ratio, 3), "goal": "<= 1.15",
               "met": ratio <= 1.15, "dtypes": dtype_figures}
    per_hour_gb = dtype_figures["float16"]["bytes_per_frame_per_layer"] * 50 * 3600 * 12 / 1e9
    record(
        "Extraction: fhb extract vs pure teacher forward (HuBERT Base, CPU)",
        f"""`python benchmarks/extract.py{' --quick' if args.quick else ''}` — {machine()}.
{len(lengths)} generated utterances of 2–35 s ({audio_s:.0f} s), all 12 layers, one in-process worker.

| | seconds |
|---|---|
| pure `Teacher.extract` (same batches) | {t_teacher:.1f} |
| `fhb extract` (decode, teacher, float16 encode, Blosc-zstd, write, commit) | {t_extract:.1f} |
| **extract ÷ teacher** | **{ratio:.3f}** (goal ≤ 1.15) |

Per dtype ({subset} utterances; error = relative RMS against the float32 teacher output, per layer):

| dtype | bytes / frame / layer | mean rel. RMS | worst layer |
|---|---|---|---|
{chr(10).join(rows)}

Disk estimate from these bytes per frame (float16, 12 layers): {per_hour_gb:.1f} GB per hour of audio,
{per_hour_gb * 100:.0f} GB for train-clean-100 (100 h), {per_hour_gb * 960 / 1000:.2f} TB for 960 h.
Extraction time on this CPU at the measured real-time factor {t_extract / audio_s:.3f}: {t_extract / audio_s * 100:.0f} h for
100 h of audio per worker machine (a GPU changes this by orders of magnitude: see `benchmarks/gpu.sh`).
""",
    )
    emit("extract", figures)


if __name__ == "__main__":
    main()
