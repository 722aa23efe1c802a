"""Stage 2 (`fhb.stages.distill`): training from a lake of the tiny teacher's real outputs.

The lake is written with the storage writer directly (no dependency on the extract stage) from
`Teacher.extract` of the tiny random teacher on the fixture corpus (7 train, 3 dev utterances).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fhb.errors import FhbError

TINY = Path(__file__).resolve().parents[2] / "fhb" / "configs" / "tiny.yaml"
REPO = Path(__file__).resolve().parents[2]
TRAIN, DEV = "train-clean-100", "dev-clean"


def build_lake(libri_root: Path, teacher_path: Path, lake: Path, layers: tuple[int, ...] | None = None,
               splits: tuple[str, ...] = (TRAIN, DEV)) -> Path:
    """Run the teacher on every fixture utterance of ``splits``; store audio + ``layers`` (float16)."""
    from fhb.pipeline.audio import load_audio_int16
    from fhb.pipeline.corpus import Utterance, scan_librispeech
    from fhb.pipeline.teacher import load_teacher
    from fhb.storage import LakeMeta, SplitInfo, TeacherMeta
    from fhb.storage.schema import json_config
    from tests.lakes import Utt, write_lake

    teacher = load_teacher(teacher_path)
    layers = layers or tuple(range(1, teacher.num_layers + 1))
    meta = LakeMeta(  # the teacher's real config, so `store_teacher` can add its weights
        teacher=TeacherMeta(name=teacher.model_name, sha256=teacher.sha256, config=json_config(teacher.config),
                            num_layers=teacher.num_layers, dim=teacher.dim, path=str(teacher_path)),
        layers=layers, dtype="float16", splits={s: SplitInfo() for s in splits},
    )

    def utt(u: Utterance) -> Utt:
        audio = load_audio_int16(u.path)
        wav = teacher.prepare(torch.from_numpy(audio.astype(np.float32) / 32768))
        return Utt(u.utt_id, u.speaker, u.chapter, u.transcript, audio,
                   teacher.extract([wav], layers=list(layers))[0].numpy())

    # One shard per utterance: the loader deals whole blocks (chunk groups of a shard) to DDP
    # ranks, so a 2-rank test needs several.
    manifest = scan_librispeech(libri_root, list(splits), workers=1)
    plan = {split: {f"shard-{i:05d}": [utt(u)] for i, u in enumerate(utts)}
            for split, utts in manifest.by_split().items()}
    return write_lake(lake, meta, plan, background=False)


@pytest.fixture(scope="session")
def lake(tmp_path_factory: pytest.TempPathFactory, libri_root: Path, tiny_teacher_path: Path) -> Path:
    """Every layer (1..3) of the tiny teacher, train-clean-100 and dev-clean."""
    return build_lake(libri_root, tiny_teacher_path, tmp_path_factory.mktemp("distill") / "lake")


@pytest.fixture(scope="session")
def overfit_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny.yaml made quick to overfit: no dropout, no time reduction (targets at the student's
    own frame rate), no warm-up."""
    cfg = yaml.safe_load(TINY.read_text())
    for k in ("dropout", "attention_dropout", "activation_dropout", "dropout_input"):
        cfg["distiller"][k] = 0.0
    cfg["distiller"]["enable_tr_layer"] = False
    cfg["optimizer"]["warmup_proportion"] = 0.0
    path = tmp_path_factory.mktemp("configs") / "tiny-overfit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(lake: Path, out: Path, **kw: object):
    from fhb.stages.distill import run_distill

    args: dict[str, object] = dict(splits=[TRAIN], batch_size=2, accumulate=1, workers=0, seed=0,
                                   log_every=1, progress=False, max_seconds=1.0)
    args.update(kw)
    config = Path(args.pop("config", TINY))  # type: ignore[arg-type]
    return run_distill(lake, config, out, **args)  # type: ignore[arg-type]


def _params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"parameters differ: {different[:5]}"


def test_overfits_tiny_teacher(lake: Path, overfit_config: Path, tmp_path: Path) -> None:
    """The loss falls by at least half in a few dozen updates; run dir and report are complete."""
    summary = _run(lake, tmp_path / "run", config=overfit_config, steps=80, batch_size=7, max_seconds=0.5,
                   lr=5e-3, dev_split=DEV, eval_every=40, save_every=40)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    first, last = train[0]["loss"], sum(r["loss"] for r in train[-5:]) / 5
    assert last <= 0.5 * first, f"loss {first:.4f} -> {last:.4f}"
    assert [r["step"] for r in evals] == [40, 80]
    assert {"lr", "steps_per_s", "loader_wait_share", "layer_losses"} <= train[0].keys()
    assert set(train[0]["layer_losses"]) == {"layer_01", "layer_02", "layer_03"}
    assert evals[-1]["dev_loss"] == pytest.approx(evals[-1]["layer_losses"]["layer_03"])
    # no warm-up: update k of 80 runs at (1 - k / 80), as s3prl counts the update before scheduling it
    assert train[0]["lr"] == pytest.approx(5e-3 * 79 / 80) and train[-1]["lr"] == pytest.approx(0.0)
    assert summary.steps == 80 and summary.student_path is not None
    student = torch.load(summary.student_path, map_location="cpu", weights_only=False)
    assert student["format"] == "fhb-student" or "model" in student
    run = tmp_path / "run"
    assert (run / "latest").read_text().strip() == "checkpoints/step-00000080.pt"
    assert yaml.safe_load((run / "config.yaml").read_text())["fhb_distill"]["steps"] == 80

    from fhb.stages.report import report_run

    rep = report_run(run, show=True)
    assert rep.plot.is_file() and rep.plot.stat().st_size > 1000
    assert rep.best_dev_step in (40, 80)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_equals_uninterrupted(lake: Path, tmp_path: Path, workers: int) -> None:
    """N updates straight == N/2, stop, resume N/2: parameters bit-equal (dropout on, 2 epochs)."""
    # 7 micro-batches per epoch, 4 updates per epoch (the last one from a single micro-batch).
    kw = dict(steps=8, workers=workers, save_every=3, accumulate=2, batch_size=1)
    straight = _run(lake, tmp_path / "a", **kw)
    partial = _run(lake, tmp_path / "b", stop_after=5, **kw)  # "killed" after update 5
    assert partial.student_path is None
    resumed = _run(lake, tmp_path / "b", resume=True, **kw)  # from update 3: mid-epoch (batch 6 of 7)
    assert resumed.resumed_from == 3 and resumed.steps == 8
    _assert_same_params(_params(straight.student_path), _params(resumed.student_path))
    def losses(run: Path) -> list[tuple[str, float | None, float | None]]:
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["kind"], r.get("loss"), r.get("dev_loss")) for r in recs]

    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert a == b  # metrics of replayed updates (and epoch/eval records) are not duplicated


def test_resume_skips_torn_checkpoint(lake: Path, tmp_path: Path) -> None:
    """A damaged newest checkpoint is skipped (with a warning) in favour of the previous one."""
    kw = dict(steps=6, save_every=2)
    straight = _run(lake, tmp_path / "a", **kw)
    _run(lake, tmp_path / "b", stop_after=4, **kw)
    newest = tmp_path / "b" / "checkpoints" / "step-00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # torn
    resumed = _run(lake, tmp_path / "b", resume=True, **kw)
    assert resumed.resumed_from == 2
    _assert_same_params(_params(straight.student_path), _params(resumed.student_path))


def test_sigkill_and_resume_via_subprocess(lake: Path, tmp_path: Path) -> None:
    """``python -m fhb.cli distill`` (what torchrun runs) killed with SIGKILL after a checkpoint, then resumed, ends
    with the parameters of an uninterrupted run."""
    run = tmp_path / "killed"
    argv = [sys.executable, "-m", "fhb.cli", "distill", "--cache", str(lake), "--config", str(TINY),
            "--out", str(run), "--splits", TRAIN, "--steps", "24", "--batch-size", "1", "--accumulate", "1",
            "--workers", "2", "--save-every", "3", "--log-every", "1", "--no-progress",
            "--max-seconds", "1.0"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "step-00000006.pt").exists():
        if proc.poll() is not None:
            pytest.fail(f"run ended before it was killed: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "student.pt").exists(), "the run finished before the kill: make it longer"
    done = subprocess.run(argv + ["--resume"], env=env, cwd=REPO, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    # The uninterrupted run in a subprocess too: the same torch thread count, the same float sums.
    argv_straight = [a if a != str(run) else str(tmp_path / "straight") for a in argv]
    done = subprocess.run(argv_straight, env=env, cwd=REPO, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    _assert_same_params(_params(tmp_path / "straight" / "student.pt"), _params(run / "student.pt"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, lake: str, out: str, trace: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    _run(Path(lake), Path(out), epochs=1, batch_size=1, trace_dir=Path(trace), dev_split=DEV, eval_every=2)


def test_ddp_two_ranks_cover_epoch_disjointly(lake: Path, tmp_path: Path) -> None:
    """2-process gloo DDP: completes, ranks see disjoint utterances covering the epoch, and their
    parameters stay identical (gradients are averaged)."""
    import torch.multiprocessing as mp

    trace = tmp_path / "trace"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(lake), str(tmp_path / "ddp"), str(trace)), nprocs=2,
             join=True)
    seen = {}
    for r in (0, 1):
        lines = [json.loads(x) for x in (trace / f"rank-{r}.jsonl").read_text().splitlines()]
        seen[r] = [u for rec in lines for u in rec["utt_ids"]]
    assert seen[0] and seen[1]
    assert not set(seen[0]) & set(seen[1])
    from fhb.storage import open_lake

    every = set(open_lake(lake)[TRAIN].utterance_ids)
    assert set(seen[0]) | set(seen[1]) <= every
    assert len(set(seen[0]) | set(seen[1])) >= len(every) - 1  # at most the remainder is dropped
    assert (tmp_path / "ddp" / "student.pt").is_file()


def test_cached_and_online_targets_agree_at_step_0(lake: Path, tiny_teacher_path: Path, tmp_path: Path) -> None:
    """The same batches: lake targets (float16) == the teacher run on the lake's audio, and the
    first update's loss matches."""
    from fhb.training.evaluation import online_targets
    from fhb.training.loader import LakeLoader
    from fhb.pipeline.teacher import load_teacher

    cached = next(iter(LakeLoader(lake, [TRAIN], [1, 2, 3], batch_size=3, seed=0, workers=0)))
    audio = next(iter(LakeLoader(lake, [TRAIN], [], batch_size=3, seed=0, workers=0)))
    assert cached.utt_ids == audio.utt_ids
    assert torch.equal(cached.wavs, audio.wavs)
    t, n = online_targets(load_teacher(tiny_teacher_path), audio.wavs, audio.wav_lengths, [1, 2, 3])
    assert torch.equal(n, cached.target_lengths.cpu().long())
    got = cached.targets.float()
    assert got.shape == t.shape
    torch.testing.assert_close(got, t, rtol=2e-3, atol=2e-3)  # float16 storage: 11-bit mantissa

    # Whole utterances (no crop: a crop would give the online teacher less context than the
    # lake's full-utterance targets), same seed: same batch, same dropout, same first loss.
    a = _run(lake, tmp_path / "cached", steps=1, batch_size=3, max_seconds=None)
    b = _run(lake, tmp_path / "online", steps=1, batch_size=3, max_seconds=None, online_teacher=tiny_teacher_path)
    assert a.final_loss == pytest.approx(b.final_loss, rel=1e-3)


def test_evaluate_reproduces_the_last_dev_record(lake: Path, tmp_path: Path) -> None:
    """`fhb evaluate` of a run's final student, at the run's batch size, scores what the run's last
    dev record says: the same batches (the published fixed batches of the length-sorted split; 3 dev
    utterances in batches of 2, so another grouping would average differently)."""
    from fhb.stages.evaluate import evaluate_run

    run = tmp_path / "run"
    _run(lake, run, steps=2, dev_split=DEV, max_seconds=None, export="last")
    last = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"][-1]
    assert last["step"] == 2
    got = evaluate_run(run, lake, DEV, batch_size=2)
    assert got["batches"] == last["batches"] == 2
    assert got["layer_losses"] == pytest.approx(last["layer_losses"], rel=1e-6)
    assert got["validation_loss"] == pytest.approx(last["dev_loss"], rel=1e-6)


def test_refuses_lake_missing_layers(libri_root: Path, tiny_teacher_path: Path, tmp_path: Path) -> None:
    lake = build_lake(libri_root, tiny_teacher_path, tmp_path / "lake12", layers=(1, 2), splits=(TRAIN,))
    with pytest.raises(FhbError, match=r"missing \[3\]"):
        _run(lake, tmp_path / "run", steps=1)


def test_refuses_dim_mismatch(lake: Path, tmp_path: Path) -> None:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["distiller"]["pred_head_final_dim"] = 32
    path = tmp_path / "dim32.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(FhbError, match=r"expected teacher dim 32.*found 64"):
        _run(lake, tmp_path / "run", steps=1, config=path)


def test_refuses_non_empty_run_dir_without_resume(lake: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "something").write_text("x")
    with pytest.raises(FhbError, match="--resume"):
        _run(lake, tmp_path / "run", steps=1)
