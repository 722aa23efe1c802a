"""Fault points: numbered filesystem operations of an extraction, where a test kills or pauses it.

Every lake write fhb makes goes through a handful of calls: zarr's ``LocalStore`` writes each
file (chunk, ``zarr.json``) to a temporary name and renames it into place
(``zarr.storage._local._put``), a shard is committed with ``os.rename``, leftovers are removed
with ``shutil.rmtree``, and the lake lock is created and removed with ``os.open`` /
``os.unlink``. :func:`install` wraps those calls; each one is an *operation* with a 1-based
number, and operation ``at`` triggers ``action``:

* ``count``: nothing (the operations are only counted and described, see :data:`LOG`);
* ``kill``: ``SIGKILL`` the process right there (the crash a power cut or the OOM killer makes);
* ``pause``: block that thread forever (a slow extraction that holds the lock);
* ``enospc``: raise ``OSError(ENOSPC)`` from that operation and every later write (disk full).

``put`` gets two operations: one before the temporary file is written and one after it is
written but before it is renamed into place, so a kill can leave a ``*.partial`` file behind.

``install(..., ops=("fsync", "replace"))`` numbers ``os.fsync`` and ``os.replace`` calls instead:
the points where ``fhb distill`` makes a metrics line, a checkpoint or ``latest`` durable.

In a subprocess the hook is installed by a generated ``sitecustomize.py`` (see
:func:`sitecustomize_dir`) from the environment: ``FHB_FAULT=kill:17`` and optionally
``FHB_FAULT_LOG=/path`` (each operation is appended there as it starts), ``FHB_FAULT_OPS=run`` for
:data:`RUN_OPS`.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

ACTIONS = ("count", "kill", "pause", "enospc")

LOG: list[str] = []
"""Descriptions of the operations seen since :func:`install`, in order."""

_state: dict[str, Any] = {"action": "count", "at": 0, "n": 0, "log": None, "failing": False}
_lock = threading.Lock()
_originals: dict[str, Any] = {}


def _op(what: str) -> None:
    """Number one operation; trigger the action when it is operation ``at``."""
    with _lock:
        _state["n"] += 1
        n = _state["n"]
        LOG.append(what)
        if _state["log"]:
            with open(_state["log"], "a") as f:
                f.write(f"{n} {what}\n")
        fire = _state["action"] != "count" and (n == _state["at"] or (_state["failing"] and "write" in what))
    if not fire:
        return
    action = _state["action"]
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # never reached
    elif action == "pause":
        while True:
            time.sleep(3600)
    elif action == "enospc":
        _state["failing"] = True
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _is_lock(path: Any) -> bool:
    return str(path).endswith(".fhb.lock")


LAKE_OPS = ("lake",)
RUN_OPS = ("fsync", "replace")


def install(action: str = "count", at: int = 0, log: str | None = None, ops: tuple[str, ...] = LAKE_OPS) -> None:
    """Wrap the filesystem calls (idempotent: a second call only resets the counter)."""
    if action not in ACTIONS:
        raise ValueError(f"fault action {action!r}: expected one of {ACTIONS}")
    _state.update(action=action, at=at, n=0, log=log, failing=False)
    LOG.clear()
    if _originals:
        return
    if ops == RUN_OPS:
        _install_run_ops()
    else:
        _install_lake_ops()


def _install_run_ops() -> None:
    _originals.update(fsync=os.fsync, replace=os.replace)

    def fsync(fd: int) -> None:
        _op(f"fsync {fd}")
        _originals["fsync"](fd)

    def replace(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
        _op(f"os.replace {src} -> {dst}")
        _originals["replace"](src, dst, *a, **kw)

    os.fsync = fsync
    os.replace = replace


def _install_lake_ops() -> None:
    import zarr.storage._local as local

    _originals.update(put=local._put, rename=os.rename, rmtree=shutil.rmtree, open=os.open, unlink=os.unlink)
    safe_move = local._safe_move

    def put(path: Path, value: Any, exclusive: bool = False) -> int:
        _op(f"write {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.urandom(6).hex()}.partial")
        try:
            with tmp.open("wb") as f:
                written = f.write(value.as_buffer_like())
            _op(f"replace {path}")
            if exclusive:
                safe_move(tmp, path)
            else:
                tmp.replace(path)
        except Exception:
            tmp.unlink(missing_ok=True)
            raise
        return written

    def rename(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
        _op(f"rename {src} -> {dst}")
        _originals["rename"](src, dst, *a, **kw)

    def rmtree(path: Any, *a: Any, **kw: Any) -> None:
        _op(f"rmtree {path}")
        _originals["rmtree"](path, *a, **kw)

    def open_(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        if _is_lock(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):  # reading a lock writes nothing
            _op(f"write lock {path}")
        return _originals["open"](path, flags, *a, **kw)

    def unlink(path: Any, *a: Any, **kw: Any) -> None:
        if _is_lock(path):
            _op(f"unlock {path}")
        _originals["unlink"](path, *a, **kw)

    local._put = put
    os.rename = rename
    shutil.rmtree = rmtree
    os.open = open_
    os.unlink = unlink


def uninstall() -> None:
    """Restore the original calls."""
    if "put" in _originals:
        import zarr.storage._local as local

        local._put = _originals["put"]
    for name, module in (("rename", os), ("open", os), ("unlink", os), ("fsync", os), ("replace", os),
                         ("rmtree", shutil)):
        if name in _originals:
            setattr(module, name, _originals[name])
    _originals.clear()


def operations() -> int:
    """Operations numbered since :func:`install`."""
    return int(_state["n"])


def install_from_env() -> None:
    """Install from ``FHB_FAULT=<action>:<at>`` (and ``FHB_FAULT_LOG``); no-op when unset."""
    spec = os.environ.get("FHB_FAULT")
    if not spec:
        return
    action, _, at = spec.partition(":")
    ops = RUN_OPS if os.environ.get("FHB_FAULT_OPS") == "run" else LAKE_OPS
    install(action, int(at or 0), os.environ.get("FHB_FAULT_LOG"), ops)


def sitecustomize_dir(where: Path) -> Path:
    """A directory holding a ``sitecustomize.py`` that installs this module from the environment.

    Put it on ``PYTHONPATH`` of a subprocess (e.g. ``python -m fhb.cli extract ...``).
    """
    where.mkdir(parents=True, exist_ok=True)
    (where / "sitecustomize.py").write_text(
        "import importlib.util, os\n"
        "if os.environ.get('FHB_FAULT'):\n"
        f"    _spec = importlib.util.spec_from_file_location('fhb_test_faults', {str(Path(__file__))!r})\n"
        "    _mod = importlib.util.module_from_spec(_spec)\n"
        "    _spec.loader.exec_module(_mod)\n"
        "    _mod.install_from_env()\n"
    )
    return where
