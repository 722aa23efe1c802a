"""Loader throughput: decoded targets per second vs raw read+decompress of the same chunks.

A HuBERT-Base-shaped lake (12 layers x 768, float16, random normal targets, LibriSpeech-like
utterance lengths) is written with the storage writer; then

(a) raw: every chunk of every layer array is read with zarr (read + Blosc decompress, no
    assembly), single process: bytes/s of decoded float16;
(b) loader: one epoch of `LakeLoader` (workers=2, batch_seconds=60): bytes/s of the valid
    (unpadded) float16 target frames handed to the training loop.

Usage: ``python benchmarks/loader.py [--quick]`` (quick: 8 minutes of audio, < 2 min total).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import emit, librispeech_like_lengths, machine, record
from fhb.nn.frames import conv_output_length
from fhb.storage import LakeMeta, ShardWriter, SplitInfo, TeacherMeta, create_lake, open_lake, update_split_listing
from fhb.storage.epoch import DEFAULT_BLOCK_CHUNKS
from fhb.storage.format import layer_array_name
from fhb.storage.loader import LakeLoader

LAYERS = tuple(range(1, 13))
DIM = 768


def build_lake(path: Path, minutes: float, shards: int) -> tuple[int, int]:
    """Write the lake; returns (utterances, frames)."""
    meta = LakeMeta(teacher=TeacherMeta("hubert-base-shaped", "0" * 64, {}, 12, DIM), layers=LAYERS,
                    dtype="float16", splits={"train": SplitInfo()})
    meta = create_lake(path, meta)
    lengths = librispeech_like_lengths(minutes * 60, seed=0)
    rng = np.random.default_rng(0)
    names, frames = [], 0
    for s, idx in enumerate(np.array_split(np.arange(len(lengths)), shards)):
        name = f"shard-{s:03d}"
        with ShardWriter(path, "train", name, meta) as w:
            for i in idx:
                n = lengths[i]
                t = conv_output_length(n)
                frames += t
                targets = rng.standard_normal((len(LAYERS), t, DIM), dtype=np.float32)
                audio = rng.integers(-3000, 3000, size=n, dtype=np.int16)
                w.add(f"utt-{i:05d}", "s", "c", "", audio, targets)
            w.commit()
        names.append(name)
    update_split_listing(path, "train", names)
    return len(lengths), frames


def raw_read(path: Path) -> tuple[int, float]:
    """Read + decompress every chunk of every layer (no assembly): (bytes, seconds)."""
    view = open_lake(path)["train"]
    total, start = 0, time.perf_counter()
    for shard in view.shards:
        sv = view.shard(shard)
        c = sv.chunk_frames
        for k in LAYERS:
            arr = sv.array(layer_array_name(k))
            for c0 in range(0, arr.shape[0], c):
                total += np.asarray(arr[c0 : c0 + c]).nbytes
    return total, time.perf_counter() - start


def loader_epoch(path: Path, workers: int, batch_seconds: float, window_blocks: int) -> tuple[int, float, int]:
    """One epoch of the loader: (valid target bytes, seconds, batches)."""
    total, n = 0, 0
    start = time.perf_counter()
    with LakeLoader(path, ["train"], None, batch_seconds=batch_seconds, workers=workers,
                    window_blocks=window_blocks) as loader:
        for batch in loader:
            assert batch.targets is not None
            total += int(batch.target_lengths.sum()) * len(LAYERS) * DIM * batch.targets.element_size()
            n += 1
    return total, time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 minutes of audio (< 2 min)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    minutes, shards, window = (8.0, 4, 2) if args.quick else (30.0, 4, 4)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lake"
        t0 = time.perf_counter()
        utts, frames = build_lake(path, minutes, shards)
        build_s = time.perf_counter() - t0
        raw_read(path)  # warm the page cache so both measurements read from memory
        raw_bytes, raw_s = min((raw_read(path) for _ in range(2)), key=lambda x: x[1])
        dec_bytes, dec_s, batches = loader_epoch(path, 2, 60.0, window)
        _, dec0_s, _ = loader_epoch(path, 0, 60.0, window)
    raw_rate, dec_rate = raw_bytes / raw_s, dec_bytes / dec_s
    ratio = dec_rate / raw_rate
    figures = {
        "audio_minutes": minutes, "utterances": utts, "frames": frames, "layers": 12, "dim": DIM,
        "dtype": "float16", "build_s": round(build_s, 1),
        "raw_read_MBps": round(raw_rate / 1e6, 1), "loader_workers2_MBps": round(dec_rate / 1e6, 1),
        "loader_workers0_MBps": round(dec_bytes / dec0_s / 1e6, 1),
        "ratio_loader_over_raw": round(ratio, 3), "batches": batches,
        "block_chunks": DEFAULT_BLOCK_CHUNKS, "window_blocks": window, "machine": machine(),
    }
    print(f"raw read+decompress: {raw_rate / 1e6:.1f} MB/s ({raw_bytes / 1e6:.0f} MB in {raw_s:.2f} s)")
    print(f"loader (workers=2, batch_seconds=60): {dec_rate / 1e6:.1f} MB/s ({batches} batches, {dec_s:.2f} s)")
    print(f"loader (workers=0): {dec_bytes / dec0_s / 1e6:.1f} MB/s")
    print(f"ratio loader/raw: {ratio:.2f} (goal >= 0.8)")
    record(
        "Loader: decoded targets vs raw read+decompress",
        f"""
HuBERT-Base-shaped lake: {minutes:g} min of audio ({utts} utterances, {frames} frames), 12 layers x
768, float16, random normal targets, {shards} shards, chunks of 2048 frames. Raw = zarr read +
Blosc decompress of every chunk of every layer, one process, no assembly. Loader = one epoch of
`LakeLoader` (batch_seconds=60, window_blocks={window}, block_chunks={DEFAULT_BLOCK_CHUNKS}), valid
(unpadded) target bytes per second of wall time, page cache warm. {machine()}.

| measurement | MB/s |
|---|---|
| raw read + decompress (1 process) | {raw_rate / 1e6:.1f} |
| loader, workers=2 | {dec_rate / 1e6:.1f} |
| loader, workers=0 | {dec_bytes / dec0_s / 1e6:.1f} |

Ratio loader(workers=2) / raw: **{ratio:.2f}** (goal >= 0.8). The loader decodes up to
(1 + 1/{DEFAULT_BLOCK_CHUNKS})x the raw bytes (a block re-reads one chunk of its neighbour) and copies
every frame once more into the padded batch; the two workers share the machine's cores with the
training process, so on a machine with few cores workers=2 can be slower than workers=0.
""",
    )
    emit("loader", figures)


if __name__ == "__main__":
    main()
