"""An attacker's and a new user's second pass over the trust promises (sections 1 and 3 of the
trust issue), for the ways in that the first tests did not try.

* A hostile run checkpoint through every command that reads one: ``evaluate`` (``--checkpoint``,
  ``--step``, the run's newest checkpoint), ``export-hf --checkpoint``, ``import-checkpoint``:
  refused with one line, the payload never runs.
* A run checkpoint that is a zip bomb (``--resume``, ``evaluate --checkpoint``): refused from the
  zip directory, peak RSS < 1 GB. Student configs with absurd sizes not covered before
  (``max_positions`` 10^12, a huge conv spec, a huge DistilHuBERT-style head) are one line, < 1 GB.
* Outputs: ``transcode`` and ``distill`` refuse an ``--out`` inside or containing the input lake;
  ``import-hf`` one containing its input folder; ``random-teacher`` never overwrites an existing
  file (it may be a real teacher) and refuses a folder or a path below a file.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from fhb.training import run_state

from .conftest import assert_user_error, small_distill_args
from .test_trust_files import _assert_one_line_under_1gb, _hostile_run_checkpoint as _hostile, _zip_bomb


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def hostile_run(small_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the small run whose newest checkpoint is planted (no student.pt); and the marker path."""
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    (run / run_state.STUDENT).unlink()
    marker = tmp_path / "PWNED"
    _hostile(run / "checkpoints" / "step-00000002.pt", marker)
    return run, marker


@pytest.mark.parametrize("how", ["--checkpoint", "--step", "newest"])
def test_evaluate_refuses_a_hostile_run_checkpoint(how: str, hostile_run: tuple[Path, Path], reference_lake: Path,
                                                   cli: Any) -> None:
    run, marker = hostile_run
    extra = {"--checkpoint": ["--checkpoint", str(run / "checkpoints" / "step-00000002.pt")],
             "--step": ["--step", "2"], "newest": []}[how]
    line = assert_user_error(cli("evaluate", str(run), "--cache", str(reference_lake), *extra), "refusing to load")
    assert "posix.system" in line and "nothing ran" in line
    assert not marker.exists(), "the checkpoint's code ran"


def test_export_hf_and_import_checkpoint_refuse_a_hostile_checkpoint(hostile_run: tuple[Path, Path],
                                                                       tmp_path: Path, cli: Any) -> None:
    run, marker = hostile_run
    planted = run / "checkpoints" / "step-00000002.pt"
    assert_user_error(cli("export-hf", "--checkpoint", str(planted), "--out", str(tmp_path / "hf")),
                      "refusing to load", "posix.system")
    assert_user_error(cli("import-checkpoint", str(planted), "--out", str(tmp_path / "imported")),
                      "refusing to load", "posix.system")
    assert not marker.exists()
    assert not (tmp_path / "hf").exists() and not (tmp_path / "imported").exists()


# ------------------------------------------------------------------------------- resource bombs


@pytest.mark.slow
def test_run_checkpoint_zip_bomb_is_refused_before_decompression(small_run: Path, reference_lake: Path,
                                                                 tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    ckpt = run / "checkpoints" / "step-00000002.pt"
    _zip_bomb(ckpt, small_run / "checkpoints" / "step-00000002.pt", 1 << 30)
    assert ckpt.stat().st_size < 20 << 20
    _assert_one_line_under_1gb(tmp_path, "declares", "evaluate", str(run), "--cache", str(reference_lake),
                               "--checkpoint", str(ckpt))
    (run / run_state.STUDENT).unlink()
    _assert_one_line_under_1gb(tmp_path, "declares", *small_distill_args(reference_lake, run, "--resume",
                                                                         "--steps", "3"))


@pytest.mark.slow
@pytest.mark.parametrize("key, value", [
    ("max_positions", 10**12),
    ("conv_feature_layers", "[(100000, 100000, 5)] * 1000"),
    ("conv_feature_layers", "[(512, 10, 5)] + [(512, 3, 2)] * 1000000"),
    ("pred_head_inter_dim", 10**12),
    ("tr_reduce_factor", 10**9),
])
def test_more_config_sizes_are_one_line_under_1gb(key: str, value: object, tmp_path: Path,
                                                   reference_lake: Path) -> None:
    """``max_positions`` is inert (nothing is allocated for it), so it may be accepted; the others
    are refused before anything is built. Either way: never a traceback, never 1 GB."""
    from fhb.student.config import load_fithubert_yaml

    data = yaml.safe_load(load_fithubert_yaml("tiny").to_yaml())
    data["distiller"][key] = value
    if key == "pred_head_inter_dim":
        data["distiller"]["layerwise_proj"] = False  # the DistilHuBERT-style head uses it
        data["distiller"]["pred_layer_id"] = "[2]"
        data["train"]["distil_random_layer"] = 0
        data["train"]["random_layer_weight"] = 0
    cfg = tmp_path / "huge.yaml"
    cfg.write_text(yaml.safe_dump(data))
    args = ["distill", "--cache", str(reference_lake), "--config", str(cfg), "--out", str(tmp_path / "run"),
            "--steps", "1", "--batch-size", "2", "--accumulate", "1", "--workers", "0", "--max-seconds", "1",
            "--splits", "train-clean-100", "--dev-split", "none", "--no-progress"]
    if key == "max_positions":
        from .test_trust_files import _rss_probe

        code, err, rss = _rss_probe(tmp_path, *args)
        assert code == 0 and "Traceback" not in err and rss < 1 << 20, (code, rss, err[-2000:])
        return
    _assert_one_line_under_1gb(tmp_path, "distiller", *args)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("where", ["inside", "parent", "equal"])
def test_transcode_out_inside_or_around_the_lake_is_refused(where: str, reference_lake: Path, tmp_path: Path,
                                                             cli: Any) -> None:
    lake = tmp_path / "data" / "lake"
    shutil.copytree(reference_lake, lake)
    before = _tree(lake)
    out = {"inside": lake / "float32", "parent": lake.parent, "equal": lake}[where]
    for extra in ([], ["--overwrite"]):
        assert_user_error(cli("transcode", str(lake), "--out", str(out), "--codec", "float32", *extra), "--out")
    assert _tree(lake) == before


def test_distill_out_inside_the_lake_is_refused(reference_lake: Path, tmp_path: Path, cli: Any) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(reference_lake, lake)
    before = _tree(lake)
    assert_user_error(cli(*small_distill_args(lake, lake / "runs" / "r1")), "inside the input --cache")
    assert _tree(lake) == before and not (lake / "runs").exists()


def test_import_hf_out_containing_its_input_is_refused(small_run: Path, tmp_path: Path, cli: Any) -> None:
    folder = tmp_path / "exports" / "hf"
    assert cli("export-hf", "--run", str(small_run), "--out", str(folder)).code == 0
    before = _tree(folder)
    for out in (folder, folder.parent):
        assert_user_error(cli("import-hf", str(folder), "--out", str(out), "--overwrite"), "--out")
    assert _tree(folder) == before


def test_random_teacher_never_overwrites_a_file(tmp_path: Path, cli: Any) -> None:
    precious = tmp_path / "hubert_base_ls960.pt"
    precious.write_bytes(b"the user's real teacher")
    assert_user_error(cli("random-teacher", "--out", str(precious)), "exists", "never overwrites")
    assert precious.read_bytes() == b"the user's real teacher"
    assert_user_error(cli("random-teacher", "--out", str(tmp_path)), "is a folder")
    assert_user_error(cli("random-teacher", "--out", str(precious / "t.pt")), "below the file")
    assert cli("random-teacher", "--out", str(tmp_path / "new.pt")).code == 0
