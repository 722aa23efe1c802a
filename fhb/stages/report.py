"""``fhb report RUN_DIR``: loss curves (``loss_curves.png``) and a summary table of a distill run.

Reads ``RUN_DIR/metrics.jsonl`` written by `fhb.stages.distill.run_distill`: ``kind: "train"``
records (step, lr, loss, per-layer losses, steps/s, loader-wait share) and ``kind: "eval"``
records (dev loss: the published validation loss, i.e. the unweighted last-layer loss, and the
per-layer losses).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fhb.errors import FhbError
from fhb.training.run_state import read_metrics

logger = logging.getLogger(__name__)

PLOT = "loss_curves.png"


@dataclass(frozen=True)
class RunReport:
    """What `report_run` found.

    ``first_loss`` / ``last_loss``: training loss of the first and last logged step;
    ``best_dev_loss``: lowest dev validation loss and its step (None without evaluations).
    ``dev_wer`` / ``dev_cer``: the last evaluation's greedy-decoding error rates of a CTC run
    (task-specific distillation; None otherwise).
    """

    run_dir: Path
    plot: Path
    steps: int
    first_loss: float | None
    last_loss: float | None
    best_dev_loss: float | None
    best_dev_step: int | None
    mean_steps_per_s: float | None
    mean_loader_wait_share: float | None
    last_layer_losses: dict[str, float] = field(default_factory=dict)
    dev_wer: float | None = None
    dev_cer: float | None = None


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def report_run(run_dir: Path, show: bool = True) -> RunReport:
    """Write ``RUN_DIR/loss_curves.png`` and (``show``) print a rich summary table.

    Raises:
        FhbError: no ``metrics.jsonl`` or no records in it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not train and not evals:
        raise FhbError(
            f"run {run_dir}: expected train or eval records in metrics.jsonl, found none; "
            f"train for at least log_every steps"
        )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if evals:
        ax.plot([r["step"] for r in evals], [r["dev_loss"] for r in evals], "o-", label="dev loss (last layer)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("loss")
    ax = axes[1]
    source = evals or train
    names = sorted({k for r in source for k in r.get("layer_losses", {})}, key=lambda s: (len(s), s))
    for name in names:
        pts = [(r["step"], r["layer_losses"][name]) for r in source if name in r.get("layer_losses", {})]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.set_title(f"per-layer loss ({'dev' if evals else 'train'})")
    if names:
        ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    plot = run_dir / PLOT
    fig.savefig(plot, dpi=100)
    plt.close(fig)

    best = min(evals, key=lambda r: r["dev_loss"]) if evals else None
    report = RunReport(
        run_dir=run_dir,
        plot=plot,
        steps=max((int(r["step"]) for r in records), default=0),
        first_loss=train[0]["loss"] if train else None,
        last_loss=train[-1]["loss"] if train else None,
        best_dev_loss=best["dev_loss"] if best else None,
        best_dev_step=int(best["step"]) if best else None,
        mean_steps_per_s=_mean([r["steps_per_s"] for r in train if "steps_per_s" in r]),
        mean_loader_wait_share=_mean([r["loader_wait_share"] for r in train if "loader_wait_share" in r]),
        last_layer_losses=dict(source[-1].get("layer_losses", {})) if source else {},
        dev_wer=next((r["wer"] for r in reversed(evals) if r.get("wer") is not None), None),
        dev_cer=next((r["cer"] for r in reversed(evals) if r.get("cer") is not None), None),
    )
    if show:
        _print(report)
    return report


def _fmt(x: Any, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def _print(r: RunReport) -> None:
    from rich.table import Table

    from fhb.pipeline.logging_setup import console

    t = Table(title=f"distill run {r.run_dir}")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("steps", str(r.steps))
    t.add_row("train loss, first → last", f"{_fmt(r.first_loss)} → {_fmt(r.last_loss)}")
    t.add_row("best dev loss (step)", f"{_fmt(r.best_dev_loss)} ({r.best_dev_step if r.best_dev_step is not None else '-'})")
    if r.dev_wer is not None or r.dev_cer is not None:
        t.add_row("dev WER / CER (last eval, greedy CTC)", f"{_fmt(r.dev_wer, '.2%')} / {_fmt(r.dev_cer, '.2%')}")
    t.add_row("steps/s (mean)", _fmt(r.mean_steps_per_s, ".3g"))
    t.add_row("loader-wait share (mean)", _fmt(r.mean_loader_wait_share, ".1%"))
    for name, v in r.last_layer_losses.items():
        t.add_row(f"  {name} (last record)", _fmt(v))
    t.add_row("plot", str(r.plot))
    console.print(t)
