"""Property tests over what users type: ``fhb extract`` options and the student's yaml.

Promises (docs/reliability.md, "What is validated"):

* any ``fhb extract`` command line either succeeds (exit 0, a lake that verifies) or is refused
  with exit status 2 and one ``error:`` line (values fhb checks) or click's usage error naming the
  option (values that are not even of the option's type: ``--shard-hours abc``); never a traceback,
  never another exit status. A refused command leaves no lake behind when it fails before
  writing, and never a stale lock.
* ``load_fithubert_yaml`` returns a config or raises ``FhbError``; never another exception.
"""

from __future__ import annotations

import math
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fhb.errors import FhbError

from .conftest import SPLITS, TRACEBACK

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# -- fhb extract ---------------------------------------------------------------------------------

NUMBERS = st.one_of(  # mostly values click parses, so that fhb's own checks are what is exercised
    st.sampled_from(["0.002"] * 6 + ["0", "-0.5", "-1e-9", "nan", "NaN", "inf", "-inf", "1e-300", "1e308", "abc"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
LAYERS = st.one_of(
    st.sampled_from(["all", "ALL", " all ", "1,3", "3", "1,2,3", "0", "4", "-1", "1,,2", ",", "", "1.5", "a,b",
                     "1;2", "١", "1_0", "9" * 30]),
    st.lists(st.integers(-3, 6), max_size=4).map(lambda ks: ",".join(map(str, ks))),
    st.text(max_size=12),
)
WORDS = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
DTYPES = st.one_of(st.sampled_from(["float16", "bfloat16", "int8", "float32", "float64", "FLOAT16", "fp16", ""]),
                   WORDS)
POLICIES = st.one_of(st.sampled_from(["error", "skip", "ignore", "Skip", ""]), WORDS)
DEVICES = st.sampled_from(["cpu", "cpu", "cuda", "cuda:7", "meta", "tpu", "mps", "", "cpu:0", "xla", "cuda:-1"])
PRECISIONS = st.sampled_from(["fp32", "fp32", "fp16", "bf16", "fp64", "", "FP32"])
INTS = st.sampled_from(["0"] * 8 + ["-1", "-7", "x"])
SPLIT_LISTS = st.one_of(st.sampled_from([
    ",".join(SPLITS), "dev-clean", "train-clean-100", "dev-clean,dev-clean", ",", "", "nope", "../dev-clean",
    "dev-clean/", ".", "..", "dev-clean,,", "DEV-CLEAN", "/etc", "dev clean"]), WORDS)
PATH_KINDS = st.sampled_from(["valid", "valid", "valid", "missing", "file", "directory", "nested-under-file"])


def _path(kind: str, valid: Path, scratch: Path) -> str:
    if kind == "valid":
        return str(valid)
    if kind == "missing":
        return str(scratch / "does-not-exist")
    if kind == "file":
        f = scratch / "a-file"
        f.write_text("not what you want")
        return str(f)
    if kind == "directory":
        d = scratch / "a-dir"
        d.mkdir(exist_ok=True)
        return str(d)
    f = scratch / "a-file"
    f.write_text("x")
    return str(f / "below")


def _valid_number(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return True  # not a number: click refuses it, which the property accepts as a usage error
    return 0 < value < math.inf


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


_lakes = count()


FIELDS = {
    # option: (a strategy over any text a user could type, the valid value used when not fuzzed)
    "--shard-hours": (NUMBERS, "0.002"), "--batch-seconds": (NUMBERS, "200"), "--layers": (LAYERS, "all"),
    "--dtype": (DTYPES, "float16"), "--on-bad-audio": (POLICIES, "error"), "--device": (DEVICES, "cpu"),
    "--precision": (PRECISIONS, "fp32"), "--workers": (INTS, "0"), "--threads": (INTS, "1"),
    "--splits": (SPLIT_LISTS, "dev-clean"), "--teacher": (PATH_KINDS, "valid"),
    "--libri-root": (PATH_KINDS, "valid"), "--out": (st.sampled_from(["fresh", "file", "nested-under-file"]), "fresh"),
}


@FUZZ
@given(data=st.data())
def test_extract_options_never_traceback(
    data: st.DataObject, tiny_teacher_path: Path, libri_root: Path, scratch: Path, cli: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One to three options get a fuzzed value, the others a valid one (so every check is reached)."""
    fuzzed = data.draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3, unique=True), label="fuzzed")
    value = {k: data.draw(FIELDS[k][0], label=k) if k in fuzzed else FIELDS[k][1] for k in FIELDS}
    cnn = data.draw(st.booleans(), label="--cnn-features")
    monkeypatch.chdir(scratch)  # a relative or empty path lands here, never in the repository
    case = scratch / f"case{next(_lakes)}"
    case.mkdir()
    out = case / "lake" if value["--out"] == "fresh" else Path(_path(value["--out"], case, case))
    paths = {"--teacher": _path(value["--teacher"], tiny_teacher_path, case),
             "--libri-root": _path(value["--libri-root"], libri_root, case), "--out": str(out)}
    args = ["extract", *[a for k in FIELDS for a in (k, paths.get(k, value[k]))], *(["--cnn-features"] if cnn else [])]
    result = cli(*args)
    event(f"exit {result.code}" + (" usage error" if result.code == 2 and not result.error_lines else ""))
    shown = f"fhb {' '.join(map(repr, args))}\nexit {result.code}\n{result.stderr[-2500:]}"
    assert TRACEBACK not in result.stderr + result.stdout, shown
    assert result.code in (0, 2), shown
    if result.code == 2:
        if result.error_lines:
            assert len(result.error_lines) == 1, shown
        else:  # click's usage error: names the option, says what is wrong
            assert "Usage:" in result.stderr and ("Invalid value" in result.stderr or "Error" in result.stderr), shown
        if out.is_dir():
            assert not (out / ".fhb.lock").exists(), "a refused run left a lock behind\n" + shown
    # values fhb must refuse (whatever else is wrong)
    if not (_valid_number(value["--shard-hours"]) and _valid_number(value["--batch-seconds"])):
        assert result.code == 2, shown
    if value["--dtype"] not in ("float16", "bfloat16", "int8", "float32") or value["--on-bad-audio"] not in ("error", "skip"):
        assert result.code == 2, shown
    if value["--device"] not in ("cpu", "cpu:0") or value["--precision"] != "fp32":
        assert result.code == 2, shown
    if result.code == 0:
        from fhb.storage.reader import open_lake

        assert open_lake(out).splits


def test_unreachable_scheduler_is_one_line(tiny_teacher_path: Path, libri_root: Path, tmp_path: Path,
                                           cli: Any) -> None:
    result = cli("extract", "--teacher", tiny_teacher_path, "--libri-root", libri_root, "--out", tmp_path / "lake",
                 "--splits", "dev-clean", "--scheduler", "not-a-scheduler-address")
    assert TRACEBACK not in result.stderr
    assert result.code == 2 and len(result.error_lines) == 1, result.stderr[-2000:]
    assert "not-a-scheduler-address" in result.error_lines[0]


@pytest.mark.parametrize("argv", [
    ["inspect"], ["verify", "--nope"], ["unlock"], ["extract"], ["teacher-info"], ["nope"],
    ["random-teacher", "--out", "{tmp}/t.pt", "--arch", "huge"], ["random-teacher", "--out", "{tmp}/t.pt", "--seed", "x"],
    ["teacher-info", "{tmp}/missing.pt"], ["inspect", "{tmp}"], ["unlock", "{tmp}/nothing-here"],
])
def test_other_commands_misused(argv: list[str], tmp_path: Path, cli: Any) -> None:
    result = cli(*[a.format(tmp=tmp_path) for a in argv])
    assert TRACEBACK not in result.stderr + result.stdout, result.stderr[-2000:]
    assert result.code in (0, 2), result.stderr[-2000:]
    if result.code == 2:
        assert len(result.error_lines) == 1 or "Usage:" in result.stderr + result.stdout, result.stderr[-2000:]


# -- the student's yaml ----------------------------------------------------------------------------

VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
              st.text(max_size=20),
              st.sampled_from(["[(512, 10, 5)] * 2", "[(128,10,5)] + [(256,3,2)] * 10**9", "[(0, 0, 0)]",
                               "[11]", "[3, 7, 11]", "[-1]", "[99]", "[]", "__import__('os')", "[" * 200,
                               "conv1d", "default", "layer_norm", "gelu", "relu", "nope", "1e400"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def published_yaml() -> dict[str, Any]:
    from fhb.student.config import packaged_config_path

    return yaml.safe_load(packaged_config_path("fithubert").read_text())


@FUZZ
@given(data=st.data())
def test_student_yaml_fuzz_only_fhb_errors(data: st.DataObject, published_yaml: dict[str, Any],
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    from fhb.student.config import load_fithubert_yaml

    config = yaml.safe_load(yaml.safe_dump(published_yaml))
    section = config["distiller"]
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        action = data.draw(st.sampled_from(["set", "set", "set", "delete", "add", "replace-section"]), label="action")
        key = data.draw(st.sampled_from(sorted(section) or ["x"]), label="key")
        if action == "set":
            section[key] = data.draw(VALUES, label=f"value of {key}")
        elif action == "delete":
            section.pop(key, None)
        elif action == "add":
            section[data.draw(st.text(max_size=10), label="new key")] = data.draw(VALUES, label="new value")
        else:
            config["distiller"] = section = data.draw(VALUES, label="section") if data.draw(st.booleans()) else {}
            if not isinstance(section, dict):
                break
    path = tmp_path_factory.mktemp("yaml") / "student.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    try:
        load_fithubert_yaml(path)
        event("accepted")
    except FhbError:
        event("refused")


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                      st.sampled_from(["", "distiller:", "distiller: 3", "- 1\n- 2", "distiller: {a: 1}", "{", "!!python/object:os.system {}",
                                       "distiller: !!python/name:os.system", "&a [*a]", "distiller:\n  encoder_layers: !!binary AAAA"])))
def test_student_yaml_text_fuzz_only_fhb_errors(text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    from fhb.student.config import load_fithubert_yaml

    path = tmp_path_factory.mktemp("yaml") / "student.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        load_fithubert_yaml(path)
        event("accepted")
    except FhbError:
        event("refused")


def test_student_yaml_not_utf8(tmp_path: Path) -> None:
    from fhb.student.config import load_fithubert_yaml

    path = tmp_path / "student.yaml"
    path.write_bytes("distiller:\n  encoder_layers: 12 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(FhbError):
        load_fithubert_yaml(path)
