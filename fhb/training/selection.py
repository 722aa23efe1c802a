"""Early stopping and the best checkpoints by dev loss (the published Lightning callbacks).

The published ``train.py`` evaluates ``dev-clean`` after every epoch, stops when the dev loss
(``v_loss``, the last teacher layer's loss) has not improved for ``patience`` (15) evaluations
(Lightning's ``EarlyStopping(monitor='v_loss', patience=15, mode='min')``), and keeps the 3 best
checkpoints by dev loss plus the last (``ModelCheckpoint(save_top_k=3, save_last=True)``).

`Selection` holds that state: `Selection.offer` is called with each dev loss and says whether the
checkpoint is among the ``keep_best`` best (the caller writes it) and which files to delete;
`Selection.should_stop` says when patience ran out. Its `state_dict` travels in the run's
checkpoints so a resumed run stops and selects exactly as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Kept", "Offer", "Selection"]


@dataclass(frozen=True)
class Kept:
    """One kept checkpoint: the update it was written after, its dev loss, its file."""

    step: int
    dev_loss: float
    path: str


@dataclass(frozen=True)
class Offer:
    """What `Selection.offer` decided: write the checkpoint to ``write`` (None: not among the best),
    delete ``drop`` (files that fell out of the best), and whether the loss improved."""

    write: Path | None
    drop: tuple[Path, ...]
    improved: bool


@dataclass
class Selection:
    """Best-``keep_best`` bookkeeping and early stopping on the dev loss (lower is better).

    Args:
        best_dir: where the best checkpoints are written (``student-STEP.pt``).
        keep_best: how many best checkpoints to keep (0: none).
        patience: evaluations without improvement before stopping (None: never stop early).
    """

    best_dir: Path
    keep_best: int = 3
    patience: int | None = 15
    kept: list[Kept] = field(default_factory=list)
    best_loss: float = float("inf")
    bad_evals: int = 0

    def offer(self, step: int, dev_loss: float) -> Offer:
        """Record the dev loss after update ``step`` (Lightning's ``min`` mode: improvement is strictly lower)."""
        improved = dev_loss < self.best_loss
        if improved:
            self.best_loss = dev_loss
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        if self.keep_best < 1:
            return Offer(None, (), improved)
        ranked = sorted([*self.kept, Kept(step, dev_loss, "")], key=lambda k: (k.dev_loss, k.step))
        if all(k.step != step for k in ranked[: self.keep_best]):
            return Offer(None, (), improved)
        path = self.best_dir / f"student-{step:08d}.pt"
        keep = [k if k.step != step else Kept(step, dev_loss, str(path)) for k in ranked[: self.keep_best]]
        drop = tuple(Path(k.path) for k in ranked[self.keep_best :] if k.path)
        self.kept = keep
        return Offer(path, drop, improved)

    def should_stop(self) -> bool:
        """Patience ran out: ``patience`` evaluations in a row without a lower dev loss."""
        return self.patience is not None and self.bad_evals >= self.patience

    @property
    def best(self) -> Kept | None:
        """The kept checkpoint with the lowest dev loss (None before any)."""
        return min(self.kept, key=lambda k: (k.dev_loss, k.step)) if self.kept else None

    def state_dict(self) -> dict[str, Any]:
        """Plain containers, for the run's checkpoint."""
        return {"kept": [[k.step, k.dev_loss, k.path] for k in self.kept], "best_loss": self.best_loss,
                "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore `state_dict`'s output (None: a checkpoint written before selection existed)."""
        if not state:
            return
        self.kept = [Kept(int(s), float(v), str(p)) for s, v, p in state["kept"]]
        self.best_loss = float(state["best_loss"])
        self.bad_evals = int(state["bad_evals"])
