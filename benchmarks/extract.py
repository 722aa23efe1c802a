"""Extraction wall time vs the pure teacher forward, and bytes/frame/layer + error per dtype.

    python benchmarks/extract.py [--quick] [--seconds 60] [--device cpu|cuda] [--precision fp16]

HuBERT-Base-shaped random teacher (cost does not depend on the weights), generated audio in
LibriSpeech-like lengths written as FLAC in the LibriSpeech layout. Measured alternately, so
that load from other processes on the machine hits both sides alike (best of ``--repeats``):

(a) pure ``Teacher.extract`` of every utterance (decoded from the FLAC files beforehand) on the
    batches ``fhb extract`` forms (``--batch-seconds`` of padded audio, length-sorted), the
    teacher loaded beforehand;
(b) ``run_extract`` (what ``fhb extract`` runs: in-process worker, float16, all 12 layers):
    corpus scan, teacher config + sha256, teacher load, FLAC decode, teacher, float16 encode,
    Blosc-zstd, write, commit, listing.

Both use the same torch thread count. Goal (b)/(a) <= 1.15. Process CPU seconds of both are
reported too. Then each dtype on a subset: bytes per frame per layer on disk and the relative
RMS error per layer against the float32 teacher output (written from the same teacher output).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import emit, generated_audio, librispeech_like_lengths, machine, record  # noqa: E402
from fhb.nn.frames import conv_output_length  # noqa: E402
from fhb.pipeline.teacher import load_teacher, save_random_checkpoint  # noqa: E402
from fhb.stages.extract import _TEACHERS, _teacher_meta, run_extract  # noqa: E402
from fhb.storage import LakeMeta, ShardWriter, SplitInfo, create_lake, open_lake, update_split_listing  # noqa: E402
from fhb.storage.integrity import summarize_lake  # noqa: E402


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


def timed(fn: object) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()  # type: ignore[operator]
    return time.perf_counter() - wall, time.process_time() - cpu


def dtype_table(teacher: object, tmp: Path, wavs: list[torch.Tensor]) -> tuple[list[str], dict[str, object]]:
    """Per dtype: bytes/frame/layer and relative RMS error vs the float32 output of ``wavs``."""
    reference = [r.numpy() for r in teacher.extract(wavs)]  # type: ignore[attr-defined]
    audio = [(w.clamp(-1, 1) * 32767).round().short().numpy() for w in wavs]
    rows, figures = [], {}
    for dtype in ("float32", "float16", "bfloat16", "int8"):
        lake = tmp / f"sub-{dtype}"
        meta = LakeMeta(teacher=_teacher_meta(teacher), layers=tuple(range(1, teacher.num_layers + 1)),  # type: ignore[arg-type, attr-defined]
                        dtype=dtype, splits={"train-clean-100": SplitInfo()})
        meta = create_lake(lake, meta)
        with ShardWriter(lake, "train-clean-100", "shard-00000", meta) as w:
            for i, (a, ref) in enumerate(zip(audio, reference)):
                w.add(f"1000-1-{i:04d}", "1000", "1", "", a, ref)
            w.commit()
        update_split_listing(lake, "train-clean-100", ["shard-00000"])
        view = open_lake(lake)["train-clean-100"]
        errs = []
        for i, utt in enumerate(view.utterance_ids):
            got, ref = view.targets(utt), reference[i]
            errs.append(np.sqrt(((got - ref) ** 2).mean(axis=(1, 2)) / (ref**2).mean(axis=(1, 2))))
        per_layer = np.mean(errs, axis=0)
        bpf = summarize_lake(lake).splits["train-clean-100"].bytes_per_frame_per_layer
        figures[dtype] = {"bytes_per_frame_per_layer": round(bpf, 1), "max_rel_rms": float(per_layer.max())}
        rows.append(f"| {dtype} | {bpf:.0f} | {per_layer.mean():.2e} | {per_layer.max():.2e} |")
    return rows, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="<= 2 min on 2 cores: 60 s of audio, best of 2")
    parser.add_argument("--seconds", type=float, default=None, help="audio (default 60 quick, 240)")
    parser.add_argument("--repeats", type=int, default=None, help="alternating runs of each side (default 2 quick, 3)")
    parser.add_argument("--batch-seconds", type=float, default=200.0, help="padded audio per teacher batch (fhb's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default=None, help="fp32 (default on CPU) or fp16/bf16 (default fp16 on CUDA)")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible to torch")
    precision = args.precision or ("fp16" if cuda else "fp32")
    seconds = args.seconds or (60.0 if args.quick else 240.0)
    repeats = args.repeats or (2 if args.quick else 3)
    threads = torch.get_num_threads()
    lengths = librispeech_like_lengths(seconds, high=35.0, mean=12.0, seed=1)
    wavs = generated_audio(lengths, seed=1)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        root = tmp / "LibriSpeech"
        write_corpus(root, wavs)
        ckpt = save_random_checkpoint(tmp / "hubert-base.pt", "hubert-base", seed=0)
        teacher = load_teacher(ckpt, device=args.device, precision=precision,
                               max_batch_samples=int(args.batch_seconds * 16000))
        decoded = [torch.from_numpy(sf.read(p, dtype="int16")[0].astype(np.float32) / 32768)
                   for p in sorted(root.rglob("*.flac"))]
        teacher.extract(decoded[:1])  # warm-up (allocator, thread pools, kernels)

        def pure() -> None:
            teacher.extract(decoded)

        def extract() -> None:
            out = tmp / "lake"
            shutil.rmtree(out, ignore_errors=True)
            _TEACHERS.clear()  # load the teacher as a fresh `fhb extract` does
            run_extract(ckpt, root, ["train-clean-100"], out, workers=0, threads=threads, shard_hours=1.0,
                        batch_seconds=args.batch_seconds, device=args.device, precision=precision)

        runs: dict[str, list[tuple[float, float]]] = {"pure": [], "extract": []}
        for _ in range(repeats):
            runs["pure"].append(timed(pure))
            runs["extract"].append(timed(extract))
        _TEACHERS.clear()
        subset = [decoded[i] for i in range(min(4, len(decoded)))]
        rows, dtype_figures = dtype_table(teacher, tmp, subset)
    t_teacher = min(w for w, _ in runs["pure"])
    t_extract = min(w for w, _ in runs["extract"])
    cpu_teacher = min(c for _, c in runs["pure"])
    cpu_extract = min(c for _, c in runs["extract"])
    ratio = t_extract / t_teacher
    paired = statistics.median(e[0] / p[0] for p, e in zip(runs["pure"], runs["extract"]))
    audio_s = sum(lengths) / 16000
    batches = len(list(teacher._batches(lengths)))
    frames = sum(conv_output_length(n) for n in lengths)
    figures = {"audio_s": round(audio_s, 1), "utterances": len(lengths), "batches": batches,
               "batch_seconds": args.batch_seconds, "device": args.device, "precision": precision,
               "threads": threads, "repeats": repeats, "teacher_s": round(t_teacher, 2),
               "extract_s": round(t_extract, 2), "teacher_cpu_s": round(cpu_teacher, 2),
               "extract_cpu_s": round(cpu_extract, 2), "extract_over_teacher": round(ratio, 3),
               "paired_median_ratio": round(paired, 3), "all_runs": runs, "goal": "<= 1.15",
               "met": ratio <= 1.15, "dtypes": dtype_figures}
    per_hour_gb = dtype_figures["float16"]["bytes_per_frame_per_layer"] * 50 * 3600 * 12 / 1e9
    where = "CPU" if not cuda else f"CUDA, {precision}"
    cmd = "python benchmarks/extract.py" + (" --quick" if args.quick else "") + (
        f" --device {args.device}" if cuda else "")
    record(
        "Extraction: fhb extract vs pure teacher forward (HuBERT Base, CPU)" if not cuda
        else f"Extraction: fhb extract vs pure teacher forward (HuBERT Base, {where})",
        f"""`{cmd}` — {machine()}{'' if not cuda else ', ' + torch.cuda.get_device_name()}.
{len(lengths)} generated utterances of 2–35 s ({audio_s:.0f} s, {frames} frames), all 12 layers, {batches}
teacher batch(es) of <= {args.batch_seconds:g} s padded audio, {threads} torch threads on both sides, one
in-process worker; the two sides alternate, best of {repeats} each.

| | wall s | process CPU s |
|---|---|---|
| pure `Teacher.extract` (same batches, teacher already loaded, audio already decoded) | {t_teacher:.2f} | {cpu_teacher:.1f} |
| `run_extract` = `fhb extract` (scan, sha256, teacher load, FLAC decode, teacher, float16 encode, Blosc-zstd, write, commit) | {t_extract:.2f} | {cpu_extract:.1f} |
| **extract ÷ teacher** | **{ratio:.3f}** (goal ≤ 1.15; median of the paired runs {paired:.3f}) | {cpu_extract / cpu_teacher:.3f} |

Per dtype ({len(subset)} utterances; error = relative RMS against the float32 teacher output, per layer):

| dtype | bytes / frame / layer | mean rel. RMS | worst layer |
|---|---|---|---|
{chr(10).join(rows)}

Disk estimate from these bytes per frame (float16, 12 layers): {per_hour_gb:.1f} GB per hour of audio,
{per_hour_gb * 100:.0f} GB for train-clean-100 (100 h), {per_hour_gb * 960 / 1000:.2f} TB for 960 h.
Extraction time here at the measured real-time factor {t_extract / audio_s:.3f}: {t_extract / audio_s * 100:.0f} h for
100 h of audio per worker machine{' (a GPU changes this by orders of magnitude: see `benchmarks/gpu.sh`)' if not cuda else ''}.
""",
    )
    emit("extract", figures)


if __name__ == "__main__":
    main()
