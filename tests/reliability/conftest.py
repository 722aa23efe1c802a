"""Helpers for the reliability suite: run ``fhb`` as the user does and look at what they get.

``cli(...)`` runs :func:`fhb.cli.main` in-process (the console-script entry point, with its error
handling) and returns the exit code, stdout and stderr; ``fhb_subprocess(...)`` runs
``python -m fhb.cli`` in a fresh interpreter (for kills, locks held by other processes and the
real exit status). ``reference_lake`` is an uninterrupted extraction of the fixture corpus that
interrupted runs must equal array for array.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

SPLITS = ("train-clean-100", "dev-clean")
EXTRACT_OPTS = ("--workers", "0", "--threads", "1", "--shard-hours", "0.002")
"""One process, one torch thread, ~7 s of audio per shard: 5 shards on the fixture."""

TRACEBACK = "Traceback (most recent call last)"


@dataclass(frozen=True)
class CliResult:
    """What the user sees: the exit status and the two streams."""

    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        """Lines of stderr that start with ``error:`` (what ``main()`` prints for an FhbError)."""
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    @property
    def error(self) -> str:
        """The single ``error:`` line (asserts there is exactly one)."""
        lines = self.error_lines
        assert len(lines) == 1, f"expected one 'error:' line, found {len(lines)}:\n{self.stderr[-3000:]}"
        return lines[0]


def assert_user_error(result: CliResult, *needles: str) -> str:
    """Exit status 2, one ``error:`` line containing every needle, no traceback; returns the line."""
    assert TRACEBACK not in result.stderr + result.stdout, result.stderr[-4000:]
    assert result.code == 2, f"exit {result.code}, expected 2:\n{result.stderr[-3000:]}"
    line = result.error
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def extract_args(teacher: Path, root: Path, out: Path, *extra: str) -> list[str]:
    """``extract`` arguments for the fixture corpus with the suite's standard options."""
    return ["extract", "--teacher", str(teacher), "--libri-root", str(root), "--out", str(out),
            "--splits", ",".join(SPLITS), *EXTRACT_OPTS, *extra]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run ``fhb ARGS`` in-process through ``fhb.cli.main`` and return a :class:`CliResult`."""
    from fhb.cli import main
    from fhb.pipeline.logging_setup import console

    monkeypatch.setattr(console, "width", 400)  # no wrapping of long paths in what the tests read

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["fhb", *map(str, args)])
        threads = torch.get_num_threads()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            torch.set_num_threads(threads)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


def fhb_subprocess(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> CliResult:
    """Run ``python -m fhb.cli ARGS`` to completion."""
    done = subprocess.run([sys.executable, "-m", "fhb.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=timeout)
    return CliResult(done.returncode, done.stdout, done.stderr)


def fhb_popen(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``python -m fhb.cli ARGS`` (stdout/stderr piped)."""
    return subprocess.Popen([sys.executable, "-m", "fhb.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200", **(env or {})})


@contextlib.contextmanager
def paused_fhb(args: Sequence[str], point: int, tmp_path: Path, **env: str) -> Iterator[subprocess.Popen[str]]:
    """``fhb ARGS`` in a subprocess that pauses for good at fault operation ``point`` (`faults`,
    ``pause``; ``env`` adds e.g. ``FHB_FAULT_OPS``); yields it once it is there. Leaving the block
    SIGKILLs it (the crash the test means) and reaps it."""
    from . import faults

    log = tmp_path / "ops.log"
    proc = fhb_popen(*args, env={"FHB_FAULT": f"pause:{point}", "FHB_FAULT_LOG": str(log),
                                 "PYTHONPATH": str(faults.sitecustomize_dir(tmp_path / "site")), **env})
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and len(log.read_text().splitlines()) >= point):
            assert time.monotonic() < deadline and proc.poll() is None, f"fhb {args[0]} did not reach operation {point}"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


def assert_same_lake(a: Path, b: Path) -> None:
    """Same splits, utterances, audio and targets (bitwise), transcripts and skipped lists."""
    from fhb.storage.reader import open_lake

    la, lb = open_lake(a), open_lake(b)
    assert la.splits == lb.splits
    assert la.attrs["teacher"]["sha256"] == lb.attrs["teacher"]["sha256"]
    assert la.attrs["splits"] == lb.attrs["splits"]
    for split in la.splits:
        va, vb = la[split], lb[split]
        assert va.utterance_ids == vb.utterance_ids
        assert va.shards == vb.shards
        for utt in va.utterance_ids:
            assert np.array_equal(va.targets(utt), vb.targets(utt)), f"{split}/{utt} targets differ"
            assert np.array_equal(va.audio(utt), vb.audio(utt)), f"{split}/{utt} audio differs"
            assert va.transcript(utt) == vb.transcript(utt)
        for shard in va.shards:
            assert va.shard(shard).attrs.skipped == vb.shard(shard).attrs.skipped


def verify_errors(lake: Path) -> list[str]:
    """Error findings of ``verify_lake``."""
    from fhb.storage.integrity import verify_lake

    return [str(f) for f in verify_lake(lake) if f.severity == "error"]


def run_extract_quiet(teacher: Path, root: Path, out: Path, **kw: object) -> object:
    """``run_extract`` in-process with the suite's standard options (restores torch's thread count)."""
    from fhb.stages.extract import run_extract

    kw = {"shard_hours": 0.002, "workers": 0, "threads": 1, **kw}
    threads = torch.get_num_threads()
    try:
        return run_extract(teacher, root, list(SPLITS), out, **kw)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def reference_lake(tiny_teacher_path: Path, libri_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted extraction of the fixture (what every interrupted run must end up equal to)."""
    out = tmp_path_factory.mktemp("reference") / "lake"
    summary = run_extract_quiet(tiny_teacher_path, libri_root, out)
    assert summary.utterances == 10 and summary.shards_done == 5
    return out


@pytest.fixture(scope="session")
def small_run(reference_lake: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-update `fhb distill` run (checkpoints at both updates)."""
    out = tmp_path_factory.mktemp("trust") / "run"
    main_in_process(*small_distill_args(reference_lake, out))
    return out


def main_in_process(*args: str) -> None:
    """``fhb ARGS`` in this process (for fixtures wider than a test, where `cli` is not available);
    asserts it succeeded."""
    from fhb.cli import main

    argv = sys.argv
    sys.argv = ["fhb", *args]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, exc.code
    finally:
        sys.argv = argv


def small_distill_args(lake: Path, out: Path, *extra: str) -> list[str]:
    """``distill`` arguments for a 2-update tiny run on ``lake`` (checkpoint every update)."""
    return ["distill", "--cache", str(lake), "--config", "tiny", "--out", str(out), "--steps", "2",
            "--batch-size", "2", "--accumulate", "1", "--workers", "0", "--save-every", "1", "--log-every", "1",
            "--splits", "train-clean-100", "--max-seconds", "1", "--seed", "3", *extra]


@pytest.fixture
def corpus_copy(libri_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the fixture corpus (the ``LibriSpeech`` directory)."""
    root = tmp_path / "corpus" / "LibriSpeech"
    shutil.copytree(libri_root, root)
    return root


def lake_files(lake: Path) -> Sequence[str]:
    """Relative paths of every file under ``lake`` (sorted)."""
    return sorted(str(p.relative_to(lake)) for p in lake.rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def operations(tiny_teacher_path: Path, libri_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The numbered filesystem operations of an uninterrupted extraction (see ``faults.py``).

    Index 0 is operation 1; the lake's path is written ``LAKE``.
    """
    from . import faults

    out = tmp_path_factory.mktemp("count") / "lake"
    faults.install("count")
    try:
        run_extract_quiet(tiny_teacher_path, libri_root, out)
    finally:
        log = [line.replace(str(out.resolve()), "LAKE").replace(str(out), "LAKE") for line in faults.LOG]
        faults.uninstall()
    assert len(log) > 100, log
    return log


def operation_number(log: Sequence[str], name: str) -> int:
    """1-based number of a named moment of the extraction in ``log`` (see ``operations``)."""
    renames = [i for i, op in enumerate(log, 1) if op.startswith("rename ") and "/_tmp_shard" in op]
    chunks = [i for i, op in enumerate(log, 1) if op.startswith("write ") and "/c/" in op]
    moments = {
        "lock": lambda: next(i for i, op in enumerate(log, 1) if op.startswith("write lock")),
        "first-root-write": lambda: next(i for i, op in enumerate(log, 1) if op == "write LAKE/zarr.json"),
        # the lake's zarr.json written to its temporary name, not yet renamed into place
        "first-root-write-unrenamed": lambda: next(i for i, op in enumerate(log, 1) if op == "replace LAKE/zarr.json"),
        "chunk-of-second-shard": lambda: next(i for i in chunks if i > renames[0]),
        "before-commit-rename": lambda: renames[1],  # a shard fully written, not yet renamed into place
        "before-commit-marker": lambda: renames[1] + 1,  # renamed into place, commit marker not yet written
        # every shard committed, the root listing being rewritten
        "listing-update": lambda: max(i for i, op in enumerate(log, 1) if op == "replace LAKE/zarr.json"),
        "listing-write": lambda: max(i for i, op in enumerate(log, 1) if op == "write LAKE/zarr.json"),
        "before-unlock": lambda: next(i for i, op in enumerate(log, 1) if op.startswith("unlock ")),
    }
    return moments[name]()
