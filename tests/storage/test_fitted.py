"""Fitted codecs (pca / pq / klt): error budget, rank choice, lake round trip, old lakes, verify."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fhb.errors import FhbError
from fhb.storage import open_lake
from fhb.storage.fitted import fit_codec, fit_codecs, rel_rms, with_fitted
from fhb.storage.integrity import verify_lake
from fhb.storage.schema import fitted_param_path, layer_array_name
from tests.lakes import write_lake

from .conftest import hubert_like, make_meta, make_utts


def _sample(n: int = 1500, dim: int = 24, seed: int = 0) -> np.ndarray:
    return hubert_like(n, dim=dim, seed=seed, n_outliers=2)


@pytest.mark.parametrize("kind", ["pca", "pq", "klt"])
def test_round_trip_error_within_budget(kind: str) -> None:
    both = _sample(1900)
    x, held_out = both[:1500], both[1500:]  # held out: same distribution, other frames
    codec = fit_codec(kind, x, budget=0.1)
    assert codec.rel_rms <= 0.1
    assert rel_rms(codec.decode(codec.encode(held_out)), held_out) < 0.2
    assert codec.encode(x).dtype == (np.int8 if kind == "pca" else np.uint8)


@pytest.mark.parametrize("kind", ["pca", "pq", "klt"])
def test_width_grows_as_the_budget_shrinks(kind: str) -> None:
    x = _sample()
    widths = [fit_codec(kind, x, budget=b).width for b in (0.3, 0.1, 0.03)]
    assert widths == sorted(widths) and widths[0] < widths[-1], widths


def _compact_lake(tmp_path: Path, kind: str = "pca", budget: float = 0.05) -> tuple[Path, list, dict]:
    base = make_meta("float16")
    utts = make_utts(base, 6)
    samples = {layer_array_name(k): np.concatenate([u.targets[i] for u in utts]) for i, k in enumerate(base.layers)}
    codecs = fit_codecs(kind, samples, budget)
    meta = with_fitted(base, codecs)
    path = write_lake(tmp_path / "lake", meta, {"train": {"s0": utts[:3], "s1": utts[3:]}}, fitted=codecs)
    return path, utts, codecs


@pytest.mark.parametrize("kind", ["pca", "pq", "klt"])
def test_lake_round_trip(tmp_path: Path, kind: str) -> None:
    path, utts, codecs = _compact_lake(tmp_path, kind)
    lake = open_lake(path)
    assert lake.meta.dtype == kind and set(lake.meta.fitted) == set(codecs)
    split = lake["train"]
    for u in utts:
        got = split.targets(u.utt_id)
        assert got.shape == u.targets.shape
        assert rel_rms(got, u.targets) <= 0.06
    spec = lake.meta.fitted["layer_01"]
    assert split.shard("s0").array("layer_01").shape[1] == spec.width
    assert verify_lake(path) == [] or all(f.severity != "error" for f in verify_lake(path))


def test_old_lakes_read_unchanged(tmp_path: Path) -> None:
    meta = make_meta("float16")
    utts = make_utts(meta, 3)
    path = write_lake(tmp_path / "lake", meta, {"train": {"s0": utts}})
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    assert "fitted_codecs" not in attrs
    lake = open_lake(path)
    assert lake.meta.fitted == {} and lake.fitted == {}
    np.testing.assert_array_equal(lake["train"].targets(utts[0].utt_id), utts[0].targets.astype(np.float16))


def test_verify_checks_the_codec_parameters(tmp_path: Path) -> None:
    path, _, _ = _compact_lake(tmp_path)
    arr_dir = path / fitted_param_path("layer_02", "basis") / "c" / "0" / "0"
    data = bytearray(arr_dir.read_bytes())
    data[10] ^= 0xFF
    arr_dir.write_bytes(bytes(data))
    errors = [f for f in verify_lake(path) if f.severity == "error"]
    assert any("layer_02/basis" in str(f) for f in errors), errors
    with pytest.raises(FhbError, match="layer_02/basis"):
        open_lake(path)["train"]


def test_storage_stays_free_of_torch() -> None:
    import subprocess
    import sys

    code = "import sys, fhb.storage, fhb.storage.fitted, fhb.storage.fitted_store; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_unknown_codec_and_budget_refused() -> None:
    from fhb.storage.fitted import check_budget, resolve_codec

    assert resolve_codec("compact") in ("pca", "pq", "klt") and resolve_codec("float16") == "float16"
    with pytest.raises(FhbError, match="--codec 'lilcom': expected one of"):
        resolve_codec("lilcom")
    with pytest.raises(FhbError, match="--codec-error 0: expected"):
        check_budget(0)
