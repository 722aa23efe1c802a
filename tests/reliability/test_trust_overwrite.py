"""``fhb extract --overwrite``: the new lake is built beside the old one and swapped in when complete.

Promises (docs/reliability.md, "Overwriting a lake"): while the new lake is built (in the hidden
sibling ``.LAKE.tmp-partial``) the old lake stays intact and readable, and it is locked (readers and
writers are refused: it is about to be replaced). Killed or failed, the old lake is as it was;
rerunning the same ``--overwrite`` command continues the partial lake (a kill's dead locks are taken
over) and ends equal to a straight extraction. Only fhb's own entries are ever deleted: a user's
file (also one added while the overwrite ran) stops it, a symlink is never deleted through, and an
``--out`` that is or contains an input is refused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from fhb.errors import FhbError
from fhb.storage.lock import LakeReadLease, read_lock
from fhb.storage.reader import open_lake

from . import faults
from .conftest import (
    TRACEBACK,
    assert_same_lake,
    assert_user_error,
    extract_args,
    paused_fhb,
    run_extract_quiet,
    verify_errors,
)

PARTIAL = ".lake.tmp-partial"


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def layer1_lake(tiny_teacher_path: Path, libri_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A straight extraction with ``--layers 1`` (what every overwrite below must end up equal to)."""
    out = tmp_path_factory.mktemp("layer1") / "lake"
    run_extract_quiet(tiny_teacher_path, libri_root, out, layers="1")
    return out


@pytest.fixture
def old_lake(reference_lake: Path, tmp_path: Path) -> Path:
    lake = tmp_path / "lake"
    shutil.copytree(reference_lake, lake)
    return lake


def test_overwrite_swaps_in_a_complete_lake_and_the_old_one_stays_readable_until_then(
    old_lake: Path, reference_lake: Path, layer1_lake: Path, tiny_teacher_path: Path, libri_root: Path,
    tmp_path: Path,
) -> None:
    seen: list[int] = []

    def progress(result: Any, done: int, total: int) -> None:  # while the new lake is being written
        assert (tmp_path / PARTIAL).is_dir()
        assert_same_lake(reference_lake, old_lake)  # the old lake, untouched and readable
        holder = read_lock(old_lake)  # ... but locked (it is about to go): readers are refused, see below
        assert holder is not None and holder.pid == os.getpid()
        seen.append(done)

    run_extract_quiet(tiny_teacher_path, libri_root, old_lake, overwrite=True, layers="1", progress=progress)
    assert seen == [1, 2, 3, 4, 5]
    assert open_lake(old_lake).meta.layers == (1,)
    assert_same_lake(layer1_lake, old_lake)
    assert not verify_errors(old_lake)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lake"]  # no partial, no set-aside old lake
    assert read_lock(old_lake) is None


def _overwrite_ops(reference_lake: Path, teacher: Path, libri_root: Path, tmp_path: Path) -> list[str]:
    """The numbered filesystem operations of ``--overwrite --layers 1`` over a copy of the reference lake."""
    scratch = tmp_path / "count" / "lake"
    shutil.copytree(reference_lake, scratch)
    faults.install("count")
    try:
        run_extract_quiet(teacher, libri_root, scratch, overwrite=True, layers="1")
    finally:
        log = list(faults.LOG)
        faults.uninstall()
    shutil.rmtree(scratch.parent)
    return log


@pytest.mark.slow
def test_killed_overwrite_leaves_the_old_lake_and_the_rerun_continues_it(
    small_run: Path, old_lake: Path, reference_lake: Path, layer1_lake: Path, tiny_teacher_path: Path, libri_root: Path,
    tmp_path: Path, cli: Any,
) -> None:
    log = _overwrite_ops(reference_lake, tiny_teacher_path, libri_root, tmp_path)
    renames = [i for i, op in enumerate(log, 1) if op.startswith("rename ") and f"{PARTIAL}/" in op and "/_tmp_shard" in op]
    point = renames[2]  # two shards of the new lake committed, the third about to be
    args = extract_args(tiny_teacher_path, libri_root, old_lake, "--overwrite", "--layers", "1")
    with paused_fhb(args, point, tmp_path) as proc:  # SIGKILLed when the block ends
        # paused mid-overwrite: readers and other writers of the old lake are refused ...
        assert_user_error(cli("evaluate", str(small_run), "--cache", str(old_lake)), "is being written by",
                          f"pid {proc.pid}")
        assert_user_error(cli(*args), f"is locked by pid {proc.pid}")
        assert_same_lake(reference_lake, old_lake)  # ... and it is intact
    # killed: the old lake is intact, readable and verifies; the partial new lake waits beside it
    assert_same_lake(reference_lake, old_lake)
    assert not verify_errors(old_lake)
    with LakeReadLease(old_lake):  # the dead writer's lock is only a warning for a reader
        pass
    assert len(list((tmp_path / PARTIAL).glob("*/shard-*"))) == 2
    plain = cli(*extract_args(tiny_teacher_path, libri_root, old_lake))  # without --overwrite: the old lake
    assert plain.code == 0 and "left its partial new lake" in plain.stderr, plain.stderr[-3000:]
    assert_same_lake(reference_lake, old_lake)
    # the same --overwrite command continues the partial lake and swaps it in
    rerun = cli(*args)
    assert rerun.code == 0 and TRACEBACK not in rerun.stderr, rerun.stderr[-3000:]
    assert "resuming: 2 shard(s) already committed" in rerun.stderr
    assert f"taking over the lock of pid {proc.pid}" in rerun.stderr  # dead locks (the old lake's, the partial one's)
    assert_same_lake(layer1_lake, old_lake)
    assert not verify_errors(old_lake)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_failed_overwrite_keeps_the_old_lake_and_is_continued(
    old_lake: Path, reference_lake: Path, layer1_lake: Path, tiny_teacher_path: Path, libri_root: Path,
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fhb.stages import extract

    real = extract.extract_shard
    calls: list[str] = []

    def third_fails(job: Any, meta: Any, opts: Any) -> Any:
        calls.append(job.name)
        if len(calls) == 3:
            raise FhbError("simulated failure in the third shard")
        return real(job, meta, opts)

    monkeypatch.setattr(extract, "extract_shard", third_fails)
    args = extract_args(tiny_teacher_path, libri_root, old_lake, "--overwrite", "--layers", "1")
    assert_user_error(cli(*args), "simulated failure")
    assert_same_lake(reference_lake, old_lake)
    assert read_lock(old_lake) is None and (tmp_path / PARTIAL).is_dir()
    monkeypatch.setattr(extract, "extract_shard", real)
    rerun = cli(*args)
    assert rerun.code == 0 and "resuming: 2 shard(s) already committed" in rerun.stderr, rerun.stderr[-3000:]
    assert_same_lake(layer1_lake, old_lake)


def test_partial_lake_of_other_options_is_started_over(
    old_lake: Path, layer1_lake: Path, tiny_teacher_path: Path, libri_root: Path, tmp_path: Path, cli: Any,
) -> None:
    """An interrupted overwrite for ``--layers 2`` and a rerun asking ``--layers 1``: the partial is not reused."""
    partial = tmp_path / PARTIAL
    shutil.copytree(old_lake, partial)  # a complete lake of another layout where the partial one would be
    rerun = cli(*extract_args(tiny_teacher_path, libri_root, old_lake, "--overwrite", "--layers", "1"))
    assert rerun.code == 0 and "starting it over" in rerun.stderr, rerun.stderr[-3000:]
    assert_same_lake(layer1_lake, old_lake)
    assert not partial.exists()


def test_a_file_the_user_adds_during_the_overwrite_stops_the_swap(
    old_lake: Path, reference_lake: Path, layer1_lake: Path, tiny_teacher_path: Path, libri_root: Path,
    tmp_path: Path,
) -> None:
    def progress(result: Any, done: int, total: int) -> None:
        if done == 1:
            (old_lake / "NOTES.md").write_text("mine")

    with pytest.raises(FhbError, match=r"NOTES\.md.*deletes only what fhb wrote"):
        run_extract_quiet(tiny_teacher_path, libri_root, old_lake, overwrite=True, layers="1", progress=progress)
    assert (old_lake / "NOTES.md").read_text() == "mine"
    (old_lake / "NOTES.md").unlink()
    assert_same_lake(reference_lake, old_lake)
    run_extract_quiet(tiny_teacher_path, libri_root, old_lake, overwrite=True, layers="1")  # moved away: continues
    assert_same_lake(layer1_lake, old_lake)


def test_overwrite_never_deletes_through_a_symlink(old_lake: Path, reference_lake: Path, tiny_teacher_path: Path,
                                                   libri_root: Path, tmp_path: Path, cli: Any) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.bin").write_bytes(b"keep")
    link = tmp_path / "link-lake"
    link.symlink_to(old_lake, target_is_directory=True)
    assert_user_error(cli(*extract_args(tiny_teacher_path, libri_root, link, "--overwrite", "--layers", "1")),
                      "symlink")
    (old_lake / "train-clean-100" / "more").symlink_to(precious, target_is_directory=True)
    assert_user_error(cli(*extract_args(tiny_teacher_path, libri_root, old_lake, "--overwrite", "--layers", "1")),
                      "train-clean-100/more", "deletes only what fhb wrote")
    (old_lake / "train-clean-100" / "more").unlink()
    planted = tmp_path / PARTIAL  # a partial lake that is a symlink to the user's data
    planted.symlink_to(precious, target_is_directory=True)
    assert_user_error(cli(*extract_args(tiny_teacher_path, libri_root, old_lake, "--overwrite", "--layers", "1")),
                      "symlink")
    assert (precious / "data.bin").read_bytes() == b"keep"
    assert_same_lake(reference_lake, old_lake)


def test_overwrite_out_that_is_an_input_is_refused(tiny_teacher_path: Path, corpus_copy: Path, tmp_path: Path,
                                                   cli: Any) -> None:
    before = _tree(corpus_copy)
    for out, needle in ((corpus_copy, "is the input --libri-root"), (corpus_copy.parent, "contains the input"),
                        (tiny_teacher_path, "is the input --teacher"), (tiny_teacher_path.parent, "contains the input")):
        assert_user_error(cli(*extract_args(tiny_teacher_path, corpus_copy, out, "--overwrite")), needle)
    assert _tree(corpus_copy) == before and tiny_teacher_path.is_file()
