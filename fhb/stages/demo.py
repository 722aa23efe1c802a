"""``fhb demo`` (behind ``make demo``): the whole pipeline on the bundled real-speech fixture.

A random-weight teacher small enough for 2 CPU cores (fairseq layout) → ``fhb extract`` →
``fhb inspect`` → ``fhb verify`` → ``fhb distill`` (a few dozen steps) → ``fhb report`` → ``fhb export-s3prl`` → the exported
upstream loaded the way S3PRL loads it, then the
commands a user runs with a real ``hubert_base_ls960.pt`` and LibriSpeech.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from rich.panel import Panel

from fhb.errors import FhbError
from fhb.pipeline.logging_setup import console

log = logging.getLogger(__name__)

FIXTURE_SPLITS = ["train-clean-100", "dev-clean"]


def fixture_root() -> Path:
    """The bundled mini-LibriSpeech (tests/data in a source checkout)."""
    here = Path(__file__).resolve().parents[2] / "tests" / "data" / "mini-librispeech" / "LibriSpeech"
    if not here.is_dir():
        raise FhbError(
            f"the demo corpus {here} is missing: `fhb demo` runs from a source checkout of fhb "
            f"(git clone, then `make demo`); elsewhere pass --libri-root to the individual commands"
        )
    return here


def _step(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


DEMO_LAYOUT = frozenset({"teacher-tiny.pt", "lake", "run", "export"})
"""What `run_demo` writes in its folder (the demo replaces these on every run)."""


def _claim_demo_dir(out: Path) -> None:
    """Refuse a non-empty ``out`` that is not a previous demo's output; mark ``out`` as the demo's.

    Raises:
        FhbError: ``out`` is a file, a symlink, or holds anything the demo did not write.
    """
    from fhb.files import check_out_apart, foreign_entries, read_manifest, write_manifest

    check_out_apart(out, {}, "demo")

    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FhbError(f"demo: --out {out} is {'a symlink' if out.is_symlink() else 'a file'}; expected a new "
                       "folder or a previous demo output; choose another --out")
    if out.exists():
        manifest = read_manifest(out)
        foreign = (sorted(e.name for e in out.iterdir()) if manifest is not None and manifest[0] != "demo"
                   else foreign_entries(out, DEMO_LAYOUT))
        if foreign:
            raise FhbError(
                f"demo: --out {out} is not empty and not a previous demo output (it holds {foreign[:5]}); "
                "the demo replaces its folder's teacher, lake, run and export: choose a new --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, "demo", sorted(DEMO_LAYOUT))


def run_demo(out: Path, steps: int = 40) -> None:
    """Run every stage into ``out`` and print what a real run looks like."""
    from fhb.stages.extract import run_extract
    from fhb.stages.lake_views import extract_progress, inspect_lake, print_extract_summary, verify
    from fhb.stages.teacher_info import write_random_teacher

    from fhb.stages.option_limits import MAX_UPDATES, check_int

    started = time.perf_counter()
    check_int("--steps", steps, 1, MAX_UPDATES)  # before the demo writes anything
    _claim_demo_dir(out)
    root = fixture_root()
    teacher = out / "teacher-tiny.pt"
    lake = out / "lake"
    _step("1/6 teacher: a random tiny HuBERT in fairseq's checkpoint layout")
    write_random_teacher(teacher, "tiny", seed=0, replace=True)
    _step("2/6 fhb extract: the teacher runs once; every layer goes to the lake")
    with extract_progress(lake) as progress:
        summary = run_extract(teacher, root, FIXTURE_SPLITS, lake, shard_hours=0.005, workers=1,
                              overwrite=True, progress=progress)
    print_extract_summary(summary)
    _step("3/6 fhb inspect / fhb verify")
    inspect_lake(lake)
    if verify(lake):
        raise FhbError(f"the demo lake {lake} failed verification (see above)")
    _run_later_stages(out, teacher, lake, steps)
    console.print(Panel.fit(
        "\n".join([
            f"demo finished in {time.perf_counter() - started:.0f} s; everything is under {out}",
            "",
            "With a real teacher and LibriSpeech:",
            "  fhb extract --teacher hubert_base_ls960.pt \\",
            "      --libri-root /data/LibriSpeech --out /zarr/libri100 \\",
            "      --splits train-clean-100,dev-clean --workers 4",
            "  fhb inspect /zarr/libri100 && fhb verify /zarr/libri100",
            "  fhb distill --cache /zarr/libri100 --config fithubert \\",
            "      --out runs/fit100 --dev-split dev-clean --device cuda",
            "  fhb report runs/fit100",
            "  fhb export-s3prl --run runs/fit100 --out exported/fit100",
            "  # then follow exported/fit100/fithubert_fhb/README.md",
        ]),
        title="fhb demo", border_style="green",
    ))


_S3PRL_STYLE_LOAD = """
import importlib, sys, torch
sys.path.insert(0, sys.argv[1])
hubconf = importlib.import_module(sys.argv[2] + ".hubconf")
upstream = getattr(hubconf, sys.argv[2])(sys.argv[3], sys.argv[4]).eval()
wavs = [torch.randn(n) * 0.1 for n in (16000, 24000, 40000)]
with torch.no_grad():
    out = upstream(wavs)
states = out["hidden_states"]
print(f"{len(states)} hidden states, each B x T x D = {list(states[0].shape)}; "
      f"downsample rate {upstream.get_downsample_rates('hidden_states')}; "
      f"last_hidden_state {list(out['last_hidden_state'].shape)}")
"""


def load_like_s3prl(export_dir: Path, name: str) -> str:
    """Load the exported upstream the way S3PRL's hub does, in a process where fhb is not importable.

    Returns the line it prints: the number and shape of the hidden states.
    """
    import site
    import subprocess
    import sys

    paths = [p for p in site.getsitepackages() if Path(p).is_dir()]
    code = "import sys; sys.path[:0] = " + repr(paths) + "\n" + _S3PRL_STYLE_LOAD
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(export_dir), name,
         str(export_dir / "fithubert.ckpt"), str(export_dir / "fithubert.yaml")],
        capture_output=True, text=True,
    )
    if proc.returncode:
        raise FhbError(f"loading the exported upstream {export_dir / name} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip()


def _run_later_stages(out: Path, teacher: Path, lake: Path, steps: int) -> None:
    """Stage two, the report, the export and an S3PRL-style load of the export."""
    import shutil

    from fhb.stages.distill import run_distill
    from fhb.stages.export import export_s3prl
    from fhb.stages.report import report_run

    run = out / "run"
    shutil.rmtree(run, ignore_errors=True)  # the demo always trains afresh
    _step(f"4/6 fhb distill: {steps} updates of the tiny student from the lake (no teacher)")
    run_distill(lake, Path("tiny"), run, splits=["train-clean-100"], dev_split="dev-clean", steps=steps,
                batch_size=4, accumulate=1, workers=0, seed=0, device="cpu", eval_every=max(1, steps // 2),
                save_every=max(1, steps // 2), log_every=5)
    report_run(run)
    _step("5/6 fhb export-s3prl: published FitHuBERT format + a self-contained S3PRL upstream")
    result = export_s3prl(run, out / "export", overwrite=True)
    console.print(f"exported to {result.out} (upstream folder {result.upstream.name}/, model_card.md)")
    _step("6/6 load the exported upstream as S3PRL does (fhb not importable there)")
    console.print(load_like_s3prl(result.out, result.upstream.name), highlight=False)
