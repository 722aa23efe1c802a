"""``fhb extract --codec pca/pq``: codecs fitted on a seeded sample, stored, used, reused on resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fhb.errors import FhbError
from fhb.stages.extract import run_extract
from fhb.storage.fitted import DEFAULT_ERROR_BUDGET, rel_rms, resolve_codec
from fhb.storage.integrity import verify_lake
from fhb.storage.reader import open_lake

SPLITS = ["train-clean-100", "dev-clean"]


def _extract(teacher: Path, root: Path, out: Path, **kw) -> object:
    kw.setdefault("shard_hours", 0.002)
    kw.setdefault("workers", 0)
    kw.setdefault("threads", 1)
    kw.setdefault("fit_seconds", 20.0)
    return run_extract(teacher, root, SPLITS, out, **kw)


@pytest.fixture(scope="module")
def f32(tiny_teacher_path: Path, libri_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _extract(tiny_teacher_path, libri_root, tmp_path_factory.mktemp("f32") / "lake", dtype="float32").lake


@pytest.mark.parametrize("codec", ["pca", "pq", "compact"])
def test_extract_compact_codec(codec: str, tiny_teacher_path: Path, libri_root: Path, f32: Path,
                               tmp_path: Path) -> None:
    out = _extract(tiny_teacher_path, libri_root, tmp_path / "lake", dtype=codec, codec_error=0.1).lake
    lake, ref = open_lake(out), open_lake(f32)
    assert lake.meta.dtype == resolve_codec(codec)
    assert set(lake.meta.fitted) == {f"layer_{k:02d}" for k in lake.meta.layers}
    assert [f for f in verify_lake(out) if f.severity == "error"] == []
    for split in SPLITS:
        got = np.concatenate([lake[split].targets(u) for u in lake[split]], axis=1)
        want = np.concatenate([ref[split].targets(u) for u in ref[split]], axis=1)
        for i in range(len(lake.meta.layers)):
            assert rel_rms(got[i], want[i]) < 0.2  # fitted on train for 0.1; dev is held out


def test_rerun_reuses_the_fitted_codecs(tiny_teacher_path: Path, libri_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    _extract(tiny_teacher_path, libri_root, out, dtype="pca")
    before = open_lake(out).meta.fitted
    for shard in (out / "dev-clean").iterdir():  # lose some shards: the rerun must encode them alike
        if shard.is_dir():
            shutil.rmtree(shard)
            break
    summary = _extract(tiny_teacher_path, libri_root, out, dtype="pca")
    assert summary.shards_done >= 1 and open_lake(out).meta.fitted == before


def test_codec_options_refused(tiny_teacher_path: Path, libri_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FhbError, match="--codec 'zfp'"):
        _extract(tiny_teacher_path, libri_root, tmp_path / "a", dtype="zfp")
    with pytest.raises(FhbError, match="--codec-error 5"):
        _extract(tiny_teacher_path, libri_root, tmp_path / "b", dtype="pca", codec_error=5)
    with pytest.raises(FhbError, match="--cnn-features"):
        _extract(tiny_teacher_path, libri_root, tmp_path / "c", dtype="pq", cnn_features=True)


def test_cli_default_budget_matches_the_library() -> None:
    from fhb.cli import DEFAULT_CODEC_ERROR

    assert DEFAULT_CODEC_ERROR == DEFAULT_ERROR_BUDGET
