"""``fhb export-hf`` / ``fhb import-hf`` (fhb.stages.export_hf, fhb.stages.import_hf): the student
as a transformers model, its parity with fhb's student, and the round trip back to a run.

The exports are loaded in a separate ``python -I -S`` process whose ``sys.path`` holds only
site-packages (without running its ``.pth`` files, so fhb's editable install is invisible):
``import fhb`` must fail there, and every hidden state must equal fhb's student's within 1e-5
(float32), batched with an attention mask and one at a time.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from fhb.errors import FhbError
from fhb.nn.frames import conv_output_lengths
from fhb.training import run_state
from fhb.stages.export import SAFETENSORS_NAME, UPSTREAM_NAME, export_s3prl
from fhb.stages.export_hf import FHB_META, HEADS_NAME, HUBERT, REMOTE, WEIGHTS_NAME, export_hf
from fhb.stages.import_ckpt import import_checkpoint
from fhb.stages.import_hf import import_hf
from fhb.student import (
    FitConfig,
    FitHuBERT,
    build_fit_student,
    load_packaged_config,
    load_student,
    load_student_checkpoint,
    save_student,
)
from tests.student.published import write_published_checkpoint

TEACHER_SHA = "ab" * 32
LENGTHS = (32000, 17777, 24321)
"""Fixture utterances cut to 2.0 s, 1.1 s and 1.5 s (three lengths: padding in the batch)."""


def _variant(config: FitConfig, train: dict | None = None, **distiller: object) -> FitConfig:
    out = dataclasses.replace(config, distiller=dataclasses.replace(config.distiller, **distiller))
    return dataclasses.replace(out, loss=dataclasses.replace(out.loss, **(train or {})))


def _distilhubert() -> FitConfig:
    """DistilHuBERT-style: no time reduction, one split head predicting three teacher layers."""
    return _variant(load_packaged_config("tiny"), {"distil_random_layer": 0, "random_layer_weight": 0.0},
                    enable_tr_layer=False, layerwise_proj=False, pred_layer_id=(0, 1, 2))


def _prenorm() -> FitConfig:
    """No time reduction, pre-LN layers, layer-norm conv stack with biases, CNN dim = model dim
    (no post_extract_proj: an identity projection in transformers), tanh GELU, layer-wise heads."""
    tiny = load_packaged_config("tiny")
    specs = tiny.distiller.conv_feature_layers[:-2] + ((48, 2, 2),) * 2
    return _variant(tiny, conv_feature_layers=specs, enable_tr_layer=False, layer_norm_first=True,
                    extractor_mode="layer_norm", conv_bias=True, activation_fn="gelu_accurate")


def _fake_run(run: Path, config: FitConfig, seed: int) -> FitHuBERT:
    """A run directory as ``fhb distill`` leaves it (config.yaml, metrics.jsonl, student.pt)."""
    torch.manual_seed(seed)
    model = build_fit_student(config)
    run.mkdir(parents=True)
    resolved = {**config.to_dict(), "fhb_distill": {"cache": None, "splits": ["train-clean-100"]}}
    (run / run_state.CONFIG).write_text(yaml.safe_dump(resolved, sort_keys=False))
    run_state.append_metrics(run, {"kind": "eval", "step": 7, "split": "dev-clean", "dev_loss": 0.25,
                                   "layer_losses": {"layer_01": 0.5, "layer_03": 0.25}})
    save_student(model, config, run / run_state.STUDENT, step=7, teacher={"name": "tiny.pt", "sha256": TEACHER_SHA})
    return model


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Per variant: the export folder, the run it came from, and the native student to compare with."""
    root = tmp_path_factory.mktemp("export-hf")
    out: dict[str, dict] = {}
    for name, config, seed in (("distil", _distilhubert(), 1), ("prenorm", _prenorm(), 2)):
        _fake_run(root / f"run-{name}", config, seed)
        res = export_hf(root / f"run-{name}", root / name)
        native, _ = load_student(root / f"run-{name}" / run_state.STUDENT)
        out[name] = {"folder": res.out, "run": root / f"run-{name}", "arch": res.architecture, "native": native}
    # a published FitHuBERT checkpoint: import-checkpoint -> export-hf
    ckpt = write_published_checkpoint(root / "published.ckpt", load_packaged_config("tiny"))
    yaml_path = ckpt.with_suffix(".yaml")
    run = import_checkpoint(ckpt, root / "run-fit", yaml_path).run
    res = export_hf(run, root / "fit")
    native, _ = load_student(ckpt, yaml_path)
    out["fit"] = {"folder": res.out, "run": run, "arch": res.architecture, "native": native}
    return out


_SCRIPT = textwrap.dedent("""
    import sys
    jobs, site = sys.argv[1], sys.argv[2:]
    sys.path[:] = [p for p in sys.path if "site-packages" not in p] + site
    import torch
    from transformers import AutoFeatureExtractor, AutoModel
    try:
        import fhb
    except ImportError:
        pass
    else:
        raise SystemExit("fhb is importable in the isolated process: " + fhb.__file__)

    def pack(out):
        return {"hidden": list(out.hidden_states), "last": out.last_hidden_state,
                "prediction": getattr(out, "prediction", None)}

    for folder, remote, wavs_file, out_file in torch.load(jobs):
        wavs = torch.load(wavs_file)
        kwargs = {"trust_remote_code": True} if remote else {}
        model, info = AutoModel.from_pretrained(folder, output_loading_info=True, **kwargs)
        model.eval()
        extractor = AutoFeatureExtractor.from_pretrained(folder)
        inputs = extractor([w.numpy() for w in wavs], sampling_rate=16000, padding=True, return_tensors="pt")
        with torch.no_grad():
            batched = model(**inputs, output_hidden_states=True)
            alone = [model(w[None], output_hidden_states=True) for w in wavs]
        lengths = inputs["attention_mask"].sum(-1)
        frames = model.hidden_state_lengths(lengths) if remote else model._get_feat_extract_output_lengths(lengths)
        torch.save({
            "class": type(model).__name__, "module": type(model).__module__,
            "info": {k: sorted(v) for k, v in info.items() if k != "error_msgs"},
            "extractor": type(extractor).__name__, "do_normalize": extractor.do_normalize,
            "sampling_rate": extractor.sampling_rate, "ratio": model.config.inputs_to_logits_ratio,
            "input_values": inputs["input_values"], "attention_mask": inputs["attention_mask"],
            "batched": pack(batched), "alone": [pack(o) for o in alone], "frames": frames,
            "modules": sorted(m for m in sys.modules if m.split(".")[0] == "fhb"),
        }, out_file)
""")


@pytest.fixture(scope="module")
def isolated(exports: dict[str, dict], fixture_wavs: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every export loaded with AutoModel in one isolated subprocess, run on fixture speech."""
    tmp = tmp_path_factory.mktemp("isolated-hf")
    utterances = [fixture_wavs[k] for k in sorted(fixture_wavs)[:3]]
    wavs = [w[:n].clone() for w, n in zip(utterances, LENGTHS, strict=True)]
    assert [len(w) for w in wavs] == list(LENGTHS)
    torch.save(wavs, tmp / "wavs.pt")
    jobs = [(str(e["folder"]), e["arch"] == REMOTE, str(tmp / "wavs.pt"), str(tmp / f"{name}.pt"))
            for name, e in exports.items()]
    torch.save(jobs, tmp / "jobs.pt")
    (tmp / "run.py").write_text(_SCRIPT)
    paths = sysconfig.get_paths()
    site = sorted({paths["purelib"], paths["platlib"]})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCH_FORCE", "HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp / "hf-home"), HF_MODULES_CACHE=str(tmp / "hf-modules"),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-I", "-S", str(tmp / "run.py"), str(tmp / "jobs.pt"), *site],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"wavs": wavs, **{name: torch.load(tmp / f"{name}.pt", weights_only=False) for name in exports}}


def _native(model: FitHuBERT, wavs: torch.Tensor, lengths: torch.Tensor | None) -> dict:
    """fhb's student on a padded batch: its hidden states as the export lists them."""
    model.eval()
    embedded: list[torch.Tensor] = []
    hook = model.encoder.dropout.register_forward_hook(lambda _m, _i, o: embedded.append(o))
    try:
        with torch.no_grad():
            out = model(wavs, lengths)
    finally:
        hook.remove()
    first = out.reduced if out.reduced is not None else embedded[-1]
    return {"hidden": [first, *out.hidden_states], "prediction": out.last_hidden_state,
            "last": model.encoder.final_norm(out.hidden_states[-1])}


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, f"{what}: {got.shape} != {want.shape}"
    assert (got - want).abs().max().item() <= 1e-5, f"{what}: max diff {(got - want).abs().max().item()}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["distil", "prenorm", "fit"])
def test_automodel_matches_fhb(name: str, exports: dict[str, dict], isolated: dict) -> None:
    entry, got, wavs = exports[name], isolated[name], isolated["wavs"]
    assert got["modules"] == []  # nothing named fhb was imported
    assert got["info"] == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}
    d = entry["native"].config
    remote = entry["arch"] == REMOTE
    assert remote == (name == "fit")
    assert got["class"] == ("FitHuBERTModel" if remote else "HubertModel")
    assert got["module"].startswith("transformers_modules." if remote else "transformers.models.hubert")
    # the feature extractor hands the student what it trained on: 16 kHz, raw samples, zero padding
    assert (got["extractor"], got["do_normalize"], got["sampling_rate"]) == ("Wav2Vec2FeatureExtractor", False, 16000)
    lengths = got["attention_mask"].sum(-1)
    assert lengths.tolist() == list(LENGTHS)
    for row, wav in zip(got["input_values"], wavs, strict=True):
        assert torch.equal(row[: len(wav)], wav) and not row[len(wav):].any()
    # batched with an attention mask, then each utterance alone
    f = d.reduce_factor
    runs = [(got["batched"], _native(entry["native"], got["input_values"], lengths), "batched")]
    runs += [(o, _native(entry["native"], w[None], None), f"alone {i}") for i, (o, w) in
             enumerate(zip(got["alone"], wavs, strict=True))]
    for (hf, ref, what), samples in zip(runs, [max(LENGTHS), *LENGTHS], strict=True):
        assert len(hf["hidden"]) == d.encoder_layers + 1
        assert len({tuple(h.shape) for h in hf["hidden"]}) == 1, [h.shape for h in hf["hidden"]]
        for i, (h, r) in enumerate(zip(hf["hidden"], ref["hidden"], strict=True)):
            _close(h, r, f"{name} {what} hidden state {i}")
        _close(hf["last"], ref["last"], f"{name} {what} last_hidden_state")
        if remote:
            _close(hf["prediction"], ref["prediction"], f"{name} {what} prediction")
        frames = int(conv_output_lengths(torch.tensor([samples]), d.conv_feature_layers)) // f
        assert hf["hidden"][0].shape[1:] == (frames, d.encoder_embed_dim)
    # valid frames per utterance, as the model reports them
    assert got["frames"].tolist() == (conv_output_lengths(lengths, d.conv_feature_layers) // f).tolist()
    # the frame rate the config states: 40 ms with the time-reduction layer, 20 ms without
    assert got["ratio"] == 320 * f == (640 if name == "fit" else 320)
    if not d.layer_norm_first:
        assert torch.equal(got["batched"]["last"], got["batched"]["hidden"][-1])


def _absolute_imports(nodes: object) -> set[str]:
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            names.add(node.module.split(".")[0])
    return names


def test_layout_card_and_config(exports: dict[str, dict]) -> None:
    distil, fit = exports["distil"]["folder"], exports["fit"]["folder"]
    assert exports["distil"]["arch"] == exports["prenorm"]["arch"] == HUBERT
    for folder in (distil, fit):
        for file in ("config.json", WEIGHTS_NAME, "preprocessor_config.json", "README.md", FHB_META, HEADS_NAME):
            assert (folder / file).is_file(), file
        assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))  # no pickle
    assert not (distil / "modeling_fithubert.py").exists()
    config = json.loads((distil / "config.json").read_text())
    assert config["model_type"] == "hubert" and "auto_map" not in config and config["do_stable_layer_norm"] is False
    assert json.loads((exports["prenorm"]["folder"] / "config.json").read_text())["do_stable_layer_norm"] is True
    remote = json.loads((fit / "config.json").read_text())
    assert remote["model_type"] == "fithubert" and remote["auto_map"]["AutoModel"] == "modeling_fithubert.FitHuBERTModel"
    assert (remote["frame_stride"], remote["prediction_stride"]) == (640, 320)
    # the remote code: fhb's own modules, flattened, importing torch and the standard library only
    # (pyyaml only inside the config's yaml readers, which the model never calls)
    manifest = json.loads((fit / "fhb_bundle.json").read_text())
    assert "fhb/student/model.py" in manifest["sources"]
    allowed = sys.stdlib_module_names | {"torch", "transformers"}
    for path in fit.glob("*.py"):
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert _absolute_imports(top) <= allowed, path
        assert _absolute_imports(ast.walk(tree)) <= allowed | {"yaml"}, path
    card = (distil / "README.md").read_text()
    assert TEACHER_SHA in card and "| optimizer updates | 7 |" in card and "layer_03 | 0.25" in card
    assert "20 ms" in card and "`hidden_states[0]` is the input of the first transformer layer" in card
    fit_card = (fit / "README.md").read_text()
    assert "40 ms" in fit_card and "trust_remote_code=True" in fit_card and "`prediction`" in fit_card
    assert "| optimizer updates | 1234 |" in fit_card and "imported from" in fit_card


@pytest.mark.parametrize("name", ["distil", "prenorm", "fit"])
def test_import_hf_round_trip_is_bitwise(name: str, exports: dict[str, dict], tmp_path: Path) -> None:
    entry = exports[name]
    res = import_hf(entry["folder"], tmp_path / "run")
    source = load_student_checkpoint(entry["run"] / run_state.STUDENT)
    back = load_student_checkpoint(res.student)
    assert back.step == source.step == res.step and back.kind == "fhb" and not back.model.is_inference
    assert back.config.to_dict() == source.config.to_dict()
    a, b = source.model.state_dict(), back.model.state_dict()
    assert list(a) == list(b) and res.num_tensors == len(a)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    # and once more through export-hf: the same safetensors, byte for byte
    again = export_hf(res.run, tmp_path / "again")
    for file in (WEIGHTS_NAME, HEADS_NAME):
        assert (again.out / file).read_bytes() == (entry["folder"] / file).read_bytes(), file


def test_cli_and_errors(exports: dict[str, dict], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fhb.cli import app

    runner = CliRunner()
    done = runner.invoke(app, ["export-hf", "--run", str(exports["distil"]["run"]), "--out", str(tmp_path / "cli")])
    assert done.exit_code == 0, done.output
    assert "HubertModel" in done.output
    done = runner.invoke(app, ["import-hf", str(tmp_path / "cli"), "--out", str(tmp_path / "cli-run")])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "cli-run" / run_state.STUDENT).is_file()
    with pytest.raises(FhbError, match="not empty"):
        export_hf(exports["distil"]["run"], tmp_path / "cli")
    with pytest.raises(FhbError, match="not empty"):
        import_hf(tmp_path / "cli", tmp_path / "cli-run")
    with pytest.raises(FhbError, match="fhb.json"):
        import_hf(tmp_path, tmp_path / "nowhere")
    # a projection changed in transformers has no place in a student without post_extract_proj
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for file in exports["prenorm"]["folder"].iterdir():
        (tampered / file.name).write_bytes(file.read_bytes())
    weights = load_file(str(tampered / WEIGHTS_NAME))
    weights["feature_projection.projection.weight"] = weights["feature_projection.projection.weight"] * 2
    save_file(weights, str(tampered / WEIGHTS_NAME))
    with pytest.raises(FhbError, match="identity feature_projection"):
        import_hf(tampered, tmp_path / "tampered-run")


def test_s3prl_export_writes_safetensors_the_upstream_prefers(exports: dict[str, dict], tmp_path: Path) -> None:
    res = export_s3prl(exports["fit"]["run"], tmp_path / "s3prl")
    assert res.safetensors == res.out / SAFETENSORS_NAME and res.safetensors.is_file()
    plain = load_file(str(res.safetensors))
    ckpt = torch.load(res.checkpoint, weights_only=True)["state_dict"]
    assert sorted("student_model." + k for k in plain) == sorted(ckpt)
    assert all(torch.equal(v, ckpt["student_model." + k]) for k, v in plain.items())
    sys.path.insert(0, str(res.out))
    try:
        expert = importlib.import_module(f"{UPSTREAM_NAME}.expert")
        state = expert._read_checkpoint(str(res.checkpoint))
        assert "state_dict" not in state and sorted(state["model"]) == sorted(plain)  # read the safetensors
        assert state["config"] == yaml.safe_load(res.yaml.read_text())
        alone = tmp_path / "ckpt-only"
        alone.mkdir()
        (alone / res.checkpoint.name).write_bytes(res.checkpoint.read_bytes())
        assert "state_dict" in expert._read_checkpoint(str(alone / res.checkpoint.name))  # no .safetensors: torch.load
    finally:
        sys.path.remove(str(res.out))
        for module in [m for m in sys.modules if m.split(".")[0] == UPSTREAM_NAME]:
            del sys.modules[module]
