"""Every numeric option of every command, and every numeric field of the student yaml, fuzzed.

Promise (docs/reliability.md, "Every user error is one line"): NaN, infinite, negative, zero and
huge numbers in any option or yaml field either work or are refused with exit status 2 and one
``error:`` line (or click's usage error for values that are not of the option's type); never a
traceback, never a hang, never a half-made output that blocks the rerun.

The options are read from the typer app itself (``numeric_options``), so an option added later is
fuzzed without touching this file; a command with numeric options needs one valid base command
line in ``_base_args`` (a test fails until it has one). The yaml fields are read from the packaged
tiny config's ``distiller``, ``train`` and ``optimizer`` sections the same way.

Runs that a value would make long are cut short once every check has passed: ``fhb distill``
stops after its first update (``stop_after=1``), ``fhb demo`` stops once it claimed its folder
(a sentinel), the rest run to completion on the fixture.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import TRACEBACK, CliResult, extract_args

FUZZ = settings(max_examples=10, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

HOSTILE_FLOATS = ["nan", "inf", "-inf", "-1", "0", "-0.0", "1e308", "1e-308", "1e12"]
HOSTILE_INTS = ["-1", "0", "-9223372036854775809", str(2**63), str(10**12), str(2**70)]


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def numeric_options() -> list[tuple[tuple[str, ...], str, str]]:
    """``(command path, --option, "int" | "float")`` for every numeric option in the typer app."""
    import typer

    from fhb.cli import app

    found = []
    for path, command in _commands(typer.main.get_command(app)):
        for param in command.params:
            annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)  # typer >= 0.16
            if annotation is None:  # older typer: click's parameter type
                annotation = {"integer": int, "float": float}.get(getattr(getattr(param, "type", None), "name", ""))
            kind = {int: "int", float: "float"}.get(annotation)
            if kind and param.opts[0].startswith("-") and not getattr(param, "is_flag", False):
                flag = max(param.opts, key=len)
                found.append((path, flag, kind))
    return found


OPTIONS = numeric_options()


def test_the_app_has_the_numeric_options_this_file_expects() -> None:
    """A sanity check of the enumeration itself (a typer/click upgrade must not make it empty)."""
    flags = {(" ".join(p), o) for p, o, _ in OPTIONS}
    assert {("distill", "--lr"), ("distill", "--seed"), ("extract", "--shard-hours"), ("evaluate", "--batch-size"),
            ("demo", "--steps"), ("transcode", "--fit-seconds"), ("random-teacher", "--seed")} <= flags
    assert len(OPTIONS) >= 30


class _Accepted(Exception):
    """Raised by a sentinel where a command would start its long work: every check passed."""


@pytest.fixture
def fuzz_env(cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, small_run: Path, reference_lake: Path,
             tiny_teacher_path: Path, libri_root: Path) -> Any:
    """``run(path, option, value) -> CliResult | None`` (None: accepted, cut short by a sentinel)."""
    import fhb.stages.demo as demo
    import fhb.stages.distill as distill

    real = distill.run_distill
    monkeypatch.setattr(distill, "run_distill", lambda *a, **kw: real(*a, **{**kw, "stop_after": 1}))

    real_claim = demo._claim_demo_dir

    def claim(out: Path) -> None:  # the demo's checks of --out, then stop before it writes its teacher
        real_claim(out)
        raise _Accepted

    monkeypatch.setattr(demo, "_claim_demo_dir", claim)
    counter = itertools.count()

    def run(path: tuple[str, ...], option: str, value: str) -> CliResult | None:
        scratch = tmp_path / f"x{next(counter)}"
        scratch.mkdir()
        args = _out_base(path, scratch, small_run, reference_lake, tiny_teacher_path, libri_root)
        if option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
        try:
            return cli(*args)
        except _Accepted:
            return None

    return run


def _base_args(path: tuple[str, ...], scratch: Path, run: Path, lake: Path, teacher: Path, libri: Path) -> list[str]:
    """A valid, quick command line of each command that has numeric options."""
    bases: dict[tuple[str, ...], list[str]] = {
        ("random-teacher",): ["random-teacher", "--out", str(scratch / "t.pt")],
        ("teacher-info",): ["teacher-info", str(teacher), "--libri-root", str(libri), "--limit", "1"],
        ("extract",): [*extract_args(teacher, libri, scratch / "lake"), "--splits", "dev-clean", "--codec", "pca"],
        ("transcode",): ["transcode", str(lake), "--out", str(scratch / "lake"), "--codec", "pca",
                         "--fit-seconds", "5"],
        ("distill",): ["distill", "--cache", str(lake), "--config", "tiny", "--out", str(scratch / "run"),
                       "--splits", "train-clean-100", "--dev-split", "none", "--batch-size", "2", "--accumulate",
                       "1", "--workers", "0", "--max-seconds", "1", "--no-progress"],
        ("export-s3prl",): ["export-s3prl", "--run", str(run), "--out", str(scratch / "exp")],
        ("export-hf",): ["export-hf", "--run", str(run), "--out", str(scratch / "exp")],
        ("evaluate",): ["evaluate", str(run), "--cache", str(lake), "--max-batches", "1"],
        ("demo",): ["demo", "--out", str(scratch / "demo")],
    }
    return list(bases[path])


def _assert_one_line_or_usage(result: CliResult | None, what: str) -> None:
    if result is None:
        return
    assert TRACEBACK not in result.stderr + result.stdout, f"{what}:\n{result.stderr[-4000:]}"
    assert result.code in (0, 2), f"{what}: exit {result.code}\n{result.stderr[-3000:]}"
    if result.code == 2 and not result.error_lines:
        assert "Invalid value" in result.stderr or "Usage" in result.stderr, f"{what}:\n{result.stderr[-3000:]}"
    if result.code == 2 and result.error_lines:
        assert len(result.error_lines) == 1, f"{what}:\n{result.stderr[-3000:]}"


def test_every_command_with_numeric_options_has_a_base_command_line(tmp_path: Path) -> None:
    for path in {p for p, _, _ in OPTIONS}:
        _base_args(path, tmp_path, tmp_path, tmp_path, tmp_path, tmp_path)  # KeyError: add one to _base_args


@pytest.mark.slow
@pytest.mark.parametrize("path, option, kind", OPTIONS, ids=[f"{' '.join(p)} {o}" for p, o, _ in OPTIONS])
def test_each_numeric_option_with_the_worst_values(path: tuple[str, ...], option: str, kind: str,
                                                   fuzz_env: Any) -> None:
    """Negative, NaN and huge (the values most likely to slip through) for every option."""
    values = ["-1", "nan", "1e308"] if kind == "float" else ["-1", str(2**70)]
    for value in values:
        _assert_one_line_or_usage(fuzz_env(path, option, value), f"{' '.join(path)} {option} {value}")


def _value(kind: str) -> st.SearchStrategy[str]:
    if kind == "float":
        return st.one_of(st.sampled_from(HOSTILE_FLOATS), st.floats(allow_nan=True, allow_infinity=True).map(repr))
    return st.one_of(st.sampled_from(HOSTILE_INTS), st.integers().map(str))


@pytest.mark.slow
@given(data=st.data())
@FUZZ
def test_numeric_options_fuzz(data: st.DataObject, fuzz_env: Any) -> None:
    """Any numeric option of any command, any number."""
    path, option, kind = data.draw(st.sampled_from(OPTIONS), label="option")
    value = data.draw(_value(kind), label="value")
    _assert_one_line_or_usage(fuzz_env(path, option, value), f"{' '.join(path)} {option} {value}")


# ------------------------------------------------------------------------------ numeric yaml fields


def numeric_yaml_fields() -> list[tuple[str, str]]:
    """``(section, key)`` of every numeric value (or list of numbers: ``key[i]``) in the tiny config's
    ``distiller``, ``train`` and ``optimizer`` sections."""
    from fhb.student.config import load_fithubert_yaml

    data = yaml.safe_load(load_fithubert_yaml("tiny").to_yaml())
    found = []
    for section in ("distiller", "train", "optimizer"):
        for key, value in data[section].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found.append((section, key))
            elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
                found += [(section, f"{key}[{i}]") for i in range(len(value))]
    return found


FIELDS = numeric_yaml_fields()
YAML_VALUES = [math.nan, math.inf, -math.inf, -1, 10**12, 1e308]


def _config_with(tmp: Path, section: str, key: str, value: object) -> Path:
    from fhb.student.config import load_fithubert_yaml

    data = yaml.safe_load(load_fithubert_yaml("tiny").to_yaml())
    if key.endswith("]"):
        name, index = key[:-1].split("[")
        data[section][name][int(index)] = value
    else:
        data[section][key] = value
    path = tmp / "fuzzed.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_yaml_has_the_numeric_fields_this_file_expects() -> None:
    keys = {f"{s}.{k}" for s, k in FIELDS}
    assert {"distiller.encoder_layers", "distiller.dropout", "train.rec_loss_weight", "train.batch_size",
            "optimizer.lr", "optimizer.betas[0]", "optimizer.eps"} <= keys


@pytest.mark.parametrize("section, key", FIELDS, ids=[f"{s}.{k}" for s, k in FIELDS])
def test_each_numeric_yaml_field_is_checked_when_read(section: str, key: str, tmp_path: Path) -> None:
    """NaN, +-inf, -1, 10^12 and 1e308 in every numeric field: reading the config (and its train and
    optimizer sections, as `fhb distill` does before anything else) gives a config or an FhbError;
    an accepted value leaves every weight, rate and probability finite."""
    from fhb.errors import FhbError
    from fhb.student.config import load_fithubert_yaml
    from fhb.training.optim import OptimConfig
    from fhb.training.trainer import TrainConfig

    for value in YAML_VALUES:
        cfg = _config_with(tmp_path, section, key, value)
        try:
            fit = load_fithubert_yaml(cfg)
            optim = OptimConfig.from_yaml(fit.optimizer)
            TrainConfig.from_yaml(fit.train)
        except FhbError as exc:
            assert "\n" not in str(exc).strip() or "yaml" in str(exc), str(exc)
            continue
        numbers = [optim.lr, optim.eps, *optim.betas, optim.yaml_weight_decay, fit.distiller.feature_grad_mult,
                   fit.loss.rec_loss_weight, fit.loss.sim_loss_weight, fit.loss.cnn_loss_weight,
                   fit.loss.random_layer_weight, fit.distiller.dropout]
        assert all(math.isfinite(n) for n in numbers), f"{section}.{key} = {value} accepted: {numbers}"


@pytest.mark.slow
@given(data=st.data())
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_numeric_yaml_fields_fuzz_through_distill(data: st.DataObject, reference_lake: Path, tmp_path_factory: Any,
                                                  cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any numeric field, any hostile number, through `fhb distill` (cut after one update, whose loss must
    be finite): a run, or one line before the run directory exists; never a traceback."""
    import fhb.stages.distill as distill

    section, key = data.draw(st.sampled_from(FIELDS), label="field")
    value = data.draw(st.one_of(st.sampled_from(YAML_VALUES), st.floats(), st.integers(-2**70, 2**70)), label="value")
    real = distill.run_distill
    monkeypatch.setattr(distill, "run_distill", lambda *a, **kw: real(*a, **{**kw, "stop_after": 1}))
    tmp = tmp_path_factory.mktemp("yaml")
    cfg = _config_with(tmp, section, key, value)
    out = tmp / "run"
    result = cli("distill", "--cache", str(reference_lake), "--config", str(cfg), "--out", str(out),
                 "--splits", "train-clean-100", "--dev-split", "none", "--batch-size", "2", "--accumulate", "1",
                 "--workers", "0", "--max-seconds", "1", "--no-progress", "--steps", "1")
    what = f"{section}.{key} = {value}"
    assert TRACEBACK not in result.stderr, f"{what}:\n{result.stderr[-4000:]}"
    assert result.code in (0, 2), f"{what}: exit {result.code}\n{result.stderr[-3000:]}"
    if result.code == 2:
        assert len(result.error_lines) == 1, f"{what}:\n{result.stderr[-3000:]}"
        assert not out.exists(), f"{what}: a refused run left its directory"


# ------------------------------------------------------------------ --device and --out, every command


def _commands_with(option: str) -> list[tuple[str, ...]]:
    import typer

    from fhb.cli import app

    return [path for path, command in _commands(typer.main.get_command(app))
            if any(option in getattr(p, "opts", ()) for p in command.params)]


DEVICE_COMMANDS = _commands_with("--device")
OUT_COMMANDS = _commands_with("--out")


def test_the_app_has_the_device_and_out_options_this_file_expects() -> None:
    assert {("distill",), ("evaluate",), ("extract",)} <= set(DEVICE_COMMANDS)
    assert {("distill",), ("extract",), ("transcode",), ("demo",), ("export-hf",), ("random-teacher",)} <= set(
        OUT_COMMANDS)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("path", DEVICE_COMMANDS, ids=[" ".join(p) for p in DEVICE_COMMANDS])
def test_every_command_with_device_refuses_cuda_and_mps_here(path: tuple[str, ...], fuzz_env: Any) -> None:
    for device in ("cuda", "mps", "cuda:1"):
        result = fuzz_env(path, "--device", device)
        assert result is not None, f"{' '.join(path)} --device {device} was accepted"
        _assert_one_line_or_usage(result, f"{' '.join(path)} --device {device}")
        assert result.code == 2 and "--device" in result.error, result.stderr[-2000:]


def _out_base(path: tuple[str, ...], scratch: Path, run: Path, lake: Path, teacher: Path, libri: Path) -> list[str]:
    extra = {("import-checkpoint",): ["import-checkpoint", str(run / "student.pt"), "--out", "OUT"],
             ("import-hf",): ["import-hf", str(scratch), "--out", "OUT"]}
    if path in extra:
        return extra[path]
    return _base_args(path, scratch, run, lake, teacher, libri)


@pytest.mark.parametrize("path", OUT_COMMANDS, ids=[" ".join(p) for p in OUT_COMMANDS])
@pytest.mark.parametrize("kind", ["a-file", "below-a-file", "unwritable"])
def test_every_command_with_out_refuses_a_bad_out(path: tuple[str, ...], kind: str, fuzz_env: Any, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A file (where a folder is written), a path below a file, an unwritable folder (simulated: root)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    if kind == "unwritable":
        (tmp_path / "ro").mkdir()
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path / "ro" else real(p, mode, **kw))
    out = {"a-file": afile, "below-a-file": afile / "out", "unwritable": tmp_path / "ro" / "out"}[kind]
    if path == ("random-teacher",) and kind == "a-file":
        out = afile  # an existing file: random-teacher refuses to overwrite it
    result = fuzz_env(path, "--out", str(out))
    assert result is not None, f"{' '.join(path)} --out {kind} was accepted"
    _assert_one_line_or_usage(result, f"{' '.join(path)} --out {kind}")
    assert result.code == 2, result.stderr[-2000:]
    assert afile.read_text() == "x"
