"""``fhb transcode`` (no teacher), ``fhb inspect --json`` and ``fhb evaluate --json`` on compact lakes,
and ``fhb distill`` from a compact lake."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fhb.errors import FhbError
from fhb.stages.transcode import run_transcode
from fhb.storage.fitted import COMPACT, rel_rms
from fhb.storage.integrity import verify_lake
from fhb.storage.reader import open_lake
from tests.stages.test_distill import _run, build_lake

TRAIN, DEV = "train-clean-100", "dev-clean"


def _cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "fhb.cli", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, libri_root: Path, tiny_teacher_path: Path) -> Path:
    return build_lake(libri_root, tiny_teacher_path, tmp_path_factory.mktemp("src") / "lake")


@pytest.mark.parametrize("codec", ["pca", "pq", "int8"])
def test_transcode_re_encodes_every_shard(source: Path, tmp_path: Path, codec: str) -> None:
    out = tmp_path / "lake2"
    summary = run_transcode(source, out, codec, codec_error=0.1, fit_seconds=30.0)
    src, got = open_lake(source), open_lake(out)
    assert summary.shards_done == sum(len(src[s].shards) for s in src.splits) and got.meta.dtype == codec
    assert [f for f in verify_lake(out) if f.severity == "error"] == []
    for split in src.splits:
        assert got[split].utterance_ids == src[split].utterance_ids
        for u in src[split]:
            assert np.array_equal(got[split].audio(u), src[split].audio(u))
            bound = 0.01 if codec == "int8" else 0.25
            assert rel_rms(got[split].targets(u), src[split].targets(u)) < bound, u
    again = run_transcode(source, out, codec, codec_error=0.1, fit_seconds=30.0)  # resumes: nothing to do
    assert again.shards_done == 0 and open_lake(out).meta.fitted == got.meta.fitted


def test_transcode_refuses_its_own_source(source: Path) -> None:
    with pytest.raises(FhbError, match="the source lake itself"):
        run_transcode(source, source, "pca")


def test_cli_inspect_json_distill_and_evaluate_json(source: Path, tmp_path: Path) -> None:
    compact = tmp_path / "compact"
    _cli("transcode", str(source), "--out", str(compact), "--codec", "compact", "--codec-error", "0.1",
         "--fit-seconds", "30")
    info = json.loads(_cli("inspect", str(compact), "--json"))
    assert info["dtype"] == COMPACT and set(info["layers_detail"]) == {"layer_01", "layer_02", "layer_03"}
    for layer in info["layers_detail"].values():
        assert layer["codec"] == COMPACT and layer["rel_rms"] <= 0.1 and 0 < layer["width"] <= info["dim"]
    f16 = json.loads(_cli("inspect", str(source), "--json"))
    assert f16["layers_detail"]["layer_01"]["rel_rms"] is None
    assert 0 < info["bytes_per_frame_per_layer"] < f16["bytes_per_frame_per_layer"]

    run = tmp_path / "run"
    result = _run(compact, run, steps=2)  # distill from the compact lake
    assert (run / "student.pt").is_file() or result is not None
    ev = json.loads(_cli("evaluate", str(run), "--cache", str(source), "--split", DEV, "--json", "--any-encoding"))
    assert set(ev["per_layer"]) == {"layer_01", "layer_02", "layer_03"}
    assert ev["validation_loss"] == ev["dev_loss"] and math.isfinite(ev["validation_loss"])


def test_transcode_overwrite_builds_beside_and_keeps_the_old_lake_on_failure(
        source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fhb.storage.writer import ShardWriter

    out = tmp_path / "lake2"
    run_transcode(source, out, "int8")
    before = {u: open_lake(out)[TRAIN].targets(u) for u in open_lake(out)[TRAIN]}
    commit, calls = ShardWriter.commit, []

    def failing_commit(self: ShardWriter) -> None:
        calls.append(self)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        commit(self)

    monkeypatch.setattr(ShardWriter, "commit", failing_commit)
    with pytest.raises(OSError):
        run_transcode(source, out, "float32", overwrite=True)
    old = open_lake(out)  # the old lake, intact and readable; the partial new one waits beside it
    assert old.meta.dtype == "int8" and all(np.array_equal(old[TRAIN].targets(u), t) for u, t in before.items())
    assert (tmp_path / ".lake2.tmp-partial").is_dir()
    monkeypatch.setattr(ShardWriter, "commit", commit)
    again = run_transcode(source, out, "float32", overwrite=True)  # continues the partial lake
    assert again.shards_resumed == 1 and open_lake(out).meta.dtype == "float32"
    assert not (tmp_path / ".lake2.tmp-partial").exists()
    assert [f for f in verify_lake(out) if f.severity == "error"] == []
    (out / "notes.txt").write_text("mine")  # a user's file: the overwrite is refused, nothing deleted
    with pytest.raises(FhbError, match="notes.txt"):
        run_transcode(source, out, "int8", overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and open_lake(out).meta.dtype == "float32"
