"""Every user error is one line (Trust, section 4): numbers, devices, output paths, help, --verbose.

Promises (docs/reliability.md, "Trust"): NaN, infinite, negative and absurd numbers in distill's
options, ``--device`` values that are not cpu/cuda or name a GPU that is not there (every command
with ``--device``), an empty, file, below-a-file or unwritable ``--out`` are each exit status 2
and one ``error:`` line, and a refused ``fhb distill`` leaves no run directory behind (so the
rerun is not blocked). ``--help`` shows flags without a value; ``--verbose`` shows an
``FhbError``'s traceback above its line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from .conftest import TRACEBACK, assert_user_error, extract_args, fhb_subprocess, small_distill_args

BAD_NUMBERS = [
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "-1"), ("--lr", "0"), ("--lr", "1e308"),
    ("--max-seconds", "nan"), ("--max-seconds", "-1"), ("--max-seconds", "1e308"),
    ("--seed", "-1"), ("--seed", str(2**70)),
    ("--clip-grad-norm", "-1"), ("--clip-grad-norm", "nan"), ("--clip-grad-norm", "inf"),
    ("--keep-checkpoints", "0"), ("--keep-checkpoints", "-3"),
    ("--weight-decay", "nan"), ("--weight-decay", "-1"),
    ("--steps", "0"), ("--accumulate", "0"), ("--batch-size", "0"), ("--workers", "-1"),
]


@pytest.mark.parametrize("option, value", BAD_NUMBERS)
def test_distill_bad_numbers_are_one_line_and_leave_no_run(option: str, value: str, reference_lake: Path,
                                                            tmp_path: Path, cli: Any) -> None:
    run = tmp_path / "run"
    args = small_distill_args(reference_lake, run)
    i = args.index(option) if option in args else None
    if i is not None:
        args[i + 1] = value
    else:
        args += [option, value]
    assert_user_error(cli(*args), option.lstrip("-").split("-")[0])
    assert not run.exists(), "a refused run left a directory that blocks the rerun"


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "1e308"])
def test_distill_bad_batch_seconds(value: str, reference_lake: Path, tmp_path: Path, cli: Any) -> None:
    args = small_distill_args(reference_lake, tmp_path / "run")
    i = args.index("--batch-size")
    args[i:i + 2] = ["--batch-seconds", value]
    assert_user_error(cli(*args), "batch")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:3", "mps", "meta", "tpu", "cuda:x"])
def test_every_command_refuses_a_device_it_cannot_use(device: str, small_run: Path, reference_lake: Path,
                                                      tiny_teacher_path: Path, libri_root: Path, tmp_path: Path,
                                                      cli: Any) -> None:
    assert_user_error(cli(*small_distill_args(reference_lake, tmp_path / "run", "--device", device)), "--device")
    assert not (tmp_path / "run").exists()
    assert_user_error(cli("evaluate", str(small_run), "--cache", str(reference_lake), "--device", device),
                      "--device")
    assert_user_error(cli(*extract_args(tiny_teacher_path, libri_root, tmp_path / "lake", "--device", device)),
                      "--device")
    assert not (tmp_path / "lake").exists()


@pytest.mark.parametrize("command", ["distill", "export-s3prl", "export-hf", "import-checkpoint", "extract", "demo"])
@pytest.mark.parametrize("kind", ["empty", "file", "below-a-file", "unwritable"])
def test_bad_out_is_one_line(command: str, kind: str, small_run: Path, reference_lake: Path,
                             tiny_teacher_path: Path, libri_root: Path, tmp_path: Path, cli: Any,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = {"empty": "", "file": str(afile), "below-a-file": str(afile / "out"), "unwritable": str(tmp_path / "ro" / "out")}[kind]
    if kind == "unwritable":  # tests run as root, where chmod does not stop writes: simulate the refusal
        (tmp_path / "ro").mkdir()
        real = os.access
        monkeypatch.setattr("fhb.files.os.access",
                            lambda p, mode, **kw: False if Path(p) == tmp_path / "ro" else real(p, mode, **kw))
    args = {
        "distill": small_distill_args(reference_lake, Path("PLACEHOLDER")),
        "export-s3prl": ["export-s3prl", "--run", str(small_run), "--out", "PLACEHOLDER"],
        "export-hf": ["export-hf", "--run", str(small_run), "--out", "PLACEHOLDER"],
        "import-checkpoint": ["import-checkpoint", str(small_run / "student.pt"), "--out", "PLACEHOLDER"],
        "extract": extract_args(tiny_teacher_path, libri_root, Path("PLACEHOLDER")),
        "demo": ["demo", "--out", "PLACEHOLDER"],
    }[command]
    args = [out if a == "PLACEHOLDER" else a for a in args]
    result = cli(*args)
    assert_user_error(result)
    assert afile.read_text() == "x"


def test_help_shows_flags_without_a_value() -> None:
    result = fhb_subprocess("distill", "--help")
    assert result.code == 0
    for line in result.stdout.splitlines():
        if "--resume" in line or "--help" in line or "--no-progress" in line:
            assert "<bool>" not in line and "BOOLEAN" not in line, line


def test_verbose_shows_the_traceback_of_a_user_error(reference_lake: Path, tmp_path: Path) -> None:
    args = small_distill_args(reference_lake, tmp_path / "run", "--lr", "nan")
    quiet = fhb_subprocess(*args)
    assert TRACEBACK not in quiet.stderr and quiet.code == 2
    loud = fhb_subprocess("--verbose", *args)
    assert loud.code == 2 and TRACEBACK in loud.stderr and "FhbError" in loud.stderr
    assert len(loud.error_lines) == 1


def test_off_a_terminal_verify_and_evaluate_print_no_blank_line(tmp_path: Path, small_run: Path,
                                                                reference_lake: Path, cli: Any) -> None:
    """Off a terminal (a log, a pipe) their progress bars stay hidden: a refused ``verify`` prints
    its one error line and nothing else, and ``evaluate`` no blank line among its log lines."""
    not_a_lake = tmp_path / "empty"
    not_a_lake.mkdir()
    refused = cli("verify", str(not_a_lake))
    assert refused.code == 2 and refused.stderr.splitlines() == refused.error_lines, refused.stderr
    done = cli("evaluate", str(small_run), "--cache", str(reference_lake))
    assert done.code == 0 and "" not in done.stderr.splitlines(), done.stderr


def test_verify_and_evaluate_report_progress(reference_lake: Path, small_run: Path, cli: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``fhb verify`` advances a bar per listed shard; ``fhb evaluate`` per batch (they take hours on 960 h)."""
    import json

    from fhb.storage.integrity import verify_lake

    seen: list[str] = []
    assert not [f for f in verify_lake(reference_lake, on_shard=seen.append) if f.severity == "error"]
    listed = json.loads((reference_lake / "zarr.json").read_text())["attributes"]["splits"]
    assert seen == [f"{split}/{shard}" for split, info in listed.items() for shard in info["shards"]]
    assert cli("verify", str(reference_lake)).code == 0

    import fhb.stages.evaluate as evaluate

    calls: list[int] = []
    real = evaluate.evaluate_split

    def spy(*args: Any, on_batch: Any = None, **kwargs: Any) -> Any:
        assert on_batch is not None
        return real(*args, on_batch=lambda n: (calls.append(n), on_batch(n)), **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_split", spy)
    result = cli("evaluate", str(small_run), "--cache", str(reference_lake))
    assert result.code == 0, result.stderr[-2000:]
    assert calls and calls == list(range(1, len(calls) + 1))
