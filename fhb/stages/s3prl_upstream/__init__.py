"""Template of the S3PRL upstream that ``fhb export-s3prl`` writes (never imported by fhb).

``expert.py`` and ``hubconf.py`` are copied verbatim into the exported folder
(``<out>/fithubert_fhb/``), next to ``_fhb/``: the source of fhb's student modules
(``fhb.nn``, ``fhb.student.{config,heads,model,time_reduction,teacher_init}``, ``fhb.errors``)
bundled by :func:`fhb.stages.export.bundle_student_sources` with their ``fhb.*`` imports rewritten
to package-relative ones. The templates import ``._fhb``, so they only run inside an export; the
model code itself exists once, in fhb.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE_FILES: tuple[str, ...] = ("expert.py", "hubconf.py")
"""Files copied verbatim into the exported upstream folder."""


def template_dir() -> Path:
    """The folder holding :data:`TEMPLATE_FILES`."""
    return Path(__file__).resolve().parent
