"""A distillation run's on-disk state: atomic checkpoints, the ``latest`` pointer, RNG states.

Run directory layout::

    RUN/config.yaml                      resolved configuration (yaml sections + flags)
    RUN/metrics.jsonl                    one JSON object per logged train step / evaluation
    RUN/checkpoints/step-00000100.pt     full training state at update 100
    RUN/latest                           text: the name of the newest complete checkpoint
    RUN/student.pt                       the trained student (fhb student format), at the end
    RUN/.fhb.lock                        held by the ``fhb distill`` writing the run (`RunLock`)

Every file is written with `fhb.files.atomic_write_bytes` (temporary name, fsync,
`os.replace`, directory fsync): a crash leaves either the old file or the new one, never a torn one.
``latest`` is written the same way, after its checkpoint.
Resuming loads the checkpoint ``latest`` names; if that one does not load (damaged disk, a copy
in progress) it falls back to the newest older one that does, and logs which.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fhb.errors import FhbError
from fhb.files import atomic_torch_save, atomic_write_bytes
from fhb.locks import LOCK_FILE, FolderLock
from fhb.pipeline.checkpoint_io import RefusedCheckpointError, load_pickled

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
STUDENT = "student.pt"
FORMAT = "fhb-distill-state"
VERSION = 1


class RunLock(FolderLock):
    """The lock of a run directory, held by the one ``fhb distill`` (rank 0) that writes it.

    The lake's lock rule (`fhb.locks.FolderLock`): a second ``fhb distill`` on the run is refused
    with one line naming the holder; after a SIGKILL, the OOM killer or a power cut, ``--resume``
    takes the dead holder's lock over with a warning. A run directory the lock created is removed
    again if the run is refused before writing anything into it.
    """

    what = "run directory"
    remove_created = True


def run_entries(run_dir: Path) -> list[str]:
    """The names in ``run_dir`` other than its lock file (what makes a run directory non-empty)."""
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)


_STEP_RE = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint at update ``step``: ``step-00000100.pt``."""
    return f"step-{step:08d}.pt"


def checkpoint_step(name: str) -> int | None:
    """The update of a checkpoint file name (``step-00000100.pt`` -> 100); None for any other name."""
    m = _STEP_RE.match(name)
    return int(m.group(1)) if m else None


def rng_state(loss_generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG the training step draws from: python, numpy, torch (CPU, CUDA), the loss's."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "loss": loss_generator.get_state() if loss_generator is not None else None,
    }
    return state


def set_rng_state(state: dict[str, Any], loss_generator: torch.Generator | None = None) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loss_generator is not None and state.get("loss") is not None:
        loss_generator.set_state(state["loss"])


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int | None = None) -> Path:
    """Write ``state`` as ``checkpoints/step-XXXXXXXX.pt``, then point ``latest`` at it.

    ``keep``: keep only the newest ``keep`` checkpoints (None: keep all).
    """
    ckpt_dir = run_dir / CHECKPOINT_DIR
    path = ckpt_dir / checkpoint_name(step)
    atomic_torch_save({"format": FORMAT, "version": VERSION, "step": step, **state}, path)
    atomic_write_bytes(run_dir / LATEST, (f"{CHECKPOINT_DIR}/{path.name}\n").encode())
    logger.info("checkpoint %s written", path)
    if keep is not None and keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint files of the run, oldest first (by step)."""
    d = run_dir / CHECKPOINT_DIR
    if not d.is_dir():
        return []
    found = [(step, p) for p in d.iterdir() if (step := checkpoint_step(p.name)) is not None]
    return [p for _, p in sorted(found)]


def read_checkpoint(path: Path) -> dict[str, Any]:
    """One checkpoint file's state, validated (format, version, keys).

    Read through fhb's restricted unpickler (`fhb.pipeline.checkpoint_io.load_pickled`): tensors,
    containers, numpy RNG state; a pickle that names anything else (``os.system``) is refused
    before it runs, like a teacher or a student file.

    Raises:
        RefusedCheckpointError: code in the pickle, TorchScript, a zip bomb (never fall back past it).
        CheckpointError: missing, empty, truncated or foreign files.
        ValueError: not a checkpoint of this format/version.
    """
    state = load_pickled(path, "cpu", f"expected an `fhb distill` checkpoint ({FORMAT})")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"not an {FORMAT} file")
    if state.get("version") != VERSION:
        raise ValueError(f"version {state.get('version')}, expected {VERSION}")
    for key in ("model", "optimizer", "scheduler", "rng", "loader", "step"):
        if key not in state:
            raise ValueError(f"missing {key!r}")
    return state


def latest_target(run_dir: Path) -> Path | None:
    """The file ``RUN/latest`` names, or None without a ``latest``.

    Raises:
        FhbError: ``latest`` names a path outside the run directory (``../x``, an absolute path, a
            symlink out of it): fhb never follows it.
    """
    pointer = run_dir / LATEST
    if not pointer.is_file():
        return None
    try:
        text = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise FhbError(f"run {run_dir}: {LATEST} is unreadable ({exc}); delete it (the checkpoints stay)") from None
    named = run_dir / text
    root = run_dir.resolve()
    target = named.resolve()
    if not text or os.path.isabs(text) or target == root or root not in target.parents:
        raise FhbError(
            f"run {run_dir}: {LATEST} must name a checkpoint inside the run directory, found {text!r}; "
            f"delete {pointer} (or write e.g. {CHECKPOINT_DIR}/{checkpoint_name(1)} into it)"
        )
    return named


def load_latest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``run_dir`` that loads, or None when the run has none.

    Tries the one ``latest`` names first, then every other checkpoint newest first; each that
    fails to load is reported (warning) and skipped. Raises `FhbError` when checkpoints exist
    but none loads, when ``latest`` points outside the run, and at once for a hostile file
    (code in its pickle): someone planted it, and resuming from an older one would hide that.
    """
    candidates = list(reversed(list_checkpoints(run_dir)))
    named = latest_target(run_dir)
    if named is not None:
        if named in candidates:
            candidates.remove(named)
        candidates.insert(0, named)
    if not candidates:
        return None
    failures = []
    for i, path in enumerate(candidates):
        try:
            state = read_checkpoint(path)
        except RefusedCheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure to load means "torn or foreign": fall back
            failures.append(f"{path.name}: {type(e).__name__}: {e}")
            logger.warning("checkpoint %s does not load (%s); falling back to an older one", path, e)
            continue
        if i > 0:
            logger.warning("resuming from %s instead of the latest (%s)", path.name, "; ".join(failures))
        return path, state
    raise FhbError(
        f"run {run_dir}: expected a loadable checkpoint to resume from, found {len(candidates)} that "
        f"do not load ({'; '.join(failures[:3])}); delete the run directory or start without --resume"
    )


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``metrics.jsonl`` (flushed and fsync'ed)."""
    with open(run_dir / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Records of ``metrics.jsonl`` (a torn last line, from a kill, is skipped)."""
    path = run_dir / METRICS
    if not path.is_file():
        raise FhbError(f"run {run_dir}: expected {METRICS}, found none; point at a run directory of `fhb distill`")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s: skipping an unreadable line", path)
    return out


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop records after update ``step`` (on resume, so replayed steps are not logged twice)."""
    path = run_dir / METRICS
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(rec.get("step", 0)) <= step:
            kept.append(json.dumps(rec, sort_keys=True))
    atomic_write_bytes(path, ("\n".join(kept) + ("\n" if kept else "")).encode())
