"""Fitting a lake's pca/pq codecs: on a seeded sample of teacher outputs (``fhb extract``) or of a
source lake's decoded targets (``fhb transcode``), and reusing them when a run resumes.

The sample is a few minutes of audio spread over the split (utterances drawn at random, seeded),
at most `FIT_MAX_FRAMES` frames per array: enough for a ``D x D`` covariance or 256 centroids per
sub-space, small next to any split worth compressing. Codes are fitted to whatever activations
the teacher produces (random-weight and real teachers get different ranks), never to constants.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fhb.errors import FhbError
from fhb.storage.fitted import FittedCodec, fit_codecs, frame_sample, with_fitted
from fhb.storage.fitted_store import read_fitted
from fhb.storage.layout import read_node_attrs
from fhb.storage.schema import ZARR_JSON, LakeMeta

log = logging.getLogger(__name__)

FIT_SECONDS = 120.0
"""Default audio seconds the codecs are fitted on."""
FIT_MAX_FRAMES = 20000
"""At most this many frames per array are used for fitting (drawn at random, seeded)."""

SampleFn = Callable[[int], dict[str, np.ndarray]]
"""Utterance number (in the seeded order) -> ``{array: T x D}`` targets, or an empty dict to skip it."""


def seeded_order(n: int, seed: int) -> list[int]:
    """The order in which utterances are drawn for the fitting sample."""
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def collect_sample(lengths: Sequence[int], targets_of: SampleFn, seconds: float, seed: int,
                   sample_rate: int = 16000) -> dict[str, np.ndarray]:
    """Targets of utterances drawn in `seeded_order` until ``seconds`` of audio, then `frame_sample`d."""
    parts: dict[str, list[np.ndarray]] = {}
    total = 0
    for i in seeded_order(len(lengths), seed):
        got = targets_of(i)
        for name, x in got.items():
            parts.setdefault(name, []).append(x)
        total += lengths[i] if got else 0
        if total >= seconds * sample_rate:
            break
    if not parts:
        raise FhbError("codec fit: expected at least one usable utterance in the sample, found none; "
                       "check the split's audio")
    return frame_sample(parts, FIT_MAX_FRAMES, seed)


def resumable_codecs(out: Path, base: LakeMeta, kind: str, budget: float) -> dict[str, FittedCodec] | None:
    """The fitted codecs of the lake at ``out`` when it has ``base``'s layout with ``kind`` codecs fitted
    for ``budget`` (a resumed run keeps them: refitting could change the codes of committed shards), else None."""
    attrs = read_node_attrs(out) if (out / ZARR_JSON).is_file() else None
    if not attrs:
        return None
    try:
        stored = LakeMeta.from_dict(attrs, f"lake {out}")
    except FhbError:
        return None
    if stored.dtype != kind or any(f.budget != budget for f in stored.fitted.values()):
        return None
    skip = ("dtype", "codec", "fitted")
    a = {k: v for k, v in stored.layout_key().items() if k not in skip}
    b = {k: v for k, v in base.layout_key().items() if k not in skip}
    if a != b or stored.codec.chunk_frames != base.codec.chunk_frames:
        return None
    log.info("lake %s: reusing its fitted %s codecs", out, kind)
    return read_fitted(out, stored)


def fitted_layout(base: LakeMeta, kind: str, budget: float, sample: dict[str, np.ndarray],
                  seed: int) -> tuple[LakeMeta, dict[str, FittedCodec]]:
    """Fit ``kind`` codecs on ``sample`` and return the lake layout storing them, and the codecs."""
    codecs = fit_codecs(kind, sample, budget, seed=seed)
    return with_fitted(base, codecs), codecs
