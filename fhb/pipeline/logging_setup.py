"""Logging and terminal output: one rich console for progress bars, tables and log lines."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import Progress, ProgressColumn

console = Console(stderr=True)
"""The terminal: progress bars, tables and logs go to stderr, results to stdout."""


def transient_progress(*columns: ProgressColumn) -> Progress:
    """A progress bar on fhb's console that disappears when done, shown only on a terminal (rich
    would leave a blank line in a log or a pipe, before a command's one error line)."""
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)


def setup_logging(verbose: bool = False) -> None:
    """Route ``logging`` through rich (INFO, or DEBUG with ``verbose``); quiet noisy libraries."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=verbose, rich_tracebacks=verbose)],
        force=True,
    )
    for noisy in ("distributed", "numcodecs", "matplotlib", "asyncio", "fsspec", "zarr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
