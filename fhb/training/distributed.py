"""Multi-process training: `torchrun` environment variables -> a process group.

``torchrun --nproc-per-node N -m fhb.cli distill ...`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; `init_distributed` reads
them and joins a process group (``nccl`` on CUDA, ``gloo`` on CPU). Without them the run is a
single process and nothing is initialised.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fhb.errors import FhbError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, metrics and the final student."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when a process group is in use (world size > 1)."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise FhbError(f"environment variable {name}: expected an integer, found {raw!r}; launch with torchrun") from e


def init_distributed(device: str) -> tuple[DistInfo, torch.device]:
    """Join the process group described by the environment (if any) and pick this rank's device.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:K``; with several processes on CUDA each rank uses
            ``cuda:LOCAL_RANK``.

    Returns:
        (the rank information, the torch device to train on).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FhbError(f"--device {device}: expected a CUDA GPU, found none; use --device cpu")
        if world > 1:
            dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    info = DistInfo(rank, world, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        logger.info("rank %d/%d joined the %s process group on %s", rank, world, backend, dev)
    return info, dev


def cleanup_distributed() -> None:
    """Leave the process group (no-op when none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()


def all_reduce_min(value: int, info: DistInfo) -> int:
    """The minimum of ``value`` over ranks (e.g. batches per epoch, so no rank waits forever)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.long)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def all_reduce_mean(values: list[float], info: DistInfo) -> list[float]:
    """The mean of each value over ranks (every rank must call it with the same number of values)."""
    if not info.enabled or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(x) / info.world_size for x in t.cpu().tolist()]


def broadcast_from_main(value: float, info: DistInfo) -> float:
    """Rank 0's ``value`` on every rank (e.g. the dev loss only rank 0 computes)."""
    if not info.enabled:
        return value
    t = torch.tensor([value if info.is_main else 0.0], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=0)
    return float(t.item())


def env_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    return _env_int("WORLD_SIZE", 1)
