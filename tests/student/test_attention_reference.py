"""Reference: the teacher's attention recomputed from stored hidden states equals fairseq's own.

fairseq's layer ``N`` gets its input captured by a pre-hook; its ``self_attn`` then gives the
per-head probabilities (``need_weights``, ``need_head_weights``) and, with ``before_softmax``, the
logits and values the published code turns into value relations. fhb's `TeacherAttention` gets the
stored layer ``N - 1`` (or, for a one-layer teacher, the stored CNN features) that ``fhb extract``
writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fhb.pipeline.teacher import Teacher, load_teacher, save_random_checkpoint
from fhb.student.attention_targets import TeacherAttention, attention_input_layer
from tests.reference import load_fairseq_model

pytestmark = pytest.mark.reference

TOLERANCE = 1e-5
"""Max abs error of the probabilities and of the logits / value relations relative to their scale,
from float32 hidden states (README "Faithfulness"; measured on the tiny teachers: probabilities
1.5e-8, logits 6.2e-7, value relations 4.2e-7; HuBERT Base: 1.2e-8, 7.6e-7, 5.8e-7)."""

FP16_TOLERANCE = 2e-3
"""The same from hidden states rounded to float16 (a float16 lake): float16 keeps 11 significant
bits (relative rounding 4.9e-4), which the q/k/v products carry through; measured: probabilities
1.5e-5, logits 3.5e-4, value relations 2.6e-4 (tiny); 5.0e-6, 3.7e-4, 1.5e-4 (HuBERT Base)."""


def _fairseq_attention(model: torch.nn.Module, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fairseq's last layer on ``wav``: (``H x T x T`` probabilities, logits, value relations)."""
    layer = model.encoder.layers[-1]
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    frames = None
    try:
        with torch.inference_mode():
            res = model.extract_features(wav[None], padding_mask=None, mask=False)
            frames = res["x"].shape[1] if isinstance(res, dict) else res[0].shape[1]
    finally:
        hook.remove()
    x = captured[0]  # T' x 1 x D (fairseq pads T to a multiple of 2 with a masked frame)
    attn = layer.self_attn
    attn._set_skip_embed_dim_check()  # as the published code does: off torch's fast path, which
    # ignores before_softmax and averages the heads
    with torch.inference_mode():
        x = x[:frames]
        if layer.layer_norm_first:
            x = layer.self_attn_layer_norm(x)
        _, probs = attn(query=x, key=x, value=x, need_weights=True, need_head_weights=True)
        logits, v = attn(query=x, key=x, value=x, before_softmax=True)
        v_rel = torch.bmm(v * attn.scaling, v.transpose(1, 2))  # the published rtrn_attn_forward
    return probs[:, 0], logits, v_rel


def _ours(teacher: Teacher, module: TeacherAttention, wavs: list[torch.Tensor], half: bool = False):
    layer = attention_input_layer(teacher.num_layers)
    if layer is None:
        _, cnn = teacher.extract(wavs, layers=[1], cnn_features=True)
        hidden = cnn
    else:
        hidden = [h[0] for h in teacher.extract(wavs, layers=[layer])]
    if half:
        hidden = [h.half() for h in hidden]
    lengths = torch.tensor([h.shape[0] for h in hidden])
    padded = torch.nn.utils.rnn.pad_sequence(hidden, batch_first=True)
    return module(padded, lengths), lengths


def _errors(path: Path, wavs: dict, half: bool = False) -> dict[str, float]:
    reference = load_fairseq_model(path)
    teacher = load_teacher(path)
    module = TeacherAttention.from_state(teacher.model.state_dict(), teacher.arch, teacher.num_layers)
    prepared = [teacher.prepare(w) for w in list(wavs.values())[:3]]
    rel, lengths = _ours(teacher, module, prepared, half)  # one padded batch: masks are exercised
    worst = {"probs": 0.0, "logits": 0.0, "values": 0.0}
    for i, wav in enumerate(prepared):
        probs, logits, v_rel = _fairseq_attention(reference, wav)
        n = int(lengths[i])
        heads = probs.shape[0]
        assert probs.shape[-1] == n
        ours_logits = rel.logits[i, :, :n, :n]
        ours_probs = torch.softmax(rel.logits[i, :, :n], dim=-1)[..., :n]
        ours_values = rel.values[i, :, :n, :n]
        assert torch.isinf(rel.logits[i, :, :, n:]).all()  # padded keys are masked
        worst["probs"] = max(worst["probs"], (ours_probs - probs).abs().max().item())
        ref_logits, ref_values = logits.view(heads, n, n), v_rel.view(heads, n, n)
        worst["logits"] = max(worst["logits"], ((ours_logits - ref_logits).abs().max() / ref_logits.abs().max()).item())
        worst["values"] = max(worst["values"], ((ours_values - ref_values).abs().max() / ref_values.abs().max()).item())
    return worst


@pytest.mark.parametrize("arch,layers", [("tiny", 3), ("tiny-wav2vec2", 3), ("tiny", 1), ("tiny-wav2vec2", 1)])
def test_recomputed_attention_equals_fairseq(arch: str, layers: int, tmp_path: Path, fixture_wavs: dict) -> None:
    """Post-LN and pre-LN, from layer N-1 (3 layers) and from the CNN features (1 layer)."""
    path = save_random_checkpoint(tmp_path / f"{arch}-{layers}.pt", arch, seed=3, encoder_layers=layers)
    worst = _errors(path, fixture_wavs)
    print(f"{arch} x{layers} fp32: {worst}")
    assert max(worst.values()) <= TOLERANCE, worst


@pytest.mark.parametrize("arch", ["tiny", "tiny-wav2vec2"])
def test_recomputed_attention_from_float16(arch: str, tmp_path: Path, fixture_wavs: dict) -> None:
    """From a float16 lake: the error is float16's rounding of the inputs, carried through."""
    path = save_random_checkpoint(tmp_path / f"{arch}.pt", arch, seed=3)
    worst = _errors(path, fixture_wavs, half=True)
    print(f"{arch} fp16 inputs: {worst}")
    assert max(worst.values()) <= FP16_TOLERANCE, worst


@pytest.mark.slow
def test_base_attention_equals_fairseq(tmp_path: Path, fixture_wavs: dict) -> None:
    """HuBERT Base shapes (12 heads of 64, 768 dims)."""
    path = save_random_checkpoint(tmp_path / "base.pt", "hubert-base", seed=7)
    worst = _errors(path, fixture_wavs)
    half = _errors(path, fixture_wavs, half=True)
    print(f"hubert-base fp32: {worst}; fp16 inputs: {half}")
    assert max(worst.values()) <= TOLERANCE, worst
    assert max(half.values()) <= FP16_TOLERANCE, half
