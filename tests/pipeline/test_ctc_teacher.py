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


def test_legacy_args_checkpoint(tmp_path: Path, fixture_wavs: dict) -> None:
    """Old fine-tuned files (``wav2vec_small_960h.pt``) keep ``args`` Namespaces, ``w2v_args`` nested."""
    import argparse

    path = save_random_ctc_checkpoint(tmp_path / "new.pt", "tiny-wav2vec2-ctc", seed=4)
    ckpt = torch.load(path, weights_only=False)
    model_cfg, task_cfg = ckpt["cfg"]["model"], ckpt["cfg"]["task"]
    inner = model_cfg["w2v_args"]
    w2v_args = argparse.Namespace(arch=inner["model"]["_name"], task=inner["task"]["_name"],
                                  **{k: v for k, v in {**inner["task"], **inner["model"]}.items() if k != "_name"})
    ckpt["args"] = argparse.Namespace(arch="wav2vec_ctc", task=task_cfg["_name"], w2v_args=w2v_args,
                                      **{k: v for k, v in {**task_cfg, **model_cfg}.items()
                                         if k not in ("_name", "w2v_args")})
    ckpt["cfg"] = None
    legacy = tmp_path / "legacy.pt"
    torch.save(ckpt, legacy)
    old, new = load_teacher(legacy), load_teacher(path)
    assert old.model_name == "wav2vec_ctc" and old.arch == new.arch and old.normalize == new.normalize
    wav = new.prepare(next(iter(fixture_wavs.values())))
    assert torch.equal(old.ctc_logits([wav])[0], new.ctc_logits([wav])[0])


def test_random_teacher_cli_presets(tmp_path: Path) -> None:
    from fhb.stages.teacher_info import describe_teacher, write_random_teacher

    path = write_random_teacher(tmp_path / "t.pt", "tiny-wav2vec2-ctc", seed=0)
    assert load_teacher(path).is_ctc
    describe_teacher(path, None, "dev-clean", 1)
