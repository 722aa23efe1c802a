"""``fhb import-checkpoint``: a published FitHuBERT checkpoint as an fhb run directory.

Reads a published Lightning ``.ckpt`` (FitHuBERT-100h / 960h, FitW2V2: ``student_model.*`` keys,
``teacher_model.*`` ignored, optimizer state not kept) with its yaml, or any student checkpoint fhb
reads, and writes the run layout of ``fhb distill`` that ``fhb evaluate``, ``fhb export-s3prl``
and distill's initialisation read::

    RUN/config.yaml      the yaml, plus an ``fhb_import`` section (source path, sha256, kind,
                         global_step, epoch)
    RUN/student.pt       the student in fhb's format (``fhb.student.checkpoint.save_student``),
                         training layout, tensors as read (bit for bit)
    RUN/metrics.jsonl    one ``{"kind": "import", ...}`` record

Import then export gives back the same student tensors, bit for bit. The run is written to a
temporary sibling folder and renamed into place when complete.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhb.errors import FhbError

if TYPE_CHECKING:
    from fhb.student.config import FitConfig
    from fhb.student.model import FitHuBERT

__all__ = ["ImportResult", "import_checkpoint", "write_imported_run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_checkpoint` (or `fhb.stages.import_hf.import_hf`) wrote.

    Attributes:
        run: the run directory.
        student: ``RUN/student.pt``.
        kind: the source's format (``lightning``, ``fhb``, ``state_dict``; for `fhb import-hf` the
            folder's architecture, ``HubertModel`` or ``FitHuBERTModel``).
        step: the source's optimizer updates (Lightning ``global_step``).
        sha256: of the source file (for `fhb import-hf`: of its ``model.safetensors``).
        num_tensors: student tensors imported.
    """

    run: Path
    student: Path
    kind: str
    step: int
    sha256: str
    num_tensors: int


_RUN_LAYOUT = frozenset({"config.yaml", "student.pt", "metrics.jsonl"})
"""What an imported run directory written before the manifest holds."""

def import_checkpoint(ckpt: Path, out: Path, config: Path | None = None, *, overwrite: bool = False) -> ImportResult:
    """Turn a student checkpoint into an fhb run directory (see the module docstring).

    Args:
        ckpt: the published ``.ckpt`` (or any student checkpoint fhb reads).
        out: the run directory to create; must not exist or be empty unless ``overwrite``.
        config: the yaml published next to ``ckpt`` (``-g``); None uses the config stored in it.
        overwrite: replace an existing non-empty ``out``.

    Raises:
        FhbError: unreadable or foreign checkpoints, configs that do not match the weights, or a
            non-empty ``out`` without ``overwrite``.
    """
    from fhb.pipeline.checkpoint_io import sha256_file
    from fhb.student.checkpoint import layout, load_student_checkpoint
    from fhb.training import run_state

    ckpt, out = Path(ckpt), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FhbError(f"import: {out} exists and is not empty; expected a new run directory; pass --overwrite "
                       "or choose another --out")
    check_imported_out(out, {"CKPT": ckpt, "--config": config}, "import-checkpoint")
    loaded = load_student_checkpoint(ckpt, config)
    if layout(loaded.model, loaded.config) == "inference":
        raise FhbError(f"{ckpt}: holds the inference layout (no intermediate heads); expected a training "
                       "checkpoint (the published .ckpt has all heads); import that one")
    sha = sha256_file(ckpt)
    record = {"source": str(ckpt.resolve()), "sha256": sha, "kind": loaded.kind, "global_step": loaded.step,
              "epoch": loaded.epoch, "config": str(Path(config).resolve()) if config else None}
    write_imported_run(out, loaded.model, loaded.config, record, epoch=loaded.epoch, step=loaded.step)
    n = len(loaded.model.state_dict())
    log.info("imported %s (%s, update %d, %d tensors) into %s", ckpt, loaded.kind, loaded.step, n, out)
    return ImportResult(out, out / run_state.STUDENT, loaded.kind, loaded.step, sha, n)


def check_imported_out(out: Path, inputs: dict[str, Path | None], command: str) -> None:
    """Refuse an ``out`` that is or contains an input, or holds files fhb did not write (before any work)."""
    from fhb.files import check_out_apart, check_replaceable

    check_out_apart(out, inputs, command)
    check_replaceable(out, command, foreign=_foreign_run_entries)


def _foreign_run_entries(run_dir: Path) -> list[str]:
    """Entries of a run directory fhb did not write (`fhb.files.foreign_entries`; its lock is fhb's)."""
    from fhb.files import foreign_entries
    from fhb.locks import LOCK_FILE

    return [name for name in foreign_entries(run_dir, _RUN_LAYOUT) if name != LOCK_FILE]


def write_imported_run(
    out: Path, model: FitHuBERT, config: FitConfig, record: dict[str, Any], *, epoch: int = 0, step: int = 0
) -> Path:
    """Write the run layout (module docstring) for an imported student, built beside ``out`` and
    swapped in (`fhb.files.build_beside`).

    Args:
        out: the run directory; replaced if it exists (the caller checked ``--overwrite``).
        model: the student, saved as read.
        config: its config.
        record: the ``fhb_import`` section (``source``, ``sha256``, ``kind``, ...), also the
            ``import`` record of ``metrics.jsonl``.
        epoch: epochs completed.
        step: optimizer updates.

    Returns:
        ``out``.
    """
    import contextlib

    import yaml

    from fhb.files import atomic_write_text, build_beside, write_manifest
    from fhb.student.checkpoint import save_student
    from fhb.training import run_state

    # an existing run is locked while it is replaced: a distill writing it refuses this (and the
    # lock of a killed one is taken over), as a second distill would be
    lock = run_state.RunLock(out) if out.is_dir() and not out.is_symlink() else None
    with lock if lock is not None else contextlib.nullcontext():
        with build_beside(out, "import", foreign=_foreign_run_entries) as tmp:
            resolved = {**config.to_dict(), "fhb_import": record}
            atomic_write_text(tmp / run_state.CONFIG, yaml.safe_dump(resolved, sort_keys=False))
            save_student(model, config, tmp / run_state.STUDENT, epoch=epoch, step=step, teacher=None,
                         extra={"imported_from": record["source"], "source_sha256": record["sha256"]})
            run_state.append_metrics(tmp, {"kind": "import", "step": step, **record})
            write_manifest(tmp, "import")
        if lock is not None:
            lock.forget()  # the old run, with its lock file, was swapped out and deleted
    return out
