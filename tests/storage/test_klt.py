"""The klt codec (transform coding: KLT rotation, one quantiser step per layer, zigzag codes, bitshuffle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fhb.errors import FhbError
from fhb.storage import open_lake
from fhb.storage.codecs import TargetCodec
from fhb.storage.fitted import fit_codec, fit_codecs, rel_rms, resolve_codec, unzigzag, with_fitted, zigzag
from fhb.storage.fitted_store import read_fitted
from fhb.storage.integrity import summarize_lake
from fhb.storage.schema import layer_array_name
from tests.lakes import write_lake

from .conftest import hubert_like, make_meta, make_utts


def _anisotropic(n: int, dim: int = 48, seed: int = 0) -> np.ndarray:
    """``n x dim`` frames whose variance falls off along a random rotation (like real HuBERT layers)."""
    rng = np.random.default_rng(seed)
    rot = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    return ((rng.standard_normal((n, dim)) * np.exp(-3 * np.linspace(0, 1, dim))) @ rot + 0.5).astype(np.float32)


def test_zigzag_round_trip_keeps_small_codes_small() -> None:
    q = np.arange(-127, 128)
    u = zigzag(q)
    assert u.dtype == np.uint8 and u.max() == 254
    np.testing.assert_array_equal(unzigzag(u), q)
    np.testing.assert_array_equal(zigzag(np.array([0, -1, 1, -2, 2])), [0, 1, 2, 3, 4])


@pytest.mark.parametrize("budget", [0.02, 0.1, 0.3])
def test_error_budget_honoured_on_held_out_frames(budget: float) -> None:
    x = _anisotropic(2500)
    codec = fit_codec("klt", x[:2000], budget)
    assert codec.kind == "klt" and codec.rel_rms <= budget + 1e-6
    assert rel_rms(codec.decode(codec.encode(x[2000:])), x[2000:]) <= 1.15 * budget
    step = codec.params["scale"]
    assert np.all(step == step[0]), "one quantiser step for every component"


def test_budget_chooses_rank_and_step_not_constants() -> None:
    x = _anisotropic(2000)
    loose, tight = fit_codec("klt", x, 0.3), fit_codec("klt", x, 0.03)
    assert loose.width < tight.width <= x.shape[1]
    assert loose.params["scale"][0] > tight.params["scale"][0]
    iso = np.random.default_rng(1).standard_normal((2000, 48)).astype(np.float32)
    assert fit_codec("klt", iso, 0.3).width > loose.width  # isotropic data needs more components


def test_fewer_bytes_than_pca_at_the_same_error() -> None:
    """Codes stored as the lake stores them (Blosc zstd + the codec's shuffle): klt beats pca's 8 bits/component."""
    from numcodecs import Blosc

    def stored_bytes(codes: np.ndarray, dtype: str) -> int:
        c = TargetCodec.default(dtype)
        shuffle = {"shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}[c.shuffle]
        return len(Blosc(cname=c.cname, clevel=c.clevel, shuffle=shuffle, blocksize=c.blocksize).encode(codes))

    x = _anisotropic(4000, dim=96)
    fit, probe = x[:3000], x[3000:]
    pca = fit_codec("pca", fit, 0.1)
    klt = fit_codec("klt", fit, pca.rel_rms)
    assert rel_rms(klt.decode(klt.encode(probe)), probe) <= 1.1 * rel_rms(pca.decode(pca.encode(probe)), probe)
    assert stored_bytes(klt.encode(probe), "klt") < 0.7 * stored_bytes(pca.encode(probe), "pca")


def test_lake_stores_and_loads_the_fitted_parameters(tmp_path: Path) -> None:
    base = make_meta("float16")
    utts = make_utts(base, 6)
    samples = {layer_array_name(k): np.concatenate([u.targets[i] for u in utts]) for i, k in enumerate(base.layers)}
    codecs = fit_codecs("klt", samples, 0.05)
    meta = with_fitted(base, codecs)
    assert meta.codec.shuffle == "bitshuffle" and meta.codec.stored_dtype == np.uint8
    path = write_lake(tmp_path / "lake", meta, {"train": {"s0": utts[:3], "s1": utts[3:]}}, fitted=codecs)
    lake = open_lake(path)
    assert lake.meta.dtype == "klt"
    loaded = read_fitted(path, lake.meta)
    for name, codec in codecs.items():
        assert loaded[name].kind == "klt" and loaded[name].width == codec.width
        for key, value in codec.params.items():
            np.testing.assert_array_equal(loaded[name].params[key], value)
    for u in utts:
        assert rel_rms(lake["train"].targets(u.utt_id), u.targets) <= 0.06
    detail = summarize_lake(path).layers_detail
    assert {d.codec for d in detail.values()} == {"klt"}
    assert all(0 < d.width <= base.teacher.dim for d in detail.values())


def test_unreachable_budget_warns_and_says_what_was_reached(caplog: pytest.LogCaptureFixture) -> None:
    x = hubert_like(400, dim=16, seed=3, n_outliers=2)  # outliers ~50x: int8 steps cannot reach 1e-4
    with caplog.at_level("WARNING"):
        codec = fit_codec("klt", x, 1e-4)
    assert codec.rel_rms > 1e-4 and "klt codec" in caplog.text


def test_klt_is_a_codec_name_and_bad_budgets_are_one_line() -> None:
    from fhb.storage.fitted import check_budget

    assert resolve_codec("klt") == "klt"
    with pytest.raises(FhbError, match=r"--codec 'kl': expected one of .*klt"):
        resolve_codec("kl")
    with pytest.raises(FhbError, match="--codec-error 1.5: expected"):
        check_budget(1.5)


def test_compact_brings_its_measured_budget_unless_one_is_given() -> None:
    from fhb.storage.fitted import COMPACT, COMPACT_ERROR_BUDGET, DEFAULT_ERROR_BUDGET, resolve_budget

    assert resolve_codec("compact") == COMPACT
    assert resolve_budget("compact", None) == COMPACT_ERROR_BUDGET
    assert resolve_budget("pca", None) == resolve_budget("klt", None) == DEFAULT_ERROR_BUDGET
    assert resolve_budget("compact", 0.05) == 0.05
    with pytest.raises(FhbError, match="--codec-error 2: expected"):
        resolve_budget("compact", 2)
