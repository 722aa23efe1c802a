"""Terminal views of stage one: the extraction progress bar and summary, ``inspect`` and ``verify``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.markup import escape
from rich.table import Table

from fhb.errors import FhbError
from fhb.pipeline.logging_setup import console, transient_progress
from fhb.stages.extract import ExtractSummary, ShardResult
from fhb.storage.integrity import LakeSummary, summarize_lake, verify_lake
from fhb.storage.layout import dir_size


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@contextlib.contextmanager
def extract_progress(lake: Path) -> Iterator[Callable[[ShardResult, int, int], None]]:
    """A rich progress bar over shards: utterances, hours, real-time factor, bytes written, ETA."""
    columns = (
        TextColumn("[bold]extract"), BarColumn(), MofNCompleteColumn(), TextColumn("shards"),
        TextColumn("{task.fields[utts]} utts · {task.fields[hours]:.2f} h · RTF {task.fields[rtf]} · "
                   "{task.fields[written]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("extract", total=None, utts=0, hours=0.0, rtf="-", written="0 MB")
        totals = {"utts": 0, "samples": 0, "teacher": 0.0}

        def update(result: ShardResult, done: int, total: int) -> None:
            totals["utts"] += result.utterances
            totals["samples"] += result.samples
            totals["teacher"] += result.teacher_seconds
            audio_s = totals["samples"] / 16000
            progress.update(task, completed=done, total=total, utts=totals["utts"], hours=audio_s / 3600,
                            rtf=f"{totals['teacher'] / audio_s:.3f}" if audio_s else "-",
                            written=_gb(dir_size(lake)) if lake.exists() else "0 MB")

        yield update


def print_extract_summary(summary: ExtractSummary) -> None:
    """The table printed at the end of ``fhb extract``."""
    table = Table(title=f"extracted into {escape(str(summary.lake))}", show_header=False)
    audio_s = summary.samples / 16000
    rows = [
        ("shards written / already committed", f"{summary.shards_done} / {summary.shards_resumed}"),
        ("utterances", str(summary.utterances)),
        ("audio", f"{summary.hours:.3f} h"),
        ("wall time", f"{summary.wall_seconds:.1f} s"),
        ("teacher time (all workers)", f"{summary.teacher_seconds:.1f} s"),
        ("real-time factor (wall / audio)", f"{summary.wall_seconds / audio_s:.3f}" if audio_s else "-"),
        ("lake size", _gb(dir_size(summary.lake))),
        ("skipped files", str(len(summary.skipped))),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    for path, reason in summary.skipped[:20]:
        console.print(f"[yellow]skipped[/] {escape(path)}: {escape(reason)}", highlight=False)
    if len(summary.skipped) > 20:
        console.print(f"[yellow]… and {len(summary.skipped) - 20} more (listed in each shard's attributes)")


def inspect_lake(path: Path, as_json: bool = False) -> None:
    """``fhb inspect``: a table per split of what the lake holds and what it costs on disk, and per
    layer its codec and measured error (``as_json``: the same as one JSON object on stdout)."""
    if not path.exists():
        raise FhbError(f"lake {path}: no such directory; pass the --out of an `fhb extract` run")
    s = summarize_lake(path)
    if as_json:
        import json

        print(json.dumps(s.to_dict(), indent=2))
        return
    head = Table(title=f"lake {escape(s.path)}", show_header=False)
    for key, value in [
        ("format / fhb version", f"{s.format_version} / {s.fhb_version}"),
        ("teacher", f"{s.teacher_name}  sha256 {s.teacher_sha256}"),
        ("teacher weights", _stored_teacher(s)),
        ("layers", ",".join(map(str, s.layers)) + f"  (dim {s.dim})" + ("  + cnn" if s.cnn_features else "")),
        ("dtype / codec", f"{s.dtype} / {s.codec.get('compressor', s.codec)}"),
        ("bytes on disk", _gb(s.bytes_on_disk)),
    ]:
        head.add_row(key, escape(str(value)))
    console.print(head)
    table = Table(title="splits")
    for col in ("split", "utterances", "hours", "shards", "bytes on disk", "bytes/frame/layer", "compression"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for name, sp in s.splits.items():
        table.add_row(name, str(sp.utterances), f"{sp.hours:.3f}", str(sp.shards), _gb(sp.bytes_on_disk),
                      f"{sp.bytes_per_frame_per_layer:.0f}", f"{sp.compression_ratio:.2f}x")
    console.print(table)
    layers = Table(title=f"layers ({s.bytes_per_frame_per_layer:.0f} B/frame/layer on average"
                         + (f"; codec parameters {_gb(s.codec_param_bytes)}" if s.codec_param_bytes else "") + ")")
    for col in ("layer", "codec", "width", "rel. RMS error (held out)", "budget", "bytes/frame"):
        layers.add_column(col, justify="right" if col != "layer" else "left")
    for name, ly in s.layers_detail.items():
        layers.add_row(name, ly.codec, str(ly.width), "-" if ly.rel_rms is None else f"{ly.rel_rms:.4f}",
                       "-" if ly.budget is None else f"{ly.budget:g}", f"{ly.bytes_per_frame:.1f}")
    console.print(layers)


def _stored_teacher(s: LakeSummary) -> str:
    """The ``teacher weights`` row of ``fhb inspect``: what stage two can rebuild the teacher from."""
    w = s.teacher_weights
    if w is None:
        return f"not stored (add them: fhb lake add-teacher {s.path} --teacher CKPT)"
    return f"{w['dir']}/{w['file']}  {_gb(int(w['bytes']))}  sha256 {str(w['sha256'])[:12]}…"


def verify(path: Path) -> int:
    """``fhb verify``: print the findings; returns the number of errors (the exit status follows)."""
    if not path.exists():
        raise FhbError(f"lake {path}: no such directory; pass the --out of an `fhb extract` run")
    total = None
    if (path / "zarr.json").is_file():
        try:
            total = sum(len(v.get("shards", [])) for v in json.loads((path / "zarr.json").read_text())
                        ["attributes"]["splits"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            total = None  # verify_lake reports the damage
    columns = (TextColumn("verify {task.fields[shard]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with transient_progress(*columns) as progress:
        task = progress.add_task("verify", total=total, shard="")
        findings = verify_lake(path, on_shard=lambda where: progress.update(task, advance=1, shard=where))
    errors = [f for f in findings if f.severity == "error"]
    for finding in findings:
        colour = "red" if finding.severity == "error" else "yellow"
        console.print(f"[{colour}]{escape(str(finding))}[/]", highlight=False, soft_wrap=True)
    if not errors:
        console.print(f"[green]lake {escape(str(path))} verified[/]: every shard committed, index consistent, chunks readable, checksums match")
    return len(errors)
