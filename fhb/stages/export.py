"""``fhb export-s3prl``: a run's student in the published formats and as an S3PRL upstream.

From one student checkpoint of a run (default: ``RUN/student.pt``, else the checkpoint ``RUN/latest``
names; or ``--step N`` / ``--checkpoint PATH``) :func:`export_s3prl` writes::

    OUT/fithubert.ckpt        published Lightning layout: state_dict = student_model.<key> (all 264
                              tensors for fithubert.yaml), hyper_parameters = {"cfg": <yaml dict>};
                              loads unchanged in the published upstream (-k fithubert.ckpt -g fithubert.yaml)
    OUT/fithubert.yaml        the yaml (distiller: section builds the model)
    OUT/fithubert.safetensors the same student tensors without pickle (keys without the
                              student_model. prefix; metadata: the yaml as JSON, global_step);
                              the S3PRL upstream below reads it in preference to the .ckpt
    OUT/model_card.md         teacher, lake, steps, final dev losses per layer, parameter counts
    OUT/fithubert_fhb/        a self-contained S3PRL upstream (torch + pyyaml only):
        expert.py, hubconf.py   from fhb/stages/s3prl_upstream/ (verbatim)
        _fhb/                   fhb's student modules, bundled (:func:`bundle_student_sources`)
        README.md               how to register it in S3PRL and run SUPERB ASR

**One source of truth for the model code.** The upstream's model is not a second copy kept in
the repository: :func:`bundle_student_sources` copies the source of the fhb modules the student
needs (the import closure of ``fhb.student.model`` and ``fhb.student.config``) at export time and
rewrites their ``fhb.*`` imports to package-relative ones (``from fhb.nn.conv import X`` in
``fhb/student/model.py`` becomes ``from ..nn.conv import X``); ``fhb.errors`` travels with them
(it has no dependencies). Anything else a bundled module imports must be the standard library,
torch or pyyaml, else the export fails. ``_fhb/BUNDLE.json`` records the fhb version and the
sha256 of every source file (`fhb.stages.bundle` does the bundling for every hand-off).

The output is assembled in a temporary sibling folder, the checkpoint is re-loaded into fhb's
student and compared bit for bit, and only then is the folder renamed to ``OUT``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from fhb.errors import FhbError
from fhb.stages.bundle import BUNDLE_ROOTS, assert_same_state, bundle
from fhb.training.runs import RunStudent, load_run_student

__all__ = [
    "BUNDLE_ROOTS",
    "CKPT_NAME",
    "SAFETENSORS_NAME",
    "UPSTREAM_NAME",
    "YAML_NAME",
    "ExportResult",
    "bundle_student_sources",
    "export_s3prl",
    "write_model_card",
    "write_safetensors",
    "write_s3prl_upstream",
]

log = logging.getLogger(__name__)

CKPT_NAME = "fithubert.ckpt"
YAML_NAME = "fithubert.yaml"
SAFETENSORS_NAME = "fithubert.safetensors"
CARD_NAME = "model_card.md"
UPSTREAM_NAME = "fithubert_fhb"
"""The S3PRL upstream's name (``-u fithubert_fhb``) and folder (``s3prl/upstream/fithubert_fhb``)."""
BUNDLE_PACKAGE = "_fhb"


# ---------------------------------------------------------------------------------- bundling


def bundle_student_sources(dest: Path, roots: tuple[str, ...] = BUNDLE_ROOTS) -> dict[str, str]:
    """Copy fhb's student modules into the package ``dest`` (``<upstream>/_fhb``) with package-relative
    imports (`fhb.stages.bundle.bundle`, ``package`` layout; torch and pyyaml allowed).

    Returns:
        ``{"fhb/x/y.py": sha256 of the original source}``, also written to ``dest/BUNDLE.json``.
    """
    return bundle(dest, layout="package", allowed=frozenset({"torch", "yaml"}), manifest="BUNDLE.json",
                  purpose="the S3PRL upstream", roots=roots)


_README = """\
# {name}: FitHuBERT student exported by fhb {version}

A self-contained [S3PRL](https://github.com/s3prl/s3prl) upstream: `expert.py`, `hubconf.py`
and `_fhb/` (fhb's student code, bundled at export time; needs only torch and pyyaml, no
fairseq, no torchaudio, no fhb). The weights are `{ckpt}` and `{yaml}` next to this folder
(the published FitHuBERT layout: they also load in the published `fithubert` upstream), and the
same tensors without pickle in `{safetensors}`, which this upstream reads instead of the `.ckpt`
when it sits next to it (with the `safetensors` package installed; `-k {safetensors}` works too).

## Register it in an S3PRL checkout

```bash
cp -r {name} /path/to/s3prl/s3prl/upstream/{name}
# newer s3prl lists its upstreams explicitly (FitHuBERT issue #4): add this line to s3prl/hub.py
echo 'from s3prl.upstream.{name}.hubconf import *' >> /path/to/s3prl/s3prl/hub.py
python -c "import s3prl.hub as hub; print(hub.{name})"
```

(The S3PRL of January 2022 that FitHuBERT pinned globs `upstream/*/hubconf.py` itself: there
copying the folder is enough.)

## SUPERB ASR

```bash
cd /path/to/s3prl/s3prl
python3 run_downstream.py -m train -n fit_asr -u {name} -d asr \\
    -k {abs_ckpt} -g {abs_yaml} -s hidden_states
```

**The paper's SUPERB numbers use `-s last_hidden_state`**: the published upstream's feature (the
last prediction head). To compare with the paper, run that:

```bash
python3 run_downstream.py -m train -n fit_asr_paper -u {name} -d asr \\
    -k {abs_ckpt} -g {abs_yaml} -s last_hidden_state
```

`-s hidden_states` (the command above, S3PRL's default) trains S3PRL's weighted sum over all
{num_states} hidden states: the SUPERB weighted-sum protocol, not the paper's setting.

## Outputs

| key | shape | frame rate | `get_downsample_rates` |
|---|---|---|---|
| `hidden_states` | {num_states} x `B x T2 x {dim}` | {hidden_ms} ms | {hidden_rate} |
| `last_hidden_state` | `B x {f}*T2 x {out_dim}` | {last_ms} ms | {last_rate} |

`T' = ` conv frames of the waveform (20 ms, stride 320, receptive field 400), `T2 = T' // {f}`.
`hidden_states[0]` is the input of the first transformer layer: {first}.
`hidden_states[i]` (i = 1..{layers}) is the output of transformer layer i.
"""


def write_s3prl_upstream(out: Path, config: Any, ckpt_path: Path, yaml_path: Path, name: str = UPSTREAM_NAME) -> Path:
    """Write the S3PRL upstream folder ``out/name`` for a student of ``config``.

    Args:
        out: the export folder.
        config: the student's :class:`~fhb.student.config.FitConfig` (for the README's table).
        ckpt_path: where the final ``fithubert.ckpt`` lives (README commands).
        yaml_path: where the final ``fithubert.yaml`` lives.
        name: the upstream's name.

    Returns:
        The upstream folder.
    """
    import fhb
    from fhb.nn.frames import total_stride
    from fhb.stages.s3prl_upstream import TEMPLATE_FILES, template_dir

    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    for file in TEMPLATE_FILES:
        shutil.copyfile(template_dir() / file, folder / file)
    (folder / "__init__.py").write_text(f'"""S3PRL upstream {name} (exported by fhb {fhb.__version__})."""\n',
                                        encoding="utf-8")
    bundle_student_sources(folder / BUNDLE_PACKAGE)
    d = config.distiller
    f = d.reduce_factor
    stride = total_stride(list(d.front_specs))
    first = (f"the time-reduction Conv1d's output (kernel = stride = {f}) over the embedding "
             "(positional conv, then LayerNorm)" if d.enable_tr_layer else
             "the embedding (the projected CNN features plus the positional conv, then LayerNorm)")
    (folder / "README.md").write_text(_README.format(
        name=name, version=fhb.__version__, ckpt=ckpt_path.name, yaml=yaml_path.name,
        safetensors=ckpt_path.with_suffix(".safetensors").name,
        abs_ckpt=ckpt_path.resolve(), abs_yaml=yaml_path.resolve(), num_states=d.encoder_layers + 1,
        dim=d.encoder_embed_dim, hidden_ms=1000 * stride * f // 16000, hidden_rate=stride * f, f=f,
        out_dim=d.pred_head_final_dim if d.layerwise_proj else d.encoder_embed_dim,
        last_ms=1000 * stride // 16000, last_rate=stride, first=first, layers=d.encoder_layers,
    ), encoding="utf-8")
    return folder


# ---------------------------------------------------------------------------------- model card


def _run_facts(run: Path | None) -> dict[str, Any]:
    """What the run recorded: its config.yaml sections, train/eval/selected records of metrics.jsonl."""
    import yaml

    from fhb.student.config import safe_yaml_load
    from fhb.training import run_state

    facts: dict[str, Any] = {"config": {}, "train": [], "eval": [], "selected": []}
    if run is None or not run.is_dir():
        return facts
    cfg_path = run / run_state.CONFIG
    if cfg_path.is_file():
        try:
            loaded = safe_yaml_load(cfg_path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise FhbError(f"{cfg_path}: expected the run's yaml config, found unreadable yaml "
                           f"({' '.join(str(exc).split())}); restore it or export with --checkpoint") from None
        facts["config"] = loaded if isinstance(loaded, dict) else {}
    if (run / run_state.METRICS).is_file():
        for rec in run_state.read_metrics(run):
            if rec.get("kind") in ("train", "eval", "selected"):
                facts[rec["kind"]].append(rec)
    return facts


def _selected_text(selected: dict[str, Any] | None) -> str:
    """Which student ``fhb distill`` wrote as ``student.pt`` (its ``selected`` metrics record)."""
    if not selected:
        return "not recorded"
    if selected.get("selected") == "best":
        return (f"best by dev loss ({selected.get('split')}: {selected.get('dev_loss'):.6g}) at update "
                f"{selected.get('step')}, as the published best checkpoint")
    early = ", stopped early" if selected.get("stopped_early") else ""
    return f"last update ({selected.get('step')}{early})"


def _lake_teacher(lake: str | None) -> dict[str, Any] | None:
    """The teacher recorded in the lake's metadata, when the lake can be opened here."""
    if not lake:
        return None
    try:
        from fhb.storage.reader import open_lake

        return open_lake(lake).meta.teacher.to_dict()
    except Exception as exc:  # noqa: BLE001 - the card says it was not readable
        log.warning("lake %s not readable for the model card (%s)", lake, exc)
        return None


def write_model_card(path: Path, found: RunStudent, run: Path | None) -> dict[str, Any]:
    """Write ``model_card.md``; returns the facts it lists.

    Teacher and lake come from the run's ``config.yaml`` (``fhb_distill.cache``, ``teacher:``),
    the lake's metadata (name, sha256) when it is readable, or the checkpoint's ``teacher`` record;
    steps from the checkpoint, else the last train record; dev losses from the last eval record of
    ``metrics.jsonl``.
    """
    facts = _run_facts(run)
    settings = facts["config"].get("fhb_distill") or {}
    imported = facts["config"].get("fhb_import") or {}
    lake = settings.get("cache")
    teacher = _lake_teacher(lake) or (dict(found.teacher) if isinstance(found.teacher, dict) else {})
    steps = found.step or max((int(r.get("step", 0)) for r in facts["train"]), default=0) or int(
        imported.get("global_step", 0) or 0)
    last_eval = facts["eval"][-1] if facts["eval"] else None
    model = found.model
    card = {
        "source": str(found.source),
        "kind": found.kind,
        "teacher_model": found.config.teacher.get("teacher_model"),
        "teacher_name": teacher.get("name"),
        "teacher_sha256": teacher.get("sha256"),
        "lake": lake,
        "splits": settings.get("splits"),
        "imported_from": imported.get("source"),
        "steps": steps,
        "dev": last_eval,
        "selected": facts["selected"][-1] if facts["selected"] else None,
        "params_training": model.num_parameters(),
        "params_inference": model.num_parameters(inference=True),
    }
    na = "not recorded"
    lines = [
        "# FitHuBERT student (exported by fhb)",
        "",
        "| | |",
        "|---|---|",
        f"| checkpoint | `{card['source']}` ({card['kind']}) |",
        f"| teacher | `{card['teacher_model'] or na}` ({card['teacher_name'] or na}) |",
        f"| teacher sha256 | `{card['teacher_sha256'] or na}` |",
        f"| lake | `{lake or na}` (splits {card['splits'] or na}) |",
    ]
    if card["imported_from"]:
        lines.append(f"| imported from | `{card['imported_from']}` (sha256 `{imported.get('sha256')}`) |")
    lines += [
        f"| optimizer updates | {steps} |",
        f"| released student | {_selected_text(card['selected'])} |",
        f"| parameters (training, all heads) | {card['params_training']:,} |",
        f"| parameters (inference, S3PRL) | {card['params_inference']:,} |",
        "",
        "## Final dev losses",
        "",
    ]
    if last_eval:
        lines += [f"Split `{last_eval.get('split')}` at update {last_eval.get('step')}: last-layer loss "
                  f"{last_eval.get('dev_loss'):.6g} (the published `v_loss`).", "",
                  "| teacher layer | loss |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" for k, v in sorted((last_eval.get("layer_losses") or {}).items())]
    else:
        lines.append("No evaluation recorded in metrics.jsonl (run `fhb evaluate RUN --cache LAKE`).")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return card


# ---------------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_s3prl` wrote (final paths) and the facts of its model card."""

    out: Path
    checkpoint: Path
    yaml: Path
    upstream: Path
    model_card: Path
    source: Path
    step: int
    card: dict[str, Any]
    safetensors: Path | None = None


def write_safetensors(model: Any, config: Any, path: Path, step: int = 0) -> Path:
    """Write the student's tensors (its state-dict keys, no prefix) as safetensors, no pickle.

    Metadata: ``format: pt``, ``fhb_config`` (the yaml dict as JSON, as ``hyper_parameters['cfg']``
    of the ``.ckpt``) and ``global_step``.
    """
    from safetensors.torch import save

    from fhb.files import atomic_write_bytes

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "fhb_config": json.dumps(config.to_dict()), "global_step": str(int(step))}
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return path


def _verify(ckpt: Path, yaml_path: Path, model: Any, safetensors_path: Path | None = None) -> None:
    """Re-load the written checkpoint (and safetensors) into fhb's student and compare every tensor
    bit for bit."""
    from fhb.student.checkpoint import load_student

    reloaded, _ = load_student(ckpt, yaml_path)
    ours = model.state_dict()
    assert_same_state(ours, reloaded.state_dict(), f"exported {ckpt.name}")
    if safetensors_path is not None:
        from safetensors.torch import load_file

        # safetensors orders keys itself
        assert_same_state(ours, load_file(str(safetensors_path)), f"exported {safetensors_path.name}", ordered=False)


def export_s3prl(
    run: Path | None,
    out: Path,
    *,
    step: int | None = None,
    checkpoint: Path | None = None,
    yaml_path: Path | None = None,
    name: str = UPSTREAM_NAME,
    overwrite: bool = False,
) -> ExportResult:
    """Export one student checkpoint (see the module docstring for the layout).

    Args:
        run: the run directory (None with ``checkpoint``: a checkpoint outside any run).
        out: the export folder; must not exist or be empty unless ``overwrite``.
        step: export ``checkpoints/step-XXXXXXXX.pt`` instead of the final student.
        checkpoint: export this file instead.
        yaml_path: config for a checkpoint that stores none (bare state dict).
        name: the S3PRL upstream's name.
        overwrite: replace an existing non-empty ``out``.

    Returns:
        :class:`ExportResult`.

    Raises:
        FhbError: no such run/checkpoint, a student in the inference layout (the published
            format needs every head), or a non-empty ``out`` without ``overwrite``.
    """
    from fhb.files import build_beside, check_out_apart, check_replaceable
    from fhb.student.checkpoint import save_published_checkpoint

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FhbError(f"export: {out} exists and is not empty; expected a new folder; pass --overwrite or "
                       "choose another --out")
    check_out_apart(out, {"--run": run, "--checkpoint": checkpoint, "--config": yaml_path}, "export-s3prl")
    own = frozenset({CKPT_NAME, YAML_NAME, SAFETENSORS_NAME, CARD_NAME, name})  # exports before the manifest
    check_replaceable(out, "export-s3prl", own)
    run_dir = Path(run) if run is not None else None
    found = load_run_student(run_dir, step, checkpoint, yaml_path)
    with build_beside(out, "export-s3prl", own) as tmp:
        ckpt, cfg = save_published_checkpoint(found.model, found.config, tmp / CKPT_NAME,
                                              yaml_path=tmp / YAML_NAME, global_step=found.step)
        plain = write_safetensors(found.model, found.config, tmp / SAFETENSORS_NAME, found.step)
        _verify(ckpt, cfg, found.model, plain)
        write_s3prl_upstream(tmp, found.config, out / CKPT_NAME, out / YAML_NAME, name)
        card = write_model_card(tmp / CARD_NAME, found, run_dir)
    log.info("exported %s (update %d) to %s", found.source, found.step, out)
    return ExportResult(out, out / CKPT_NAME, out / YAML_NAME, out / name, out / CARD_NAME, found.source,
                        found.step, card, out / SAFETENSORS_NAME)
