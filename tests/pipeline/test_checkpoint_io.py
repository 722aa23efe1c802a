"""Checkpoint loading: fairseq layouts load without fairseq; hostile or broken files are refused."""

from __future__ import annotations

import argparse
import builtins
import codecs
import hashlib
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from fhb.errors import FhbError
from fhb.pipeline.checkpoint_io import (
    CheckpointError,
    InertStub,
    checkpoint_config,
    checkpoint_task_config,
    load_checkpoint,
    plain_config,
    restricted_pickle,
    sha256_file,
    stub_class,
)
from fhb.pipeline.fairseq_layout import _fairseq_dictionary_class

FAKE_MODULES = ("fairseq", "fairseq.data", "fairseq.data.dictionary")
DICT_STATE = {
    "bos_word": "<s>", "unk_word": "<unk>", "pad_word": "<pad>", "eos_word": "</s>",
    "symbols": ["<s>", "<pad>", "</s>", "<unk>", "0", "1"], "count": [1, 1, 1, 1, 5, 7],
    "indices": {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "0": 4, "1": 5},
    "bos_index": 0, "pad_index": 1, "eos_index": 2, "unk_index": 3, "nspecial": 4,
}  # fmt: skip
MODEL_CFG = {"_name": "hubert", "extractor_mode": "default", "encoder_layers": 2}
TASK_CFG = {"_name": "hubert_pretraining", "normalize": False, "labels": ["km"]}


def _state_dict() -> OrderedDict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2).state_dict()


# A stand-in ``fairseq.data.dictionary.Dictionary``, importable only inside the block: the same
# one fhb uses to write fairseq-layout checkpoints.
fake_fairseq = _fairseq_dictionary_class


@pytest.fixture
def no_fairseq(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import fairseq`` / ``import omegaconf`` fail while a test loads."""
    for name in (*FAKE_MODULES, "omegaconf"):
        monkeypatch.setitem(sys.modules, name, None)


def _save(obj: Any, path: Path, fmt: str = "zip") -> Path:
    if fmt == "zip":
        torch.save(obj, path)
    elif fmt == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as handle:
            pickle.dump(obj, handle, protocol=2)
    return path


def _fairseq_checkpoint(path: Path, fmt: str = "zip") -> Path:
    with fake_fairseq() as dictionary_cls:
        dictionary = dictionary_cls()
        dictionary.__dict__.update(DICT_STATE)
        ckpt = {
            "args": None,
            "cfg": {"model": dict(MODEL_CFG), "task": dict(TASK_CFG), "common": {"seed": 1}},
            "model": _state_dict(),
            "task_state": {"dictionaries": [dictionary]},
            "optimizer_history": [{"criterion_name": "HubertCriterion", "num_updates": 3}],
            "extra_state": {"previous_training_time": 1.5},
        }
        return _save(ckpt, path, fmt)


# ------------------------------------------------------------------------------------------
# legitimate files
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_fairseq_layout_loads_without_fairseq(tmp_path: Path, fmt: str, no_fairseq: None) -> None:
    path = _fairseq_checkpoint(tmp_path / "hubert.pt", fmt)
    ckpt = load_checkpoint(path)
    for key, value in _state_dict().items():
        torch.testing.assert_close(ckpt["model"][key], value, rtol=0, atol=0)
    (dictionary,) = ckpt["task_state"]["dictionaries"]
    assert isinstance(dictionary, InertStub)
    assert type(dictionary) is stub_class("fairseq.data.dictionary", "Dictionary")
    assert type(dictionary).fhb_qualname == "fairseq.data.dictionary.Dictionary"
    assert dictionary.state == DICT_STATE
    assert dictionary.symbols == DICT_STATE["symbols"]
    assert "fairseq.data.dictionary.Dictionary" in repr(dictionary)
    assert checkpoint_config(ckpt) == MODEL_CFG
    assert checkpoint_task_config(ckpt) == TASK_CFG


def test_stub_has_no_behaviour() -> None:
    cls = stub_class("fairseq.models.hubert", "HubertModel")
    stub = cls(1, key=2)
    assert stub.args == (1,) and stub.kwargs == {"key": 2} and stub.state == {}
    assert not callable(stub)
    with pytest.raises(AttributeError, match="no attribute 'forward'"):
        stub.forward  # noqa: B018
    stub["a"] = 1
    stub.append(2)
    assert stub.items == {"a": 1} and stub.values == [2]


def test_args_namespace_checkpoint(tmp_path: Path, no_fairseq: None) -> None:
    args = argparse.Namespace(
        arch="wav2vec2", task="audio_pretraining", normalize=True, encoder_layers=12
    )
    path = _save({"args": args, "model": _state_dict()}, tmp_path / "wav2vec_small.pt", "legacy")
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt["args"], argparse.Namespace)
    config = checkpoint_config(ckpt)
    assert config == {**vars(args), "_name": "wav2vec2"}
    task = checkpoint_task_config(ckpt)
    assert task["_name"] == "audio_pretraining" and task["normalize"] is True


def test_dictconfig_cfg_becomes_plain_dict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-saved fairseq checkpoint pickles cfg as an omegaconf DictConfig."""
    omegaconf = pytest.importorskip("omegaconf")
    cfg = {"model": {**MODEL_CFG, "conv": "[(512,10,5)]", "dropout": 0.1, "layers": [1, 2]},
           "task": {**TASK_CFG, "sample_rate": 16000, "max": None}}  # fmt: skip
    path = _save(
        {"cfg": omegaconf.OmegaConf.create(cfg), "model": _state_dict()}, tmp_path / "dc.pt"
    )
    for name in [m for m in sys.modules if m.split(".")[0] == "omegaconf"]:
        monkeypatch.setitem(sys.modules, name, None)
    ckpt = load_checkpoint(path)
    assert type(ckpt["cfg"]).fhb_qualname == "omegaconf.dictconfig.DictConfig"
    assert checkpoint_config(ckpt) == cfg["model"]
    assert checkpoint_task_config(ckpt) == cfg["task"]


def test_plain_config_conversions() -> None:
    enum_member = stub_class("fairseq.dataclass.constants", "Choices")("layer_norm")
    value = {"a": argparse.Namespace(b=[enum_member, (1, 2)]), "c": OrderedDict(d=1)}
    assert plain_config(value) == {"a": {"b": ["layer_norm", (1, 2)]}, "c": {"d": 1}}


@pytest.mark.parametrize(
    ("ckpt", "pattern"),
    [
        ({"model": {}}, "neither 'cfg'.*nor 'args'"),
        ({"cfg": {"task": {}}}, r"cfg\['model'\] should be a dict"),
        ({"args": argparse.Namespace(lr=1.0)}, "no 'arch'"),
    ],
)
def test_config_errors(ckpt: dict[str, Any], pattern: str) -> None:
    with pytest.raises(CheckpointError, match=pattern):
        checkpoint_config(ckpt)


@pytest.mark.reference
def test_real_fairseq_dictionary_is_stubbed(tmp_path: Path) -> None:
    """A Dictionary pickled by fairseq itself loads as a stub (fairseq's own class unused)."""
    pytest.importorskip("fairseq", reason="needs fairseq-fixed")
    from fairseq.data.dictionary import Dictionary

    dictionary = Dictionary()
    for symbol in "ab":
        dictionary.add_symbol(symbol)
    path = _save({"cfg": {"model": MODEL_CFG}, "model": _state_dict(),
                  "task_state": {"dictionaries": [dictionary]}}, tmp_path / "real.pt")  # fmt: skip
    loaded = load_checkpoint(path)["task_state"]["dictionaries"][0]
    assert isinstance(loaded, InertStub) and not isinstance(loaded, Dictionary)
    assert loaded.symbols == dictionary.symbols and loaded.indices == dictionary.indices


# ------------------------------------------------------------------------------------------
# hostile files
# ------------------------------------------------------------------------------------------


class _Payload:
    """Pickles as ``function(*args)``: what a hostile checkpoint embeds."""

    def __init__(self, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.function, self.args


def _payloads(marker: Path) -> dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]:
    touch = f"touch {marker}"
    return {
        "os.system": (os.system, (touch,)),
        "subprocess.Popen": (subprocess.Popen, (["touch", str(marker)],)),
        "builtins.eval": (builtins.eval, (f"__import__('os').system({touch!r})",)),
        "builtins.exec": (builtins.exec, (f"import os; os.system({touch!r})",)),
        "builtins.getattr": (builtins.getattr, (argparse.Namespace(cmd=touch), "cmd")),
        "builtins.__import__": (builtins.__import__, ("os",)),
        "torch.load": (torch.load, (str(marker),)),
        "torch._utils._import_dotted_name": (torch._utils._import_dotted_name, ("os.system",)),
        "_codecs.encode(rot13)": (codecs.encode, ("payload", "rot13")),
    }


def _qualname(function: Callable[..., Any]) -> str:
    return f"{function.__module__}.{function.__qualname__}"


def test_payload_is_live(tmp_path: Path) -> None:
    """The os.system payload runs under plain pickle, so the refusals below mean something."""
    marker = tmp_path / "MARKER"
    pickle.loads(pickle.dumps(_Payload(*_payloads(marker)["os.system"])))
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy", "raw"])
@pytest.mark.parametrize("name", list(_payloads(Path("m"))))
def test_hostile_pickle_refused(tmp_path: Path, fmt: str, name: str) -> None:
    marker = tmp_path / "MARKER"
    function, args = _payloads(marker)[name]
    # the payload first: raw pickles of tensors name torch.storage._load_from_bytes, also refused
    ckpt = {"extra_state": {"hooks": [_Payload(function, args)]}, "model": _state_dict()}
    path = _save(ckpt, tmp_path / "evil.pt", fmt)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    expected = "_codecs.encode with encoding 'rot13'" if "rot13" in name else _qualname(function)
    assert f"refusing to load {path}: the pickle references {expected}" in message
    assert "fhb only unpickles tensors" in message
    assert not marker.exists()


def test_protocol0_global_refused(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    path.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    with pytest.raises(CheckpointError, match=r"references os\.system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_raw_pickled_tensors_refused(tmp_path: Path) -> None:
    """Plain pickle stores tensors through torch.load itself; that is refused too."""
    path = _save({"model": _state_dict()}, tmp_path / "raw.pt", "raw")
    with pytest.raises(CheckpointError, match=r"torch\.storage\._load_from_bytes"):
        load_checkpoint(path)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        load_checkpoint(path)


def test_restricted_pickle_module_shape() -> None:
    assert issubclass(restricted_pickle.Unpickler, pickle.Unpickler)
    assert restricted_pickle.loads(pickle.dumps({"a": [1, 2.0, "x", None]})) == {
        "a": [1, 2.0, "x", None]
    }
    with pytest.raises(pickle.UnpicklingError, match=r"(posix|os)\.system"):
        restricted_pickle.loads(pickle.dumps(_Payload(os.system, ("true",))))


# ------------------------------------------------------------------------------------------
# broken files
# ------------------------------------------------------------------------------------------


def _broken(tmp_path: Path, case: str) -> Path:
    good = _fairseq_checkpoint(tmp_path / "good.pt")
    path = tmp_path / f"{case}.pt"
    if case == "missing":
        return path
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "truncated_zip":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "truncated_legacy":
        legacy = _fairseq_checkpoint(tmp_path / "legacy.pt", "legacy")
        path.write_bytes(legacy.read_bytes()[:-3])
    elif case == "text":
        path.write_text("this is not a checkpoint\n" * 20)
    elif case == "other_zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    elif case == "plain_pickle":
        path.write_bytes(pickle.dumps({"model": {}}))
    return path


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("missing", "does not exist"),
        ("directory", "is a directory"),
        ("empty", r"is empty \(0 bytes\)"),
        ("truncated_zip", "truncated or corrupt zip"),
        ("truncated_legacy", "could not be read"),
        ("text", "could not be read"),
        ("other_zip", "could not be read"),
        ("plain_pickle", "no torch header"),
    ],
)
def test_broken_file_refused(tmp_path: Path, case: str, pattern: str) -> None:
    path = _broken(tmp_path, case)
    with pytest.raises(CheckpointError, match=pattern) as caught:
        load_checkpoint(path)
    assert isinstance(caught.value, FhbError)
    assert str(path) in str(caught.value)
    assert "expected a fairseq checkpoint" in str(caught.value)


@pytest.mark.parametrize(
    ("obj", "pattern"),
    [
        ([1, 2], "holds a list; expected a dict with a 'model' state dict"),
        ({"cfg": {}}, r"no 'model' entry.*found keys \['cfg'\]"),
        ({"state_dict": {}}, "PyTorch Lightning"),
        ({"model": {}}, "found an empty mapping"),
        ({"model": {"w": [1.0]}}, r"'w' -> list"),
    ],
)
def test_wrong_content_refused(tmp_path: Path, obj: Any, pattern: str) -> None:
    path = _save(obj, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path)


def test_forced_weights_only_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _fairseq_checkpoint(tmp_path / "hubert.pt")
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="unset TORCH_FORCE_WEIGHTS_ONLY_LOAD"):
        load_checkpoint(path)


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = os.urandom(3 * (1 << 20) + 17)
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(CheckpointError, match="expected a file, found a directory"):
        sha256_file(tmp_path)
    with pytest.raises(CheckpointError, match="expected a file, found nothing"):
        sha256_file(tmp_path / "nope")
