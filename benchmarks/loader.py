"""Loader throughput: decoded targets per second vs raw read+decompress of the same chunks.

    python benchmarks/loader.py [--quick] [--minutes 30] [--workers 2] [--device cpu|cuda]
                                [--batch-size 3 --order length --bucketing sorted]

A HuBERT-Base-shaped lake (12 layers x 768, float16, random normal targets: they compress like
real ones, ~85 %; LibriSpeech-like utterance lengths, 4 shards) is written with the storage
writer. Then, with the page cache warm and the same number of processes ``W`` on every side:

(a) raw (the goal's denominator): every chunk of every layer array read and decompressed through
    zarr (``array[c0:c0 + chunk]``, what reading the lake with zarr costs), chunk ``k`` by
    process ``k % W``, the processes started before the clock; decoded bytes / wall time;
(b) floor: the same chunks, but each chunk file read into a reused buffer and decompressed by
    c-blosc directly (no zarr, no copy): the least work that yields the bytes;
(c) loader: `LakeLoader(workers=W, batch_seconds=60)`: valid (unpadded) target bytes of every
    batch handed to the training loop per second of wall time. The loader's workers live as
    long as the loader (as in training), so epoch 0 includes their start and the growth of their
    buffer pools; the steady state is the best of the later epochs, which is what a run of
    hundreds of epochs sees. Both figures are reported.

Ratio = (c) steady state / (a), goal >= 0.8; (c) / (b) is reported beside it.
``--batch-size N``: the loader's batches of N utterances instead of 60 s; ``--order length``: the
lake written longest first (what ``fhb extract`` writes since issue 13), ``--bucketing sorted``:
the published batches (``fhb distill``'s default). Such runs are recorded in their own section.
With ``--device cuda`` the loader pins its batches and the loop copies every batch to the GPU.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import emit, librispeech_like_lengths, machine, record  # noqa: E402
from fhb.nn.frames import conv_output_length  # noqa: E402
from fhb.storage import LakeMeta, ShardWriter, SplitInfo, TeacherMeta, create_lake, open_lake, update_split_listing  # noqa: E402
from fhb.training.epoch import DEFAULT_BLOCK_CHUNKS  # noqa: E402
from fhb.storage.schema import layer_array_name  # noqa: E402
from fhb.training.loader import LakeLoader  # noqa: E402

LAYERS = tuple(range(1, 13))
DIM = 768


def build_lake(path: Path, minutes: float, shards: int, order: str = "manifest") -> tuple[int, int]:
    """Write the lake (``order``: ``length`` = longest first); returns (utterances, frames)."""
    meta = LakeMeta(teacher=TeacherMeta("hubert-base-shaped", "0" * 64, {}, 12, DIM), layers=LAYERS,
                    dtype="float16", splits={"train": SplitInfo()})
    meta = create_lake(path, meta)
    lengths = librispeech_like_lengths(minutes * 60, seed=0)
    if order == "length":
        lengths = sorted(lengths, reverse=True)
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


def _chunks(path: Path) -> list[tuple[str, str, int]]:
    """(shard, layer array, chunk index) of every target chunk."""
    view = open_lake(path)["train"]
    out = []
    for shard in view.shards:
        sv = view.shard(shard)
        for k in LAYERS:
            name = layer_array_name(k)
            n = sv.array(name).shape[0]
            out += [(shard, name, i) for i in range(-(-n // sv.chunk_frames))]
    return out


def _zarr_worker(path: Path, share: list[tuple[str, str, int]]) -> int:
    view = open_lake(path)["train"]
    total = 0
    for shard, name, i in share:
        sv = view.shard(shard)
        c = sv.chunk_frames
        total += np.asarray(sv.array(name)[i * c : (i + 1) * c]).nbytes
    return total


def _blosc_worker(path: Path, share: list[tuple[str, str, int]]) -> int:
    import numcodecs.blosc as nb

    nb.set_nthreads(1)
    nb.use_threads = False
    raw = np.empty(8 << 20, dtype=np.uint8)
    out = np.empty(2048 * DIM, dtype=np.float16)
    total = 0
    for shard, name, i in share:
        with open(path / "train" / shard / name / "c" / str(i) / "0", "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            f.readinto(memoryview(raw)[:size])
        nb.decompress(raw[:size], out)
        total += out.nbytes
    return total


def _run(fn: Callable[[Path, list], int], path: Path, share: list, start: object, results: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    results.put(fn(path, share))  # type: ignore[attr-defined]


def raw_read(path: Path, processes: int, how: str) -> tuple[int, float]:
    """Read + decompress every target chunk once with ``processes`` processes: (bytes, seconds)."""
    fn = _zarr_worker if how == "zarr" else _blosc_worker
    chunks = _chunks(path)
    if processes <= 1:
        start = time.perf_counter()
        total = fn(path, chunks)
        return total, time.perf_counter() - start
    ctx = mp.get_context("fork")
    go, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_run, args=(fn, path, chunks[w::processes], go, results)) for w in range(processes)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # started and imported before the clock
    start = time.perf_counter()
    go.set()
    total = sum(results.get() for _ in procs)
    seconds = time.perf_counter() - start
    for p in procs:
        p.join()
    return total, seconds


def measure(path: Path, workers: int, epochs: int, window_blocks: int, device: str,
            batch_size: int | None = None, bucketing: str = "window",
            ) -> tuple[int, list[float], int, list[tuple[int, float]], list[tuple[int, float]]]:
    """``epochs`` epochs of one loader, with a raw zarr pass and a floor pass (``max(1, workers)``
    processes each) before every epoch after the first, so that each loader epoch has raw figures
    measured next to it: (valid target bytes per epoch, seconds per epoch, batches per epoch,
    zarr passes, floor passes)."""
    import torch

    cuda = device.startswith("cuda")
    procs = max(1, workers)
    seconds: list[float] = []
    zarr_runs: list[tuple[int, float]] = []
    floor_runs: list[tuple[int, float]] = []
    total = n = 0
    batching: dict[str, Any] = {"batch_size": batch_size} if batch_size else {"batch_seconds": 60.0}
    with LakeLoader(path, ["train"], None, workers=workers, window_blocks=window_blocks, pin_memory=cuda,
                    bucketing=bucketing, **batching) as loader:
        for epoch in range(epochs):
            if epoch:
                zarr_runs.append(raw_read(path, procs, "zarr"))
                floor_runs.append(raw_read(path, procs, "blosc"))
            loader.set_epoch(epoch)
            total, n = 0, 0
            start = time.perf_counter()
            for batch in loader:
                assert batch.targets is not None
                if cuda:
                    batch = batch.to(device)
                total += int(batch.target_lengths.sum()) * len(LAYERS) * DIM * batch.targets.element_size()
                n += 1
                del batch
            if cuda:
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
    return total, seconds, n, zarr_runs, floor_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 min of audio, 4 epochs (< 2 min on 2 cores)")
    parser.add_argument("--minutes", type=float, default=None, help="audio in the lake (default 30 quick, 60)")
    parser.add_argument("--workers", type=int, default=2, help="loader workers = raw processes (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: pinned batches copied to the GPU")
    parser.add_argument("--batch-size", type=int, default=None, help="utterances per batch (default: 60 s batches)")
    parser.add_argument("--order", default="manifest", choices=("manifest", "length"), help="lake row order")
    parser.add_argument("--bucketing", default="window", choices=("window", "sorted"), help="loader bucketing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA device is visible to torch")
    minutes = args.minutes or (30.0 if args.quick else 90.0)
    epochs = 6 if args.quick else 8
    shards, workers = 4, args.workers
    window = 2 if args.quick else 4  # several windows per epoch per worker: the steady state
    procs = max(1, workers)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lake"
        t0 = time.perf_counter()
        utts, frames = build_lake(path, minutes, shards, args.order)
        build_s = time.perf_counter() - t0
        raw_read(path, 1, "blosc")  # warm the page cache: every side reads from memory
        dec_bytes, dec_s, batches, zarr_runs, floor_runs = measure(path, workers, epochs, window, args.device,
                                                                   args.batch_size, args.bucketing)
    zarr_rates = [b / t for b, t in zarr_runs]
    floor_rates = [b / t for b, t in floor_runs]
    loader_rates = [dec_bytes / t for t in dec_s[1:]]
    zarr_rate, floor_rate, steady = max(zarr_rates), max(floor_rates), max(loader_rates)
    first = dec_bytes / dec_s[0]
    ratio, ratio_floor = steady / zarr_rate, steady / floor_rate
    paired = statistics.median(x / z for x, z in zip(loader_rates, zarr_rates))
    paired_floor = statistics.median(x / z for x, z in zip(loader_rates, floor_rates))
    figures = {
        "audio_minutes": minutes, "utterances": utts, "frames": frames, "layers": 12, "dim": DIM,
        "dtype": "float16", "build_s": round(build_s, 1), "workers": workers, "processes_raw": procs,
        "device": args.device, "raw_zarr_MBps": round(zarr_rate / 1e6, 1),
        "raw_blosc_floor_MBps": round(floor_rate / 1e6, 1), "loader_epoch0_MBps": round(first / 1e6, 1),
        "loader_steady_MBps": round(steady / 1e6, 1), "epoch_seconds": [round(s, 2) for s in dec_s],
        "ratio_loader_over_raw": round(ratio, 3), "ratio_loader_over_floor": round(ratio_floor, 3),
        "paired_median_over_raw": round(paired, 3), "paired_median_over_floor": round(paired_floor, 3),
        "raw_zarr_runs_MBps": [round(r / 1e6) for r in zarr_rates], "floor_runs_MBps": [round(r / 1e6) for r in floor_rates],
        "loader_runs_MBps": [round(r / 1e6) for r in loader_rates],
        "goal": ">= 0.8", "met": ratio >= 0.8, "batches": batches, "block_chunks": DEFAULT_BLOCK_CHUNKS,
        "window_blocks": window, "machine": machine(),
    }
    print(f"raw zarr read+decompress ({procs} proc): {zarr_rate / 1e6:.0f} MB/s; c-blosc floor: {floor_rate / 1e6:.0f} MB/s")
    print(f"loader (workers={workers}): epoch 0 {first / 1e6:.0f} MB/s, steady {steady / 1e6:.0f} MB/s "
          f"({batches} batches/epoch, epochs {', '.join(f'{s:.2f}' for s in dec_s)} s)")
    print(f"ratio loader/raw: {ratio:.2f} (goal >= 0.8; paired median {paired:.2f}); loader/floor: {ratio_floor:.2f} "
          f"(paired median {paired_floor:.2f})")
    variant = (f" --batch-size {args.batch_size}" if args.batch_size else "") + (
        f" --order {args.order}" if args.order != "manifest" else "") + (
        f" --bucketing {args.bucketing}" if args.bucketing != "window" else "")
    cmd = "python benchmarks/loader.py" + (" --quick" if args.quick else "") + (
        f" --device {args.device}" if args.device != "cpu" else "") + variant
    record(
        "Loader: decoded targets vs raw read+decompress" + ("" if args.device == "cpu" else f" ({args.device})")
        + (f" ({variant.strip()})" if variant else ""),
        f"""
`{cmd}` — {machine()}.
HuBERT-Base-shaped lake: {minutes:g} min of audio ({utts} utterances, {frames} frames), 12 layers x
768, float16 (random normal targets, which Blosc-zstd compresses like real ones, to ~85 %),
{shards} shards, chunks of 2048 frames; page cache warm; {procs} process(es) on every side.

| measurement ({procs} process(es)) | MB/s of decoded float16 |
|---|---|
| raw: every chunk read + decompressed through zarr (`array[c0:c0+2048]`), best of {epochs - 1} | {zarr_rate / 1e6:.0f} |
| floor: every chunk file read into a reused buffer + c-blosc decompress (no zarr, no copy), best of {epochs - 1} | {floor_rate / 1e6:.0f} |
| `LakeLoader(workers={workers}, batch_seconds=60, window_blocks={window})`, epoch 0 (workers start, buffer pools grow) | {first / 1e6:.0f} |
| same loader, steady state (best of epochs 1–{epochs - 1}; a raw and a floor pass run before each) | {steady / 1e6:.0f} |

Loader bytes are the valid (unpadded) target frames of the batches handed to the loop, per second
of wall time ({batches} batches of {f"{args.batch_size} utterances" if args.batch_size else "<= 60 s"} per epoch, lake order {args.order}, bucketing {args.bucketing}). Epoch times: {', '.join(f'{s:.2f}' for s in dec_s)} s.

**Loader (steady) / raw: {ratio:.2f}** (goal >= 0.8; median of the per-epoch pairs {paired:.2f}).
Loader / c-blosc floor: {ratio_floor:.2f} (pairs: {paired_floor:.2f}).
""",
    )
    emit("loader", figures)


if __name__ == "__main__":
    main()
