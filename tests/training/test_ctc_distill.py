"""Task-specific distillation from a fine-tuned CTC teacher, trained from the lake.

A random ``tiny-ctc`` teacher (fairseq's ``hubert_ctc`` layout) is extracted into a float16 lake
(transcripts, greedy labels, letter dictionary); the tiny student trains with the published CTC
loss on the transcripts' letters (``use_gt_for_ctc: True``) or the teacher's greedy labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from fhb.errors import FhbError
from fhb.pipeline.ctc_layout import save_random_ctc_checkpoint
from fhb.stages.distill import run_distill
from fhb.stages.extract import run_extract
from fhb.storage.ctc_labels import LETTERS, decode, letter_ids
from fhb.student.ctc import ctc_loss
from fhb.training.ctc_metrics import ErrorRates, edit_distance

TINY = Path(__file__).resolve().parents[2] / "fhb" / "configs" / "tiny.yaml"
TRAIN, DEV = "train-clean-100", "dev-clean"


@pytest.fixture(scope="module")
def ctc_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_ctc_checkpoint(tmp_path_factory.mktemp("teacher") / "tiny-ctc.pt", "tiny-ctc", seed=1)


@pytest.fixture(scope="module")
def ctc_lake(ctc_teacher: Path, libri_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lake") / "lake"
    run_extract(ctc_teacher, libri_root, [TRAIN, DEV], out, shard_hours=0.002, workers=0, threads=1,
                dtype="float16")
    return out


def _config(tmp: Path, use_gt: bool) -> Path:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["train"]["use_gt_for_ctc"] = use_gt
    path = tmp / f"tiny-gt-{use_gt}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(lake: Path, out: Path, config: Path, **kw: object) -> list[dict]:
    args: dict[str, object] = dict(splits=[TRAIN], dev_split=DEV, batch_size=2, accumulate=1, workers=0, seed=0,
                                   log_every=1, progress=False, steps=3)
    args.update(kw)
    run_distill(lake, config, out, **args)  # type: ignore[arg-type]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _train_losses(records: list[dict]) -> list[tuple[float, float]]:
    return [(r["loss"], r["layer_losses"]["ctc"]) for r in records if r["kind"] == "train"]


@pytest.mark.parametrize("use_gt", [True, False])
def test_lake_and_online_teacher_agree(use_gt: bool, ctc_lake: Path, ctc_teacher: Path, tmp_path: Path) -> None:
    """Per-step losses from the lake equal the online teacher's on the same batches and seed.

    Tolerance: rel 1e-3 on the total (the distillation terms read float16 targets: an 11-bit
    mantissa, relative error <= 2^-11 per value, averaged in the MSE). The CTC term's labels are
    exact (transcripts; or the greedy labels, stored from the same fp32 teacher the online run
    recomputes), so the CTC loss differs only through the student, which both runs drive
    identically up to that float16 gap: rel 1e-3 as well.
    """
    config = _config(tmp_path, use_gt)
    lake_records = _run(ctc_lake, tmp_path / "lake", config)
    online_records = _run(ctc_lake, tmp_path / "online", config, online_teacher=ctc_teacher)
    a, b = _train_losses(lake_records), _train_losses(online_records)
    assert len(a) == len(b) == 3
    for (loss_a, ctc_a), (loss_b, ctc_b) in zip(a, b):
        assert loss_a == pytest.approx(loss_b, rel=1e-3)
        assert ctc_a == pytest.approx(ctc_b, rel=1e-3)
        assert ctc_a > 0
    dev = [r for r in lake_records if r["kind"] == "eval"][-1]
    assert dev["wer"] >= 0 and dev["cer"] >= 0 and dev["ctc_loss"] > 0


def test_greedy_labels_differ_from_letters(ctc_lake: Path, tmp_path: Path) -> None:
    """The two label sources are different objectives (the run really reads the stored labels)."""
    gt = _train_losses(_run(ctc_lake, tmp_path / "gt", _config(tmp_path, True), steps=1))
    greedy = _train_losses(_run(ctc_lake, tmp_path / "greedy", _config(tmp_path, False), steps=1))
    assert gt[0][1] != pytest.approx(greedy[0][1], rel=1e-3)


def test_resume_restores_the_head(ctc_lake: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, True)
    straight = _train_losses(_run(ctc_lake, tmp_path / "straight", config, steps=3, dev_split=None))
    run_distill(ctc_lake, config, tmp_path / "resumed", splits=[TRAIN], batch_size=2, accumulate=1, workers=0,
                seed=0, log_every=1, progress=False, steps=3, stop_after=2, save_every=1)
    resumed = _train_losses(_run(ctc_lake, tmp_path / "resumed", config, steps=3, dev_split=None, resume=True))
    assert resumed[-1] == pytest.approx(straight[-1], rel=1e-6)
    ckpt = torch.load(sorted((tmp_path / "resumed" / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    assert set(ckpt["ctc_head"]) == {"proj.weight", "proj.bias"}
    assert not any(k.startswith("ctc") for k in ckpt["model"])


def test_report_and_export(ctc_lake: Path, tmp_path: Path) -> None:
    from fhb.stages.export import export_s3prl
    from fhb.stages.report import report_run

    records = _run(ctc_lake, tmp_path / "run", _config(tmp_path, True), steps=2)
    report = report_run(tmp_path / "run", show=True)
    last_eval = [r for r in records if r["kind"] == "eval"][-1]
    assert (report.dev_wer, report.dev_cer) == (last_eval["wer"], last_eval["cer"])
    result = export_s3prl(tmp_path / "run", tmp_path / "export")
    state = torch.load(result.checkpoint, weights_only=False)["state_dict"]
    assert not any("ctc" in k for k in state)  # dropped, as the published export (its student has no head)


def test_evaluate_scores_ctc_with_the_runs_head(ctc_lake: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """``fhb evaluate`` of a CTC run gives the CTC loss, WER and CER its dev records give, for
    student.pt (the head travels in the student file) and for a training checkpoint; a file
    without the head is scored without them, with a warning."""
    from fhb.stages.evaluate import evaluate_run, print_evaluation
    from fhb.student.checkpoint import load_student_checkpoint

    run = tmp_path / "run"
    records = _run(ctc_lake, run, _config(tmp_path, True), steps=2, save_every=1, export="last")
    last_eval = [r for r in records if r["kind"] == "eval"][-1]
    assert last_eval["step"] == 2
    for kw in ({}, {"step": 2}):
        got = evaluate_run(run, ctc_lake, DEV, batch_size=2, **kw)
        assert (got["wer"], got["cer"]) == (last_eval["wer"], last_eval["cer"]), kw
        assert got["ctc_loss"] == pytest.approx(last_eval["ctc_loss"], rel=1e-5)
        assert got["layer_losses"] == pytest.approx(last_eval["layer_losses"], rel=1e-5)
        assert got["total"] == pytest.approx(sum(got["weights"][k] * v for k, v in got["layer_losses"].items())
                                             + got["ctc_loss"], rel=1e-5)  # the CTC term, weight 1, included
    print_evaluation(got)
    assert set(load_student_checkpoint(run / "student.pt").extra["ctc_head"]) == {"proj.weight", "proj.bias"}

    bare = torch.load(run / "student.pt", weights_only=False)
    del bare["extra"]["ctc_head"]
    torch.save(bare, tmp_path / "bare.pt")
    with caplog.at_level("WARNING"):
        got = evaluate_run(run, ctc_lake, DEV, batch_size=2, checkpoint=tmp_path / "bare.pt")
    assert "wer" not in got and got["validation_loss"] == pytest.approx(last_eval["dev_loss"], rel=1e-5)
    assert "holds no CTC head" in caplog.text

    bare["extra"]["ctc_head"] = {"proj.weight": torch.zeros(3, 3), "proj.bias": torch.zeros(3)}
    torch.save(bare, tmp_path / "wrong.pt")
    with pytest.raises(FhbError, match="expected a CTC head for the lake's 32 symbols"):
        evaluate_run(run, ctc_lake, DEV, batch_size=2, checkpoint=tmp_path / "wrong.pt")


def test_crops_refused(ctc_lake: Path, tmp_path: Path) -> None:
    with pytest.raises(FhbError, match="whole utterances"):
        _run(ctc_lake, tmp_path / "run", _config(tmp_path, True), max_seconds=1.0)


def test_ctc_loss_is_the_published_one() -> None:
    """Without padding, fhb's loss is the published call: F.ctc_loss(log_softmax(x) as T x B x V,
    concatenated targets, the full T for every utterance, target lengths), blank 0, mean."""
    torch.manual_seed(0)
    logits = torch.randn(2, 30, len(LETTERS))
    labels = [letter_ids("HI YOU"), letter_ids("A")]
    ours = ctc_loss(logits, torch.tensor([30, 30]), labels)
    published = F.ctc_loss(logits.log_softmax(2).transpose(0, 1), torch.tensor(labels[0] + labels[1]),
                           torch.full((2,), 30), torch.tensor([len(x) for x in labels]))
    assert torch.allclose(ours, published)


def test_letters_decoding_and_error_rates() -> None:
    assert [LETTERS[i] for i in letter_ids("hi you")] == ["H", "I", "|", "Y", "O", "U", "|"]
    with pytest.raises(FhbError, match="dict.ltr.txt"):
        letter_ids("CAFÉ")
    ids = [0, 11, 11, 0, 10, 4, 4, 22, 8, 16, 4, 0]  # H H _ I | | Y O U | _
    assert decode(ids) == "HI YOU"
    assert edit_distance("KITTEN", "SITTING") == 3
    rates = ErrorRates()
    logits = F.one_hot(torch.tensor([ids]), len(LETTERS)).float()
    rates.add(logits, torch.tensor([len(ids)]), ["HI THERE"])
    assert rates.wer == pytest.approx(1 / 2) and rates.cer == pytest.approx(5 / 8)
