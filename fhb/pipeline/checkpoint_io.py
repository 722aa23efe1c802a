"""Load fairseq checkpoints safely, without importing fairseq.

A fairseq checkpoint (``hubert_base_ls960.pt``, ``wav2vec_small.pt``, ...) is a ``torch.save``
pickle. Besides tensors it holds fairseq's own objects (``task_state`` carries pickled
``fairseq.data.dictionary.Dictionary`` instances), and older or re-saved files can hold
``argparse.Namespace`` arguments or omegaconf ``DictConfig`` configs. Plain ``torch.load`` either
needs fairseq installed (``weights_only=False``, which also runs any code a hostile file names)
or refuses the file (``weights_only=True``).

:func:`load_checkpoint` passes torch a restricted pickle module, :data:`restricted_pickle`,
whose unpickler resolves globals from an explicit allow-list only:

* tensor reconstruction: ``torch._utils._rebuild_tensor{,_v2,_v3}``,
  ``torch._utils._rebuild_parameter{,_with_state}``, ``torch._tensor._rebuild_from_type_v2``,
  ``torch.Tensor``, ``torch.nn.parameter.Parameter``, storage types, dtypes, ``torch.Size``,
  ``torch.device``, ``torch.serialization._get_layout``;
* containers and metadata: ``collections.OrderedDict``, ``collections.defaultdict``,
  ``argparse.Namespace``, ``builtins`` ``set``/``frozenset`` and the plain types omegaconf
  records as type annotations (``dict``, ``list``, ``tuple``, ``str``, ``int``, ``float``,
  ``bool``, ``bytes``), ``typing.Any``, ``_codecs.encode`` (latin-1 only: how protocol 2 stores
  ``bytes``);
* numpy scalars and arrays: ``numpy.core.multiarray.scalar`` / ``numpy._core.multiarray.scalar``,
  ``..._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``, ``numpy.dtypes.*DType``;
* any ``fairseq.*`` or ``omegaconf.*`` global becomes an :class:`InertStub` subclass of that
  name: it records the state, items and arguments pickle hands it and has no behaviour.
  :func:`plain_config` turns stubbed omegaconf containers back into dicts and lists.
  ``pytorch_lightning.*`` and ``s3prl.*`` globals are stubbed the same way: the published
  FitHuBERT Lightning ``.ckpt`` pickles training metadata of those packages (its optimizer state
  holds an ``s3prl.optimizers.WarmupLinearSchedule``), which fhb.student reads past.

Anything else (``os.system``/``posix.system``, ``subprocess.Popen``, ``builtins.eval``,
``builtins.getattr``, ``torch.load`` ...) is refused when the unpickler meets the global, i.e.
before the call that would use it, with a :class:`CheckpointError` that names it. TorchScript
archives are refused before torch sees them (``torch.load`` would hand them to
``torch.jit.load``).
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import io
import logging
import os
import pickle
import struct
import tarfile
import threading
import types
import typing
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np
import torch

from fhb import files
from fhb.errors import FhbError

__all__ = [
    "CheckpointError",
    "InertStub",
    "RefusedCheckpointError",
    "RefusedGlobalError",
    "check_zip_archive",
    "checkpoint_config",
    "checkpoint_task_config",
    "load_checkpoint",
    "load_pickled",
    "plain_config",
    "restricted_pickle",
    "sha256_file",
    "stub_class",
]

logger = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"
_STUBBED_PACKAGES = ("fairseq", "omegaconf", "pytorch_lightning", "s3prl")  # last two: FitHuBERT .ckpt metadata
_LATIN1_NAMES = frozenset({"latin1", "latin-1", "latin_1", "iso8859-1", "iso-8859-1"})


class CheckpointError(FhbError):
    """A checkpoint file fhb cannot or will not load; the message names the file and the fix."""


class RefusedCheckpointError(CheckpointError):
    """A checkpoint refused as hostile (code in the pickle, TorchScript, a zip bomb), not as damaged.

    Callers that fall back to an older file on a damaged one (``fhb distill --resume``) must not
    fall back past this one: it says someone planted the file.
    """


class RefusedGlobalError(pickle.UnpicklingError):
    """Raised by :data:`restricted_pickle` for a global outside the allow-list.

    Attributes:
        qualname: ``"module.name"`` of the refused global, e.g. ``"posix.system"``.
    """

    def __init__(self, qualname: str) -> None:
        self.qualname: str = qualname
        super().__init__(f"global {qualname} is not on fhb's checkpoint allow-list")


# --------------------------------------------------------------------------------------------
# Inert stand-ins for fairseq / omegaconf classes
# --------------------------------------------------------------------------------------------


class InertStub:
    """Base of the stand-ins created for ``fairseq.*`` and ``omegaconf.*`` globals.

    A stub records what pickle gives it and does nothing else: constructor arguments
    (:attr:`args`, :attr:`kwargs`; how enums and ``__reduce__``-based classes pickle), the
    ``__setstate__`` state as a dict (:attr:`state`; a non-dict state is kept under
    ``"state"``), dict items (:attr:`items`) and list items (:attr:`values`). Reading a missing
    public attribute looks it up in :attr:`state`, so ``dictionary.symbols`` works on a stubbed
    ``fairseq.data.dictionary.Dictionary``.

    Each stubbed global gets its own subclass (see :func:`stub_class`) whose ``fhb_qualname`` is
    the global's ``"module.name"``.
    """

    fhb_qualname: ClassVar[str] = ""

    _fhb_args: tuple[Any, ...]
    _fhb_kwargs: dict[str, Any]
    _fhb_state: dict[str, Any]
    _fhb_items: dict[Any, Any]
    _fhb_values: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> InertStub:
        """Create an empty stub recording the arguments (pickle's NEWOBJ/REDUCE call this)."""
        obj = super().__new__(cls)
        object.__setattr__(obj, "_fhb_args", args)
        object.__setattr__(obj, "_fhb_kwargs", dict(kwargs))
        object.__setattr__(obj, "_fhb_state", {})
        object.__setattr__(obj, "_fhb_items", {})
        object.__setattr__(obj, "_fhb_values", [])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accept and ignore constructor arguments (``__new__`` already recorded them)."""

    def __setstate__(self, state: Any) -> None:
        """Record pickle's BUILD state; ``(dict_state, slot_state)`` pairs are merged."""
        if isinstance(state, dict):
            recorded = dict(state)
        elif (
            isinstance(state, tuple)
            and len(state) == 2
            and all(part is None or isinstance(part, dict) for part in state)
        ):
            recorded = {**(state[0] or {}), **(state[1] or {})}
        else:
            recorded = {"state": state}
        object.__setattr__(self, "_fhb_state", recorded)

    def __setitem__(self, key: Any, value: Any) -> None:
        """Record a dict item (pickle's SETITEM(S) for dict subclasses)."""
        self._fhb_items[key] = value

    def append(self, value: Any) -> None:
        """Record a list item (pickle's APPEND for list subclasses)."""
        self._fhb_values.append(value)

    def extend(self, values: Any) -> None:
        """Record list items (pickle's APPENDS for list subclasses)."""
        self._fhb_values.extend(values)

    @property
    def state(self) -> dict[str, Any]:
        """The state pickle restored (the original object's ``__dict__`` for plain classes)."""
        return self._fhb_state

    @property
    def args(self) -> tuple[Any, ...]:
        """Positional constructor arguments (an enum member's value, for instance)."""
        return self._fhb_args

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword constructor arguments."""
        return self._fhb_kwargs

    @property
    def items(self) -> dict[Any, Any]:
        """Dict items, for stubs of dict subclasses."""
        return self._fhb_items

    @property
    def values(self) -> list[Any]:
        """List items, for stubs of list subclasses."""
        return self._fhb_values

    def __getattr__(self, name: str) -> Any:
        """Look a missing public attribute up in the recorded state."""
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._fhb_state[name]
        except KeyError:
            raise AttributeError(
                f"stub of {self.fhb_qualname} has no attribute {name!r}; recorded state keys: "
                f"{sorted(map(str, self._fhb_state))}"
            ) from None

    def __repr__(self) -> str:
        """Show the stubbed name and what was recorded."""
        parts = [f"state keys={sorted(map(str, self._fhb_state))}"]
        if self._fhb_args:
            parts.append(f"args={self._fhb_args!r}")
        return f"<inert stub of {self.fhb_qualname}: {', '.join(parts)}>"


_stub_classes: dict[str, type[InertStub]] = {}
_stub_lock = threading.Lock()


def stub_class(module: str, name: str) -> type[InertStub]:
    """The :class:`InertStub` subclass standing for ``module.name`` (one class per name).

    Args:
        module: the global's module, e.g. ``"fairseq.data.dictionary"``.
        name: the global's (qualified) name, e.g. ``"Dictionary"``.
    """
    qualname = f"{module}.{name}"
    with _stub_lock:
        cls = _stub_classes.get(qualname)
        if cls is None:
            cls = types.new_class(
                name.rpartition(".")[2] or "Stub",
                (InertStub,),
                exec_body=lambda ns: ns.update(
                    {"__module__": module, "__qualname__": name, "fhb_qualname": qualname}
                ),
            )
            _stub_classes[qualname] = cls
    return cls


# --------------------------------------------------------------------------------------------
# The allow-list and the restricted pickle module
# --------------------------------------------------------------------------------------------


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``: latin-1 only.

    The encoding is compared as a string, never looked up, so a pickle cannot make the codec
    registry import anything.
    """
    if encoding not in _LATIN1_NAMES:
        raise RefusedGlobalError(f"_codecs.encode with encoding {encoding!r}")
    if not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode expects a str, found {type(text).__name__}")
    return text.encode("latin1")


def _numpy_multiarray() -> types.ModuleType:
    """numpy's ``multiarray`` module (``numpy._core`` from numpy 2, ``numpy.core`` before)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray


def _build_allow_list() -> dict[tuple[str, str], Any]:
    """Every allowed ``(module, name)`` besides torch dtypes/storages and numpy DTypes."""
    multiarray = _numpy_multiarray()
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,
        ("argparse", "Namespace"): argparse.Namespace,
        ("_codecs", "encode"): _latin1_encode,
        ("typing", "Any"): typing.Any,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch", "Tensor"): torch.Tensor,
        ("torch._tensor", "Tensor"): torch.Tensor,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
        ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
    }
    for name in (
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
    ):
        function = getattr(torch._utils, name, None)
        if function is not None:
            allowed[("torch._utils", name)] = function
    for builtin in (set, frozenset, dict, list, tuple, str, int, float, bool, bytes):
        allowed[("builtins", builtin.__name__)] = builtin
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "scalar")] = multiarray.scalar
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
    for storage in torch._storage_classes:
        name = storage.__name__
        if storage in (torch.storage.TypedStorage, torch.storage.UntypedStorage):
            value: Any = storage
        else:
            value = torch.serialization.StorageType(name)  # type: ignore[no-untyped-call]
        allowed[(storage.__module__, name)] = value
        allowed.setdefault(("torch", name), value)
    return allowed


_ALLOWED: dict[tuple[str, str], Any] = _build_allow_list()


def _resolve_global(module: str, name: str) -> Any:
    """Map a pickle global to an allowed object or a stub; raise for anything else."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    allowed = _ALLOWED.get((module, name))
    if allowed is not None:
        return allowed
    if module == "torch":
        value = vars(torch).get(name)  # vars(): never trigger torch's lazy submodule imports
        if isinstance(value, torch.dtype):
            return value
    if module == "numpy.dtypes" and name.endswith("DType"):
        value = vars(np.dtypes).get(name)
        if isinstance(value, type) and issubclass(value, np.dtype):
            return value
    if module.partition(".")[0] in _STUBBED_PACKAGES:
        return stub_class(module, name)
    raise RefusedGlobalError(f"{module}.{name}")


class Unpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves globals through fhb's allow-list only."""

    def find_class(self, module: str, name: str) -> Any:
        """Return the allowed object, or a stub for fairseq/omegaconf; refuse everything else."""
        return _resolve_global(module, name)


def _restricted_load(file: BinaryIO, **kwargs: Any) -> Any:
    """``pickle.load`` through :class:`Unpickler`."""
    return Unpickler(file, **kwargs).load()


def _restricted_loads(data: bytes, **kwargs: Any) -> Any:
    """``pickle.loads`` through :class:`Unpickler`."""
    return Unpickler(io.BytesIO(data), **kwargs).load()


restricted_pickle: types.ModuleType = types.ModuleType(
    "fhb_restricted_pickle",
    "The pickle module fhb hands to torch.load: Unpickler/load/loads with fhb's allow-list.",
)
restricted_pickle.Unpickler = Unpickler  # type: ignore[attr-defined]
restricted_pickle.load = _restricted_load  # type: ignore[attr-defined]
restricted_pickle.loads = _restricted_loads  # type: ignore[attr-defined]
restricted_pickle.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

# What torch.load raises for files that are not (complete) torch checkpoints: zip readers
# (BadZipFile, RuntimeError "PytorchStreamReader failed ..."), the legacy tar/pickle readers
# (TarError, EOFError, UnpicklingError, RuntimeError "Invalid magic number"), and malformed
# pickles (ValueError, KeyError, IndexError, TypeError, struct.error, UnicodeDecodeError,
# AssertionError from torch's own consistency checks).
_CORRUPT_FILE_ERRORS: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError,
    EOFError,
    zipfile.BadZipFile,
    tarfile.TarError,
    RuntimeError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    struct.error,
    UnicodeDecodeError,
    AssertionError,
)

_EXPECTED = "expected a fairseq checkpoint saved by torch.save"
_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def _check_file(path: Path, expected: str = _EXPECTED) -> None:
    """Refuse missing, directory, empty and TorchScript files before torch opens them."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; {expected}; check the path")
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a directory; {expected} (a .pt file); pass the file inside it"
        )
    if not path.is_file():  # a FIFO would block the read below, a device never end
        raise CheckpointError(
            f"checkpoint {path} is {files.file_kind(path.stat().st_mode)}; {expected} (a regular .pt file); "
            "check the path"
        )
    with open(path, "rb") as handle:
        magic = handle.read(len(_ZIP_MAGIC))
    if not magic:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes); {expected}; re-download or re-copy it"
        )
    if magic != _ZIP_MAGIC:
        return  # legacy (pre-1.6) torch format or not a checkpoint: torch.load decides
    check_zip_archive(path, expected)


def check_zip_archive(path: Path, expected: str) -> None:
    """Refuse a torch zip archive that is corrupt, TorchScript or a decompression bomb, before reading it.

    ``torch.save`` stores every entry uncompressed, so an entry that is compressed, or that
    declares more bytes than the whole file holds, is refused from the zip directory alone,
    before anything is decompressed or allocated. ``expected``: what the caller wanted, for the
    message.

    Raises:
        CheckpointError: a truncated or corrupt archive.
        RefusedCheckpointError: TorchScript, or entries whose declared sizes the file cannot hold.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile as error:
        raise CheckpointError(
            f"checkpoint {path} is a truncated or corrupt zip archive ({error}); {expected}; "
            "re-download it and compare its sha256"
        ) from error
    if any(info.filename.split("/", 1)[-1] == "constants.pkl" for info in infos):
        raise RefusedCheckpointError(
            f"refusing to load {path}: it is a TorchScript archive (it holds constants.pkl), "
            f"which torch.load would execute through torch.jit.load; {expected}"
        )
    size = path.stat().st_size
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size or info.file_size > size:
            raise RefusedCheckpointError(
                f"refusing to load {path}: its zip entry {info.filename} declares {info.file_size} bytes "
                f"({info.compress_size} stored, method {info.compress_type}) in a {size}-byte file; torch.save "
                f"stores entries uncompressed and within the file; {expected}: use the publisher's file"
            )


def load_pickled(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu", expected: str = _EXPECTED
) -> object:
    """``torch.load`` of any checkpoint fhb opens, through the restricted unpickler.

    The file checks of :func:`load_checkpoint` (missing, directory, empty, TorchScript, zip bomb)
    come first; nothing named by the pickle outside the allow-list is ever called.
    ``expected``: what the caller wants (for messages), e.g. ``"expected an fhb distill checkpoint"``.

    Raises:
        RefusedCheckpointError: code in the pickle, TorchScript, a zip bomb.
        CheckpointError: missing, empty, truncated or foreign files.
    """
    path = Path(path)
    _check_file(path, expected)
    if os.environ.get(_FORCE_WEIGHTS_ONLY, "0").lower() in ("1", "y", "yes", "true"):
        raise CheckpointError(
            f"cannot load {path}: {_FORCE_WEIGHTS_ONLY} is set, which makes torch.load refuse "
            "fhb's restricted unpickler (fairseq checkpoints need it for their metadata); "
            f"unset {_FORCE_WEIGHTS_ONLY}"
        )
    try:
        return torch.load(
            path,
            map_location=map_location,
            weights_only=False,
            pickle_module=restricted_pickle,
            mmap=False,
        )
    except RefusedGlobalError as error:
        raise RefusedCheckpointError(
            f"refusing to load {path}: the pickle references {error.qualname}, which no "
            "checkpoint fhb reads needs (nothing ran); fhb only unpickles tensors, containers and "
            "inert fairseq metadata; use the original file from its publisher"
        ) from None
    except _CORRUPT_FILE_ERRORS as error:
        found = f"{type(error).__name__}: {error}"
        if "Invalid magic number" in str(error):
            found = "no torch header (a plain pickle or another format)"
        raise CheckpointError(
            f"checkpoint {path} could not be read: {expected}, found {found}; the file is "
            "truncated, corrupt or not a checkpoint: re-download it and compare its sha256"
        ) from error


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Load a fairseq checkpoint through the restricted unpickler.

    Args:
        path: the ``.pt`` file (zip format, or torch's legacy pre-1.6 format).
        map_location: where tensors go, as for :func:`torch.load`.

    Returns:
        The checkpoint dict. Its ``"model"`` entry is a state dict (str → tensor); fairseq and
        omegaconf objects inside are :class:`InertStub` instances.

    Raises:
        CheckpointError: the file is missing, a directory, empty, truncated, not a torch
            checkpoint, a TorchScript archive, names a global outside the allow-list, or does
            not hold a dict with a non-empty ``"model"`` state dict.
    """
    path = Path(path)
    checkpoint = load_pickled(path, map_location)
    validated = _validate(path, checkpoint)
    logger.debug("loaded %s: keys %s", path, sorted(map(str, validated)))
    return validated


def _validate(path: Path, checkpoint: object) -> dict[str, Any]:
    """Return ``checkpoint`` if it is a dict with a non-empty ``"model"`` state dict; else raise."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}; expected a dict with a "
            "'model' state dict (fairseq's layout); pass a fairseq checkpoint"
        )
    if "model" not in checkpoint:
        keys = sorted(map(str, checkpoint))
        hint = (
            " (it has 'state_dict': a PyTorch Lightning file such as a FitHuBERT student)"
            if "state_dict" in checkpoint
            else ""
        )
        raise CheckpointError(
            f"checkpoint {path} has no 'model' entry; expected fairseq's layout "
            f"('model', 'cfg' or 'args', ...), found keys {keys}{hint}; pass a fairseq checkpoint"
        )
    model = checkpoint["model"]
    if not isinstance(model, Mapping) or not model:
        found = "an empty mapping" if isinstance(model, Mapping) else type(model).__name__
        raise CheckpointError(
            f"checkpoint {path}: 'model' should be a state dict (parameter name -> tensor), "
            f"found {found}; pass a fairseq checkpoint that includes the weights"
        )
    for key, value in model.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {path}: 'model' should map parameter names to tensors, found "
                f"{key!r} -> {type(value).__name__}; pass a fairseq checkpoint"
            )
    return checkpoint


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a checkpoint file (`fhb.files.sha256_file`), with a user error for a non-file.

    Raises:
        CheckpointError: ``path`` is missing or not a regular file.
    """
    path = Path(path)
    if not path.is_file():
        found = "a directory" if path.is_dir() else "nothing"
        raise CheckpointError(f"cannot hash {path}: expected a file, found {found}; check the path")
    return files.sha256_file(path)


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------

_DICTCONFIG = "omegaconf.dictconfig.DictConfig"
_LISTCONFIG = "omegaconf.listconfig.ListConfig"
_NODES_MODULE = "omegaconf.nodes."


def plain_config(value: Any) -> Any:
    """Turn a config value into plain Python containers, recursively.

    * stubbed omegaconf ``DictConfig``/``ListConfig`` → ``dict``/``list`` of their ``_content``
      (interpolations stay as their ``"${...}"`` strings, missing values as ``"???"``);
      stubbed value nodes (``AnyNode``, ``StringNode``, ...) → their ``_val``;
    * ``argparse.Namespace`` → ``dict``; other mappings → ``dict``; lists and tuples keep
      their type;
    * a stub built from one positional argument and nothing else (how an ``Enum`` member
      pickles) → that argument;
    * anything else is returned unchanged.
    """
    if isinstance(value, InertStub):
        qualname = type(value).fhb_qualname
        if qualname == _DICTCONFIG:
            content = value.state.get("_content")
            if isinstance(content, Mapping):
                return {plain_config(k): plain_config(v) for k, v in content.items()}
            return content  # None, "???" or an interpolation string
        if qualname == _LISTCONFIG:
            content = value.state.get("_content")
            if isinstance(content, list):
                return [plain_config(item) for item in content]
            return content
        if qualname.startswith(_NODES_MODULE):
            return plain_config(value.state.get("_val"))
        if len(value.args) == 1 and not value.state and not value.kwargs:
            return plain_config(value.args[0])
        return value
    if isinstance(value, argparse.Namespace):
        return {k: plain_config(v) for k, v in vars(value).items()}
    if isinstance(value, Mapping):
        return {k: plain_config(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_config(item) for item in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(plain_config(item) for item in value)
    return value


def _config_section(ckpt: Mapping[str, Any], section: str, name_key: str) -> dict[str, Any]:
    """``cfg[section]`` as a plain dict, or the legacy ``args`` with ``_name`` from ``name_key``."""
    cfg = ckpt.get("cfg")
    if cfg is not None:
        plain = plain_config(cfg)
        if not isinstance(plain, dict):
            raise CheckpointError(
                f"checkpoint 'cfg' should be a dict, found {type(plain).__name__}; "
                "pass a fairseq checkpoint"
            )
        part = plain.get(section)
        if not isinstance(part, dict):
            raise CheckpointError(
                f"checkpoint cfg[{section!r}] should be a dict, found "
                f"{type(part).__name__}; cfg holds {sorted(map(str, plain))}; "
                "pass a fairseq checkpoint"
            )
        return part
    args = ckpt.get("args")
    if args is not None:
        plain_args = plain_config(args)
        if not isinstance(plain_args, dict):
            raise CheckpointError(
                "checkpoint 'args' should be an argparse.Namespace, found "
                f"{type(args).__name__}; pass a fairseq checkpoint"
            )
        name = plain_args.get(name_key)
        if not isinstance(name, str):
            raise CheckpointError(
                f"checkpoint 'args' has no {name_key!r} to name the {section}; found "
                f"{sorted(plain_args)}; pass a fairseq checkpoint"
            )
        return {**plain_args, "_name": name}
    raise CheckpointError(
        "checkpoint has neither 'cfg' (fairseq >= 0.10) nor 'args' (older fairseq); found "
        f"keys {sorted(map(str, ckpt))}; pass a fairseq checkpoint"
    )


def checkpoint_config(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The model config of a loaded checkpoint, as a plain dict.

    ``ckpt["cfg"]["model"]`` for fairseq >= 0.10 files (a dict, or a stubbed ``DictConfig``
    converted by :func:`plain_config`); for older files (``wav2vec_small.pt``) the fields of the
    ``args`` Namespace, with ``"_name"`` set from ``args.arch`` (e.g. ``"wav2vec2"``).

    Raises:
        CheckpointError: the checkpoint has neither layout.
    """
    return _config_section(ckpt, "model", "arch")


def checkpoint_task_config(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The task config (``normalize``, ``sample_rate``, ...) of a loaded checkpoint.

    ``ckpt["cfg"]["task"]`` or, for older files, the ``args`` fields with ``"_name"`` set from
    ``args.task`` (e.g. ``"audio_pretraining"``).

    Raises:
        CheckpointError: the checkpoint has neither layout.
    """
    return _config_section(ckpt, "task", "task")
