"""``fhb transcode LAKE --codec NAME --out LAKE2``: re-encode a lake's targets without the teacher.

Every committed shard of every split is read (targets decoded to float32 on the CPU, audio and
index as they are) and written again, same shard names and order, with the new codec. For pca/pq
the codecs are fitted first on a seeded sample of the first split's *decoded* targets (so a lake
transcoded from float16 fits on float16 values). The stored teacher (``_teacher/``) is copied.
Rerunning the same command resumes: committed shards of the new lake are kept.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fhb.errors import FhbError
from fhb.files import check_out_apart
from fhb.stages.codec_fit import FIT_SECONDS, collect_sample, fitted_layout, resumable_codecs
from fhb.stages.option_limits import check_fit_seconds, check_seed
from fhb.stages.out_paths import check_out_not_inside_lake
from fhb.storage import LakeMeta, LakeWriter, SplitInfo, TargetCodec, open_lake
from fhb.storage.codecs import FITTED_DTYPES
from fhb.storage.fitted import FittedCodec, check_budget, resolve_budget, resolve_codec, with_fitted
from fhb.storage.lake_writer import overwrite_target, replacing_lake
from fhb.storage.layout import local_lake_dir
from fhb.storage.reader import SplitView
from fhb.storage.schema import TEACHER_DIR

__all__ = ["TranscodeSummary", "run_transcode"]

log = logging.getLogger(__name__)


@dataclass
class TranscodeSummary:
    """What one ``fhb transcode`` run did."""

    source: Path
    lake: Path
    codec: str
    shards_done: int = 0
    shards_resumed: int = 0
    utterances: int = 0
    wall_seconds: float = 0.0


def _base_layout(src: LakeMeta, dtype: str) -> LakeMeta:
    """The source's layout with an elementwise ``dtype`` (float16 for fitted codecs, fitted later)."""
    elementwise = "float16" if dtype in FITTED_DTYPES else dtype
    codec = TargetCodec.default(elementwise, chunk_frames=src.codec.chunk_frames,
                                samples_per_frame=src.samples_per_frame)
    return dataclasses.replace(src, dtype=elementwise, codec=codec, fitted={}, teacher_weights=None,
                               splits={s: SplitInfo() for s in src.splits}, fhb_version="")


def _split_sample(view: SplitView, seconds: float, seed: int) -> dict[str, np.ndarray]:
    ids = view.utterance_ids
    names = list(view.meta.target_arrays)

    def targets_of(i: int) -> dict[str, np.ndarray]:
        t = view.targets(ids[i])
        return {name: t[j] for j, name in enumerate(names)}

    return collect_sample([view.num_samples(u) for u in ids], targets_of, seconds, seed, view.meta.sample_rate)


def run_transcode(source: Path, out: Path, codec: str, *, codec_error: float | None = None,
                  fit_seconds: float = FIT_SECONDS, seed: int = 0, overwrite: bool = False) -> TranscodeSummary:
    """Write the lake ``out``: ``source``'s splits, shards, audio and teacher, targets re-encoded with ``codec``.

    Args:
        source: the lake to read (not modified).
        out: the new lake (created, or reopened to resume).
        codec: a ``--codec`` name (`fhb.storage.fitted.CODEC_NAMES`).
        codec_error: pca/pq/klt: relative RMS error budget per layer, against the source's decoded targets
            (None: `fhb.storage.fitted.resolve_budget`).
        fit_seconds: pca/pq: seconds of the first split's audio the codecs are fitted on (seeded).
        seed: the fitting sample's seed.
        overwrite: start the lake at ``out`` over: the new lake is built beside it
            (``.LAKE.tmp-partial``) and swapped in when complete, the old one locked and intact
            until then; rerunning continues an interrupted overwrite (`replacing_lake`).
    """
    started = time.perf_counter()
    out = Path(out)
    codec_error = resolve_budget(codec, codec_error)
    dtype = resolve_codec(codec)
    src_root = local_lake_dir(source)
    if Path(out).resolve() == src_root.resolve():
        raise FhbError(f"--out {out}: expected a new lake path, found the source lake itself; pass another --out")
    check_out_apart(Path(out), {"LAKE": src_root}, "transcode")
    check_out_not_inside_lake(Path(out), src_root, "LAKE", "transcode")
    check_seed(seed)
    check_fit_seconds(fit_seconds)
    src = open_lake(src_root)
    if dtype in FITTED_DTYPES:
        check_budget(codec_error)
        if src.meta.cnn_features:
            raise FhbError(f"lake {src_root} stores CNN features: expected a lake without them for --codec {codec} "
                           f"(fitted codecs encode the layers); transcode to float16/bfloat16/int8/float32")
    if not any(src.meta.splits[s].shards for s in src.splits):
        raise FhbError(f"lake {src_root}: expected at least one committed shard, found none; extract it first")
    meta = _base_layout(src.meta, dtype)
    target = overwrite_target(out, overwrite, "fhb transcode")
    fitted: dict[str, FittedCodec] | None = None
    if dtype in FITTED_DTYPES:
        fitted = resumable_codecs(target, meta, dtype, codec_error)
        if fitted is None:
            first = next(s for s in src.splits if src.meta.splits[s].shards)
            meta, fitted = fitted_layout(meta, dtype, codec_error, _split_sample(src[first], fit_seconds, seed), seed)
        else:
            meta = with_fitted(meta, fitted)
    summary = TranscodeSummary(source=src_root, lake=out, codec=dtype)
    planned = {split: {shard: src[split].shard(shard).index.utt_ids for shard in src[split].shards}
               for split in src.splits}
    with replacing_lake(out, target, meta, planned, "transcode"), LakeWriter(target, meta, fitted=fitted) as lake:
        if src.meta.teacher_weights is not None and lake.stored_teacher() is None:
            dest = target / TEACHER_DIR
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(src_root / TEACHER_DIR, dest)
            if lake.stored_teacher() is None:
                log.warning("lake %s: the copied teacher was not adopted; store it with `fhb lake add-teacher`", out)
        for split in src.splits:
            view = src[split]
            for shard in view.shards:
                sv = view.shard(shard)
                lake.check_plan(split, shard, list(sv.index.utt_ids))
                if lake.is_committed(split, shard):
                    summary.shards_resumed += 1
                    continue
                with lake.shard(split, shard, expected_frames=sv.num_frames, expected_samples=sv.num_samples,
                                background=False) as w:
                    for skipped in sv.attrs.skipped:
                        w.skip(skipped.get("utt_id", ""), skipped.get("path", ""), skipped.get("reason", ""))
                    idx = sv.index
                    for row, utt in enumerate(idx.utt_ids):
                        f0, n = int(idx.frame_offsets[row]), int(idx.num_frames[row])
                        s0, ns = int(idx.sample_offsets[row]), int(idx.num_samples[row])
                        cnn = sv.read_cnn(f0, f0 + n) if src.meta.cnn_features else None
                        w.add(utt, idx.speakers[row], idx.chapters[row], idx.transcripts[row],
                              sv.read_audio(s0, s0 + ns), sv.read_frames(f0, f0 + n), cnn,
                              ctc_labels=idx.ctc_labels[row] if idx.ctc_labels is not None else None)
                        summary.utterances += 1
                    w.commit()
                summary.shards_done += 1
            lake.list_split(split, view.shards)
    summary.wall_seconds = time.perf_counter() - started
    log.info("transcoded %s -> %s (%s): %d shards written, %d kept", src_root, out, dtype, summary.shards_done,
             summary.shards_resumed)
    return summary
