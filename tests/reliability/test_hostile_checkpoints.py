"""Hostile and broken checkpoints through the CLI (``fhb teacher-info X``, ``fhb extract --teacher X``).

Promises (docs/reliability.md, "Checkpoints"): no code named by a checkpoint ever runs: a pickle
that reaches ``os.system``, ``subprocess.Popen``, ``builtins.eval`` / ``exec``, ``getattr`` /
``importlib`` chains, anywhere in the file (top level, ``task_state``, ``cfg``, the state dict,
inside a stubbed fairseq object; zip or legacy torch format, or a bare pickle) is refused, and the
side effect did not happen. Truncated or foreign files, other architectures and configs that do
not fit their weights are refused too. Every refusal is exit status 2 and one ``error:`` line
naming the file, with no traceback, and ``extract`` writes no lake.
"""

from __future__ import annotations

import argparse
import builtins
import copy
import functools
import importlib
import io
import os
import pickle
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from fhb.pipeline.checkpoint_io import load_checkpoint

from .conftest import assert_user_error, extract_args, fhb_subprocess


class Call:
    """Pickles as ``fn(*args)``: what a hostile checkpoint plants (``fn`` may itself be a :class:`Call`)."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __call__(self, *args: Any) -> None:  # pickle wants the callable of a reduce to be callable
        raise AssertionError("never called while pickling")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


class FakeDictionary:
    """Stands for ``fairseq.data.dictionary.Dictionary`` (pickled under that name); carries a payload."""


FakeDictionary.__module__ = "fairseq.data.dictionary"
FakeDictionary.__qualname__ = "Dictionary"


@pytest.fixture(scope="module")
def clean_checkpoint(tiny_teacher_path: Path) -> dict[str, Any]:
    """The tiny teacher's checkpoint as plain containers (its task_state stubs dropped)."""
    ckpt = load_checkpoint(tiny_teacher_path)
    ckpt["task_state"] = {}
    return ckpt


def _payloads(marker: Path) -> dict[str, Any]:
    """name -> an object whose unpickling would create ``marker``."""
    cmd = f"touch {marker}"
    return {
        "os.system": Call(os.system, cmd),
        "subprocess.Popen": Call(subprocess.Popen, ["touch", str(marker)]),
        "builtins.eval": Call(builtins.eval, f"__import__('os').system({cmd!r})"),
        "builtins.exec": Call(builtins.exec, f"import os; os.system({cmd!r})"),
        "getattr-chain": Call(Call(builtins.getattr, Call(importlib.import_module, "os"), "system"), cmd),
        "functools.partial": Call(Call(functools.partial, os.system, cmd)),
        "torch.load": Call(torch.load, str(marker)),
        "argparse-smuggled": argparse.Namespace(ok=1, evil=Call(os.system, cmd)),
    }


# where in the checkpoint the payload goes
PLACES: dict[str, Callable[[dict[str, Any], Any], None]] = {
    "top-level": lambda ckpt, p: ckpt.__setitem__("evil", p),
    "task_state": lambda ckpt, p: ckpt.__setitem__("task_state", {"dictionaries": [{"symbols": ["<s>"], "x": [p]}]}),
    "cfg": lambda ckpt, p: ckpt["cfg"]["model"].__setitem__("encoder_layers", p),
    "state-dict": lambda ckpt, p: ckpt["model"].__setitem__("evil.weight", p),
    "inside-fairseq-object": lambda ckpt, p: ckpt.__setitem__("task_state", {"dictionaries": [_dictionary(p)]}),
}

REFUSED_NAME = {
    "os.system": "posix.system", "subprocess.Popen": "subprocess.Popen", "builtins.eval": "builtins.eval",
    "builtins.exec": "builtins.exec", "getattr-chain": "builtins.getattr", "functools.partial": "functools.partial",
    "torch.load": "torch.serialization.load", "argparse-smuggled": "posix.system",
}


def _dictionary(payload: Any) -> FakeDictionary:
    d = FakeDictionary()
    d.__dict__.update(symbols=["<s>", "<pad>"], count=[1, 1], indices={"<s>": 0}, evil=payload)
    return d


def _save(obj: Any, path: Path, legacy: bool = False) -> Path:
    import sys

    fake = type(sys)("fairseq.data.dictionary")
    fake.Dictionary = FakeDictionary  # pickle checks the class is importable under its name
    saved = {k: sys.modules.get(k) for k in ("fairseq", "fairseq.data", "fairseq.data.dictionary")}
    sys.modules.update({"fairseq": type(sys)("fairseq"), "fairseq.data": type(sys)("fairseq.data"),
                        "fairseq.data.dictionary": fake})
    try:
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return path


def _both_commands(cli: Any, teacher: Path, libri_root: Path, tmp_path: Path, *needles: str) -> None:
    """``teacher-info`` and ``extract`` refuse ``teacher`` with one line; no lake is written."""
    assert_user_error(cli("teacher-info", teacher), str(teacher), *needles)
    lake = tmp_path / "lake"
    assert_user_error(cli(*extract_args(teacher, libri_root, lake)), str(teacher), *needles)
    assert not lake.exists()


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("payload", list(REFUSED_NAME))
def test_code_in_checkpoint_is_refused_and_never_runs(
    payload: str, place: str, clean_checkpoint: dict[str, Any], libri_root: Path, tmp_path: Path, cli: Any
) -> None:
    marker = tmp_path / "PWNED"
    ckpt = copy.deepcopy(clean_checkpoint)
    PLACES[place](ckpt, _payloads(marker)[payload])
    teacher = _save(ckpt, tmp_path / "hostile.pt")
    _both_commands(cli, teacher, libri_root, tmp_path, "refusing to load", REFUSED_NAME[payload])
    assert not marker.exists(), "the checkpoint's code ran"


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "getattr-chain"])
def test_code_in_legacy_format_or_bare_pickle_is_refused(
    payload: str, clean_checkpoint: dict[str, Any], libri_root: Path, tmp_path: Path, cli: Any
) -> None:
    marker = tmp_path / "PWNED"
    ckpt = copy.deepcopy(clean_checkpoint)
    ckpt["task_state"] = {"dictionaries": [_payloads(marker)[payload]]}
    legacy = _save(ckpt, tmp_path / "legacy.pt", legacy=True)
    _both_commands(cli, legacy, libri_root, tmp_path, "refusing to load", REFUSED_NAME[payload])
    bare = tmp_path / "bare.pt"
    bare.write_bytes(pickle.dumps({"model": _payloads(marker)[payload]}, protocol=2))
    _both_commands(cli, bare, libri_root, tmp_path, "refusing to load")
    proto0 = tmp_path / "proto0.pt"  # Python 2 names: __builtin__.eval
    proto0.write_bytes(b"c__builtin__\neval\n(S'__import__(\"os\").system(\"touch " + str(marker).encode() + b"\")'\ntR.")
    _both_commands(cli, proto0, libri_root, tmp_path, "refusing to load", "builtins.eval")
    assert not marker.exists(), "the checkpoint's code ran"


def _torchscript(path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, its archives still exist
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return path


BROKEN: dict[str, tuple[Callable[[Path, dict[str, Any], bytes], Path], str]] = {
    # name: (write the file -> path, words the message must hold)
    "empty": (lambda p, c, raw: (p.write_bytes(b""), p)[1], "empty"),
    "truncated-10%": (lambda p, c, raw: (p.write_bytes(raw[: len(raw) // 10]), p)[1], "truncated"),
    "truncated-90%": (lambda p, c, raw: (p.write_bytes(raw[: len(raw) * 9 // 10]), p)[1], "truncated"),
    "truncated-last-byte": (lambda p, c, raw: (p.write_bytes(raw[:-1]), p)[1], "truncated"),
    "truncated-legacy": (lambda p, c, raw: _cut(_save(c, p, legacy=True)), "truncated"),
    "random-bytes": (lambda p, c, raw: (p.write_bytes(os.urandom(4096)), p)[1], "could not be read"),
    "text-file": (lambda p, c, raw: (p.write_text('{"model": {}}\n'), p)[1], "could not be read"),
    "directory": (lambda p, c, raw: (p.mkdir(), p)[1], ""),
    "torchscript": (lambda p, c, raw: _torchscript(p), "TorchScript"),
    "plain-state-dict": (lambda p, c, raw: _save(c["model"], p), "no 'model' entry"),
    "lightning-ckpt": (lambda p, c, raw: _save({"state_dict": {"student_model.x": torch.zeros(1)}, "epoch": 3,
                                                 "pytorch-lightning_version": "1.9.0"}, p), "Lightning"),
    "bare-tensor": (lambda p, c, raw: _save(torch.zeros(3), p), "holds a Tensor"),
    "model-not-tensors": (lambda p, c, raw: _save({**c, "model": {"w": [1.0, 2.0]}}, p), "parameter names to tensors"),
    "no-config": (lambda p, c, raw: _save({k: v for k, v in c.items() if k not in ("cfg", "args")}, p), "neither 'cfg'"),
}


def _cut(path: Path) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_or_foreign_file_is_refused_with_one_line(
    case: str, clean_checkpoint: dict[str, Any], tiny_teacher_path: Path, libri_root: Path, tmp_path: Path, cli: Any
) -> None:
    write, words = BROKEN[case]
    teacher = write(tmp_path / "broken.pt", copy.deepcopy(clean_checkpoint), tiny_teacher_path.read_bytes())
    if case == "directory":  # extract checks the path itself; teacher-info reads it
        assert_user_error(cli("teacher-info", teacher), str(teacher), "directory")
        assert_user_error(cli(*extract_args(teacher, libri_root, tmp_path / "lake")), str(teacher), "found a directory")
        return
    _both_commands(cli, teacher, libri_root, tmp_path, words)


def _with_model_cfg(ckpt: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(ckpt)
    out["cfg"]["model"].update(changes)
    return out


UNSUPPORTED: dict[str, tuple[dict[str, Any], str]] = {
    # name: (model cfg changes, words the message must hold)
    "wav2vec2_conformer": ({"_name": "wav2vec2_conformer"}, "'wav2vec2_conformer' model"),
    "hubert_ctc": ({"_name": "hubert_ctc"}, "fine-tuned"),
    "wav2vec2_seq2seq": ({"_name": "wav2vec2_seq2seq"}, "fine-tuned"),
    "data2vec_audio": ({"_name": "data2vec_audio"}, "'data2vec_audio' model"),
    "conformer-layers": ({"layer_type": "conformer"}, "layer_type='conformer' is not supported"),
    "deeper-pos-conv": ({"pos_conv_depth": 5}, "pos_conv_depth=5 is not supported"),
    "layers-vs-weights": ({"encoder_layers": 12}, "encoder_layers = 12 layers but the weights hold 3"),
    "layers-as-string": ({"encoder_layers": "3"}, "encoder_layers = '3'"),
    "huge-ffn": ({"encoder_ffn_embed_dim": 10**12}, "1000000000000"),
    "huge-conv-repeat": ({"conv_feature_layers": "[(32, 10, 5)] * 10**12"}, "conv layer spec"),
    "huge-conv-multiplier": ({"conv_feature_layers": "[(32, 10, 5)] * 100000000"}, "at most 1000 conv layers"),
    "code-in-conv-spec": ({"conv_feature_layers": "[__import__('os').system('touch PWNED')]"}, "conv layer spec"),
    "deep-nesting": ({"conv_feature_layers": "[" * 5000 + "]" * 5000}, "conv layer spec"),
    "heads-not-dividing": ({"encoder_attention_heads": 5}, "divisible"),
    "zero-heads": ({"encoder_attention_heads": 0}, "cannot be built"),
    "unknown-extractor": ({"extractor_mode": "group_norm_v2"}, "extractor_mode"),
    "dim-as-float": ({"encoder_embed_dim": 64.5}, "cannot be built"),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_unsupported_architecture_or_inconsistent_config_is_refused(
    case: str, clean_checkpoint: dict[str, Any], libri_root: Path, tmp_path: Path, cli: Any, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    changes, words = UNSUPPORTED[case]
    teacher = _save(_with_model_cfg(clean_checkpoint, **changes), tmp_path / f"{case}.pt")
    _both_commands(cli, teacher, libri_root, tmp_path, words)
    assert not (tmp_path / "PWNED").exists()


def test_task_normalize_must_be_boolean(clean_checkpoint: dict[str, Any], libri_root: Path, tmp_path: Path,
                                        cli: Any) -> None:
    ckpt = copy.deepcopy(clean_checkpoint)
    ckpt["cfg"]["task"]["normalize"] = "no"  # truthy: would silently normalise the waveform
    _both_commands(cli, _save(ckpt, tmp_path / "t.pt"), libri_root, tmp_path, "normalize")


def test_nan_weights_stop_extraction_before_anything_is_committed(
    clean_checkpoint: dict[str, Any], libri_root: Path, tmp_path: Path, cli: Any
) -> None:
    ckpt = copy.deepcopy(clean_checkpoint)
    ckpt["model"]["encoder.layers.0.fc1.weight"].fill_(float("nan"))
    teacher = _save(ckpt, tmp_path / "nan.pt")
    lake = tmp_path / "lake"
    assert_user_error(cli(*extract_args(teacher, libri_root, lake)), "NaN", "teacher checkpoint")
    assert not list(lake.glob("*/shard-*")) and not list(lake.glob("*/_tmp_*"))


def test_allowed_fairseq_metadata_still_loads(clean_checkpoint: dict[str, Any], tmp_path: Path, cli: Any) -> None:
    """The guard is not a blanket refusal: a fairseq Dictionary object in task_state is stubbed and loads."""
    ckpt = copy.deepcopy(clean_checkpoint)
    ckpt["task_state"] = {"dictionaries": [_dictionary(None)]}
    result = cli("teacher-info", _save(ckpt, tmp_path / "ok.pt"))
    assert result.code == 0, result.stderr[-2000:]
    assert "hubert" in result.stderr


@pytest.mark.slow
def test_hostile_checkpoint_through_the_console_script(clean_checkpoint: dict[str, Any], tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    ckpt = copy.deepcopy(clean_checkpoint)
    ckpt["task_state"] = {"dictionaries": [_payloads(marker)["os.system"]]}
    teacher = _save(ckpt, tmp_path / "hostile.pt")
    result = fhb_subprocess("teacher-info", teacher)
    assert_user_error(result, str(teacher), "refusing to load", "posix.system")
    assert not marker.exists()


def test_pickle_payloads_really_are_live(tmp_path: Path) -> None:
    """Control: unpickled with the standard pickle module, a payload does run (so the tests above mean something)."""
    marker = tmp_path / "PWNED"
    pickle.load(io.BytesIO(pickle.dumps(_payloads(marker)["getattr-chain"], protocol=2)))  # noqa: S301
    assert marker.exists()
