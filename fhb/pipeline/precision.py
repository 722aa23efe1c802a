"""Numeric precision: which (device, precision) pairs run, and the autocast that applies one.

``fp32`` runs anywhere. ``fp16`` needs CUDA (its loss scaling and its kernels are CUDA's).
``bf16`` runs on CUDA, and on CPU only where the caller says so (``bf16_on_cpu``): the two
stages differ on purpose —

- ``fhb distill`` trains in bf16 on CPU (``torch.autocast("cpu", torch.bfloat16)``, no scaler);
- ``fhb extract`` refuses bf16 on CPU: the teacher autocasts on CUDA only, so a CPU "bf16" run
  would silently store fp32 targets under a bf16 name.

Both stages go through `check_precision`, so the refusal reads the same.
"""

from __future__ import annotations

import contextlib

import torch

from fhb.errors import FhbError

__all__ = ["PRECISIONS", "autocast_context", "check_precision", "check_precision_name"]

PRECISIONS = ("fp32", "fp16", "bf16")


def check_precision_name(precision: str) -> None:
    """Refuse a precision other than `PRECISIONS`.

    Raises:
        FhbError: naming the value and the valid ones.
    """
    if precision not in PRECISIONS:
        raise FhbError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}; "
                       "fp16 needs --device cuda")


def check_precision(precision: str, device: str | torch.device, *, bf16_on_cpu: bool) -> None:
    """Refuse a precision the device cannot run (see the module docstring).

    Args:
        precision: one of `PRECISIONS` (checked first, with `check_precision_name`).
        device: ``cpu``, ``cuda``, ``cuda:K`` (or a ``torch.device``); only its type matters.
        bf16_on_cpu: whether bf16 is valid on a non-CUDA device (training: yes; extraction: no).

    Raises:
        FhbError: the pair is not valid, naming what to use instead.
    """
    check_precision_name(precision)
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    if kind == "cuda":
        return
    allowed = ["fp32", "bf16"] if bf16_on_cpu else ["fp32"]
    if precision not in allowed:
        raise FhbError(f"--precision {precision} on {device}: expected --device cuda; "
                       f"on {kind} use {' or '.join(allowed)}")


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in fp16/bf16 on ``device``; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def check_device(device: str, *, present: bool = True) -> torch.device:
    """``--device`` as a torch device: ``cpu``, ``cuda`` or ``cuda:K`` (with that GPU here, unless not ``present``).

    Raises:
        FhbError: another kind (``mps``, ``meta``, a typo), or a CUDA device this machine lacks.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise FhbError(f"--device {device!r}: expected cpu or cuda (or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise FhbError(f"--device {device!r}: expected cpu or cuda (or cuda:N)")
    if dev.type == "cuda" and present:
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if found <= (dev.index or 0):
            raise FhbError(f"--device {device}: this machine has {found} CUDA device(s); use --device cpu")
    return dev
