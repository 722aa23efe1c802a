"""``fhb import-hf``: a folder written by ``fhb export-hf`` back to an fhb run, bit for bit.

Reads ``fhb.json`` (the whole yaml, the step, the layout), ``model.safetensors`` and
``fhb_training_heads.safetensors`` (see :mod:`fhb.stages.export_hf`), rebuilds the student and
writes the run layout of ``fhb import-checkpoint`` (``config.yaml`` with an ``fhb_import``
section, ``student.pt``, ``metrics.jsonl``). Every tensor is the exported student's, bit for bit:
``HubertModel`` keys are renamed back, the identity projection of a student without
``post_extract_proj`` is checked and dropped, and the remote-code model's ``student.*`` keys lose
their prefix. Safetensors only: no pickle is read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from fhb.errors import FhbError
from fhb.pipeline.checkpoint_io import sha256_file
from fhb.stages.import_ckpt import ImportResult

__all__ = ["import_hf", "read_export_meta", "student_state_from_export"]

log = logging.getLogger(__name__)


def read_export_meta(folder: Path) -> dict[str, Any]:
    """``fhb.json`` of an ``fhb export-hf`` folder.

    Raises:
        FhbError: no such file (a folder fhb did not write) or another format.
    """
    from fhb.stages.export_hf import FHB_META, FORMAT, FORMAT_VERSION

    path = Path(folder) / FHB_META
    if not path.is_file():
        raise FhbError(f"import-hf: {folder}: expected a folder written by `fhb export-hf` (with {FHB_META}), "
                       f"found no {FHB_META}; export the run with fhb, or import its published .ckpt instead")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FhbError(f"import-hf: {path}: expected JSON, it does not parse ({exc}); re-export the run") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        found = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else type(meta).__name__
        raise FhbError(f"import-hf: {path}: expected format {FORMAT!r} version {FORMAT_VERSION}, found {found}; "
                       "use the fhb version that wrote it")
    return meta


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FhbError(f"import-hf: expected {path}, found nothing; the export is incomplete: export again")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise FhbError(f"import-hf: {path}: not a readable safetensors file ({exc}); export again") from None


def student_state_from_export(folder: Path, model: Any) -> dict[str, torch.Tensor]:
    """The fhb student state an export folder holds, in ``model.state_dict()`` order.

    Args:
        folder: an ``fhb export-hf`` folder.
        model: a student built from the folder's config, in the layout it was exported in
            (its keys and order are the target).

    Raises:
        FhbError: missing or unexpected tensors, or a ``HubertModel`` projection that is no
            longer the identity for a student without ``post_extract_proj``.
    """
    from fhb.stages.export_hf import HEADS_NAME, HUBERT, REMOTE_PREFIX, WEIGHTS_NAME, hubert_rules, rename

    folder = Path(folder)
    architecture = read_export_meta(folder)["architecture"]
    weights = _load_tensors(folder / WEIGHTS_NAME)
    heads = _load_tensors(folder / HEADS_NAME)
    state: dict[str, torch.Tensor] = dict(heads)
    if architecture == HUBERT:
        names = rename(list(weights), hubert_rules(model.config), reverse=True)
        if model.post_extract_proj is None:
            weight = weights.get("feature_projection.projection.weight")
            bias = weights.get("feature_projection.projection.bias")
            dim = model.config.encoder_embed_dim
            if weight is None or bias is None or not (torch.equal(weight, torch.eye(dim)) and not bias.any()):
                raise FhbError(f"import-hf: {folder}: expected the identity feature_projection (the student has no "
                               "post_extract_proj), found other weights (fine-tuned in transformers?); fhb's "
                               "student cannot hold them: import the folder fhb exported")
            names.pop("feature_projection.projection.weight", None)
            names.pop("feature_projection.projection.bias", None)
        unknown = sorted(k for k in weights if k not in names and not k.startswith("feature_projection.projection."))
        state.update({names[k]: v for k, v in weights.items() if k in names})
    else:
        unknown = sorted(k for k in weights if not k.startswith(REMOTE_PREFIX))
        body = {k[len(REMOTE_PREFIX):]: v for k, v in weights.items() if k.startswith(REMOTE_PREFIX)}
        if any(k.startswith("proj_head.") for k in heads):  # training layout: final_proj is the last head
            body = {k: v for k, v in body.items() if not k.startswith("final_proj.")}
        state.update(body)
    expected = list(model.state_dict())
    missing = [k for k in expected if k not in state]
    unknown += sorted(set(state) - set(expected))
    if missing or unknown:
        raise FhbError(f"import-hf: {folder}: the tensors do not match the student its fhb.json builds (missing: "
                       f"{missing[:5]}; unexpected: {unknown[:5]}); export the run again")
    return {k: state[k] for k in expected}


def import_hf(folder: Path, out: Path, *, overwrite: bool = False) -> ImportResult:
    """Turn an ``fhb export-hf`` folder into an fhb run directory (see the module docstring).

    Args:
        folder: the export folder.
        out: the run directory to create; must not exist or be empty unless ``overwrite``.
        overwrite: replace an existing non-empty ``out``.

    Raises:
        FhbError: a folder fhb did not write, incomplete or altered tensors, a student in the
            inference layout, or a non-empty ``out`` without ``overwrite``.
    """
    from fhb.training import run_state
    from fhb.stages.export_hf import WEIGHTS_NAME
    from fhb.stages.import_ckpt import check_imported_out, write_imported_run
    from fhb.student.config import FitConfig
    from fhb.student.model import build_fit_student

    folder, out = Path(folder), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FhbError(f"import-hf: {out} exists and is not empty; expected a new run directory; pass --overwrite "
                       "or choose another --out")
    check_imported_out(out, {"FOLDER": folder}, "import-hf")
    meta = read_export_meta(folder)
    config = FitConfig.from_dict(meta.get("config"), f"{folder}/fhb.json config")
    if meta.get("layout") != "training":
        raise FhbError(f"import-hf: {folder}: holds the inference layout (no intermediate heads); expected a "
                       "training student; export the run's training checkpoint")
    distiller = dataclasses.replace(config.distiller, init_conv_layers=False, init_encoder_layers=0)
    model = build_fit_student(dataclasses.replace(config, distiller=distiller))
    model.load_state_dict(student_state_from_export(folder, model), strict=True)
    step = int(meta.get("step") or 0)
    sha = sha256_file(folder / WEIGHTS_NAME)
    record = {"source": str(folder.resolve()), "sha256": sha, "kind": "transformers", "global_step": step,
              "epoch": 0, "config": None, "architecture": meta["architecture"]}
    write_imported_run(out, model, config, record, step=step)
    n = len(model.state_dict())
    log.info("imported %s (%s, update %d, %d tensors) into %s", folder, meta["architecture"], step, n, out)
    return ImportResult(out, out / run_state.STUDENT, meta["architecture"], step, sha, n)
