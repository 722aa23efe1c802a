"""No code runs from any file fhb opens, and hostile files are refused before they cost memory.

Promises (docs/reliability.md, "Trust"): a run's own checkpoints (``checkpoints/step-*.pt``, what
``latest``, ``--resume`` and ``--checkpoint`` name) go through the same allow-list unpickler as
teachers and students; ``latest`` may only name a file inside the run directory; a torch zip whose
entries are compressed or declare more bytes than the file holds is refused from its zip directory;
storages that disagree with their records are refused by torch before allocation; a yaml alias
bomb and a config asking for an absurd student are one line before anything is built. Peak RSS
stays under 1 GB for each of these files (measured in a subprocess).
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from fhb.training import run_state

from .conftest import assert_user_error, small_distill_args as _distill_args
from .test_hostile_checkpoints import Call

MAX_RSS_KB = 1 << 20  # 1 GiB
ROOT = str(Path(__import__("fhb").__file__).resolve().parents[1])  # this checkout's fhb in subprocesses


def _hostile_run_checkpoint(path: Path, marker: Path) -> Path:
    """An `fhb distill` checkpoint whose model entry would run ``touch marker`` when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": run_state.FORMAT, "version": run_state.VERSION, "step": 1,
                "model": Call(os.system, f"touch {marker}"), "optimizer": {}, "scheduler": {}, "rng": {},
                "loader": {}}, path)
    return path


def _copy_run(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest)
    (dest / run_state.STUDENT).unlink()
    return dest


def test_run_checkpoint_reads_through_the_allow_list(small_run: Path) -> None:
    """A real training state (optimizer, scheduler, numpy/python RNG, loader) loads restricted."""
    path, state = run_state.load_latest_checkpoint(small_run)
    assert state["step"] == 2 and path.name == "step-00000002.pt"


def test_resume_from_hostile_checkpoint_is_refused_and_never_runs(
    small_run: Path, reference_lake: Path, tmp_path: Path, cli: Any
) -> None:
    run = _copy_run(small_run, tmp_path / "run")
    marker = tmp_path / "PWNED"
    _hostile_run_checkpoint(run / "checkpoints" / "step-00000002.pt", marker)
    line = assert_user_error(cli(*_distill_args(reference_lake, run, "--resume", "--steps", "3")),
                             "refusing to load", "posix.system", "step-00000002.pt")
    assert "nothing ran" in line
    assert not marker.exists(), "the checkpoint's code ran"


@pytest.mark.parametrize("how", ["--checkpoint", "--step", "latest"])
def test_export_of_hostile_run_checkpoint_is_refused(small_run: Path, how: str, tmp_path: Path, cli: Any) -> None:
    run = _copy_run(small_run, tmp_path / "run")
    marker = tmp_path / "PWNED"
    planted = _hostile_run_checkpoint(run / "checkpoints" / "step-00000002.pt", marker)
    extra = {"--checkpoint": ["--checkpoint", str(planted)], "--step": ["--step", "2"], "latest": []}[how]
    assert_user_error(cli("export-s3prl", "--run", str(run), "--out", str(tmp_path / "exp"), *extra),
                      "refusing to load", "posix.system")
    assert not marker.exists()


@pytest.mark.parametrize("target", ["../outside.pt", "/etc/passwd", "", "."])
def test_latest_may_only_name_a_file_inside_the_run(small_run: Path, reference_lake: Path, target: str,
                                                    tmp_path: Path, cli: Any) -> None:
    run = _copy_run(small_run, tmp_path / "run")
    _hostile_run_checkpoint(tmp_path / "outside.pt", tmp_path / "PWNED")
    (run / "latest").write_text(target + "\n")
    assert_user_error(cli(*_distill_args(reference_lake, run, "--resume", "--steps", "3")),
                      "latest must name a checkpoint inside the run directory")
    assert_user_error(cli("export-s3prl", "--run", str(run), "--out", str(tmp_path / "exp")), "latest")
    assert not (tmp_path / "PWNED").exists()


def test_latest_symlink_out_of_the_run_is_refused(small_run: Path, tmp_path: Path, cli: Any) -> None:
    run = _copy_run(small_run, tmp_path / "run")
    _hostile_run_checkpoint(tmp_path / "outside.pt", tmp_path / "PWNED")
    (run / "checkpoints" / "link.pt").symlink_to(tmp_path / "outside.pt")
    (run / "latest").write_text("checkpoints/link.pt\n")
    assert_user_error(cli("export-s3prl", "--run", str(run), "--out", str(tmp_path / "exp")), "latest")


# ------------------------------------------------------------------------------- resource bombs


def _rss_probe(tmp_path: Path, *args: str) -> tuple[int, str, int]:
    """Run ``fhb ARGS`` in a subprocess; (exit status, stderr, peak RSS in kB of that process).

    Peak RSS is ``VmHWM`` (reset by exec); ``ru_maxrss`` would carry the forking pytest process's.
    """
    script = (
        "import resource, sys\n"
        "from fhb.cli import main\n"
        f"sys.argv = ['fhb', *{list(args)!r}]\n"
        "code = 0\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code if isinstance(e.code, int) else 1\n"
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
        "print('MAXRSS', hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", "PYTHONPATH": ROOT}, cwd=tmp_path)
    rss = [int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("MAXRSS")]
    assert rss, done.stderr[-3000:]
    return done.returncode, done.stderr, rss[0]


def _assert_one_line_under_1gb(tmp_path: Path, needle: str, *args: str) -> None:
    code, err, rss = _rss_probe(tmp_path, *args)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], err[-3000:]
    assert rss < MAX_RSS_KB, f"peak RSS {rss} kB"


def _zip_bomb(path: Path, source: Path, entry_bytes: int) -> Path:
    """``source`` (a torch zip checkpoint: a teacher, a run checkpoint) with its largest storage
    record replaced by a deflated run of ``entry_bytes`` zeros."""
    with zipfile.ZipFile(source) as src:
        data = {n: src.read(n) for n in src.namelist()}
    victim = max((n for n in data if "/data/" in n), key=lambda n: len(data[n]))
    chunk = bytes(1 << 24)
    with zipfile.ZipFile(path, "w") as out:
        for name, blob in data.items():
            if name != victim:
                out.writestr(name, blob)
                continue
            zinfo = zipfile.ZipInfo(name)
            zinfo.compress_type = zipfile.ZIP_DEFLATED
            with out.open(zinfo, "w", force_zip64=True) as f:
                for _ in range(entry_bytes // len(chunk)):
                    f.write(chunk)
    return path


def test_zip_bomb_is_refused_before_decompression(tiny_teacher_path: Path, tmp_path: Path) -> None:
    bomb = _zip_bomb(tmp_path / "bomb.pt", tiny_teacher_path, 1 << 30)  # 1 GiB of zeros in ~1 MB
    assert bomb.stat().st_size < 20 << 20
    _assert_one_line_under_1gb(tmp_path, "declares 1073741824 bytes", "teacher-info", str(bomb))


def test_storage_size_that_disagrees_with_its_record_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lying.pt"
    torch.save({"model": {"w": torch.zeros(4)}}, path)
    with zipfile.ZipFile(path) as src:
        data = {n: src.read(n) for n in src.namelist()}
    pkl = next(n for n in data if n.endswith("data.pkl"))
    i = data[pkl].find(b"K\x04t")  # the storage's element count, 4
    data[pkl] = data[pkl][:i] + b"J" + (2_000_000_000).to_bytes(4, "little") + data[pkl][i + 2:]
    with zipfile.ZipFile(path, "w") as out:
        for name, blob in data.items():
            out.writestr(name, blob)
    _assert_one_line_under_1gb(tmp_path, "does not match expected size", "teacher-info", str(path))


def _legacy_storage_bomb(path: Path, numel: int) -> Path:
    """A checkpoint in torch's legacy (pre-1.6, non-zip) format whose one float32 storage declares
    ``numel`` elements, followed by 64 bytes of data: torch allocates what the pickle declares
    before it reads the data."""
    storage = object()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return ("storage", torch.FloatStorage, "0", "cpu", numel, None) if obj is storage else None

    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001,  # torch's legacy magic number and protocol version
                       {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump({"model": {"w": storage}})
        pickle.dump(["0"], f, protocol=2)
        f.write(struct.pack("<q", numel) + bytes(64))
    return path


@pytest.mark.parametrize("numel", [10**9, 25 * 10**9])  # 4 GB: allocated, never touched; 100 GB: cannot be
def test_legacy_format_storage_bomb_stays_under_1gb(tmp_path: Path, numel: int) -> None:
    """The zip checks do not apply to the legacy format, and torch allocates the declared storage
    before reading it; the allocation is never touched (the data ends after 64 bytes), or fails:
    one line either way, and peak RSS stays under 1 GB."""
    bomb = _legacy_storage_bomb(tmp_path / "legacy-bomb.pt", numel)
    assert bomb.stat().st_size < 1024
    _assert_one_line_under_1gb(tmp_path, "could not be read", "teacher-info", str(bomb))


def test_yaml_alias_bomb_is_one_line(tmp_path: Path, reference_lake: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\ndistiller:\n  encoder_layers: 2\n")
    _assert_one_line_under_1gb(tmp_path, "aliases", "distill", "--cache", str(reference_lake), "--config",
                               str(bomb), "--out", str(tmp_path / "run"), "--steps", "1")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value", [
    ("encoder_layers", 10**9), ("encoder_embed_dim", 2**40), ("encoder_ffn_embed_dim", 10**12),
    ("conv_pos", 10**9), ("pred_head_final_dim", 10**12),
])
def test_config_sizes_that_would_allocate_absurd_memory_are_one_line(
    key: str, value: int, tmp_path: Path, reference_lake: Path
) -> None:
    cfg = tmp_path / "huge.yaml"
    from fhb.student.config import load_fithubert_yaml

    import yaml

    data = yaml.safe_load(load_fithubert_yaml("tiny").to_yaml())
    data["distiller"][key] = value
    cfg.write_text(yaml.safe_dump(data))
    _assert_one_line_under_1gb(tmp_path, "parameters", "distill", "--cache", str(reference_lake), "--config",
                               str(cfg), "--out", str(tmp_path / "run"), "--steps", "1")
    assert not (tmp_path / "run").exists()
