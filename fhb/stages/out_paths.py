"""Checks of output paths that `fhb.files.check_out_apart` does not cover: single output files, and
outputs that must not lie inside an input lake.
"""

from __future__ import annotations

import os
from pathlib import Path

from fhb.errors import FhbError


def check_new_file(out: Path, command: str, *, replace: bool = False) -> None:
    """Refuse an output file path that is a folder, lies below a file or in an unwritable folder, or
    (without ``replace``) names an existing file: a command never overwrites a file it did not write.

    Raises:
        FhbError: naming ``--out``, what was found and the fix.
    """
    if str(out) == "":
        raise FhbError(f"{command}: --out: expected a file path, found an empty string; pass a file name")
    target = Path(os.path.abspath(out))
    if target.is_dir():
        raise FhbError(f"{command}: --out {out} is a folder; expected a file path (.pt); pass a file name")
    if target.exists() or target.is_symlink():
        if not replace:
            raise FhbError(f"{command}: --out {out} exists; expected a new file (fhb never overwrites a file it "
                           "did not write: it may be a real checkpoint); delete it or choose another --out")
        return
    existing = next(p for p in target.parents if p.exists())
    if not existing.is_dir():
        raise FhbError(f"{command}: --out {out} lies below the file {existing}; expected a path in a folder; "
                       "choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FhbError(f"{command}: --out {out}: the folder {existing} is not writable; expected a folder you can "
                       "write; choose another --out or fix its permissions")


def check_out_not_inside_lake(out: Path, lake: Path | None, option: str, command: str) -> None:
    """Refuse an output folder inside an input lake (a run or a lake written there would make the
    lake hold entries that are not its own, which `fhb extract --overwrite` then refuses to replace).

    Raises:
        FhbError: naming both paths and the fix.
    """
    if lake is None or str(lake) == "" or str(out) == "":
        return
    source = Path(os.path.abspath(lake)).resolve()
    target = Path(os.path.abspath(out)).resolve()
    if source in target.parents:
        raise FhbError(f"{command}: --out {out} lies inside the input {option} {lake}; expected an output "
                       "folder outside the lake (a lake holds only what fhb extract wrote); choose another --out")
