"""``fhb random-teacher`` and ``fhb teacher-info``: write and inspect teachers."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from rich.markup import escape
from rich.table import Table

from fhb.errors import FhbError
from fhb.pipeline.audio import load_audio
from fhb.pipeline.corpus import scan_librispeech
from fhb.pipeline.logging_setup import console
from fhb.pipeline.ctc_layout import CTC_ARCHS, save_random_ctc_checkpoint
from fhb.pipeline.teacher import ARCHS, load_teacher, save_random_checkpoint
from fhb.stages.option_limits import check_int, check_seed
from fhb.stages.out_paths import check_new_file

log = logging.getLogger(__name__)


def write_random_teacher(out: Path, arch: str, seed: int, *, replace: bool = False) -> Path:
    """Write a random-weight teacher of preset ``arch`` to ``out`` (fairseq layout).

    An existing ``out`` is replaced only with ``replace`` (the demo's own teacher): ``fhb
    random-teacher --out`` never overwrites a file it did not write (it may be a real teacher).
    """
    if arch not in ARCHS and arch not in CTC_ARCHS:
        raise FhbError(f"--arch {arch!r} is not a teacher preset; choose one of {', '.join(sorted([*ARCHS, *CTC_ARCHS]))}")
    check_seed(seed)
    check_new_file(Path(out), "random-teacher", replace=replace)
    path = save_random_ctc_checkpoint(out, arch, seed) if arch in CTC_ARCHS else save_random_checkpoint(out, arch, seed)
    log.info("wrote random %s teacher to %s (%.1f MB)", arch, path, path.stat().st_size / 1e6)
    return path


def describe_teacher(path: Path, libri_root: Path | None, split: str, limit: int) -> None:
    """Print a teacher's architecture; with ``libri_root``, run it on ``limit`` utterances."""
    teacher = load_teacher(path)
    table = Table(title=f"teacher {escape(path.name)}", show_header=False)
    params = sum(p.numel() for p in teacher.model.parameters())
    for key, value in [
        ("model", teacher.model_name),
        ("sha256", teacher.sha256),
        ("parameters", f"{params / 1e6:.2f}M"),
        ("layers", teacher.num_layers),
        ("dim", teacher.dim),
        ("pre-LN", teacher.arch.layer_norm_first),
        ("extractor_mode", teacher.arch.extractor_mode),
        ("normalize waveform", teacher.normalize),
    ]:
        table.add_row(key, str(value))
    console.print(table)
    if libri_root is None:
        return
    check_int("--limit", limit, 1, 10**9)
    manifest = scan_librispeech(libri_root, [split])
    utts = manifest.utterances[:limit]
    wavs = [teacher.prepare(torch.from_numpy(load_audio(u.path))) for u in utts]
    start = time.perf_counter()
    outputs = teacher.extract(wavs)
    seconds = time.perf_counter() - start
    audio_s = sum(w.numel() for w in wavs) / 16000
    runs = Table(title=f"{len(utts)} utterances of {split}: {audio_s:.1f} s audio in {seconds:.2f} s")
    for col in ("utterance", "samples", "targets L x T x D", "last layer mean / std"):
        runs.add_column(col)
    for utt, wav, out in zip(utts, wavs, outputs):
        last = out[-1]
        runs.add_row(utt.utt_id, str(wav.numel()), " x ".join(map(str, out.shape)),
                     f"{last.mean():+.3f} / {last.std():.3f}")
    console.print(runs)
