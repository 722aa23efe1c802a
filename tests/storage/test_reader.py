"""Random access reads only the chunks that overlap the utterance."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from zarr.storage import LocalStore, WrapperStore

from fhb.storage import open_lake

from .conftest import make_meta, make_utts


class CountingStore(WrapperStore):
    """Records every key fetched from the wrapped store."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.keys: list[str] = []

    def _with_store(self, store: Any) -> "CountingStore":
        return CountingStore(store)

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        self.keys.append(key)
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
        key_ranges = list(key_ranges)
        self.keys.extend(k for k, _ in key_ranges)
        return await self._store.get_partial_values(prototype, key_ranges)

    def chunk_keys(self) -> set[str]:
        return {k for k in self.keys if "/c/" in k}


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_random_access_reads_only_overlapping_chunks(dtype: str, build_lake) -> None:
    meta = make_meta(dtype, chunk_frames=64)
    utts = make_utts(meta, 8, seed=1)
    lake = build_lake(meta, {"train": {"s0": utts}})
    store = CountingStore(LocalStore(lake, read_only=True))
    split = open_lake(store)["train"]
    c = meta.codec.chunk_frames
    for u in utts[1:6]:
        split.targets(u.utt_id)  # warm the array handles
        split.audio(u.utt_id)
        store.keys.clear()
        e = split.entry(u.utt_id)
        y = split.targets(u.utt_id, layers=[2])
        assert y.shape == (1, *u.targets.shape[1:])
        chunks = range(e.frame_offset // c, (e.frame_offset + e.num_frames - 1) // c + 1)
        want = {f"train/s0/layer_02/c/{i}/0" for i in chunks}
        if dtype == "int8":
            want |= {f"train/s0/layer_02_scale/c/{i}/0/0" for i in chunks}
        assert store.chunk_keys() == want
        assert all("/c/" in k for k in store.keys)  # no metadata re-reads: handles are cached

        store.keys.clear()
        a = split.audio(u.utt_id)
        np.testing.assert_array_equal(a, u.audio)
        cs = meta.codec.audio_chunk_samples
        want = {f"train/s0/audio/c/{i}" for i in
                range(e.sample_offset // cs, (e.sample_offset + e.num_samples - 1) // cs + 1)}
        assert store.chunk_keys() == want
