"""Fitted (per-layer, data-adaptive) target codecs: low rank (``pca``) and product-quantised (``pq``).

Unlike the elementwise encodings of `fhb.storage.codecs`, these are *fitted* on a sample of the
targets they will encode (``fhb extract`` runs the teacher on a seeded sample of the first split;
``fhb transcode`` decodes a sample of the source lake), one codec per target array. Their
parameters live in the lake (``LAKE/_codecs/<array>/<param>``, `fhb.storage.schema.FittedSpec`).
Nothing here is tuned to real HuBERT statistics: the rank / the number of sub-spaces comes from
the error budget measured on the sample, so random-weight and real activations get what *they*
need.

- ``pca``: mean ``mu`` (``D``), orthonormal basis ``W`` (``D x r``), per-component step ``s``
  (``r``). Code ``q = clip(round(((x - mu) W) / s), -127, 127)``, ``T x r`` int8 (no per-frame
  side information, so codes batch like float16 targets). Decode ``x = (q * s) W^T + mu``: one
  matmul. ``r`` is the smallest rank whose relative RMS error (truncation + quantisation) on the
  held-out fifth of the sample is within the budget (`fit_codec`).
- ``pq``: mean ``mu`` and ``M`` sub-spaces of ``D / M`` consecutive dimensions, each with
  ``K <= 256`` centroids (k-means on the sample, seeded). Code ``T x M`` uint8; decode = gather +
  concatenate. ``M`` is the smallest divisor of ``D`` (from `PQ_SUBSPACES`) within the budget.
- ``klt``: transform coding. The same rotation as ``pca`` but ONE quantiser step ``s`` for every
  component (``scale`` is ``r`` copies of it), codes zigzagged (``0, -1, 1, -2, ... -> 0, 1, 2, 3,
  ...``) into ``T x r`` uint8 and stored with Blosc bitshuffle, whose bit planes of zeros zstd
  squeezes out: a uniform quantiser plus an entropy coder, so bits go where the variance is
  (reverse water-filling) instead of 8 bits to every kept component. The budget chooses ``s``
  (bisection on the held-out error); the rank ``r`` follows from it: components whose standard
  deviation is below ``s / 4`` would be almost all zero codes and are dropped. Decode = unzigzag
  + the ``pca`` matmul.

Relative RMS error is ``rms(x - x_hat) / rms(x)`` over all values (as for the other encodings).
numpy only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from fhb.errors import FhbError
from fhb.storage.codecs import TargetCodec
from fhb.storage.schema import FITTED_KINDS, FittedSpec, LakeMeta, param_info

logger = logging.getLogger(__name__)

DEFAULT_ERROR_BUDGET = 0.1
"""Default ``--codec-error``: relative RMS error allowed per layer, measured on held-out frames. At
0.1 the student's dev loss stayed within noise of the float16-trained one (docs/benchmarks.md,
"Target codecs"; a random-weight teacher on a tiny fixture: rerun it on your teacher)."""
PQ_SUBSPACES = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
HOLDOUT_EVERY = 5
"""Every 5th frame of the fitting sample is held out to measure the error (see `fit_codec`)."""
_LEVELS = 127
_KMEANS_ITERS = 12


def rel_rms(x_hat: np.ndarray, x: np.ndarray) -> float:
    """``rms(x_hat - x) / rms(x)`` (0 when both are 0)."""
    x = np.asarray(x, dtype=np.float64)
    den = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
    num = float(np.sqrt(np.mean((np.asarray(x_hat, dtype=np.float64) - x) ** 2))) if x.size else 0.0
    return num / den if den > 0 else num


@dataclass(frozen=True)
class FittedCodec:
    """One fitted codec of one target array: ``kind``, its parameters and what it measured.

    ``params``: ``pca``/``klt``: ``mean`` (``D``), ``basis`` (``D x r``), ``scale`` (``r``); ``pq``:
    ``mean`` (``D``), ``centroids`` (``M x K x D/M``); all float32. ``rel_rms``: relative RMS
    error measured on the held-out part of the fitting sample; ``budget``: the error budget it
    was fitted for.
    """

    kind: str
    params: Mapping[str, np.ndarray]
    rel_rms: float
    budget: float

    def __post_init__(self) -> None:
        if self.kind not in FITTED_KINDS:
            raise ValueError(f"FittedCodec.kind: expected one of {list(FITTED_KINDS)}, found {self.kind!r}")

    @property
    def dim(self) -> int:
        """Width ``D`` of the decoded targets."""
        return int(self.params["mean"].shape[0])

    @property
    def width(self) -> int:
        """Codes per frame: the rank ``r`` (pca, klt) or the sub-spaces ``M`` (pq)."""
        key = "centroids" if self.kind == "pq" else "scale"
        return int(self.params[key].shape[0])

    @property
    def code_dtype(self) -> np.dtype:
        """numpy dtype of the stored codes (int8 for pca, uint8 for pq and klt)."""
        return np.dtype(FITTED_KINDS[self.kind])

    def spec(self) -> FittedSpec:
        """What the root attributes record of this codec (`fhb.storage.schema.FittedSpec`)."""
        return FittedSpec(kind=self.kind, width=self.width, dim=self.dim, rel_rms=float(self.rel_rms),
                          budget=float(self.budget),
                          params={k: param_info(v) for k, v in sorted(self.params.items())})

    def encode(self, x: np.ndarray) -> np.ndarray:
        """``T x D`` float -> ``T x width`` codes (`code_dtype`)."""
        x = np.asarray(x, dtype=np.float32)
        assert x.ndim == 2 and x.shape[1] == self.dim, f"Expected T x {self.dim}, found {list(x.shape)}"
        if self.kind == "pca":
            return _pca_encode(x, self.params["mean"], self.params["basis"], self.params["scale"])
        if self.kind == "klt":
            return zigzag(_pca_encode(x, self.params["mean"], self.params["basis"], self.params["scale"]))
        return _pq_encode(x, self.params["mean"], self.params["centroids"])

    def decode(self, codes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``T x width`` codes -> ``T x D`` (``out``'s dtype, default float32)."""
        if self.kind in ("pca", "klt"):
            p = self.params
            q = unzigzag(codes) if self.kind == "klt" else codes
            x = (q.astype(np.float32) * p["scale"]) @ p["basis"].T + p["mean"]
        else:
            c = self.params["centroids"]
            m = c.shape[0]
            x = c[np.arange(m)[None, :], codes.astype(np.int64)].reshape(len(codes), -1) + self.params["mean"]
        if out is None:
            return x.astype(np.float32, copy=False)
        out[...] = x
        return out


def fit_codec(kind: str, sample: np.ndarray, budget: float, seed: int = 0) -> FittedCodec:
    """Fit a ``kind`` codec on ``sample`` (``N x D`` float) for relative RMS error ``budget``.

    Every `HOLDOUT_EVERY`-th frame is held out: the codec is fitted on the others and its error
    measured on the held-out frames (a codec fitted and scored on the same few thousand frames
    looks better than it is: pq's centroids nearly memorise them, a high pca rank fits their
    noise). The smallest code width within the budget is chosen (binary search: the error falls
    as the width grows); when none is, the widest is used and a warning logged
    (`FittedCodec.rel_rms` says what was reached).
    """
    if kind not in FITTED_KINDS:
        raise ValueError(f"fit_codec: expected kind in {list(FITTED_KINDS)}, found {kind!r}")
    if not (0 < budget < 1):
        raise ValueError(f"fit_codec: expected 0 < budget < 1, found {budget}")
    everything = np.ascontiguousarray(sample, dtype=np.float32)
    assert everything.ndim == 2 and len(everything) >= 2, f"Expected N x D with N >= 2, found {list(everything.shape)}"
    held = np.zeros(len(everything), dtype=bool)
    if len(everything) >= 2 * HOLDOUT_EVERY:
        held[HOLDOUT_EVERY - 1 :: HOLDOUT_EVERY] = True
    else:  # too few frames to hold any out: scored on the fitting frames
        held[:] = True
    x = np.ascontiguousarray(everything[~held]) if (~held).any() else everything
    probe = np.ascontiguousarray(everything[held])
    d = x.shape[1]
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    xc = x - mean
    if kind in ("pca", "klt"):
        cov = (xc.astype(np.float64).T @ xc.astype(np.float64)) / len(xc)
        _, vecs = np.linalg.eigh(cov)
        vecs = np.ascontiguousarray(vecs[:, ::-1], dtype=np.float32)
    if kind == "klt":
        return _fit_klt(xc, mean, vecs, probe, budget)
    if kind == "pca":

        def build(r: int) -> FittedCodec:
            basis = np.ascontiguousarray(vecs[:, :r])
            z = xc @ basis
            scale = (np.abs(z).max(axis=0) / _LEVELS).astype(np.float32)
            scale[scale == 0] = 1.0
            return _measured("pca", {"mean": mean, "basis": basis, "scale": scale}, probe, budget)

        widths = list(range(1, d + 1))
    else:
        rng = np.random.default_rng(seed)

        def build(m: int) -> FittedCodec:
            sub = d // m
            k = min(256, len(x))
            cents = np.stack([_kmeans(xc[:, j * sub : (j + 1) * sub], k, rng) for j in range(m)])
            return _measured("pq", {"mean": mean, "centroids": cents.astype(np.float32)}, probe, budget)

        widths = [m for m in PQ_SUBSPACES if m <= d and d % m == 0] or [d]
    return _smallest_within(widths, build, budget)


def _fit_klt(xc: np.ndarray, mean: np.ndarray, vecs: np.ndarray, probe: np.ndarray, budget: float) -> FittedCodec:
    """The ``klt`` codec with the coarsest step whose held-out error is within ``budget``.

    ``xc``: ``N x D`` centred fitting frames; ``vecs``: ``D x D`` eigenvectors, variance descending;
    ``probe``: held-out frames. The error of a step is computed in the rotated domain (the basis is
    orthonormal, so it equals the reconstruction error up to rounding), bisected on ``log(step)``
    between the finest step that never clips the fitting frames and one that zeroes everything.
    """
    coef = xc @ vecs  # N x D fitting coefficients
    sd = np.sqrt(np.mean(coef.astype(np.float64) ** 2, axis=0))  # D, descending
    absmax = np.abs(coef).max(axis=0)
    z = (probe - mean) @ vecs  # n x D held-out coefficients
    total = float(np.sum(probe.astype(np.float64) ** 2)) or 1.0
    tail = np.concatenate([np.cumsum((z.astype(np.float64) ** 2).sum(axis=0)[::-1])[::-1], [0.0]])  # tail[r]: dropped

    def rank(step: float) -> int:
        return max(1, int((sd >= step / 4).sum()))

    def error(step: float) -> float:
        r = rank(step)
        q = np.clip(np.rint(z[:, :r] / step), -_LEVELS, _LEVELS)
        return float(np.sqrt((float(((q * step - z[:, :r]) ** 2).sum()) + tail[r]) / total))

    def build(step: float) -> FittedCodec:
        r = rank(step)
        scale = np.full(r, step, dtype=np.float32)
        return _measured("klt", {"mean": mean, "basis": np.ascontiguousarray(vecs[:, :r]), "scale": scale},
                         probe, budget)

    lo = max(float(absmax.max()) / _LEVELS, 1e-12)  # finer steps would clip the largest component
    hi = max(8.0 * float(sd.max()), lo)  # every code 0
    if error(lo) > budget:
        best = build(lo)
        logger.warning("klt codec: even step %.3g (no clipping) gives relative RMS error %.4f > budget %.4f",
                       lo, best.rel_rms, budget)
        return best
    for _ in range(30):  # error(step) grows with step: keep lo within the budget
        mid = float(np.sqrt(lo * hi))
        if error(mid) <= budget:
            lo = mid
        else:
            hi = mid
    best = build(lo)
    for _ in range(20):  # the float32 reconstruction can land a hair above the float64 estimate
        if best.rel_rms <= budget:
            break
        lo *= 0.995
        best = build(lo)
    return best


def zigzag(q: np.ndarray) -> np.ndarray:
    """Signed codes in ``[-127, 127]`` -> uint8 ``0, -1, 1, -2, ... -> 0, 1, 2, 3, ...`` (small stays small)."""
    q16 = q.astype(np.int16)
    return np.where(q16 >= 0, 2 * q16, -2 * q16 - 1).astype(np.uint8)


def unzigzag(u: np.ndarray) -> np.ndarray:
    """Inverse of `zigzag`: uint8 -> int16 codes."""
    u16 = u.astype(np.int16)
    half = u16 >> 1
    return np.where(u16 & 1, -half - 1, half)


def _measured(kind: str, params: dict[str, np.ndarray], x: np.ndarray, budget: float) -> FittedCodec:
    codec = FittedCodec(kind, params, 0.0, budget)
    err = rel_rms(codec.decode(codec.encode(x)), x)
    return FittedCodec(kind, params, err, budget)


def _smallest_within(widths: list[int], build: Callable[[int], FittedCodec], budget: float) -> FittedCodec:
    lo, hi = 0, len(widths) - 1
    best = build(widths[hi])
    if best.rel_rms > budget:
        logger.warning("%s codec: even width %d gives relative RMS error %.4f > budget %.4f",
                       best.kind, widths[hi], best.rel_rms, budget)
        return best
    while lo < hi:
        mid = (lo + hi) // 2
        cand = build(widths[mid])
        if cand.rel_rms <= budget:
            best, hi = cand, mid
        else:
            lo = mid + 1
    if best.width != widths[lo]:
        best = build(widths[lo])
    return best


def _pca_encode(x: np.ndarray, mean: np.ndarray, basis: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (x - mean) @ basis
    z /= scale
    np.rint(z, out=z)
    np.clip(z, -_LEVELS, _LEVELS, out=z)
    return z.astype(np.int8)


def _nearest(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Index of the nearest row of ``c`` for each row of ``x`` (squared Euclidean)."""
    d2 = (c * c).sum(axis=1)[None, :] - 2.0 * (x @ c.T)
    return d2.argmin(axis=1)


def _pq_encode(x: np.ndarray, mean: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    m, _, sub = centroids.shape
    xc = x - mean
    codes = np.empty((len(x), m), dtype=np.uint8)
    for j in range(m):
        codes[:, j] = _nearest(xc[:, j * sub : (j + 1) * sub], centroids[j])
    return codes


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k x d`` centroids of ``x`` (``N x d``): k-means++-lite init (random rows), Lloyd steps."""
    n = len(x)
    c = x[rng.choice(n, size=k, replace=False)].copy()
    for _ in range(_KMEANS_ITERS):
        a = _nearest(x, c)
        counts = np.bincount(a, minlength=k).astype(np.float32)
        sums = np.stack([np.bincount(a, weights=x[:, j], minlength=k) for j in range(x.shape[1])], axis=1)
        empty = counts == 0
        c[~empty] = sums[~empty] / counts[~empty, None]
        if empty.any():  # re-seed empty clusters on random rows
            c[empty] = x[rng.choice(n, size=int(empty.sum()), replace=False)]
    return c


def fit_codecs(kind: str, samples: Mapping[str, np.ndarray], budget: float, seed: int = 0) -> dict[str, FittedCodec]:
    """One fitted ``kind`` codec per target array: ``{array: N x D sample}`` -> ``{array: FittedCodec}``."""
    out = {}
    for i, (name, x) in enumerate(samples.items()):
        out[name] = fit_codec(kind, x, budget, seed=seed + i)
        logger.info("%s: %s codec, width %d, relative RMS error %.4f (budget %.4f) on %d frames",
                    name, kind, out[name].width, out[name].rel_rms, budget, len(x))
    return out


def with_fitted(meta: LakeMeta, codecs: Mapping[str, FittedCodec]) -> LakeMeta:
    """``meta`` turned into the layout of a lake storing ``codecs``' codes (dtype = their kind)."""
    kinds = {c.kind for c in codecs.values()}
    assert len(kinds) == 1, f"Expected one kind of fitted codec, found {sorted(kinds)}"
    kind = kinds.pop()
    codec = TargetCodec.default(kind, chunk_frames=meta.codec.chunk_frames,
                                samples_per_frame=meta.samples_per_frame)
    return replace(meta, dtype=kind, codec=codec, fitted={k: v.spec() for k, v in codecs.items()})


COMPACT = "klt"
"""What ``--codec compact`` means: the codec of the best measured point (docs/benchmarks.md, "Target
codecs": klt was smaller than pca and pq at every error measured)."""
COMPACT_ERROR_BUDGET = 0.3
"""``--codec compact``'s budget when ``--codec-error`` is not given. docs/benchmarks.md, "Target codecs":
klt@0.3 is 82 B/frame/layer with the student's dev loss +0.06-0.08 % of the float16-trained one, the
point that meets the issue's goal (<= 100 B within 1 %) with the least target error; coarser
budgets (0.5: 24 B) also stayed within 1 % there, but only for a small, briefly trained student on a
random-weight teacher, so compact keeps the margin."""
CODEC_NAMES: tuple[str, ...] = ("float16", "bfloat16", "int8", "float32", "pca", "pq", "klt", "compact")


def resolve_codec(name: str) -> str:
    """A ``--codec`` name -> the lake dtype it stands for (``compact`` -> `COMPACT`); `FhbError` if unknown."""
    if name not in CODEC_NAMES:
        raise FhbError(f"--codec {name!r}: expected one of {', '.join(CODEC_NAMES)}; pick one of those "
                       f"(`compact` is the recommended compact codec, float16 the default)")
    return COMPACT if name == "compact" else name


def resolve_budget(name: str, budget: float | None) -> float:
    """The ``--codec-error`` of a ``--codec name`` run: ``budget`` checked (`check_budget`), or when None,
    `COMPACT_ERROR_BUDGET` for ``compact`` and `DEFAULT_ERROR_BUDGET` for the others."""
    if budget is None:
        return COMPACT_ERROR_BUDGET if name == "compact" else DEFAULT_ERROR_BUDGET
    return check_budget(budget)


def check_budget(budget: float) -> float:
    """A ``--codec-error`` value: a relative RMS error in (0, 1); `FhbError` otherwise."""
    if not (isinstance(budget, (int, float)) and 0 < budget < 1):
        raise FhbError(f"--codec-error {budget!r}: expected a relative RMS error between 0 and 1 (e.g. "
                       f"{DEFAULT_ERROR_BUDGET}); pass a fraction, not a percentage")
    return float(budget)


def frame_sample(arrays: Mapping[str, list[np.ndarray]], max_frames: int, seed: int) -> dict[str, np.ndarray]:
    """``{array: [T_i x D, ...]}`` -> ``{array: N x D}`` with at most ``max_frames`` frames drawn
    (seeded, the same rows for every array) from their concatenation."""
    out = {}
    for name, parts in arrays.items():
        x = np.concatenate(parts).astype(np.float32, copy=False)
        if len(x) > max_frames:
            rows = np.sort(np.random.default_rng(seed).choice(len(x), size=max_frames, replace=False))
            x = x[rows]
        out[name] = x
    return out
