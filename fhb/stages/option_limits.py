"""Bounds of the numeric command-line options: one check, one line for every value refused.

Every numeric option of every command is checked here or beside its stage before anything is
written (a test enumerates the options from the typer app and fuzzes each one). The bounds keep
values that would only exhaust the machine (10^11 worker processes, 10^20 updates) from being
taken literally.
"""

from __future__ import annotations

import math

from fhb.errors import FhbError

MAX_SEED = 2**32 - 1
"""Largest seed (numpy's seeds are 32-bit)."""
MAX_PROCESSES = 256
"""Most worker processes one command starts on this host."""
MAX_THREADS = 1024
"""Most torch threads per process."""
MAX_UPDATES = 10**9
"""Most optimiser updates (or epochs) one run may ask for."""
MAX_BATCH_SECONDS = 100_000.0
"""Largest padded audio per batch (27 hours; the distill options use the same bound)."""
MAX_HOURS = 100_000.0
"""Largest ``--shard-hours`` (a shard of more is one shard of everything anyway)."""
MAX_ACCUMULATE = 10**6
"""Most micro-batches per update."""
MAX_FIT_SECONDS = 10**7
"""Most seconds of audio a fitted codec samples (about 116 days; more is the whole split anyway)."""


def check_int(option: str, value: int | None, low: int, high: int, fix: str = "fix the value") -> None:
    """Refuse an integer option outside ``low..high`` (None: unset, accepted).

    Raises:
        FhbError: naming the option, the range and the value found.
    """
    if value is not None and not low <= value <= high:
        raise FhbError(f"{option} {value}: expected an integer in {low}..{high}; {fix}")


def check_positive_float(option: str, value: float | None, high: float, fix: str = "fix the value") -> None:
    """Refuse a float option that is not finite, not > 0 or above ``high`` (None: unset, accepted).

    Raises:
        FhbError: naming the option, the range and the value found.
    """
    if value is not None and not (math.isfinite(value) and 0 < value <= high):  # NaN fails every comparison
        raise FhbError(f"{option} {value}: expected a number > 0 and <= {high:g}; {fix}")


def check_seed(value: int, option: str = "--seed") -> None:
    """``0 <= value <= MAX_SEED``."""
    check_int(option, value, 0, MAX_SEED)


def check_fit_seconds(value: float) -> None:
    """``--fit-seconds``: a finite number of seconds > 0."""
    check_positive_float("--fit-seconds", value, MAX_FIT_SECONDS, "pass the seconds of audio to fit on, e.g. 120")
