"""The dask cluster stage one runs on: a LocalCluster sized to the machine, or an existing one."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from fhb.errors import FhbError

log = logging.getLogger(__name__)


def default_workers() -> int:
    """Worker processes for a LocalCluster: one per 4 cores (a teacher uses several threads), ≥ 1."""
    return max(1, (os.cpu_count() or 1) // 4)


def threads_per_worker(workers: int) -> int:
    """torch threads each worker's teacher should use so the workers share the cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None = None) -> Iterator["object"]:
    """A ``distributed.Client``: connected to ``scheduler`` when given, else on a new LocalCluster.

    The LocalCluster has ``workers`` single-threaded worker processes (torch threads are set per
    task), no dashboard and no nanny restarts, and is closed on exit.
    """
    from distributed import Client, LocalCluster

    for name in [n for n in logging.root.manager.loggerDict if n.startswith("distributed")] + ["distributed"]:
        logging.getLogger(name).setLevel(logging.WARNING)

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, ValueError, TypeError) as exc:  # unreachable, or not an address at all
            raise FhbError(
                f"could not connect to the dask scheduler {scheduler}: {exc}; check the address "
                f"(tcp://host:8786) or leave out --scheduler to use a local cluster"
            ) from None
        log.info("connected to dask scheduler %s (%d workers)", scheduler, len(client.scheduler_info()["workers"]))
        try:
            yield client
        finally:
            client.close()
        return
    if workers < 1:
        raise FhbError(f"--workers must be at least 1, found {workers}")
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.CRITICAL,  # a failed task is re-raised by the client (one line for an FhbError)
    )
    client = Client(cluster)
    log.info("started a local dask cluster with %d worker process(es)", workers)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
