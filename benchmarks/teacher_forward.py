"""fhb's teacher forward vs fairseq's, HuBERT-Base shapes, same utterances and batches.

    python benchmarks/teacher_forward.py [--quick] [--seconds 60] [--device cpu|cuda] [--precision fp16]

fp32 on CPU (default); on ``--device cuda`` both run under the same autocast (fp16 by default).

Both run in inference mode on the same length-sorted batches; fairseq gets the padded batch
with its padding mask (its usual use), fhb runs its batch-invariant path (conv front-end per
utterance, transformer batched with a key-padding mask). Goal: fhb ÷ fairseq ≤ 1.0.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

from benchmarks.common import best_of, emit, generated_audio, librispeech_like_lengths, machine, record  # noqa: E402
from fhb.pipeline.teacher import load_teacher, save_random_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="≤ 2 min: 60 s of audio, one repeat")
    parser.add_argument("--seconds", type=float, default=None, help="audio to run (default 60 quick, 120 full)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default=None, help="fp32 (CPU default), fp16 (CUDA default) or bf16")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible to torch")
    precision = args.precision or ("fp16" if cuda else "fp32")
    seconds = args.seconds or (60.0 if args.quick else 120.0)
    repeats = 1 if args.quick else 2
    lengths = librispeech_like_lengths(seconds, low=2.0, high=16.0, mean=8.0)
    wavs = generated_audio(lengths)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_random_checkpoint(Path(tmp) / "hubert-base.pt", "hubert-base", seed=0)
        teacher = load_teacher(path, device=args.device, precision=precision)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from fairseq import checkpoint_utils

            fairseq_model = checkpoint_utils.load_model_ensemble_and_task([str(path)])[0][0].eval().to(args.device)
    batches = list(teacher._batches(lengths))

    def run_fhb() -> None:
        teacher.extract(wavs)

    def run_fairseq() -> None:
        # fairseq's forward through every layer (fhb's side also copies all 12 layers to the CPU)
        with torch.inference_mode(), teacher._autocast():
            for batch in batches:
                padded = torch.nn.utils.rnn.pad_sequence([wavs[i] for i in batch], batch_first=True).to(args.device)
                mask = torch.arange(padded.shape[1])[None, :] >= torch.tensor([lengths[i] for i in batch])[:, None]
                fairseq_model.extract_features(padded, padding_mask=mask.to(args.device), mask=False)
        if cuda:
            torch.cuda.synchronize()

    # Warm-up of both sides (allocator, thread pools, kernels): the whole set, or two utterances
    # in the quick mode.
    if args.quick:
        teacher.extract(wavs[:2])
        with torch.inference_mode(), teacher._autocast():
            for w in wavs[:2]:
                fairseq_model.extract_features(w[None].to(args.device), padding_mask=None, mask=False)
    else:
        run_fhb()
        run_fairseq()
    t_fhb = best_of(run_fhb, repeats)
    t_fairseq = best_of(run_fairseq, repeats)
    ratio = t_fhb / t_fairseq
    audio_s = sum(lengths) / 16000
    figures = {"audio_s": round(audio_s, 1), "utterances": len(lengths), "batches": len(batches),
               "fhb_s": round(t_fhb, 2), "fairseq_s": round(t_fairseq, 2), "fhb_over_fairseq": round(ratio, 3),
               "fhb_rtf": round(t_fhb / audio_s, 4), "goal": "<= 1.0", "met": ratio <= 1.0,
               "device": args.device, "precision": precision}
    where = "fp32, CPU" if not cuda else f"{precision}, CUDA"
    record(
        f"Teacher forward: fhb vs fairseq (HuBERT Base, {where})",
        f"""`python benchmarks/teacher_forward.py{' --quick' if args.quick else ''}{'' if not cuda else ' --device ' + args.device}` — {machine()}{'' if not cuda else ', ' + torch.cuda.get_device_name()}.
{len(lengths)} generated utterances of 2–16 s ({audio_s:.0f} s), {len(batches)} length-sorted batches
of ≤ {teacher.max_batch_samples // 16000} s padded audio; best of {repeats}.

| | seconds | real-time factor |
|---|---|---|
| fhb `Teacher.extract` (all 12 layers) | {t_fhb:.2f} | {t_fhb / audio_s:.3f} |
| fairseq `extract_features` (padded batches) | {t_fairseq:.2f} | {t_fairseq / audio_s:.3f} |
| **fhb ÷ fairseq** | **{ratio:.3f}** (goal ≤ 1.0) | |
""",
    )
    emit("teacher_forward", figures)


if __name__ == "__main__":
    main()
