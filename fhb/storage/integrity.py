"""Checking a lake (`verify_lake`, for ``fhb verify``) and describing it (`summarize_lake`, for
``fhb inspect``). Local filesystem lakes only (file sizes and chunk files are looked at)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from zarr.storage import LocalStore

from fhb.errors import FhbError
from fhb.files import check_regular_if_present
from fhb.storage.schema import (
    AUDIO_ARRAY,
    TEACHER_DIR,
    TEACHER_TMP_PREFIX,
    TEACHER_TRASH_PREFIX,
    FramesFn,
    LakeMeta,
    ZARR_JSON,
    ShardAttrs,
    duplicate_ids,
    hours,
    is_committed,
    layer_array_name,
    num_chunks,
    scale_array_name,
    shard_arrays,
)
from fhb.storage.layout import dir_size, list_split_dir, local_lake_dir, read_node_attrs
from fhb.storage.teacher_store import ADD_TEACHER_FIX, teacher_leftovers, teacher_problems
from fhb.storage.fitted_store import fitted_problems
from fhb.storage.schema import CODECS_DIR

logger = logging.getLogger(__name__)

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One problem found by `verify_lake`: where it is and what is wrong (with the fix)."""

    severity: Severity
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.message}"


def verify_lake(
    path: str | os.PathLike[str],
    frames_fn: FramesFn | None = None,
    check_chunks: bool = True,
    on_shard: Callable[[str], None] | None = None,
) -> list[Finding]:
    """Check a lake; an empty list means it is sound.

    ``on_shard``: called with ``"split/shard"`` as each listed shard is checked (a progress bar).

    Checks: the stored teacher, if the lake records one (`teacher_problems`: its weights'
    sha256 with ``check_chunks``, and that they are of the lake's teacher); every listed shard
    exists and is committed; split totals match the shards; each
    shard's index is consistent (contiguous offsets, counts match array shapes, unique ids,
    ``num_frames == frames_fn(num_samples)``; ``frames_fn`` defaults to the lake's frame rule,
    `LakeMeta.num_frames`: the conv stack of the teacher that wrote it);
    every array has the expected dtype, shape and chunking; with ``check_chunks`` every chunk
    exists, is the one written there (`ShardAttrs.chunk_problem`, the readers' rule; legacy shards: its
    decoded values match their crc32) and decodes. Leftovers of interrupted writes and committed shards
    missing from the listing are warnings. Raises `FhbError` if ``path`` is not a readable lake.
    """
    root = local_lake_dir(path)
    attrs = read_node_attrs(root)
    meta = LakeMeta.from_dict(attrs or {}, f"lake {root}")
    frames_fn = frames_fn or meta.num_frames
    findings: list[Finding] = []
    for split, info in meta.splits.items():
        findings += _verify_split(root, meta, split, frames_fn, check_chunks, on_shard)
    findings += _verify_teacher(root, meta, check_chunks)
    findings += [Finding("error", f"{root.name}/{CODECS_DIR}", f"{p}; re-create the lake (fhb extract/transcode "
                         f"--codec {meta.dtype})") for p in fitted_problems(root, meta)]
    for e in sorted(root.iterdir()):
        if e.name == TEACHER_DIR or e.name.startswith((TEACHER_TMP_PREFIX, TEACHER_TRASH_PREFIX)):
            continue  # the stored teacher, checked above
        if e.name == CODECS_DIR and meta.fitted:
            continue  # fitted codec parameters, checked above
        if e.is_dir() and e.name not in meta.splits and (e / "zarr.json").is_file():
            findings.append(Finding("warning", f"{root.name}/{e.name}",
                                    "group is not a listed split; it is ignored by readers"))
    for f in findings:
        (logger.error if f.severity == "error" else logger.warning)("%s", f)
    return findings


def _verify_teacher(root: Path, meta: LakeMeta, check_data: bool) -> list[Finding]:
    """The stored teacher (if recorded) is sound and of the lake's teacher; leftovers of
    interrupted writes and an unrecorded ``_teacher/`` are warnings."""
    where = f"{root.name}/{TEACHER_DIR}"
    fix = ADD_TEACHER_FIX.format(lake=root)
    out = [Finding("error", where, f"{p}; store the teacher again with `{fix}`")
           for p in teacher_problems(root, meta, check_data)]
    if meta.teacher_weights is None and (root / TEACHER_DIR).exists():
        out.append(Finding("warning", where, f"stored teacher not recorded in the root attributes "
                           f"(interrupted write; readers ignore it); record it with `{fix}`"))
    for name in teacher_leftovers(root):
        out.append(Finding("warning", f"{root.name}/{name}", "leftover of an interrupted write of the "
                           "stored teacher (invisible to readers); removed by the next write"))
    return out


def _verify_split(
    root: Path, meta: LakeMeta, split: str, frames_fn: FramesFn, check_chunks: bool,
    on_shard: Callable[[str], None] | None = None,
) -> list[Finding]:
    info = meta.splits[split]
    out: list[Finding] = []
    on_disk = list_split_dir(root, split)
    totals = np.zeros(3, dtype=np.int64)
    parsed: list[tuple[str, ShardAttrs]] = []
    for shard in info.shards:
        where = f"{split}/{shard}"
        if on_shard is not None:
            on_shard(where)
        d = root / split / shard
        attrs = read_node_attrs(d)
        if attrs is None:
            out.append(Finding("error", where, "listed shard is missing; re-run extraction to "
                                               "redo it"))
            continue
        if not is_committed(attrs):
            out.append(Finding("error", where, "listed shard has no commit marker (readers treat "
                                               "it as absent); re-run extraction to redo it"))
            continue
        try:
            sa = ShardAttrs.from_attrs(attrs, f"shard {where}")
        except FhbError as e:
            out.append(Finding("error", where, str(e)))
            continue
        totals += (len(sa.index), sa.index.total_samples, sa.index.total_frames)
        parsed.append((shard, sa))
        out += _verify_shard(root, meta, split, shard, sa, frames_fn, check_chunks)
    for u, first, later in duplicate_ids((shard, sa.index.utt_ids) for shard, sa in parsed):
        out.append(Finding("error", f"{split}/{later}", f"utterance {u!r} also in shard {first!r}; "
                                                        f"re-extract one of them"))
    listed = (info.utterances, info.samples, info.frames)
    if tuple(int(t) for t in totals) != listed and not any(f.severity == "error" for f in out):
        out.append(Finding(
            "error", split,
            f"listing says (utterances, samples, frames) = {listed}, shards hold "
            f"{tuple(int(t) for t in totals)}; re-run update_split_listing (fhb extract resumes)",
        ))
    for shard in on_disk.committed:
        if shard not in info.shards:
            out.append(Finding("warning", f"{split}/{shard}", "committed shard is not listed; "
                               "re-run `fhb extract` to resume and list it"))
    for shard in on_disk.uncommitted + on_disk.temporary:
        if shard not in info.shards:
            out.append(Finding("warning", f"{split}/{shard}", "leftover of an interrupted write "
                               "(invisible to readers); it is removed when the shard is redone"))
    return out


def _verify_shard(
    root: Path,
    meta: LakeMeta,
    split: str,
    shard: str,
    sa: ShardAttrs,
    frames_fn: FramesFn,
    check_chunks: bool,
) -> list[Finding]:
    where = f"{split}/{shard}"
    out = [Finding("error", where, f"index: {p}; re-extract the shard")
           for p in sa.index.consistency_problems()]
    vocab = meta.teacher.ctc_vocab
    out += [Finding("error", where, f"index: {p}; re-extract the shard")
            for p in sa.index.ctc_problems(None if vocab is None else len(vocab))]
    located = sa.location_problem(split, shard)
    if located:
        out.append(Finding("error", where, f"{located}; re-extract the shard"))
    idx = sa.index
    bad = [(u, int(s), int(f)) for u, s, f in zip(idx.utt_ids, idx.num_samples, idx.num_frames)
           if frames_fn(int(s)) != int(f)]
    if bad:
        u, s, f = bad[0]
        out.append(Finding(
            "error", where,
            f"{len(bad)} utterances have num_frames != frames_fn(num_samples), e.g. {u!r}: "
            f"{s} samples -> expected {frames_fn(s)} frames, found {f}; the targets were cut "
            f"with other conv arithmetic: re-extract the shard",
        ))
    store = LocalStore(root, read_only=True)
    for exp in shard_arrays(meta, sa.index.total_frames, sa.index.total_samples):
        aw = f"{where}/{exp.name}"
        try:
            check_regular_if_present(root / split / shard / exp.name / ZARR_JSON, "array metadata",
                                     "re-extract the shard")
        except FhbError as e:  # zarr would block on a FIFO there
            out.append(Finding("error", aw, str(e)))
            continue
        try:
            arr = zarr.open_array(store=store, path=f"{split}/{shard}/{exp.name}", mode="r",
                                  zarr_format=3)
        except Exception as e:  # noqa: BLE001  # any failure to open is a finding
            out.append(Finding("error", aw, f"array missing or unreadable ({e}); re-extract the shard"))
            continue
        found = (tuple(arr.shape), tuple(arr.chunks), np.dtype(arr.dtype))
        if found != (exp.shape, exp.chunks, exp.dtype):
            out.append(Finding(
                "error", aw,
                f"expected shape {list(exp.shape)}, chunks {list(exp.chunks)}, dtype {exp.dtype}; "
                f"found {list(found[0])}, {list(found[1])}, {found[2]}; re-extract the shard",
            ))
            continue
        stored = sa.checksums.get(exp.name)
        n = num_chunks(exp.shape[0], exp.chunks[0])
        if stored is None or len(stored) != n:
            out.append(Finding("error", aw, f"expected {n} chunk checksums, found "
                               f"{'none' if stored is None else len(stored)}; re-extract the shard"))
            continue
        adir = root / split / shard / exp.name
        if sa.verifiable:
            problem = sa.metadata_problem(exp.name, (adir / ZARR_JSON).read_bytes())
            if problem:
                out.append(Finding("error", aw, f"{ZARR_JSON}: {problem}; re-extract the shard"))
                continue
        if check_chunks:
            out += _verify_chunks(adir, arr, sa, exp.name, aw)
    return out


def _verify_chunks(adir: Path, arr: zarr.Array, sa: ShardAttrs, name: str, where: str) -> list[Finding]:
    """Every chunk exists, is the one written (shard format 2: `ShardAttrs.chunk_problem` on its
    stored bytes, the readers' rule) and decodes (legacy shards: to values of the recorded crc32)."""
    out = []
    c = arr.chunks[0]
    for i in range(len(sa.checksums[name])):
        key = arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))
        if not (adir / key).is_file():
            out.append(Finding("error", f"{where} chunk {i}", f"chunk file {key} is missing; "
                               f"re-extract the shard"))
            continue
        try:
            stored = (adir / key).read_bytes() if sa.verifiable else None
        except OSError as e:  # unreadable (permissions, I/O error): a finding, the others still checked
            out.append(Finding("error", f"{where} chunk {i}", f"chunk file {key} is unreadable "
                               f"({e.strerror or type(e).__name__}); fix its permissions or re-extract the shard"))
            continue
        problem = sa.chunk_problem(name, i, stored) if stored is not None else None
        if problem:
            out.append(Finding("error", f"{where} chunk {i}", f"chunk {key}: {problem}; re-extract the shard"))
            continue
        try:
            data = np.asarray(arr[i * c : (i + 1) * c])
        except Exception as e:  # noqa: BLE001  # undecodable bytes
            out.append(Finding("error", f"{where} chunk {i}", f"chunk {key} does not decode "
                               f"({type(e).__name__}: {e}); re-extract the shard"))
            continue
        problem = None if sa.verifiable else sa.value_problem(name, i, data)
        if problem:
            out.append(Finding("error", f"{where} chunk {i}", f"chunk {key}: {problem}; re-extract the shard"))
    return out


@dataclass(frozen=True)
class SplitSummary:
    """What `summarize_lake` reports per split."""

    shards: int
    utterances: int
    hours: float
    frames: int
    samples: int
    bytes_on_disk: int
    target_bytes: int
    audio_bytes: int
    bytes_per_frame_per_layer: float
    compression_ratio: float


@dataclass(frozen=True)
class LayerSummary:
    """What `summarize_lake` reports per stored layer: its codec and what it costs.

    ``codec``: the lake's dtype (elementwise) or the fitted kind; ``width``: stored values per
    frame (``D``, or the pca rank / pq sub-spaces); ``rel_rms``: relative RMS error measured on
    the held-out frames of the fitting sample (fitted codecs; None for elementwise ones); ``budget``: the error budget
    it was fitted for; ``bytes_per_frame``: bytes on disk of the layer's arrays over all splits
    per frame (int8 scales included).
    """

    codec: str
    width: int
    rel_rms: float | None
    budget: float | None
    bytes_per_frame: float


@dataclass(frozen=True)
class LakeSummary:
    """What `summarize_lake` reports for ``fhb inspect``."""

    path: str
    format_version: int
    fhb_version: str
    teacher_name: str
    teacher_sha256: str
    layers: tuple[int, ...]
    dim: int
    cnn_features: bool
    dtype: str
    codec: dict[str, Any]
    bytes_on_disk: int
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    layers_detail: dict[str, LayerSummary] = field(default_factory=dict)
    bytes_per_frame_per_layer: float = 0.0
    """Target bytes (the stored layers' arrays, all splits) per frame and layer."""
    codec_param_bytes: int = 0
    """Bytes of the fitted codecs' parameters (``_codecs/``), paid once per lake."""
    teacher_weights: dict[str, Any] | None = None
    """The stored teacher's record (``teacher_weights`` root attribute: file, sha256, bytes), or
    None for a lake without the teacher's weights (``fhb lake add-teacher`` adds them)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


def summarize_lake(path: str | os.PathLike[str]) -> LakeSummary:
    """Per split: utterances, hours, shards, bytes on disk (all files under the split), bytes
    per frame per layer and compression ratio of the stored layers (vs float32, scale arrays
    included; CNN features and audio excluded)."""
    root = local_lake_dir(path)
    meta = LakeMeta.from_dict(read_node_attrs(root) or {}, f"lake {root}")
    layer_dirs = [layer_array_name(k) for k in meta.layers]
    if meta.codec.has_scales:
        layer_dirs += [scale_array_name(n) for n in layer_dirs]
    splits = {}
    for split, info in meta.splits.items():
        target = audio = 0
        for shard in info.shards:
            d = root / split / shard
            target += sum(dir_size(d / n) for n in layer_dirs)
            audio += dir_size(d / AUDIO_ARRAY)
        n_values = info.frames * len(meta.layers)
        splits[split] = SplitSummary(
            shards=len(info.shards),
            utterances=info.utterances,
            hours=hours(info.samples, meta.sample_rate),
            frames=info.frames,
            samples=info.samples,
            bytes_on_disk=dir_size(root / split),
            target_bytes=target,
            audio_bytes=audio,
            bytes_per_frame_per_layer=target / n_values if n_values else 0.0,
            compression_ratio=n_values * meta.teacher.dim * 4 / target if target else 0.0,
        )
    frames = sum(info.frames for info in meta.splits.values())
    detail = {}
    for k in meta.layers:
        name = layer_array_name(k)
        names = [name] + ([scale_array_name(name)] if meta.codec.has_scales else [])
        size = sum(dir_size(root / split / shard / n) for split, info in meta.splits.items()
                   for shard in info.shards for n in names)
        spec = meta.fitted.get(name)
        detail[name] = LayerSummary(
            codec=spec.kind if spec else meta.dtype, width=spec.width if spec else meta.teacher.dim,
            rel_rms=spec.rel_rms if spec else None, budget=spec.budget if spec else None,
            bytes_per_frame=size / frames if frames else 0.0)
    total = sum(d.bytes_per_frame for d in detail.values())
    return LakeSummary(
        layers_detail=detail,
        bytes_per_frame_per_layer=total / len(detail) if detail else 0.0,
        codec_param_bytes=dir_size(root / CODECS_DIR) if (root / CODECS_DIR).exists() else 0,
        teacher_weights=meta.teacher_weights.to_dict() if meta.teacher_weights else None,
        path=str(root),
        format_version=meta.format_version,
        fhb_version=meta.fhb_version,
        teacher_name=meta.teacher.name,
        teacher_sha256=meta.teacher.sha256,
        layers=meta.layers,
        dim=meta.teacher.dim,
        cnn_features=meta.cnn_features,
        dtype=meta.dtype,
        codec=meta.codec.to_dict(),
        bytes_on_disk=dir_size(root),
        splits=splits,
    )
