"""``--overwrite``, ``demo`` and ``import-checkpoint`` delete only what fhb wrote.

Promises (docs/reliability.md, "Trust"): an output folder that is or contains an input (run,
checkpoint, lake, corpus, teacher) is refused; ``--overwrite`` replaces only fhb's own output (its
manifest ``.fhb-manifest.json``, or the layout an older fhb wrote) and refuses a folder holding
anything else, naming it; a symlink is never followed for deletion; a failed overwrite leaves the
old output intact; ``fhb demo --out DIR`` refuses a non-empty DIR that is not a previous demo's.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from fhb.errors import FhbError
from fhb.files import MANIFEST

from .conftest import assert_user_error, extract_args, small_distill_args


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------- out apart from inputs


@pytest.mark.parametrize("where", ["equal", "parent"])
def test_export_out_that_is_or_contains_the_run_is_refused(small_run: Path, where: str, tmp_path: Path,
                                                            cli: Any) -> None:
    run = tmp_path / "runs" / "run"
    shutil.copytree(small_run, run)
    before = _tree(run)
    out = run if where == "equal" else run.parent
    for command in ("export-s3prl", "export-hf"):
        assert_user_error(cli(command, "--run", str(run), "--out", str(out), "--overwrite"),
                          "the input --run", "choose another --out")
    assert _tree(run) == before


def test_import_checkpoint_out_containing_the_checkpoint_is_refused(small_run: Path, tmp_path: Path,
                                                                    cli: Any) -> None:
    folder = tmp_path / "dl"
    folder.mkdir()
    ckpt = shutil.copy(small_run / "student.pt", folder / "student.pt")
    before = _tree(folder)
    assert_user_error(cli("import-checkpoint", str(ckpt), "--out", str(folder), "--overwrite"),
                      "contains the input CKPT")
    assert _tree(folder) == before


def test_distill_out_that_is_or_contains_the_lake_is_refused(reference_lake: Path, tmp_path: Path,
                                                             cli: Any) -> None:
    lake = tmp_path / "data" / "lake"
    shutil.copytree(reference_lake, lake)
    before = _tree(lake)
    for out in (lake, lake.parent):
        assert_user_error(cli(*small_distill_args(lake, out, "--resume")), "the input --cache")
    assert _tree(lake) == before


def test_extract_out_containing_the_corpus_or_teacher_is_refused(tiny_teacher_path: Path, corpus_copy: Path,
                                                                 tmp_path: Path, cli: Any) -> None:
    before = _tree(corpus_copy)
    assert_user_error(cli(*extract_args(tiny_teacher_path, corpus_copy, corpus_copy.parent, "--overwrite")),
                      "the input --libri-root")
    (tmp_path / "t").mkdir()
    teacher = tmp_path / "t" / "teacher.pt"
    shutil.copy(tiny_teacher_path, teacher)
    assert_user_error(cli(*extract_args(teacher, corpus_copy, tmp_path / "t")), "the input --teacher")
    assert _tree(corpus_copy) == before


# ------------------------------------------------------------- --overwrite keeps the user's files


def test_export_overwrite_replaces_its_own_output_only(small_run: Path, tmp_path: Path, cli: Any) -> None:
    out = tmp_path / "export"
    assert cli("export-s3prl", "--run", str(small_run), "--out", str(out)).code == 0
    assert (out / MANIFEST).is_file()
    assert cli("export-s3prl", "--run", str(small_run), "--out", str(out), "--overwrite").code == 0  # its own
    (out / "my-notes.txt").write_text("mine")
    line = assert_user_error(cli("export-s3prl", "--run", str(small_run), "--out", str(out), "--overwrite"),
                             "my-notes.txt", "only replaces fhb's own output")
    assert "export-s3prl" in line
    assert (out / "my-notes.txt").read_text() == "mine"


def test_overwrite_of_a_folder_fhb_did_not_write_is_refused(small_run: Path, tmp_path: Path, cli: Any) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8")
    for args in (["export-hf", "--run", str(small_run)], ["import-checkpoint", str(small_run / "student.pt")]):
        assert_user_error(cli(*args, "--out", str(out), "--overwrite"), "holiday.jpg")
    assert (out / "holiday.jpg").read_bytes() == b"\xff\xd8"


def test_symlinks_are_never_followed_for_deletion(small_run: Path, tmp_path: Path, cli: Any) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.bin").write_bytes(b"keep")
    link = tmp_path / "link-out"
    link.symlink_to(precious, target_is_directory=True)
    assert_user_error(cli("export-s3prl", "--run", str(small_run), "--out", str(link), "--overwrite"), "symlink")
    out = tmp_path / "export"
    assert cli("export-s3prl", "--run", str(small_run), "--out", str(out)).code == 0
    (out / "fithubert_fhb_link").symlink_to(precious, target_is_directory=True)
    assert_user_error(cli("export-s3prl", "--run", str(small_run), "--out", str(out), "--overwrite"),
                      "fithubert_fhb_link")
    assert (precious / "data.bin").read_bytes() == b"keep"


def test_failed_overwrite_leaves_the_old_output(small_run: Path, tmp_path: Path, cli: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "export"
    assert cli("export-s3prl", "--run", str(small_run), "--out", str(out)).code == 0
    before = _tree(out)

    def fail(*args: object, **kwargs: object) -> None:
        raise FhbError("simulated failure while writing the model card")

    monkeypatch.setattr("fhb.stages.export.write_model_card", fail)
    assert_user_error(cli("export-s3prl", "--run", str(small_run), "--out", str(out), "--overwrite"),
                      "simulated failure")
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_extract_overwrite_keeps_the_users_files_in_the_lake(reference_lake: Path, tiny_teacher_path: Path,
                                                             libri_root: Path, tmp_path: Path, cli: Any) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(reference_lake, lake)
    (lake / "NOTES.md").write_text("mine")
    (lake / "train-clean-100" / "stats.csv").write_text("mine")
    before = _tree(lake)
    line = assert_user_error(cli(*extract_args(tiny_teacher_path, libri_root, lake, "--overwrite", "--layers", "1")),
                             "NOTES.md", "deletes only what fhb wrote")
    assert "train-clean-100/stats.csv" in line
    assert _tree(lake) == before


# --------------------------------------------------------------------------------------- demo


def test_demo_refuses_a_folder_that_is_not_a_previous_demo(tmp_path: Path, cli: Any) -> None:
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    assert_user_error(cli("demo", "--out", str(out)), "not a previous demo output", "thesis.tex")
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    other = tmp_path / "export"
    other.mkdir()
    (other / MANIFEST).write_text('{"tool": "fhb", "kind": "export-s3prl", "entries": ["lake"]}')
    (other / "lake").mkdir()
    assert_user_error(cli("demo", "--out", str(other)), "not a previous demo output")
    (tmp_path / "file").write_text("x")
    assert_user_error(cli("demo", "--out", str(tmp_path / "file")), "a file")


def test_demo_accepts_a_previous_demo_output(tmp_path: Path) -> None:
    from fhb.stages.demo import _claim_demo_dir

    old = tmp_path / "demo-out"  # as an fhb without the manifest left it, plus a killed export's temp folder
    for name in ("lake", "run", "export", ".export.tmp-1234"):
        (old / name).mkdir(parents=True)
    (old / "teacher-tiny.pt").write_bytes(b"x")
    _claim_demo_dir(old)
    _claim_demo_dir(old)  # and with its manifest
    assert (old / MANIFEST).is_file()
