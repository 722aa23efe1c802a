"""Training never consumes wrong or partial targets silently (Trust, section 2: the checks in place).

Promises (docs/reliability.md, "Trust"): a listed shard that is missing or uncommitted is an error
for ``fhb distill`` (unless ``--allow-missing-shards``) and ``fhb evaluate``; a run is bound to its
lake's teacher: ``--resume`` and ``fhb evaluate`` refuse a lake of another teacher (sha256), other
stored layers or another dtype, naming both; changed hyper-parameters on ``--resume`` are refused,
naming each, and harmless changes (length, logging) are reported; repeated splits are refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from .conftest import assert_user_error, small_distill_args


def _lake_copy(reference_lake: Path, tmp_path: Path) -> Path:
    lake = tmp_path / "lake"
    shutil.copytree(reference_lake, lake)
    return lake


def _first_shard(lake: Path, split: str = "train-clean-100") -> Path:
    meta = json.loads((lake / "zarr.json").read_text())
    shard = meta["attributes"]["splits"][split]["shards"][0]
    return lake / split / shard


def _edit_root(lake: Path, edit: Any) -> None:
    path = lake / "zarr.json"
    meta = json.loads(path.read_text())
    edit(meta["attributes"])
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", ["deleted", "uncommitted"])
def test_missing_or_uncommitted_listed_shard_is_an_error(damage: str, reference_lake: Path, small_run: Path,
                                                          tmp_path: Path, cli: Any) -> None:
    lake = _lake_copy(reference_lake, tmp_path)
    shard = _first_shard(lake)
    if damage == "deleted":
        shutil.rmtree(shard)
    else:
        path = shard / "zarr.json"
        meta = json.loads(path.read_text())
        meta["attributes"]["committed"] = False
        path.write_text(json.dumps(meta))
    run = tmp_path / "run"
    assert_user_error(cli(*small_distill_args(lake, run)), shard.name, "missing or uncommitted",
                      "--allow-missing-shards")
    assert not run.exists()
    assert_user_error(cli("evaluate", str(small_run), "--cache", str(lake), "--split", "train-clean-100"),
                      shard.name, "missing or uncommitted")
    assert cli(*small_distill_args(lake, run, "--allow-missing-shards")).code == 0  # the user's choice


def test_repeated_splits_are_refused(reference_lake: Path, tmp_path: Path, cli: Any) -> None:
    args = small_distill_args(reference_lake, tmp_path / "run")
    args[args.index("--splits") + 1] = "train-clean-100,train-clean-100"
    assert_user_error(cli(*args), "repeated", "train-clean-100")
    assert not (tmp_path / "run").exists()


def _other_teacher(attrs: dict[str, Any]) -> None:
    attrs["teacher"]["sha256"] = "f" * 64
    attrs["teacher"]["name"] = "someone-else.pt"


@pytest.mark.parametrize("change", ["teacher", "dtype", "layers"])
def test_resume_and_evaluate_refuse_a_lake_of_another_teacher(change: str, reference_lake: Path, small_run: Path,
                                                              tmp_path: Path, cli: Any) -> None:
    lake = _lake_copy(reference_lake, tmp_path)
    edits = {
        "teacher": _other_teacher,
        "dtype": lambda a: a.__setitem__("dtype", "float32" if a["dtype"] != "float32" else "float16"),
        "layers": lambda a: a.__setitem__("layers", [*a["layers"], 99]),
    }
    try:
        _edit_root(lake, edits[change])
    except KeyError:
        pytest.skip(f"the lake metadata has no {change} field in this layout")
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    needle = {"teacher": "someone-else.pt", "dtype": "targets", "layers": "layers"}[change]
    line = assert_user_error(cli(*small_distill_args(lake, run, "--resume", "--steps", "3")))
    assert needle in line or "expected" in line, line
    line = assert_user_error(cli("evaluate", str(run), "--cache", str(lake)))
    assert needle in line or "expected" in line, line


def test_resume_with_changed_hyper_parameters_is_refused(reference_lake: Path, small_run: Path, tmp_path: Path,
                                                         cli: Any) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    (run / "student.pt").unlink()
    line = assert_user_error(cli(*small_distill_args(reference_lake, run, "--resume", "--lr", "0.5")), "lr")
    assert "other settings" in line
    args = small_distill_args(reference_lake, run, "--resume")
    args[args.index("--seed") + 1] = "4"
    assert_user_error(cli(*args), "seed 3 -> 4")


# ------------------------------------------------------------------------ readers hold the lake

_HOLD = """
import sys, time
from fhb.storage.lock import {cls}
with {cls}(sys.argv[1]){acquire}:
    print("ready", flush=True)
    time.sleep(120)
"""


def _holder(lake: Path, kind: str) -> Any:
    """A subprocess that holds the lake as a reader (``read``) or a writer (``write``) until killed."""
    import os
    import subprocess
    import sys

    code = _HOLD.format(cls="LakeReadLease" if kind == "read" else "LakeLock", acquire="")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lake)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__import__("fhb").__file__).resolve().parents[1])})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_writers_are_refused_while_a_reader_holds_the_lake(reference_lake: Path, tiny_teacher_path: Path,
                                                           libri_root: Path, tmp_path: Path, cli: Any) -> None:
    from .conftest import extract_args

    lake = _lake_copy(reference_lake, tmp_path)
    reader = _holder(lake, "read")
    try:
        line = assert_user_error(cli(*extract_args(tiny_teacher_path, libri_root, lake, "--overwrite", "--layers", "1")),
                                 "is being read by", f"pid {reader.pid}")
        assert "wait for it to finish" in line
        assert_user_error(cli("lake", "add-teacher", str(lake), "--teacher", str(tiny_teacher_path)),
                          "is being read by")
    finally:
        reader.kill()
        reader.wait()
    assert not (lake / ".fhb.lock").exists()
    # the reader was SIGKILLed: its registration is stale (dead pid, this host) and no longer blocks
    result = cli(*extract_args(tiny_teacher_path, libri_root, lake))
    assert result.code == 0, result.stderr[-2000:]


def test_readers_are_refused_while_a_writer_holds_the_lake(reference_lake: Path, small_run: Path, tmp_path: Path,
                                                           cli: Any) -> None:
    lake = _lake_copy(reference_lake, tmp_path)
    writer = _holder(lake, "write")
    try:
        assert_user_error(cli(*small_distill_args(lake, tmp_path / "run")), "is being written by", f"pid {writer.pid}")
        assert not (tmp_path / "run").exists()
        assert_user_error(cli("evaluate", str(small_run), "--cache", str(lake)), "is being written by")
    finally:
        writer.kill()
        writer.wait()
    assert cli(*small_distill_args(lake, tmp_path / "run")).code == 0  # stale writer: a warning only
    assert not (lake / ".fhb.readers").exists()  # the run's registration is gone with it


# ------------------------------------------------------------------ wrong types in lake metadata

_ROOT_KEYS = ["format", "format_version", "fhb_version", "teacher", "layers", "cnn_features", "cnn_dim", "dtype",
              "codec", "frame_rate", "sample_rate", "splits", "teacher_weights"]
_WRONG_VALUES = [None, "x", -1, 1e308, [], {}, [["nested"]], True]


@pytest.fixture(scope="module")
def metadata_lake(reference_lake: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("meta") / "lake"
    shutil.copytree(reference_lake, lake)
    return lake


@pytest.mark.parametrize("key", _ROOT_KEYS)
def test_wrong_types_in_lake_metadata_are_one_line(key: str, metadata_lake: Path, cli: Any) -> None:
    """Every root attribute replaced by values of other types: inspect, verify, distill never traceback."""
    from .conftest import TRACEBACK

    path = metadata_lake / "zarr.json"
    original = path.read_text()
    try:
        for value in _WRONG_VALUES:
            meta = json.loads(original)
            meta["attributes"][key] = value
            path.write_text(json.dumps(meta))
            for args in (["inspect", str(metadata_lake)], ["verify", str(metadata_lake)],
                         small_distill_args(metadata_lake, metadata_lake.parent / "run", "--steps", "1")):
                result = cli(*args)
                assert TRACEBACK not in result.stderr, (key, value, args[0], result.stderr[-3000:])
                assert result.code in (0, 1, 2), (key, value, args[0], result.code)
                if result.code == 2:
                    assert len(result.error_lines) == 1, (key, value, result.stderr[-2000:])
                shutil.rmtree(metadata_lake.parent / "run", ignore_errors=True)
    finally:
        path.write_text(original)
