"""What the attention losses cost per training step: one step with and without them.

    python benchmarks/attention_loss.py [--quick] [--seconds 6] [--batch 3] [--repeats 3] [--device cpu|cuda]

The FitHuBERT student (fithubert.yaml without the time reduction, which the attention loss cannot
use: 12 layers of 480, 12 heads) against a HuBERT-Base-shaped teacher (768 dims, 12 heads); a
step is the student's forward, the loss (random targets of the needed layers) and the backward,
fp32. With ``attn_loss_weight`` and ``v_rel_loss_weight`` the step also recomputes the teacher's
last-layer attention from its layer 11 (q/k/v projections and two ``T x T`` products per head)
and the student's from its last layer's input. Steps alternate (without, with), best of
``repeats`` each; the figure is the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import emit, generated_audio, machine, record  # noqa: E402
from fhb.nn.wav2vec2 import BackboneConfig  # noqa: E402
from fhb.student.attention_targets import TeacherAttention  # noqa: E402
from fhb.student.config import FitConfig, load_packaged_config  # noqa: E402
from fhb.student.loss import DistillLoss  # noqa: E402
from fhb.student.model import build_student  # noqa: E402


def _config(attention: bool) -> FitConfig:
    cfg = load_packaged_config("fithubert").to_dict()
    cfg["distiller"]["enable_tr_layer"] = False
    if attention:
        cfg["train"].update(attn_loss_weight=1.0, attn_loss_type="kldiv", v_rel_loss_weight=1.0)
    return FitConfig.from_dict(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one repeat of 4 s utterances")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per utterance (default 6, quick 4)")
    parser.add_argument("--batch", type=int, default=3, help="utterances per batch (fithubert.yaml: batch_size)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3, quick 1")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    args.seconds = args.seconds or (4.0 if args.quick else 6.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    device = torch.device(args.device)
    n = int(args.seconds * 16000)
    wavs = torch.stack(generated_audio([n] * args.batch)).to(device)
    lengths = torch.full((args.batch,), n, device=device)
    teacher = TeacherAttention(BackboneConfig(), 12).to(device)
    torch.manual_seed(0)
    fits = {False: _config(False), True: _config(True)}
    model = build_student(fits[False].distiller).to(device)
    frames = model(wavs[:1, :n], lengths[:1]).hidden_states[-1].shape[1]
    targets = {k: torch.randn(args.batch, frames, 768, device=device) for k in range(1, 13)}
    tlen = torch.full((args.batch,), frames, device=device)
    losses = {a: DistillLoss(dataclasses.replace(fits[a].loss), 12, student=fits[a].distiller,
                             teacher_attention=teacher if a else None) for a in (False, True)}

    def step(attention: bool) -> float:
        import time

        model.return_attention = attention
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = losses[attention](model(wavs, lengths), targets, tlen)
        res.total.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    step(False), step(True)  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for a in (False, True):
            times[a].append(step(a))
    base, with_attn = min(times[False]), min(times[True])
    ratio = with_attn / base
    figures = {"seconds_per_utt": args.seconds, "batch": args.batch, "frames": frames, "step_s": round(base, 3),
               "step_with_attention_s": round(with_attn, 3), "ratio": round(ratio, 3), "machine": machine()}
    emit("attention_loss", figures)
    record("Attention losses: cost per step (issue 12)", (
        f"One student step (forward + loss + backward, fp32, {args.device}) of the FitHuBERT student without "
        f"time reduction, {args.batch} x {args.seconds:g} s ({frames} frames), against a HuBERT-Base-shaped "
        f"teacher; with `attn_loss_weight` and `v_rel_loss_weight` (teacher's last-layer attention "
        f"recomputed from layer 11, the student's from its last layer's input): best of {args.repeats}, "
        f"alternated.\n\n| step | seconds |\n|---|---|\n| without | {base:.3f} |\n| with attention losses | "
        f"{with_attn:.3f} |\n| ratio | {ratio:.3f} |\n\n{machine()}. Read the ratio, not the seconds (the "
        "machine is shared). Expected from the arithmetic: the extra work is q/k/v projections of one "
        "teacher layer (3 x 768^2 per frame) and one student layer (3 x 480^2), and four T x T x 64 "
        "products per head, against a step of the whole student forward and backward: 1-2 %. Memory: "
        "each B x 12 x T x T float32 tensor (teacher logits and values, the student's, their softmaxes) "
        "is 13 MB at 3 x 6 s and about 80 MB at 3 x 15 s; the lake stores nothing more (zero bytes per "
        "frame). Not measured on a GPU (no device in this session).\n"
    ))


if __name__ == "__main__":
    main()
