"""Fitted codec parameters in the lake: ``LAKE/_codecs/<array>/<param>`` (small zarr arrays).

`write_fitted` (the client holding the lock, before any shard is written) stores each array's
`FittedCodec` parameters; `read_fitted` loads them back and checks each against the sha256 that
the root attribute ``fitted_codecs`` records (`fhb.storage.schema.FittedSpec`); `fitted_problems`
is the verifier's side of that check.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.storage import LocalStore

from fhb.errors import FhbError
from fhb.storage.fitted import FittedCodec
from fhb.storage.schema import CODECS_DIR, FittedSpec, LakeMeta, fitted_param_path, param_info


def write_fitted(lake_path: str | os.PathLike[str], codecs: Mapping[str, FittedCodec]) -> None:
    """Write the parameters of ``codecs`` (``{array name: codec}``) under ``_codecs/`` (replacing any)."""
    store = LocalStore(Path(lake_path))
    for name, codec in codecs.items():
        for param, value in codec.params.items():
            a = np.ascontiguousarray(value, dtype=np.float32)
            arr = zarr.create_array(store, name=fitted_param_path(name, param), shape=a.shape, dtype=a.dtype,
                                    chunks=a.shape, compressors=None, fill_value=0, overwrite=True, zarr_format=3)
            arr[...] = a


LakeLocation = str | os.PathLike[str] | Store


def _store(lake: LakeLocation) -> Store:
    return lake if isinstance(lake, Store) else LocalStore(Path(lake), read_only=True)


def _read_param(store: Store, name: str, param: str) -> np.ndarray:
    arr = zarr.open_array(store=store, path=fitted_param_path(name, param), mode="r", zarr_format=3)
    return np.asarray(arr[...])


def fitted_problems(lake: LakeLocation, meta: LakeMeta) -> list[str]:
    """Problems with the stored parameters of ``meta.fitted`` (missing, unreadable, other sha256), as sentences."""
    root = _store(lake)
    problems = []
    for name, spec in meta.fitted.items():
        for param, info in spec.params.items():
            try:
                got = param_info(_read_param(root, name, param))
            except Exception as exc:  # noqa: BLE001  (zarr raises several types for a missing/damaged array)
                problems.append(f"{fitted_param_path(name, param)}: unreadable ({type(exc).__name__}: {exc})")
                continue
            if got != info:
                problems.append(f"{fitted_param_path(name, param)}: expected {info['shape']} {info['dtype']} sha256 "
                                f"{info['sha256'][:12]}…, found {got['shape']} {got['dtype']} {got['sha256'][:12]}…")
    return problems


def read_fitted(lake: LakeLocation, meta: LakeMeta) -> dict[str, FittedCodec]:
    """``{array name: FittedCodec}`` of a pca/pq lake (empty for elementwise lakes); every parameter is
    checked against its recorded sha256 (`FhbError` naming the first bad one)."""
    if not meta.fitted:
        return {}
    problems = fitted_problems(lake, meta)
    if problems:
        raise FhbError(f"lake {lake}: fitted codec parameters damaged ({problems[0]}); run `fhb verify` and "
                       f"re-create the lake (fhb extract/transcode --codec {meta.dtype})")
    root = _store(lake)
    return {name: _codec(root, name, spec) for name, spec in meta.fitted.items()}


def _codec(root: Store, name: str, spec: FittedSpec) -> FittedCodec:
    params = {p: _read_param(root, name, p) for p in spec.params}
    return FittedCodec(spec.kind, params, spec.rel_rms, spec.budget)


__all__ = ["CODECS_DIR", "LakeLocation", "fitted_problems", "read_fitted", "write_fitted"]
