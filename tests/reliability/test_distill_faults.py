"""``fhb distill`` under faults: SIGKILLed and resumed, and given the wrong lake.

Promises (docs/reliability.md, "Distillation"): a distillation killed at any point and rerun with
``--resume`` ends with the same student, bit for bit, and the same metrics (each update logged
once) as an uninterrupted run; a lake that cannot serve the student (layers the config needs but
the lake lacks, another format version, not a lake) is refused with one ``error:`` line before
training starts.

Kill points are the run directory's durability points (``os.fsync`` / ``os.replace`` calls: a
metrics line, a checkpoint, ``latest``, ``student.pt``), see ``faults.py``. One torch thread
everywhere (``OMP_NUM_THREADS=1`` in the killed processes, ``torch.set_num_threads(1)`` in this
one), so float sums are the same in every process.
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from . import faults
from .conftest import TRACEBACK, assert_user_error, fhb_popen, main_in_process

SEED = 77
KILLS = 5
STEPS = 8
OPS_PER_STEP = 7  # metrics line fsync; checkpoint fsync, replace, dir fsync; latest fsync, replace, dir fsync


def _distill_args(lake: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "--cache", str(lake), "--config", "tiny", "--out", str(out), "--steps", str(STEPS),
            "--batch-size", "2", "--accumulate", "1", "--workers", "0", "--save-every", "1", "--log-every", "1",
            "--splits", "train-clean-100", "--max-seconds", "1", "--seed", "3", *extra]


def _student(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "student.pt", map_location="cpu", weights_only=False)["model"]


def _train_records(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind", "train") == "train"]


@pytest.fixture(scope="module")
def distill_ready() -> None:
    if "distill" not in {c.name for c in __import__("fhb.cli", fromlist=["app"]).app.registered_commands}:
        pytest.skip("`fhb distill` is not wired into the CLI yet")


@pytest.fixture(scope="module")
def uninterrupted(distill_ready: None, reference_lake: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A straight run (in-process, one thread) and its numbered durability operations."""
    out = tmp_path_factory.mktemp("distill") / "straight"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    faults.install("count", ops=faults.RUN_OPS)
    try:
        main_in_process(*_distill_args(reference_lake, out))
    finally:
        log = list(faults.LOG)
        faults.uninstall()
        torch.set_num_threads(threads)
    assert (out / "student.pt").is_file()
    return out, log


@pytest.mark.slow
def test_distill_sigkilled_five_times_then_resumed_equals_uninterrupted(
    uninterrupted: tuple[Path, list[str]], reference_lake: Path, tmp_path: Path, cli: Any
) -> None:
    straight, log = uninterrupted
    n = len(log)
    assert n >= STEPS * OPS_PER_STEP, log
    # op number (in the straight run) after which checkpoint c is complete (latest replaced, dir synced);
    # c = 0: config.yaml written. A run resumed from checkpoint c replays the ops after it, behind
    # its own prologue (config.yaml again).
    latest = [i for i, op in enumerate(log, 1) if op.startswith("os.replace") and op.endswith("/latest")]
    prologue = next(i for i, op in enumerate(log, 1) if op.endswith("/config.yaml")) + 1
    done_at = [prologue] + [i + 1 for i in latest]
    rng = random.Random(SEED)
    targets = [rng.randint(i * n // KILLS + 1, (i + 1) * n // KILLS) for i in range(KILLS)]  # one per fifth
    run = tmp_path / "run"
    site = faults.sitecustomize_dir(tmp_path / "site")
    kills: list[str] = []
    for i, target in enumerate(targets):
        done = sorted(run.glob("checkpoints/step-*.pt"))
        c = int(done[-1].stem.split("-")[1]) if done else 0
        point = target if i == 0 else max(1, target - done_at[c] + prologue)
        ops_log = tmp_path / f"ops-{i}.log"
        env = {"FHB_FAULT": f"kill:{point}", "FHB_FAULT_OPS": "run", "FHB_FAULT_LOG": str(ops_log),
               "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
        proc = fhb_popen(*_distill_args(reference_lake, run, *(["--resume"] if i else [])), env=env)
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == -signal.SIGKILL, f"run {i} failed (exit {proc.returncode}):\n{stderr[-3000:]}"
        kills.append(f"{target}/{n} (resumed from {c}): " + ops_log.read_text().splitlines()[-1].replace(str(run), "RUN"))
    (tmp_path / "kills.txt").write_text("\n".join(kills))
    assert len(kills) == KILLS, kills
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = cli(*_distill_args(reference_lake, run, "--resume"))
    finally:
        torch.set_num_threads(threads)
    assert resumed.code == 0 and TRACEBACK not in resumed.stderr, f"kills at {kills}:\n{resumed.stderr[-3000:]}"
    a, b = _student(straight), _student(run)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == [], f"students differ after kills at {kills}"
    # every update logged, with the straight run's loss (a duplicate line: see the test below)
    ra, rb = _train_records(straight), {r["step"]: r for r in _train_records(run)}
    assert [r["step"] for r in ra] == sorted(rb) == list(range(1, STEPS + 1)), kills
    assert [r["loss"] for r in ra] == [rb[r["step"]]["loss"] for r in ra], kills


@pytest.mark.slow
def test_distill_killed_before_first_checkpoint_logs_each_update_once(
    uninterrupted: tuple[Path, list[str]], reference_lake: Path, tmp_path: Path, cli: Any
) -> None:
    _, log = uninterrupted
    first_checkpoint = next(i for i, op in enumerate(log, 1) if op.startswith("os.replace") and "step-" in op)
    run = tmp_path / "run"
    env = {"FHB_FAULT": f"kill:{first_checkpoint}", "FHB_FAULT_OPS": "run", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(faults.sitecustomize_dir(tmp_path / "site"))}
    proc = fhb_popen(*_distill_args(reference_lake, run), env=env)
    proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL
    assert [r["step"] for r in _train_records(run)] == [1]  # the line of update 1, no checkpoint yet
    resumed = cli(*_distill_args(reference_lake, run, "--resume", "--steps", "2"))
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in _train_records(run)] == [1, 2]


def test_distill_refuses_lake_missing_layers(distill_ready: None, tiny_teacher_path: Path, libri_root: Path,
                                             tmp_path: Path, cli: Any) -> None:
    from .conftest import run_extract_quiet

    lake = tmp_path / "lake"
    run_extract_quiet(tiny_teacher_path, libri_root, lake, layers="1,3")
    run = tmp_path / "run"
    assert_user_error(cli(*_distill_args(lake, run)), "missing [2]", "--layers 1,2,3")
    assert not (run / "checkpoints").exists()


def test_distill_refuses_other_format_version(distill_ready: None, reference_lake: Path, tmp_path: Path,
                                             cli: Any) -> None:
    import shutil

    lake = tmp_path / "lake"
    shutil.copytree(reference_lake, lake)
    meta = json.loads((lake / "zarr.json").read_text())
    meta["attributes"]["format_version"] = 2
    (lake / "zarr.json").write_text(json.dumps(meta))
    assert_user_error(cli(*_distill_args(lake, tmp_path / "run")), "format version 2", "upgrade fhb")


@pytest.mark.parametrize("kind", ["missing", "not-a-lake"])
def test_distill_refuses_what_is_not_a_lake(distill_ready: None, kind: str, tmp_path: Path, cli: Any) -> None:
    lake = tmp_path / "lake"
    if kind == "not-a-lake":
        lake.mkdir()
        (lake / "notes.txt").write_text("hello")
    assert_user_error(cli(*_distill_args(lake, tmp_path / "run")), str(lake))


def test_distill_refuses_online_teacher_other_than_the_lakes(
    distill_ready: None, reference_lake: Path, tmp_path: Path, cli: Any
) -> None:
    from fhb.pipeline.teacher import save_random_checkpoint

    other = save_random_checkpoint(tmp_path / "other.pt", "tiny", seed=99)
    result = cli(*_distill_args(reference_lake, tmp_path / "run", "--online-teacher", str(other), "--steps", "1"))
    assert_user_error(result, "sha256")


def test_distill_invalid_yaml_is_one_line(distill_ready: None, reference_lake: Path, tmp_path: Path,
                                          cli: Any) -> None:
    """The yaml parser's message spans several lines; the user still gets one."""
    config = tmp_path / "student.yaml"
    config.write_text("distiller: [1,\n  x: {")
    args = _distill_args(reference_lake, tmp_path / "run")
    args[args.index("tiny")] = str(config)
    result = cli(*args)
    line = assert_user_error(result, str(config), "not valid yaml", "line 2")
    assert result.stderr.rstrip().endswith(line)  # nothing of the message spills onto further lines
