"""Unreadable files and folders, and unwritable outputs, for real: fhb run as ``nobody``.

The tests run as root, for whom ``chmod 000`` changes nothing; so each command runs in a
subprocess under ``setpriv --reuid nobody`` (skipped where that is not possible) on copies of the
fixture corpus, teacher, lake and config in a folder ``nobody`` may enter.

Promise (docs/reliability.md, "Every user error is one line"): an unreadable audio file, speaker
folder, teacher, config, lake metadata or chunk, and an unwritable ``--out`` folder are exit status
2 with one line naming the path (``fhb verify`` reports an unreadable chunk as a finding, exit 1);
``--on-bad-audio skip`` skips an unreadable audio file; never a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import TRACEBACK, CliResult, EXTRACT_OPTS

NOBODY = 65534
ROOT = str(Path(__import__("fhb").__file__).resolve().parents[1])
SETPRIV = shutil.which("setpriv")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv to run as nobody"),
]


def as_nobody(*args: str, cwd: Path) -> CliResult:
    """``python -m fhb.cli ARGS`` as uid/gid ``nobody``."""
    done = subprocess.run(
        [str(SETPRIV), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-m", "fhb.cli",
         *map(str, args)],
        capture_output=True, text=True, timeout=180, cwd=cwd,
        env={**os.environ, "PYTHONPATH": ROOT, "HOME": str(cwd), "COLUMNS": "250", "NUMBA_CACHE_DIR": str(cwd),
             "MPLCONFIGDIR": str(cwd)},
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def world() -> Iterator[Path]:
    """A folder ``nobody`` may enter and write (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="fhb-nobody-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        for p in [path, *path.rglob("*")]:  # chmod back so root's rmtree cannot trip on anything
            if not p.is_symlink():
                p.chmod(0o777)
        shutil.rmtree(path, ignore_errors=True)


def _copy_open(src: Path, dest: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dest)
    else:
        shutil.copy(src, dest)
    for p in [dest, *(dest.rglob("*") if dest.is_dir() else [])]:
        p.chmod(0o777 if p.is_dir() else 0o666)
    return dest


def _one_line(result: CliResult, *needles: str) -> str:
    assert TRACEBACK not in result.stderr + result.stdout, result.stderr[-4000:]
    assert result.code == 2, f"exit {result.code}:\n{result.stderr[-3000:]}"
    if not result.error_lines:  # click's usage error (typer checks that a path argument is readable)
        assert "Usage:" in result.stderr and "is not readable" in result.stderr, result.stderr[-3000:]
        line = " ".join(result.stderr.split())
    else:
        line = result.error
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def _extract(teacher: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--teacher", str(teacher), "--libri-root", str(root), "--out", str(out),
            "--splits", "dev-clean", *EXTRACT_OPTS, *extra]


def test_unreadable_audio_file_and_speaker_folder(world: Path, libri_root: Path, tiny_teacher_path: Path) -> None:
    root = _copy_open(libri_root, world / "LibriSpeech")
    teacher = _copy_open(tiny_teacher_path, world / "t.pt")
    flac = sorted((root / "dev-clean").rglob("*.flac"))[0]
    flac.chmod(0)
    _one_line(as_nobody(*_extract(teacher, root, world / "lake1"), cwd=world), flac.name)
    skipped = as_nobody(*_extract(teacher, root, world / "lake2", "--on-bad-audio", "skip"), cwd=world)
    assert skipped.code == 0 and TRACEBACK not in skipped.stderr, skipped.stderr[-3000:]
    assert flac.stem in skipped.stdout + skipped.stderr
    flac.chmod(0o666)
    speaker = sorted(p for p in (root / "dev-clean").iterdir() if p.is_dir())[0]
    speaker.chmod(0)
    _one_line(as_nobody(*_extract(teacher, root, world / "lake3"), cwd=world), speaker.name)


def test_unreadable_teacher_and_config(world: Path, libri_root: Path, tiny_teacher_path: Path,
                                       reference_lake: Path) -> None:
    teacher = _copy_open(tiny_teacher_path, world / "t.pt")
    teacher.chmod(0)
    _one_line(as_nobody("teacher-info", str(teacher), cwd=world), "t.pt")
    _one_line(as_nobody(*_extract(teacher, _copy_open(libri_root, world / "LS"), world / "lake"), cwd=world), "t.pt")
    lake = _copy_open(reference_lake, world / "lake0")
    cfg = world / "tiny.yaml"
    from fhb.student.config import load_fithubert_yaml

    cfg.write_text(load_fithubert_yaml("tiny").to_yaml())
    cfg.chmod(0)
    _one_line(as_nobody("distill", "--cache", str(lake), "--config", str(cfg), "--out", str(world / "run"),
                        "--steps", "1", "--workers", "0", cwd=world), "tiny.yaml")
    assert not (world / "run").exists()


def test_unreadable_lake_metadata_and_chunk(world: Path, reference_lake: Path) -> None:
    lake = _copy_open(reference_lake, world / "lake")
    chunk = next(p for p in sorted((lake / "dev-clean").rglob("*")) if p.is_file() and "/c/" in str(p)
                 and "layer_" in str(p))
    chunk.chmod(0)
    verify = as_nobody("verify", str(lake), cwd=world)
    assert verify.code == 1 and TRACEBACK not in verify.stderr + verify.stdout, verify.stderr[-3000:]
    chunk.chmod(0o666)
    (lake / "zarr.json").chmod(0)
    _one_line(as_nobody("inspect", str(lake), cwd=world), "zarr.json")
    _one_line(as_nobody("verify", str(lake), cwd=world), "zarr.json")
    (lake / "zarr.json").chmod(0o666)
    (lake / "dev-clean").chmod(0)
    result = as_nobody("verify", str(lake), cwd=world)
    assert result.code in (1, 2) and TRACEBACK not in result.stderr + result.stdout, result.stderr[-3000:]


def test_unwritable_out_folder(world: Path, reference_lake: Path, small_run: Path) -> None:
    lake = _copy_open(reference_lake, world / "lake")
    run = _copy_open(small_run, world / "run")
    locked = world / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    for args in (["distill", "--cache", str(lake), "--config", "tiny", "--out", str(locked / "r"), "--steps", "1"],
                 ["export-s3prl", "--run", str(run), "--out", str(locked / "e")],
                 ["transcode", str(lake), "--out", str(locked / "l"), "--codec", "float32"],
                 ["random-teacher", "--out", str(locked / "t.pt")]):
        _one_line(as_nobody(*args, cwd=world), "locked")
