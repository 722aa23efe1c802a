"""`fhb.files`: atomic file writes and build-beside-then-swap folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fhb.files import MANIFEST, atomic_torch_save, atomic_write_bytes, atomic_write_text, build_beside


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.txt"
    atomic_write_text(path, "one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]


def test_atomic_write_failure_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def broken_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_atomic_torch_save_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    atomic_torch_save({"w": torch.arange(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))


def test_build_beside_swaps_in_complete_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with build_beside(out, own_layout=frozenset({"old.txt"})) as tmp:  # old.txt: as if fhb wrote it
        assert tmp.parent == tmp_path and tmp != out and not any(tmp.iterdir())
        (tmp / "new.txt").write_text("new")
        assert (out / "old.txt").is_file()  # the old folder stays until the body is done
    assert sorted(p.name for p in out.iterdir() if p.name != MANIFEST) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_build_beside_failure_keeps_the_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="half way"):
        with build_beside(out, own_layout=frozenset({"old.txt"})) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("half way")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
