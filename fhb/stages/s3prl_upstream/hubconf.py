"""S3PRL hub entry for a FitHuBERT student exported by fhb (``-u fithubert_fhb``).

Register it in S3PRL by copying this folder to ``s3prl/upstream/fithubert_fhb/`` and adding
``from s3prl.upstream.fithubert_fhb.hubconf import *`` to ``s3prl/hub.py`` (see README.md).
"""

from __future__ import annotations

from typing import Any

from .expert import UpstreamExpert as _UpstreamExpert

__all__ = ["fithubert_fhb"]


def fithubert_fhb(ckpt: str, model_config: str | None = None, *args: Any, **kwargs: Any) -> _UpstreamExpert:
    """The upstream for ``-k fithubert.ckpt [-g fithubert.yaml]``.

    Args:
        ckpt: the exported ``fithubert.ckpt`` (or a published FitHuBERT ``.ckpt`` that
            ``torch.load(weights_only=True)`` can read).
        model_config: its yaml (``fithubert.yaml``); None uses the config stored in ``ckpt``.
    """
    return _UpstreamExpert(ckpt, model_config, **kwargs)
