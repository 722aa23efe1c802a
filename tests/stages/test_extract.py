"""Stage one end to end on the real-speech fixture with a tiny fairseq-layout teacher."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from fhb.errors import FhbError
from fhb.stages.extract import run_extract
from fhb.storage.integrity import verify_lake
from fhb.storage.reader import open_lake
from fhb.pipeline.teacher import load_teacher, save_random_checkpoint

SPLITS = ["train-clean-100", "dev-clean"]


def _extract(teacher: Path, root: Path, out: Path, **kw) -> object:
    kw.setdefault("shard_hours", 0.002)
    kw.setdefault("workers", 0)
    kw.setdefault("threads", 1)
    return run_extract(teacher, root, SPLITS, out, **kw)


def _assert_same_lake(a: Path, b: Path) -> None:
    la, lb = open_lake(a), open_lake(b)
    assert la.splits == lb.splits
    for split in la.splits:
        assert la[split].utterance_ids == lb[split].utterance_ids
        for utt in la[split].utterance_ids:
            assert np.array_equal(la[split].targets(utt), lb[split].targets(utt)), utt
            assert np.array_equal(la[split].audio(utt), lb[split].audio(utt)), utt


@pytest.fixture(scope="module")
def lake(tiny_teacher_path: Path, libri_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("extract") / "lake"
    summary = _extract(tiny_teacher_path, libri_root, out)
    assert summary.utterances == 10 and summary.shards_done >= 4
    return out


@pytest.mark.parametrize("dtype,tolerance", [("float32", 0.0), ("float16", 1e-3)])
def test_round_trip(dtype: str, tolerance: float, tiny_teacher_path: Path, libri_root: Path, tmp_path: Path) -> None:
    """Stored targets equal ``Teacher.extract`` (bitwise for float32: one utterance per batch and
    one thread on both sides, so the arithmetic is the same) and the audio equals the FLAC samples."""
    out = tmp_path / dtype
    _extract(tiny_teacher_path, libri_root, out, dtype=dtype, cnn_features=True, batch_seconds=1.0)
    teacher = load_teacher(tiny_teacher_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    lake = open_lake(out)
    assert lake.attrs["teacher"]["sha256"] == teacher.sha256
    count = 0
    for split in SPLITS:
        view = lake[split]
        for utt in view.utterance_ids:
            flac = next(libri_root.rglob(f"{utt}.flac"))
            samples, _ = sf.read(flac, dtype="int16")
            assert np.array_equal(view.audio(utt), samples)
            wav = torch.from_numpy(samples.astype(np.float32) / 32768)
            ref, cnn = teacher.extract([wav], cnn_features=True)
            got = view.targets(utt)
            assert got.shape == tuple(ref[0].shape) and view.num_frames(utt) == ref[0].shape[1]
            rel = np.sqrt(((got - ref[0].numpy()) ** 2).mean() / (ref[0].numpy() ** 2).mean())
            assert rel <= tolerance, rel
            if tolerance == 0.0:
                assert np.array_equal(got, ref[0].numpy())
                assert np.array_equal(view.cnn_features(utt), cnn[0].numpy())
            assert view.transcript(utt)
            count += 1
    torch.set_num_threads(threads)
    assert count == 10
    assert not [f for f in verify_lake(out) if f.severity == "error"]


def test_layer_subset(tiny_teacher_path: Path, libri_root: Path, tmp_path: Path) -> None:
    _extract(tiny_teacher_path, libri_root, tmp_path / "l", layers="1,3")
    lake = open_lake(tmp_path / "l")
    assert lake.attrs["layers"] == [1, 3]
    utt = lake["dev-clean"].utterance_ids[0]
    assert lake["dev-clean"].targets(utt).shape[0] == 2
    with pytest.raises(FhbError, match="2"):
        lake["dev-clean"].targets(utt, layers=[2])


@pytest.mark.slow
def test_two_dask_workers_equal_one(tiny_teacher_path: Path, libri_root: Path, tmp_path: Path) -> None:
    _extract(tiny_teacher_path, libri_root, tmp_path / "w1", workers=1)
    _extract(tiny_teacher_path, libri_root, tmp_path / "w2", workers=2)
    _assert_same_lake(tmp_path / "w1", tmp_path / "w2")


def test_rerun_resumes_and_skips_committed(tiny_teacher_path: Path, libri_root: Path, lake: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(lake, copy)
    summary = _extract(tiny_teacher_path, libri_root, copy)
    assert summary.shards_done == 0 and summary.shards_resumed >= 4
    _assert_same_lake(lake, copy)


def test_extract_stores_the_teacher_once(tiny_teacher_path: Path, libri_root: Path, lake: Path, tmp_path: Path) -> None:
    """The lake carries the teacher's weights (stage two needs nothing else); a resumed run keeps them."""
    from fhb.pipeline.lake_teacher import load_lake_teacher
    from fhb.storage.schema import TEACHER_DIR, TEACHER_WEIGHTS_FILE

    meta = open_lake(lake).meta
    assert meta.teacher_weights is not None and meta.teacher_weights.source_sha256 == meta.teacher.sha256
    assert verify_lake(lake) == []
    rebuilt, original = load_lake_teacher(lake), load_teacher(tiny_teacher_path)
    sd = original.model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in rebuilt.model.state_dict().items())
    copy = tmp_path / "copy"
    shutil.copytree(lake, copy)
    weights = copy / TEACHER_DIR / TEACHER_WEIGHTS_FILE
    before = weights.stat().st_mtime_ns
    _extract(tiny_teacher_path, libri_root, copy)
    assert weights.stat().st_mtime_ns == before and open_lake(copy).meta.teacher_weights == meta.teacher_weights


def test_other_teacher_refused(libri_root: Path, lake: Path, tmp_path: Path) -> None:
    other = save_random_checkpoint(tmp_path / "other.pt", "tiny", seed=99)
    copy = tmp_path / "copy"
    shutil.copytree(lake, copy)
    with pytest.raises(FhbError, match="different layout"):
        _extract(other, libri_root, copy)
    _extract(other, libri_root, copy, overwrite=True)
    assert open_lake(copy).attrs["teacher"]["sha256"] != open_lake(lake).attrs["teacher"]["sha256"]
    stored = open_lake(copy).meta.teacher_weights  # the overwritten lake carries the new teacher
    assert stored is not None and stored.source_sha256 == open_lake(copy).attrs["teacher"]["sha256"]


def test_locked_lake_refused(tiny_teacher_path: Path, libri_root: Path, lake: Path) -> None:
    from fhb.storage.lock import LakeLock

    with LakeLock(lake):
        with pytest.raises(FhbError, match="locked"):
            _extract(tiny_teacher_path, libri_root, lake)


def _bad_corpus(libri_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "LibriSpeech"
    shutil.copytree(libri_root, root)
    bad = root / "dev-clean" / "1995" / "1827" / "1995-1827-0001.flac"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])  # truncated after an intact header
    return root, bad


def test_bad_audio_error_policy(tiny_teacher_path: Path, libri_root: Path, tmp_path: Path) -> None:
    root, bad = _bad_corpus(libri_root, tmp_path)
    with pytest.raises(FhbError, match=bad.name):
        _extract(tiny_teacher_path, root, tmp_path / "lake")
    lake = tmp_path / "lake"
    if lake.exists():  # whatever got committed, the bad file's shard did not
        meta = open_lake(lake).attrs
        assert "1995-1827-0001" not in str(meta)


def test_bad_audio_skip_policy(tiny_teacher_path: Path, libri_root: Path, tmp_path: Path) -> None:
    root, bad = _bad_corpus(libri_root, tmp_path)
    summary = _extract(tiny_teacher_path, root, tmp_path / "lake", on_bad_audio="skip")
    assert [p for p, _ in summary.skipped] == [str(bad)]
    view = open_lake(tmp_path / "lake")["dev-clean"]
    assert "1995-1827-0001" not in view.utterance_ids and len(view) == 2


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted(tiny_teacher_path: Path, libri_root: Path, lake: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fhb.cli", "extract", "--teacher", str(tiny_teacher_path), "--libri-root",
           str(libri_root), "--out", str(out), "--splits", ",".join(SPLITS), "--shard-hours", "0.002",
           "--workers", "0", "--threads", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith("shard-") for p in out.glob("*/shard-*")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run([sys.executable, "-m", "fhb.cli", "unlock", str(out)], check=True, capture_output=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_same_lake(lake, out)
    assert not [f for f in verify_lake(out) if f.severity == "error"]
