"""The teacher: loading fairseq-layout checkpoints without fairseq, layer API, batch invariance."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fhb.errors import FhbError
from fhb.nn.frames import conv_output_length
from fhb.pipeline.checkpoint_io import load_checkpoint
from fhb.pipeline.teacher import load_teacher, save_random_checkpoint


def test_load_does_not_import_fairseq(tiny_teacher_path: Path) -> None:
    before = {m for m in sys.modules if m.split(".")[0] == "fairseq"}
    teacher = load_teacher(tiny_teacher_path)
    after = {m for m in sys.modules if m.split(".")[0] == "fairseq"}
    assert after == before
    assert teacher.num_layers == 3 and teacher.dim == 64
    assert len(teacher.sha256) == 64
    assert teacher.config["_name"] == "hubert"
    assert teacher.model_name == "hubert" and not teacher.normalize


def test_extract_shapes_and_layer_selection(tiny_teacher_path: Path, fixture_wavs: dict) -> None:
    teacher = load_teacher(tiny_teacher_path)
    wavs = list(fixture_wavs.values())[:3]
    full = teacher.extract(wavs)
    for wav, out in zip(wavs, full):
        assert out.dtype == torch.float32
        assert out.shape == (3, conv_output_length(wav.numel()), 64)
    some, cnn = teacher.extract(wavs, layers=[3, 1], cnn_features=True)
    for f, s, c in zip(full, some, cnn):
        torch.testing.assert_close(s, f[[2, 0]], rtol=0, atol=1e-5)
        assert c.shape == (f.shape[1], 64)


def test_frame_count_is_conv_arithmetic() -> None:
    assert conv_output_length(16000) == 49
    assert conv_output_length(400) == 1
    assert conv_output_length(399) == 0


@pytest.mark.parametrize("layers", [[0], [4], []])
def test_bad_layers_refused(tiny_teacher_path: Path, fixture_wavs: dict, layers: list[int]) -> None:
    teacher = load_teacher(tiny_teacher_path)
    with pytest.raises(FhbError, match="layers"):
        teacher.extract(list(fixture_wavs.values())[:1], layers=layers)


@pytest.mark.parametrize("fixture", ["tiny_teacher_path", "tiny_w2v2_teacher_path"])
def test_batch_invariance(fixture: str, request: pytest.FixtureRequest, fixture_wavs: dict) -> None:
    """Each utterance alone equals the same utterance inside padded batches (max abs ≤ 1e-5)."""
    teacher = load_teacher(request.getfixturevalue(fixture))
    wavs = [teacher.prepare(w) for w in fixture_wavs.values()]
    alone = [teacher.extract([w], cnn_features=True) for w in wavs]
    teacher.max_batch_samples = 10**9
    batched, cnn = teacher.extract(wavs, cnn_features=True)
    lengths = {w.numel() for w in wavs}
    assert len(lengths) == len(wavs), "the fixture should hold utterances of different lengths"
    worst = 0.0
    for (a_t, a_c), b_t, b_c in zip(alone, batched, cnn):
        worst = max(worst, (a_t[0] - b_t).abs().max().item(), (a_c[0] - b_c).abs().max().item())
    assert worst <= 1e-5, worst
    # and in a different grouping (reverse order, pairs)
    teacher.max_batch_samples = 2 * max(lengths)
    regrouped = teacher.extract(wavs[::-1])[::-1]
    for a, b in zip(batched, regrouped):
        assert (a - b).abs().max().item() <= 1e-5


def test_normalize_prepare(tiny_w2v2_teacher_path: Path) -> None:
    teacher = load_teacher(tiny_w2v2_teacher_path)
    assert teacher.normalize and teacher.arch.layer_norm_first
    w = torch.randn(8000) * 3 + 1
    p = teacher.prepare(w)
    assert abs(p.mean().item()) < 1e-5 and abs(p.std(unbiased=False).item() - 1) < 1e-3


def test_legacy_args_checkpoint_loads(tmp_path: Path, fixture_wavs: dict) -> None:
    cfg_path = save_random_checkpoint(tmp_path / "cfg.pt", "tiny-wav2vec2", seed=3)
    args_path = save_random_checkpoint(tmp_path / "args.pt", "tiny-wav2vec2", seed=3, legacy_args=True)
    a, b = load_teacher(cfg_path), load_teacher(args_path)
    assert b.model_name == "wav2vec2" and b.normalize
    wav = [b.prepare(next(iter(fixture_wavs.values())))]
    torch.testing.assert_close(a.extract(wav)[0], b.extract(wav)[0], rtol=0, atol=0)


def _plain_copy(path: Path) -> dict:
    """The checkpoint as plain containers (fairseq's pickled task state dropped)."""
    ckpt = load_checkpoint(path)
    ckpt.pop("task_state", None)
    return ckpt


def test_unknown_state_dict_key_refused(tmp_path: Path, tiny_teacher_path: Path) -> None:
    ckpt = _plain_copy(tiny_teacher_path)
    ckpt["model"]["encoder.layers.0.extra.weight"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "extra.pt")
    with pytest.raises(FhbError, match="unexpected.*encoder.layers.0.extra.weight"):
        load_teacher(tmp_path / "extra.pt")


def test_unsupported_model_refused(tmp_path: Path, tiny_teacher_path: Path) -> None:
    ckpt = _plain_copy(tiny_teacher_path)
    ckpt["cfg"]["model"]["_name"] = "hubert_ctc"
    torch.save(ckpt, tmp_path / "ctc.pt")
    with pytest.raises(FhbError, match="fine-tuned"):
        load_teacher(tmp_path / "ctc.pt")
