"""The ``fhb`` command line: thin commands that parse options and call one function in ``stages``.

Heavy imports (torch, zarr, dask) happen inside the commands so ``fhb --help`` is instant.
Failures the user can fix (:class:`fhb.errors.FhbError`) print one red line and exit with 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from fhb import __version__
from fhb.errors import FhbError

DEFAULT_CODEC_ERROR = 0.1
"""`fhb.storage.fitted.DEFAULT_ERROR_BUDGET`, repeated to keep ``fhb --help`` import-free (a test checks)."""


def _show_flags_without_a_value() -> None:
    """``--help``: boolean flags (``--resume``, ``--overwrite``, ``--help``) show no ``<bool>`` value column.

    typer renders a flag's type like an option's value; a flag takes none, so its type column is left empty.
    """
    option = getattr(typer.core, "TyperOption", None)
    show = getattr(option, "display_type_rich", None)
    if show is None or getattr(show, "fhb_flags", False):
        return

    def display_type_rich(self: typer.core.TyperOption, ctx: object) -> str | None:
        return "" if getattr(self, "is_flag", False) else show(self, ctx)

    display_type_rich.fhb_flags = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich  # type: ignore[union-attr]


_show_flags_without_a_value()

app = typer.Typer(
    name="fhb",
    help="FitHuBERT distillation around a feature lake: run the teacher once, train students from cached targets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fhb {__version__}")
        raise typer.Exit()


_VERBOSE = [False]
"""Set by ``--verbose``: an `FhbError` then shows its traceback above the one line."""


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging; errors show their traceback.")] = False,
) -> None:
    from fhb.pipeline.logging_setup import setup_logging

    _VERBOSE[0] = verbose
    setup_logging(verbose)


@app.command("random-teacher")
def random_teacher(
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.pt).")],
    arch: Annotated[str, typer.Option(help="hubert-base, hubert-large, wav2vec2-base, wav2vec2-large, tiny, tiny-wav2vec2; fine-tuned CTC: the same names + '-ctc' (tiny-ctc, hubert-base-ctc, ...).")] = "tiny",
    seed: Annotated[int, typer.Option(help="Weight initialisation seed.")] = 0,
) -> None:
    """Write a random-weight teacher in fairseq's checkpoint layout (for trying fhb without weights)."""
    from fhb.stages.teacher_info import write_random_teacher

    write_random_teacher(out, arch, seed)


@app.command("teacher-info")
def teacher_info(
    teacher: Annotated[Path, typer.Argument(help="fairseq HuBERT / wav2vec 2.0 checkpoint.")],
    libri_root: Annotated[Optional[Path], typer.Option(help="Run the teacher on this LibriSpeech root.")] = None,
    split: Annotated[str, typer.Option(help="Split to run on with --libri-root.")] = "dev-clean",
    limit: Annotated[int, typer.Option(help="Utterances to run with --libri-root.")] = 4,
) -> None:
    """Load a teacher without fairseq, print its architecture, and optionally run it on a few utterances."""
    from fhb.stages.teacher_info import describe_teacher

    describe_teacher(teacher, libri_root, split, limit)


@app.command()
def extract(
    teacher: Annotated[Path, typer.Option(help="fairseq HuBERT / wav2vec 2.0 checkpoint (.pt).")],
    libri_root: Annotated[Path, typer.Option(help="LibriSpeech root (or the folder holding LibriSpeech/).")],
    out: Annotated[Path, typer.Option(help="The lake directory to write (rerun to resume).")],
    splits: Annotated[str, typer.Option(help="Comma-separated splits, e.g. train-clean-100,dev-clean.")] = "train-clean-100,dev-clean",
    layers: Annotated[str, typer.Option(help="'all' or teacher layers like 1,4,8,12.")] = "all",
    cnn_features: Annotated[bool, typer.Option("--cnn-features", help="Also store post_extract_proj output.")] = False,
    dtype: Annotated[str, typer.Option(help="float16, bfloat16, int8 or float32 (same as --codec).")] = "float16",
    codec: Annotated[Optional[str], typer.Option(help="Target codec: float16 (default), bfloat16, int8, float32, or "
                                                 "fitted per layer: pca, pq, klt, compact (the recommended compact one).")] = None,
    codec_error: Annotated[Optional[float], typer.Option(help="pca/pq/klt: relative RMS error budget per layer (rank / "
                                               "sub-spaces / step are chosen to meet it on the fitting sample); default "
                                               f"{DEFAULT_CODEC_ERROR}, compact: its measured budget.")] = None,
    fit_seconds: Annotated[float, typer.Option(help="pca/pq/klt: seconds of audio of the first split to fit on.")] = 120.0,
    shard_hours: Annotated[float, typer.Option(help="Audio per shard (one task each).")] = 1.0,
    batch_seconds: Annotated[float, typer.Option(help="Padded audio per teacher batch.")] = 200.0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    precision: Annotated[str, typer.Option(help="Teacher precision: fp32, or fp16/bf16 on cuda.")] = "fp32",
    workers: Annotated[Optional[int], typer.Option(help="Local dask worker processes (0: in-process).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch threads per worker.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Existing dask scheduler, tcp://host:8786.")] = None,
    on_bad_audio: Annotated[str, typer.Option(help="error: stop at a bad file; skip: list and skip it.")] = "error",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start the lake over: build it beside the old one, swap it in when complete (rerun continues).")] = False,
    order: Annotated[str, typer.Option(help="Storage order: length (longest first, little padding in training) or manifest (by id; resumes older lakes).")] = "length",
) -> None:
    """Stage one: run the teacher once over LibriSpeech and write every layer to a Zarr lake."""
    from fhb.stages.extract import run_extract
    from fhb.stages.lake_views import extract_progress, print_extract_summary

    with extract_progress(out) as progress:
        summary = run_extract(
            teacher, libri_root, _split_list(splits), out, layers=layers, cnn_features=cnn_features,
            dtype=_codec_name(codec, dtype), shard_hours=shard_hours, batch_seconds=batch_seconds, device=device,
            precision=precision, workers=workers, threads=threads, scheduler=scheduler,
            on_bad_audio=on_bad_audio, overwrite=overwrite, progress=progress, order=order, codec_error=codec_error,
            fit_seconds=fit_seconds,
        )
    print_extract_summary(summary)


@app.command()
def inspect(
    lake: Annotated[Path, typer.Argument(help="A lake written by fhb extract.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Per split: utterances, hours, shards, bytes on disk, bytes per frame per layer; per layer: codec and error."""
    from fhb.stages.lake_views import inspect_lake

    inspect_lake(lake, as_json=as_json)


@app.command()
def verify(lake: Annotated[Path, typer.Argument(help="A lake written by fhb extract.")]) -> None:
    """Check every shard, index, frame count, chunk and checksum; exit 1 with the findings otherwise."""
    from fhb.stages.lake_views import verify as verify_lake

    if verify_lake(lake):
        raise typer.Exit(1)


@app.command()
def unlock(lake: Annotated[Path, typer.Argument(help="A lake or run directory locked from another host.")]) -> None:
    """Clear a lock fhb cannot check itself (taken on another host); a dead local holder's is taken over anyway."""
    from fhb.storage.lock import break_lock

    info = break_lock(lake)
    typer.echo(f"cleared lock of {lake}: {info.describe()}" if info else f"{lake} was not locked")


@app.command()
def transcode(
    lake: Annotated[Path, typer.Argument(help="The lake to re-encode (read only).")],
    out: Annotated[Path, typer.Option(help="The new lake (rerun to resume).")],
    codec: Annotated[str, typer.Option(help="float16, bfloat16, int8, float32, pca, pq, klt or compact.")],
    codec_error: Annotated[Optional[float], typer.Option(help="pca/pq/klt: relative RMS error budget per layer; default "
                                                         f"{DEFAULT_CODEC_ERROR}, compact: its measured budget.")] = None,
    fit_seconds: Annotated[float, typer.Option(help="pca/pq/klt: seconds of the first split's audio to fit on.")] = 120.0,
    seed: Annotated[int, typer.Option(help="Seed of the fitting sample.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=(
        "Start the lake at --out over: the new one is built beside it and swapped in when complete "
        "(the old one stays readable until then; rerun to continue)."))] = False,
) -> None:
    """Re-encode a lake's targets with another codec (no teacher needed); audio, index and teacher are copied."""
    from fhb.stages.transcode import run_transcode

    s = run_transcode(lake, out, codec, codec_error=codec_error, fit_seconds=fit_seconds, seed=seed,
                      overwrite=overwrite)
    typer.echo(f"transcoded {s.source} -> {s.lake} ({s.codec}): {s.shards_done} shards written, "
               f"{s.shards_resumed} kept, {s.utterances} utterances, {s.wall_seconds:.1f} s")


lake_app = typer.Typer(help="Maintain an existing lake.", no_args_is_help=True)
app.add_typer(lake_app, name="lake")


@lake_app.command("add-teacher")
def lake_add_teacher(
    lake: Annotated[Path, typer.Argument(help="A lake written by fhb extract.")],
    teacher: Annotated[Path, typer.Option(help="The checkpoint (.pt) the lake was extracted with.")],
) -> None:
    """Store the teacher's weights in a lake written without them (sha256 checked against the lake's)."""
    from fhb.stages.lake_tools import add_teacher

    stored = add_teacher(lake, teacher)
    typer.echo(f"lake {lake} stores teacher {stored.source_name} ({stored.num_tensors} tensors, "
               f"{stored.weights_bytes / 1e6:.1f} MB, sha256 {stored.weights_sha256[:12]}…)")


@app.command("distill")
def distill(
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Lake written by `fhb extract`.")] = None,
    config: Annotated[Path, typer.Option("--config", "-c", help="FitHuBERT yaml (published layout), or a packaged one: fithubert, fitwav2vec2, distilhubert, tiny.")] = Path("fithubert"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (config.yaml, metrics.jsonl, checkpoints/, student.pt).")] = Path("runs/distill"),
    splits: Annotated[Optional[str], typer.Option(help="Comma-separated training splits (default: yaml data.train_set).")] = None,
    dev_split: Annotated[Optional[str], typer.Option(help="Split evaluated after every epoch (default: dev-clean if the lake has it; none: no evaluation).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimiser updates (exclusive with --epochs).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (default: yaml train.num_epochs).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Utterances per micro-batch (default: yaml train.batch_size).")] = None,
    batch_seconds: Annotated[Optional[float], typer.Option(help="Padded audio seconds per micro-batch (instead of --batch-size).")] = None,
    max_seconds: Annotated[Optional[float], typer.Option(help="Crop longer utterances to this many seconds.")] = None,
    accumulate: Annotated[Optional[int], typer.Option(help="Micro-batches per update and rank (default: the published effective batch, yaml accumulate_grad_batches x gpus over all ranks).")] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32, fp16 (CUDA) or bf16 (default: fp16 if yaml use_fp16 and CUDA, else fp32).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:K (torchrun: cuda:LOCAL_RANK).")] = "cpu",
    workers: Annotated[int, typer.Option(help="Loader decode processes (0: in-process).")] = 2,
    seed: Annotated[int, typer.Option(help="Student init, data order, random layers, dropout.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run directory's newest loadable checkpoint.")] = False,
    online_teacher: Annotated[Optional[Path], typer.Option(help="Run this teacher on every batch instead of reading targets (baseline).")] = None,
    libri_root: Annotated[Optional[Path], typer.Option(help="Not supported without --cache (run `fhb extract` first).")] = None,
    log_every: Annotated[int, typer.Option(help="Append a train record to metrics.jsonl every N updates.")] = 10,
    eval_every: Annotated[Optional[int], typer.Option(help="Evaluate --dev-split every N updates instead of after every epoch (and at the end).")] = None,
    save_every: Annotated[Optional[int], typer.Option(help="Checkpoint every N updates (and at the end).")] = None,
    keep_checkpoints: Annotated[Optional[int], typer.Option(help="Keep only the newest N checkpoints.")] = None,
    clip_grad_norm: Annotated[Optional[float], typer.Option(help="Clip the gradient norm (default: off, as published).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Non-bias weight decay (default: 0.01, what the published code applies).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default: yaml optimizer.lr).")] = None,
    allow_missing_shards: Annotated[bool, typer.Option("--allow-missing-shards", help="Train on the committed shards of a split that lists missing or uncommitted ones (default: refuse).")] = False,
    bucketing: Annotated[str, typer.Option(help="sorted: the published batches (whole set sorted by length); window: length-sorted within shuffle windows.")] = "sorted",
    early_stopping_patience: Annotated[Optional[int], typer.Option(help="Stop after N evaluations without a lower dev loss (default: yaml train.early_stopping_patience or 15; 0: off).")] = None,
    keep_best: Annotated[Optional[int], typer.Option(help="Keep the N best students by dev loss in RUN/best/ (default: 3; 0: none).")] = None,
    export: Annotated[str, typer.Option(help="student.pt: best (lowest dev loss) or last.")] = "best",
    optimizer_impl: Annotated[str, typer.Option(help="s3prl (the published AdamW update) or torch (torch.optim.AdamW).")] = "s3prl",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")] = True,
) -> None:
    """Stage 2: train the student from the lake (no teacher); torchrun for several processes."""
    from fhb.stages.distill import run_distill

    run_distill(
        cache, config, out, splits=splits.split(",") if splits else None, dev_split=dev_split, steps=steps,
        epochs=epochs, batch_size=batch_size, batch_seconds=batch_seconds, max_seconds=max_seconds,
        accumulate=accumulate, precision=precision, device=device, workers=workers, seed=seed, resume=resume,
        online_teacher=online_teacher, libri_root=libri_root, log_every=log_every, eval_every=eval_every,
        save_every=save_every, keep_checkpoints=keep_checkpoints, clip_grad_norm=clip_grad_norm,
        weight_decay=weight_decay, lr=lr, allow_missing_shards=allow_missing_shards, bucketing=bucketing,
        early_stopping_patience=early_stopping_patience, keep_best=keep_best, export=export,
        optimizer_impl=optimizer_impl, progress=progress,
    )


@app.command("report")
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of `fhb distill`.")],
) -> None:
    """Plot a distill run's loss curves (RUN_DIR/loss_curves.png) and print a summary table."""
    from fhb.stages.report import report_run

    report_run(run_dir)


def _exported_s3prl(out: Path, run: Path | None, step: int | None, checkpoint: Path | None, config: Path | None,
                    overwrite: bool) -> str:
    from fhb.stages.export import export_s3prl

    result = export_s3prl(run, out, step=step, checkpoint=checkpoint, yaml_path=config, overwrite=overwrite)
    return f"exported {result.source} (update {result.step}) to {result.out}; see {result.upstream / 'README.md'}"


def _exported_hf(out: Path, run: Path | None, step: int | None, checkpoint: Path | None, config: Path | None,
                 overwrite: bool) -> str:
    from fhb.stages.export_hf import REMOTE, export_hf

    result = export_hf(run, out, step=step, checkpoint=checkpoint, yaml_path=config, overwrite=overwrite)
    trust = ", trust_remote_code=True" if result.architecture == REMOTE else ""
    return (f"exported {result.source} (update {result.step}) to {result.out} as {result.architecture}; "
            f"load it with AutoModel.from_pretrained({str(result.out)!r}{trust})")


def _export_command(name: str, help: str, out_help: str,
                    export: Callable[[Path, Path | None, int | None, Path | None, Path | None, bool], str]) -> None:
    """Register ``fhb NAME``: the options every export shares (which student of which run, what may
    be replaced), then one call of ``export``, whose summary line is printed."""

    def command(
        out: Path,  # annotated below: its help differs per command
        run: Annotated[Optional[Path], typer.Option(help="Run directory of fhb distill / fhb import-checkpoint.")] = None,
        step: Annotated[Optional[int], typer.Option(help="Export checkpoints/step-N.pt instead of the final student.")] = None,
        checkpoint: Annotated[Optional[Path], typer.Option(help="Export this checkpoint file instead.")] = None,
        config: Annotated[Optional[Path], typer.Option(help="Yaml for a checkpoint that stores no config (bare state dict).")] = None,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")] = False,
    ) -> None:
        if run is None and checkpoint is None:
            raise FhbError(f"{name}: expected --run RUN or --checkpoint PATH, found neither")
        typer.echo(export(out, run, step, checkpoint, config, overwrite))

    command.__annotations__["out"] = Annotated[Path, typer.Option("--out", "-o", help=out_help)]
    app.command(name, help=help)(command)


_export_command(
    "export-s3prl",
    "Write a run's student in the published FitHuBERT format and as a self-contained S3PRL upstream.",
    "Export folder to create (fithubert.ckpt, fithubert.yaml, model_card.md, fithubert_fhb/).",
    _exported_s3prl,
)
_export_command(
    "export-hf",
    "Write a run's student as a Hugging Face transformers model (AutoModel.from_pretrained(OUT), safetensors).",
    "Folder to create (config.json, model.safetensors, preprocessor_config.json, README.md).",
    _exported_hf,
)


@app.command("import-hf")
def import_hf(
    folder: Annotated[Path, typer.Argument(help="A folder written by `fhb export-hf`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")] = False,
) -> None:
    """Turn an `fhb export-hf` folder back into an fhb run directory (bit for bit, prediction heads included)."""
    from fhb.stages.import_hf import import_hf as _import

    result = _import(folder, out, overwrite=overwrite)
    typer.echo(f"imported {folder} ({result.kind}, update {result.step}, {result.num_tensors} tensors) "
               f"into {result.run}")


@app.command("import-checkpoint")
def import_checkpoint(
    ckpt: Annotated[Path, typer.Argument(help="Published FitHuBERT / FitW2V2 .ckpt (or any student checkpoint fhb reads).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create.")],
    config: Annotated[Optional[Path], typer.Option(help="The yaml published next to the .ckpt (default: the config stored in it).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")] = False,
) -> None:
    """Turn a published student checkpoint into an fhb run directory (evaluate, fine-tune, re-export)."""
    from fhb.stages.import_ckpt import import_checkpoint as _import

    result = _import(ckpt, out, config, overwrite=overwrite)
    typer.echo(f"imported {ckpt} ({result.kind}, update {result.step}, {result.num_tensors} tensors) into {result.run}")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory (its student.pt, else the latest checkpoint).")],
    cache: Annotated[Path, typer.Option(help="The lake to score against.")],
    split: Annotated[str, typer.Option(help="Lake split.")] = "dev-clean",
    step: Annotated[Optional[int], typer.Option(help="Score checkpoints/step-N.pt instead.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Score this checkpoint file instead.")] = None,
    batch_size: Annotated[int, typer.Option(help="Utterances per batch.")] = 8,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    max_batches: Annotated[Optional[int], typer.Option(help="Stop after this many batches.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (per_layer, validation_loss, ...) "
                                          "instead of a table.")] = False,
    any_encoding: Annotated[bool, typer.Option("--any-encoding", help="Accept the run's teacher's targets in another "
                                               "encoding (e.g. a float32 reference lake).")] = False,
) -> None:
    """Per-layer distillation losses of a run's student on one split of a lake (a table, or --json)."""
    from fhb.stages.evaluate import evaluate_run

    result = evaluate_run(run, cache, split, step=step, checkpoint=checkpoint, batch_size=batch_size, device=device,
                          max_batches=max_batches, show=not as_json, any_encoding=any_encoding)
    if as_json:
        import json

        print(json.dumps(result, indent=2))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo writes its teacher, lake, run and export.")] = Path("demo-out"),
    steps: Annotated[int, typer.Option(help="Distillation updates.")] = 40,
) -> None:
    """The whole pipeline on the bundled real-speech fixture with a tiny random teacher (2 CPU cores, minutes)."""
    from fhb.stages.demo import run_demo

    run_demo(out, steps)


def _codec_name(codec: str | None, dtype: str) -> str:
    """``--codec`` wins; ``--dtype`` (its old name) must then be left at its default or agree."""
    if codec is None:
        return dtype
    if dtype not in ("float16", codec):
        raise FhbError(f"--codec {codec} and --dtype {dtype}: expected one of the two (--dtype is --codec's old "
                       f"name); drop --dtype")
    return codec


def _split_list(value: str) -> list[str]:
    splits = [s.strip() for s in value.split(",") if s.strip()]
    if not splits:
        raise FhbError(f"--splits {value!r}: expected comma-separated split names")
    return splits


_PATH_OPTIONS = ("--out", "-o", "--cache", "--teacher", "--libri-root", "--checkpoint", "--run", "--config", "-c",
                 "--online-teacher")


def _refuse_empty_paths(argv: list[str]) -> None:
    """An empty path (``--out ""``) would mean the working directory: refuse it before any command runs."""
    for i, arg in enumerate(argv):
        option, eq, value = arg.partition("=")
        if option in _PATH_OPTIONS and ((eq and not value) or (not eq and i + 1 < len(argv) and argv[i + 1] == "")):
            raise FhbError(f"{option}: expected a path, found an empty string; pass a path (. for the current "
                           "folder)")


class _Terminated(BaseException):
    """Raised by the SIGTERM handler; unwinds like Ctrl-C without click turning it into an abort."""


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler's time limit, a pre-emption): unwind like Ctrl-C, so locks are released
    and nothing half-written is committed; rerunning the same command resumes."""
    _quiet_abandoned_io()
    raise _Terminated


def _quiet_abandoned_io() -> None:
    """After an interrupt, zarr I/O that was in flight on its event loop finishes (or fails: its
    temporary shard was removed) after nobody waits for it any more; asyncio would log each such
    future with a traceback as it is collected. Those writes belong to uncommitted shards, which
    the rerun redoes, so they are not worth a line."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def _fail(message: str) -> None:
    """Print ``error: MESSAGE`` on one line (after the traceback under ``--verbose``) and exit with 2."""
    from rich.markup import escape

    from fhb.pipeline.logging_setup import console

    if _VERBOSE[0]:
        import traceback

        traceback.print_exc()

    # One line, shown verbatim: a yaml parser's message spans lines, and a path may hold "[...]".
    message = " ".join(line.strip() for line in message.splitlines() if line.strip())
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(2)


def main() -> None:
    """Console-script entry point: run the app, turning user errors into one line."""
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    try:
        _refuse_empty_paths(sys.argv[1:])
        app()
    except FhbError as exc:
        _fail(str(exc))
    except PermissionError as exc:  # chmod 000 input, read-only output: the user's to fix, wherever it surfaces
        _fail(f"{exc.filename or 'a file'}: permission denied ({exc.strerror}); expected a path this user may "
              "read (and, for an output, write); fix its permissions or choose another path")
    except (KeyboardInterrupt, _Terminated):
        from fhb.pipeline.logging_setup import console

        _quiet_abandoned_io()
        console.print("[yellow]interrupted[/]: rerun the same command to resume", highlight=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
