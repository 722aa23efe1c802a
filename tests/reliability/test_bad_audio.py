"""Bad audio in the corpus: what ``fhb extract`` tells the user, and what the lake holds after.

Promises (docs/reliability.md, "What is validated"):

* ``--on-bad-audio error`` (the default): exit status 2 and one ``error:`` line naming the file
  and what is wrong with it, no traceback; nothing is committed for the shard of that file.
* ``--on-bad-audio skip``: every other utterance is extracted; each skipped file is listed with
  its reason in its shard's attributes and in the summary the command prints. Rerunning a lake
  that stopped on a bad file with ``skip`` resumes it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fhb.storage.reader import open_lake

from .conftest import SPLITS, TRACEBACK, assert_user_error, extract_args, fhb_subprocess, verify_errors

CHAPTER = Path("dev-clean") / "1995" / "1827"
BAD_ID = "1995-1827-0001"


def _truncate(root: Path) -> list[Path]:
    flac = root / CHAPTER / f"{BAD_ID}.flac"
    data = flac.read_bytes()
    flac.write_bytes(data[: len(data) // 3])  # header intact, frames cut: found when decoding
    return [flac]


def _zero_length(root: Path) -> list[Path]:
    flac = root / CHAPTER / f"{BAD_ID}.flac"
    flac.write_bytes(b"")
    return [flac]


def _stereo(root: Path) -> list[Path]:
    flac = root / CHAPTER / f"{BAD_ID}.flac"
    x, rate = sf.read(flac, dtype="int16")
    sf.write(flac, np.stack([x, x], axis=1), rate, format="FLAC", subtype="PCM_16")
    return [flac]


def _rate_8k(root: Path) -> list[Path]:
    flac = root / CHAPTER / f"{BAD_ID}.flac"
    x, _ = sf.read(flac, dtype="int16")
    sf.write(flac, x[::2], 8000, format="FLAC", subtype="PCM_16")
    return [flac]


def _too_short(root: Path) -> list[Path]:
    flac = root / CHAPTER / f"{BAD_ID}.flac"
    x, rate = sf.read(flac, dtype="int16")
    sf.write(flac, x[:200], rate, format="FLAC", subtype="PCM_16")  # 12.5 ms: below one teacher frame
    return [flac]


def _directory(root: Path) -> list[Path]:
    flac = root / CHAPTER / f"{BAD_ID}.flac"
    flac.unlink()
    flac.mkdir()
    (flac / "inner.flac").write_bytes(b"")
    return [flac]


def _missing_transcript_line(root: Path) -> list[Path]:
    trans = root / CHAPTER / "1995-1827.trans.txt"
    lines = [line for line in trans.read_text().splitlines() if not line.startswith(BAD_ID)]
    trans.write_text("\n".join(lines) + "\n")
    return [root / CHAPTER / f"{BAD_ID}.flac"]


def _non_utf8_transcript(root: Path) -> list[Path]:
    trans = root / CHAPTER / "1995-1827.trans.txt"
    trans.write_bytes(trans.read_bytes().replace(b" ", " CAF\xc9 ".encode("latin-1"), 1))
    return sorted((root / CHAPTER).glob("*.flac"))  # the whole chapter loses its transcripts


CASES: dict[str, tuple[Callable[[Path], list[Path]], str]] = {
    # name: (damage the corpus copy -> the files that become unusable, words the message must hold)
    "truncated": (_truncate, "truncated"),
    "zero-length": (_zero_length, "not readable as audio"),
    "stereo": (_stereo, "2 channels, expected 1"),
    "8kHz": (_rate_8k, "8000 Hz, expected 16000 Hz"),
    "directory": (_directory, "found a directory"),
    "too-short": (_too_short, "shorter than the teacher's conv front-end"),
    "missing-transcript-line": (_missing_transcript_line, f"no line for {BAD_ID}"),
    "non-utf8-transcript": (_non_utf8_transcript, "not UTF-8"),
}


def _utterances(lake: Path) -> set[str]:
    if not (lake / "zarr.json").exists():
        return set()
    opened = open_lake(lake)
    return {u for split in opened.splits for u in opened[split].utterance_ids}


def _committed_ids(lake: Path) -> set[str]:
    """Utterance ids of every committed shard on disk (listed in the root or not)."""
    from fhb.storage.schema import ShardAttrs
    from fhb.storage.layout import is_committed_dir, read_node_attrs

    ids: set[str] = set()
    for shard in lake.glob("*/shard-*"):
        if is_committed_dir(shard):
            ids |= set(ShardAttrs.from_attrs(read_node_attrs(shard) or {}, str(shard)).index.utt_ids)
    return ids


@pytest.mark.parametrize("case", list(CASES))
def test_bad_audio_error_policy_names_the_file_and_commits_nothing_for_it(
    case: str, corpus_copy: Path, tiny_teacher_path: Path, tmp_path: Path, cli: object
) -> None:
    damage, words = CASES[case]
    bad = damage(corpus_copy)
    lake = tmp_path / "lake"
    result = cli(*extract_args(tiny_teacher_path, corpus_copy, lake))
    line = assert_user_error(result, str(bad[0]), words)
    assert "--on-bad-audio skip" in line  # the message gives the fix
    bad_ids = {p.name.split(".")[0] for p in bad}
    if lake.exists():  # a file found only when decoding stops the run after earlier shards committed
        assert not bad_ids & _committed_ids(lake)
        assert not list(lake.glob("*/_tmp_*")) and not (lake / ".fhb.lock").exists()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_audio_skip_policy_extracts_the_rest_and_lists_the_file(
    case: str, corpus_copy: Path, tiny_teacher_path: Path, reference_lake: Path, tmp_path: Path, cli: object
) -> None:
    damage, words = CASES[case]
    bad = damage(corpus_copy)
    lake = tmp_path / "lake"
    result = cli(*extract_args(tiny_teacher_path, corpus_copy, lake, "--on-bad-audio", "skip"))
    assert result.code == 0 and TRACEBACK not in result.stderr, result.stderr[-3000:]
    bad_ids = {p.name.split(".")[0] for p in bad}
    assert _utterances(lake) == _utterances(reference_lake) - bad_ids
    # every other utterance is what an extraction of the intact corpus holds (up to float16 rounding:
    # shards, hence teacher batches, are regrouped around the skipped file)
    ref, got = open_lake(reference_lake), open_lake(lake)
    for split in SPLITS:
        for utt in got[split].utterance_ids:
            assert np.array_equal(got[split].audio(utt), ref[split].audio(utt)), utt
            np.testing.assert_allclose(got[split].targets(utt), ref[split].targets(utt), rtol=4e-3, atol=4e-3)
    # the skipped files, with their reasons, are in the shards' attributes ...
    skipped = [entry for split in SPLITS for shard in got[split].shards
               for entry in got[split].shard(shard).attrs.skipped]
    assert sorted(e["path"] for e in skipped) == sorted(map(str, bad))
    assert {e["utt_id"] for e in skipped} == bad_ids
    assert all(words in e["reason"] for e in skipped), skipped
    # ... and in the summary the command printed
    assert "skipped files" in result.stderr
    for path in bad:
        assert f"skipped {path}" in result.stderr, result.stderr[-3000:]
    assert not verify_errors(lake)


def test_stopped_lake_resumes_with_skip(corpus_copy: Path, tiny_teacher_path: Path, reference_lake: Path,
                                        tmp_path: Path, cli: object) -> None:
    """What the error message tells the user to do: rerun the same lake with --on-bad-audio skip."""
    bad = _truncate(corpus_copy)[0]
    lake = tmp_path / "lake"
    assert_user_error(cli(*extract_args(tiny_teacher_path, corpus_copy, lake)), str(bad))
    committed_before = _committed_ids(lake)
    assert committed_before  # the shards before the bad one were committed (the run got that far)
    result = cli(*extract_args(tiny_teacher_path, corpus_copy, lake, "--on-bad-audio", "skip"))
    assert result.code == 0, result.stderr[-3000:]
    assert _utterances(lake) == _utterances(reference_lake) - {BAD_ID}
    assert not verify_errors(lake)


@pytest.mark.slow
def test_bad_audio_through_the_console_script(corpus_copy: Path, tiny_teacher_path: Path, tmp_path: Path) -> None:
    """The real process: exit status 2, one ``error:`` line on stderr naming the file, no traceback."""
    bad = _truncate(corpus_copy)[0]
    result = fhb_subprocess(*extract_args(tiny_teacher_path, corpus_copy, tmp_path / "lake"))
    assert_user_error(result, str(bad), "truncated")
    assert result.stdout == ""


def test_corpus_fixture_untouched(libri_root: Path) -> None:
    """The damage above is done on copies (guard against a test writing into the bundled fixture)."""
    assert len(list(libri_root.rglob("*.flac"))) == 10
    assert all(p.stat().st_size > 20000 for p in libri_root.rglob("*.flac"))


@pytest.mark.slow
def test_bad_audio_with_dask_workers_is_one_line(corpus_copy: Path, tiny_teacher_path: Path, tmp_path: Path) -> None:
    """The default mode runs shards in dask worker processes: the user still sees one line, no worker log dump."""
    bad = _truncate(corpus_copy)[0]
    result = fhb_subprocess(*extract_args(tiny_teacher_path, corpus_copy, tmp_path / "lake", "--workers", "1"))
    assert_user_error(result, str(bad), "truncated")
    assert "Traceback" not in result.stderr and "Compute Failed" not in result.stderr, result.stderr[-3000:]


def test_error_line_shows_paths_verbatim(libri_root: Path, tiny_teacher_path: Path, tmp_path: Path, cli: object) -> None:
    """A corpus under a directory whose name looks like terminal markup: the path is printed as it is."""
    root = tmp_path / "copy [/] of [bold]LibriSpeech" / "LibriSpeech"
    shutil.copytree(libri_root, root)
    bad = _truncate(root)[0]
    assert_user_error(cli(*extract_args(tiny_teacher_path, root, tmp_path / "lake")), str(bad), "truncated")


def test_markup_like_paths_in_summary_inspect_verify(libri_root: Path, tiny_teacher_path: Path, tmp_path: Path,
                                                     cli: object) -> None:
    """The summary of a skip run, `inspect`, `verify` and `teacher-info` print such paths as they are
    (rich markup in a path used to crash the summary after the lake was written)."""
    root = tmp_path / "copy [/] of [bold]LibriSpeech" / "LibriSpeech"
    shutil.copytree(libri_root, root)
    bad = _truncate(root)[0]
    lake = tmp_path / "lake [/] [red]x"
    teacher = tmp_path / "teacher [red].pt"
    shutil.copy(tiny_teacher_path, teacher)
    result = cli(*extract_args(teacher, root, lake, "--on-bad-audio", "skip"))
    assert result.code == 0 and TRACEBACK not in result.stderr, result.stderr[-3000:]
    assert f"skipped {bad}" in result.stderr and str(lake) in result.stderr  # (table titles wrap)
    for command in ("inspect", "verify"):
        shown = cli(command, lake)
        assert shown.code == 0 and TRACEBACK not in shown.stderr, shown.stderr[-3000:]
        assert str(lake) in shown.stderr
    info = cli("teacher-info", teacher)
    assert info.code == 0 and teacher.name in info.stderr, info.stderr[-3000:]
