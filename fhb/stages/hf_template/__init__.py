"""Templates of the transformers remote code that ``fhb export-hf`` writes (never imported by fhb).

``configuration_fithubert.py`` and ``modeling_fithubert.py`` are copied verbatim into an export of
a student that ``HubertConfig`` cannot express (the time-reduction layer of FitHuBERT), next to
``fhb_*.py``: the source of fhb's student modules, flattened by
:func:`fhb.stages.export_hf.bundle_flat_sources` (``fhb.student.model`` becomes
``fhb_student_model.py``, its ``from fhb.nn.conv import X`` becomes ``from .fhb_nn_conv import X``;
transformers' remote-code loader copies flat sibling modules only). The model code itself exists
once, in fhb.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE_FILES: tuple[str, ...] = ("configuration_fithubert.py", "modeling_fithubert.py")
"""Files copied verbatim into the export folder."""


def template_dir() -> Path:
    """The folder holding :data:`TEMPLATE_FILES`."""
    return Path(__file__).resolve().parent
