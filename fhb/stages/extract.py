"""Stage one, ``fhb extract``: run the teacher once over LibriSpeech and write the lake.

The client scans the corpus, plans shards (about ``shard_hours`` of audio each), creates or
reopens the lake under its lock and submits one dask task per shard that is not committed yet.
Each worker loads the teacher once, decodes its shard's audio, runs the teacher on
length-sorted batches of about ``batch_seconds`` and streams the targets into a
:class:`~fhb.storage.writer.ShardWriter`, which encodes and writes on a background thread (so
compression overlaps compute) and commits the shard atomically. Only the client updates the
root attributes, once every shard of a split has committed. Rerunning the same command resumes.
The client also stores the teacher's weights in the lake (``_teacher/``, once), so stage two needs
nothing but the lake.

``--overwrite`` of an existing lake starts over *beside* it: the new lake is written into the hidden
sibling ``.LAKE.tmp-partial`` (`fhb.files.build_beside`) while the old lake's lock is held (its readers
and writers are refused), and swapped in only when complete; the old lake is then deleted (only if it
holds nothing but fhb's own entries, checked first). Killed or failed, the old lake is intact and
readable, and rerunning the same ``--overwrite`` command continues the partial lake (if it was
started for the same layout and shard plan; otherwise it is started over).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fhb.errors import FhbError
from fhb.files import check_out_apart, file_kind
from fhb.pipeline.audio import AudioError, load_audio_int16
from fhb.pipeline.corpus import Manifest, scan_librispeech
from fhb.pipeline.ctc_targets import greedy_labels
from fhb.pipeline.lake_teacher import store_teacher
from fhb.pipeline.precision import check_device, check_precision, check_precision_name
from fhb.pipeline.teacher import Teacher, TeacherSpec, load_teacher, read_teacher_spec
from fhb.stages.codec_fit import FIT_SECONDS, collect_sample, fitted_layout, resumable_codecs
from fhb.stages.option_limits import (MAX_BATCH_SECONDS, MAX_HOURS, MAX_PROCESSES, MAX_THREADS, check_fit_seconds,
                                      check_int, check_positive_float)
from fhb.stages.shard_plan import ORDERS, ShardJob, plan_shards
from fhb.storage import LakeMeta, LakeWriter, ShardWriter, SplitInfo, TeacherMeta
from fhb.storage.lake_writer import Planned, overwrite_target, replacing_lake
from fhb.training.epoch import pack_by_padded_size
from fhb.storage.codecs import FITTED_DTYPES
from fhb.storage.fitted import FittedCodec, check_budget, resolve_budget, resolve_codec, with_fitted
from fhb.storage.schema import json_config, layer_array_name

log = logging.getLogger(__name__)

BAD_AUDIO_POLICIES = ("error", "skip")


@dataclass(frozen=True)
class ExtractOptions:
    """What a worker needs to extract a shard (small and picklable: sent with every task)."""

    teacher: str
    lake: str
    layers: tuple[int, ...]
    cnn_features: bool
    device: str
    precision: str
    batch_seconds: float
    on_bad_audio: str
    torch_threads: int
    teacher_sha256: str | None = None
    teacher_size: int | None = None
    teacher_mtime_ns: int | None = None


@dataclass(frozen=True)
class ShardResult:
    """What a task reports back: counts, timings and the skipped files."""

    split: str
    shard: str
    utterances: int
    samples: int
    frames: int
    teacher_seconds: float
    wall_seconds: float
    skipped: tuple[tuple[str, str], ...] = ()


@dataclass
class ExtractSummary:
    """Totals of one ``fhb extract`` run (the CLI renders it as a table)."""

    lake: Path
    shards_done: int = 0
    shards_resumed: int = 0
    utterances: int = 0
    samples: int = 0
    teacher_seconds: float = 0.0
    wall_seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def hours(self) -> float:
        """Audio extracted in this run, hours."""
        return self.samples / 16000 / 3600


def parse_layers(spec: str, num_layers: int) -> tuple[int, ...]:
    """``all`` or ``1,4,8,12`` -> sorted unique teacher layers, validated against the teacher."""
    if spec.strip().lower() == "all":
        return tuple(range(1, num_layers + 1))
    try:
        layers = sorted({int(part) for part in spec.split(",") if part.strip()})
    except ValueError:
        raise FhbError(f"--layers {spec!r}: expected 'all' or comma-separated layer numbers like 1,4,8,12") from None
    bad = [k for k in layers if not 1 <= k <= num_layers]
    if bad or not layers:
        raise FhbError(f"--layers {spec!r}: the teacher has layers 1..{num_layers}; found {bad or 'none'}")
    return tuple(layers)


# ---------------------------------------------------------------------------------------------
# Worker side


_TEACHERS: dict[tuple[str, str, str], Teacher] = {}


def _worker_teacher(opts: ExtractOptions) -> Teacher:
    """The teacher of this worker process, loaded once and reused by every task it runs."""
    key = (opts.teacher, opts.device, opts.precision)
    if key not in _TEACHERS:
        torch.set_num_threads(opts.torch_threads)
        # The client hashed the file already; hash again only if it changed since (size/mtime).
        sha = opts.teacher_sha256
        stat = Path(opts.teacher).stat()
        if (stat.st_size, stat.st_mtime_ns) != (opts.teacher_size, opts.teacher_mtime_ns):
            sha = None
        teacher = load_teacher(opts.teacher, device=opts.device, precision=opts.precision, sha256=sha)
        if opts.teacher_sha256 is not None and teacher.sha256 != opts.teacher_sha256:
            raise FhbError(
                f"--teacher {opts.teacher}: the file changed while extracting (sha256 "
                f"{teacher.sha256[:12]}… here, {opts.teacher_sha256[:12]}… when the run started); "
                f"rerun with a checkpoint that stays in place"
            )
        _TEACHERS[key] = teacher
    return _TEACHERS[key]


def _batches_by_seconds(lengths: Sequence[int], seconds: float) -> list[list[int]]:
    """Consecutive length-sorted (longest first) groups of about ``seconds`` of padded audio each."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return pack_by_padded_size(order, lengths, int(seconds * 16000))


def extract_shard(job: ShardJob, meta: LakeMeta, opts: ExtractOptions) -> ShardResult:
    """Extract and commit one shard (runs in a dask worker, or in-process with ``--workers 0``)."""
    start = time.perf_counter()
    teacher = _worker_teacher(opts)
    teacher.max_batch_samples = int(opts.batch_seconds * 16000)
    skipped: list[tuple[str, str]] = []
    audio: dict[int, np.ndarray] = {}
    for i, utt in enumerate(job.utterances):
        try:
            audio[i] = load_audio_int16(utt.path)
        except AudioError as exc:
            if opts.on_bad_audio == "error":
                raise FhbError(f"{exc} (nothing was committed for {job.split}/{job.name}; "
                               f"rerun with --on-bad-audio skip to leave such files out)") from None
            skipped.append((str(utt.path), f"{exc.reason}; {exc.fix}" if exc.fix else exc.reason))
    skipped += [(str(p.path), p.reason) for p in job.problems]
    usable = sorted(audio)
    expected_frames = sum(teacher.num_frames(len(audio[i])) for i in usable)
    expected_samples = sum(len(audio[i]) for i in usable)
    teacher_seconds = 0.0
    targets: dict[int, np.ndarray] = {}
    cnn: dict[int, np.ndarray] = {}
    labels: dict[int, list[int] | None] = {}
    next_to_write = 0
    # On CPU the teacher keeps every core busy (torch_threads = the worker's share of the cores),
    # so a background encoder thread would only preempt its OpenMP threads (and a preempted
    # thread stalls the whole parallel region); encode in line, between teacher batches, with
    # as many threads as the teacher uses. On a GPU the CPU is idle during the forward pass:
    # encode and write on the background thread, overlapped with it.
    background = torch.device(opts.device).type != "cpu"
    with ShardWriter(opts.lake, job.split, job.name, meta, expected_frames=expected_frames,
                     expected_samples=expected_samples, background=background,
                     threads=None if background else opts.torch_threads) as writer:
        for path, reason in skipped:
            writer.skip(Path(path).name.split(".")[0], path, reason)
        for batch in _batches_by_seconds([len(audio[i]) for i in usable], opts.batch_seconds):
            ids = [usable[b] for b in batch]
            wavs = [teacher.prepare(torch.from_numpy(audio[i].astype(np.float32) / 32768.0)) for i in ids]
            t0 = time.perf_counter()
            if opts.cnn_features:
                outs, feats = teacher.extract(wavs, layers=opts.layers, cnn_features=True)
            else:
                outs, feats = teacher.extract(wavs, layers=opts.layers), [None] * len(ids)
            teacher_seconds += time.perf_counter() - t0
            labels.update(zip(ids, greedy_labels(teacher, wavs, outs, opts.layers)))
            for i, out, feat in zip(ids, outs, feats):
                targets[i] = out.numpy()
                if feat is not None:
                    cnn[i] = feat.numpy()
            # write in the job's (storage) order as soon as the prefix is complete (bounded memory)
            while next_to_write < len(usable) and usable[next_to_write] in targets:
                i = usable[next_to_write]
                utt = job.utterances[i]
                writer.add(utt.utt_id, utt.speaker, utt.chapter, utt.transcript, audio.pop(i),
                           targets.pop(i), cnn.pop(i, None), ctc_labels=labels.pop(i))
                next_to_write += 1
        writer.commit()
    return ShardResult(job.split, job.name, len(usable), expected_samples, expected_frames,
                       teacher_seconds, time.perf_counter() - start, tuple(skipped))


# ---------------------------------------------------------------------------------------------
# Client side


def _teacher_meta(teacher: Teacher | TeacherSpec) -> TeacherMeta:
    return TeacherMeta(name=teacher.path.name, sha256=teacher.sha256, config=json_config(teacher.config),
                       num_layers=teacher.num_layers, dim=teacher.dim, path=str(teacher.path.resolve()),
                       ctc_vocab=teacher.ctc_vocab)


def _check_run_options(workers: int | None, threads: int | None, device: str, precision: str,
                       scheduler: str | None) -> None:
    """Refuse what would otherwise fail in a worker, after the lake was created (or not at all)."""
    if workers is not None and workers < 0:
        raise FhbError(f"--workers {workers}: expected 0 (run in-process) or more worker processes")
    if threads is not None and threads < 0:
        raise FhbError(f"--threads {threads}: expected a positive number of torch threads per worker")
    check_int("--workers", workers, 0, MAX_PROCESSES)
    check_int("--threads", threads, 0, MAX_THREADS)
    check_precision_name(precision)
    # a remote cluster's workers may have GPUs this host lacks
    dev = check_device(device, present=scheduler is None)
    check_precision(precision, dev, bf16_on_cpu=False)  # the teacher autocasts on CUDA only


def run_extract(
    teacher: Path,
    libri_root: Path,
    splits: Sequence[str],
    out: Path,
    layers: str = "all",
    cnn_features: bool = False,
    dtype: str = "float16",
    shard_hours: float = 1.0,
    batch_seconds: float = 200.0,
    device: str = "cpu",
    precision: str = "fp32",
    workers: int | None = None,
    threads: int | None = None,
    scheduler: str | None = None,
    on_bad_audio: str = "error",
    overwrite: bool = False,
    progress: Any = None,
    order: str = "length",
    codec_error: float | None = None,
    fit_seconds: float = FIT_SECONDS,
    seed: int = 0,
) -> ExtractSummary:
    """Extract ``splits`` of the corpus at ``libri_root`` with ``teacher`` into the lake ``out``.

    Args:
        teacher: fairseq HuBERT / wav2vec 2.0 checkpoint.
        libri_root: LibriSpeech root (or its parent).
        splits: split names, in order.
        out: the lake directory (created, or reopened to resume).
        layers: ``all`` or ``1,4,8,12`` (teacher numbering).
        cnn_features: also store the ``post_extract_proj`` output.
        dtype: the codec (``--codec``): ``float16`` (default), ``bfloat16``, ``int8``, ``float32``, or a
            fitted compact codec, ``pca`` / ``pq`` / ``compact`` (`fhb.storage.fitted`).
        shard_hours: audio per shard (one dask task each).
        batch_seconds: padded audio per teacher batch.
        device: ``cpu`` or ``cuda``.
        precision: teacher precision (``fp32``; ``fp16``/``bf16`` on CUDA).
        workers: LocalCluster worker processes (default: one per 4 cores); ``0`` runs in-process.
        threads: torch threads per worker (default: the cores divided among the workers). Results
            are bitwise reproducible for a fixed thread count; another count can change float16
            targets by one unit in the last place (float32 sums in another order).
        scheduler: address of an existing dask scheduler (instead of a LocalCluster).
        on_bad_audio: ``error`` stops at the first unusable file; ``skip`` lists and skips it.
        overwrite: start the lake at ``out`` over: a new lake is built beside it and swapped in when
            complete (see the module docs); rerunning continues an interrupted overwrite.
        progress: an optional callback ``(ShardResult, done, total) -> None``.
        order: storage order of each split's utterances: ``length`` (longest first: neighbouring
            rows have about equal lengths, so training batches pad little and read contiguous
            rows) or ``manifest`` (by id; resumes a lake written before length order existed).
        codec_error: pca/pq/klt: the relative RMS error budget per layer (``--codec-error``; None:
            `fhb.storage.fitted.resolve_budget`).
        fit_seconds: pca/pq: seconds of the first split's audio (drawn with ``seed``) the codecs are fitted on.
    """
    from fhb.pipeline.cluster import default_workers, dask_client, threads_per_worker

    if order not in ORDERS:
        raise FhbError(f"--order {order!r}: expected one of {', '.join(ORDERS)}; pass one of them")
    if on_bad_audio not in BAD_AUDIO_POLICIES:
        raise FhbError(f"--on-bad-audio {on_bad_audio!r}: expected one of {', '.join(BAD_AUDIO_POLICIES)}")
    if not (0 < shard_hours < math.inf and 0 < batch_seconds < math.inf):  # NaN fails too
        raise FhbError(f"--shard-hours and --batch-seconds must be positive numbers; found {shard_hours}, {batch_seconds}")
    check_positive_float("--shard-hours", shard_hours, MAX_HOURS)
    check_positive_float("--batch-seconds", batch_seconds, MAX_BATCH_SECONDS)
    _check_run_options(workers, threads, device, precision, scheduler)
    codec_error = resolve_budget(dtype, codec_error)
    dtype = resolve_codec(dtype)
    fitted_kind = dtype if dtype in FITTED_DTYPES else None
    if fitted_kind is not None:
        check_budget(codec_error)
        check_fit_seconds(fit_seconds)
        if cnn_features:
            raise FhbError(f"--codec {dtype} with --cnn-features: expected CNN features in a float16/bfloat16/int8/"
                           f"float32 lake only (fitted codecs encode the layers); drop one of the two")
    if not Path(teacher).is_file():
        found = file_kind(Path(teacher).stat().st_mode) if Path(teacher).exists() else "no such file"
        raise FhbError(f"--teacher {teacher}: expected a checkpoint file, found {found}; pass a fairseq HuBERT/"
                       "wav2vec 2.0 checkpoint (.pt)")
    check_out_apart(Path(out), {"--teacher": Path(teacher), "--libri-root": Path(libri_root)}, "extract")
    started = time.perf_counter()
    workers = default_workers() if workers is None else workers
    manifest: Manifest = scan_librispeech(libri_root, splits)
    if manifest.problems and on_bad_audio == "error":
        first = manifest.problems[0]
        raise FhbError(
            f"{first.path}: {first.reason} ({len(manifest.problems)} unusable file(s) in the corpus; "
            f"nothing was written); fix the file or rerun with --on-bad-audio skip"
        )
    # The client needs the teacher's config and digest only: its weights are loaded by the
    # workers (reading the metadata takes milliseconds; building the model ~1 s per process).
    spec = read_teacher_spec(teacher)
    meta = LakeMeta(
        teacher=_teacher_meta(spec),
        layers=parse_layers(layers, spec.num_layers),
        dtype="float16" if fitted_kind else dtype,
        cnn_features=cnn_features,
        cnn_dim=spec.dim if cnn_features else None,
        splits={s: SplitInfo() for s in splits},
    )
    target = overwrite_target(Path(out), overwrite, "fhb extract")
    opts = ExtractOptions(
        teacher=str(Path(teacher).resolve()), lake=str(target.resolve()), layers=meta.layers,
        cnn_features=cnn_features, device=device, precision=precision, batch_seconds=batch_seconds,
        on_bad_audio=on_bad_audio, torch_threads=threads or threads_per_worker(max(1, workers)),
        teacher_sha256=spec.sha256, teacher_size=spec.size, teacher_mtime_ns=spec.mtime_ns,
    )
    plans = plan_shards(manifest, splits, shard_hours, include_problems=on_bad_audio == "skip", order=order)
    summary = ExtractSummary(lake=Path(out))
    fitted: dict[str, FittedCodec] | None = None
    if fitted_kind is not None:
        fitted = resumable_codecs(target, meta, fitted_kind, codec_error)
        if fitted is None:
            jobs = plans[splits[0]]
            sample = _teacher_sample(opts, [u for job in jobs for u in job.utterances], fit_seconds, seed)
            meta, fitted = fitted_layout(meta, fitted_kind, codec_error, sample, seed)
        else:
            meta = with_fitted(meta, fitted)
    with _lake_write_errors(Path(out)), replacing_lake(Path(out), target, meta, _planned(plans), "extract"), \
            LakeWriter(target, meta, fitted=fitted) as lake:
        store_teacher(lake, teacher, sha256=spec.sha256)  # stage two needs nothing but the lake
        meta = lake.meta
        for split, jobs in plans.items():  # committed shards must hold the planned utterances
            for job in jobs:
                lake.check_plan(split, job.name, job.utt_ids)
        todo = [job for split in splits for job in plans[split] if not lake.is_committed(split, job.name)]
        summary.shards_resumed = sum(len(plans[s]) for s in splits) - len(todo)
        if summary.shards_resumed:
            log.info("resuming: %d shard(s) already committed, %d to do", summary.shards_resumed, len(todo))
        total = len(todo)

        def done(result: ShardResult) -> None:
            summary.shards_done += 1
            summary.utterances += result.utterances
            summary.samples += result.samples
            summary.teacher_seconds += result.teacher_seconds
            summary.skipped += list(result.skipped)
            if progress is not None:
                progress(result, summary.shards_done, total)

        if workers == 0 and scheduler is None:
            torch.set_num_threads(opts.torch_threads)
            for job in todo:
                done(extract_shard(job, meta, opts))
        elif todo:
            from distributed import as_completed

            with dask_client(workers, scheduler) as client:
                meta_future = client.scatter(meta, broadcast=True)
                futures = [client.submit(extract_shard, job, meta_future, opts, key=f"extract-{job.split}-{job.name}",
                                         pure=False) for job in todo]
                try:
                    for future in as_completed(futures):
                        done(future.result())
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
        for split in splits:
            lake.list_split(split, [job.name for job in plans[split]])
    summary.wall_seconds = time.perf_counter() - started
    return summary


def _planned(plans: dict[str, list[ShardJob]]) -> Planned:
    """The shard plan as `replacing_lake` checks a partial lake against it."""
    return {split: {job.name: job.utt_ids for job in jobs} for split, jobs in plans.items()}


def _teacher_sample(opts: ExtractOptions, utts: Sequence[Any], seconds: float, seed: int) -> dict[str, np.ndarray]:
    """``{layer array: N x D}`` teacher outputs on a seeded sample of ``utts`` (the codecs' fitting sample)."""
    teacher = _worker_teacher(opts)
    names = [layer_array_name(k) for k in opts.layers]

    def targets_of(i: int) -> dict[str, np.ndarray]:
        try:
            audio = load_audio_int16(utts[i].path)
        except AudioError:
            return {}
        wav = teacher.prepare(torch.from_numpy(audio.astype(np.float32) / 32768.0))
        out = teacher.extract([wav], layers=opts.layers)[0].numpy()
        return {name: out[j] for j, name in enumerate(names)}

    log.info("fitting the lake's codecs on about %.0f s of audio", seconds)
    return collect_sample([u.num_samples for u in utts], targets_of, seconds, seed)


_LAKE_WRITE_ERRORS = {
    errno.ENOSPC: ("the disk is full", "free some space"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space"),
    errno.EROFS: ("the file system is read-only", "make it writable"),
    errno.EACCES: ("permission denied", "fix the permissions"),
}
"""OSErrors writing the lake that the user can fix: (what happened, the fix)."""


@contextlib.contextmanager
def _lake_write_errors(out: Path) -> Iterator[None]:
    """Turn a full disk (or a read-only / forbidden lake) into one FhbError; the lake stays resumable.

    Covers the client's writes and, re-raised by dask, the workers' (a shard being written when
    the disk fills up is discarded; committed shards are kept).
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in _LAKE_WRITE_ERRORS:
            raise
        what, fix = _LAKE_WRITE_ERRORS[exc.errno]
        where = f": {exc.filename}" if exc.filename else ""
        raise FhbError(
            f"cannot write the lake {out}: {what} ({exc.strerror}{where}); {fix} (or choose another --out) "
            f"and rerun the same command: the shards committed so far are kept"
        ) from exc
