"""Fine-tuned CTC teachers (fairseq ``hubert_ctc`` / ``wav2vec_ctc``): fhb's random ones load in
fairseq itself, and fhb's loader gives fairseq's hidden states and CTC logits."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

from fhb.pipeline.checkpoint_io import CheckpointError, load_checkpoint
from fhb.pipeline.ctc_layout import save_random_ctc_checkpoint
from fhb.pipeline.teacher import load_teacher, read_teacher_spec
from fhb.storage.ctc_labels import LETTERS
from tests.reference import fairseq_layers

TOLERANCE = 1e-5
"""Max abs error of every layer and of the logits, fp32 (as the pre-trained teachers' parity test)."""


@pytest.fixture(scope="module", params=["tiny-ctc", "tiny-wav2vec2-ctc"])
def ctc_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_ctc_checkpoint(tmp_path_factory.mktemp("ctc") / f"{request.param}.pt", request.param, seed=3)


def _fairseq_ctc(path: Path, data: Path) -> torch.nn.Module:
    """fairseq's own HubertCtc / Wav2VecCtc for ``path`` (its task reads ``dict.ltr.txt`` from ``data``)."""
    pytest.importorskip("fairseq", reason="reference tests need fairseq-fixed (make setup installs it)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fairseq import checkpoint_utils, models
        from fairseq.models.hubert import hubert_asr

        # fairseq-fixed's HubertEncoder reads cfg.autoregressive, which only its seq2seq config
        # declares: every hubert_ctc checkpoint needs this to load there.
        @dataclasses.dataclass
        class _HubertCtcConfig(hubert_asr.HubertCtcConfig):
            autoregressive: bool = False

        saved = models.MODEL_DATACLASS_REGISTRY["hubert_ctc"]
        models.MODEL_DATACLASS_REGISTRY["hubert_ctc"] = _HubertCtcConfig
        try:
            (data / "dict.ltr.txt").write_text("".join(f"{s} 1\n" for s in LETTERS[4:]))
            ms, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides={"data": str(data)})
        finally:
            models.MODEL_DATACLASS_REGISTRY["hubert_ctc"] = saved
    return ms[0].eval()


@pytest.mark.reference
def test_matches_fairseq(ctc_path: Path, tmp_path: Path, fixture_wavs: dict) -> None:
    reference = _fairseq_ctc(ctc_path, tmp_path)
    teacher = load_teacher(ctc_path)
    assert teacher.is_ctc and teacher.model_name in ("hubert_ctc", "wav2vec_ctc")
    worst = worst_logit = scale = 0.0
    for wav in list(fixture_wavs.values())[:3]:
        wav = teacher.prepare(wav)
        ref_layers, _ = fairseq_layers(reference.w2v_encoder.w2v_model, wav)
        with torch.inference_mode():
            ref_logits = reference(source=wav[None], padding_mask=None)["encoder_out"][:, 0]  # T x V
        ours = teacher.extract([wav])[0]
        logits = teacher.ctc_logits([wav])[0]
        assert ours.shape == ref_layers.shape and logits.shape == ref_logits.shape == (ours.shape[1], len(LETTERS))
        worst = max(worst, (ours - ref_layers).abs().max().item())
        worst_logit = max(worst_logit, (logits - ref_logits).abs().max().item())
        scale = max(scale, ref_logits.abs().max().item())
    assert scale > 0.1
    assert worst <= TOLERANCE and worst_logit <= TOLERANCE, (worst, worst_logit)


def test_spec_and_layout(ctc_path: Path) -> None:
    spec = read_teacher_spec(ctc_path)
    assert spec.model_name in ("hubert_ctc", "wav2vec_ctc") and spec.num_layers == 3 and spec.dim == 64
    keys = set(load_checkpoint(ctc_path)["model"])
    assert {"w2v_encoder.proj.weight", "w2v_encoder.proj.bias", "w2v_encoder.w2v_model.mask_emb"} <= keys
    assert all(k.startswith("w2v_encoder.") for k in keys)
    teacher = load_teacher(ctc_path)
    assert set(teacher.model.state_dict()) >= {"proj.weight", "proj.bias"}


def test_pretrained_teacher_has_no_logits(tiny_teacher_path: Path, fixture_wavs: dict) -> None:
    from fhb.errors import FhbError

    teacher = load_teacher(tiny_teacher_path)
    assert not teacher.is_ctc
    with pytest.raises(FhbError, match="fine-tuned CTC teacher"):
        teacher.ctc_logits([next(iter(fixture_wavs.values()))])


def test_missing_head_is_refused(ctc_path: Path, tmp_path: Path) -> None:
    ckpt = torch.load(ctc_path, weights_only=False)
    del ckpt["model"]["w2v_encoder.proj.bias"]
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match="output layer"):
        load_teacher(bad)
