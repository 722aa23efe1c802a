"""``fhb export-s3prl`` (fhb.stages.export): published formats, the self-contained S3PRL upstream,
the model card, and ``fhb evaluate`` on a small lake.

The upstream is imported in a separate ``python -I -S`` process whose ``sys.path`` holds only the
export folders and site-packages (without running its ``.pth`` files, so fhb's editable install
is invisible): ``import fhb`` must fail there, and the hidden states must equal fhb's student's.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from torch.nn.utils.rnn import pad_sequence

from fhb.errors import FhbError
from fhb.training import run_state
from fhb.stages.export import CKPT_NAME, UPSTREAM_NAME, YAML_NAME, export_s3prl
from fhb.student import FitConfig, build_fit_student, load_packaged_config, load_student, save_student

DATA = Path(__file__).resolve().parents[1] / "student" / "data"


def _read_keys(name: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in (DATA / name).read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, tuple(int(d) for d in shape.split(","))))
    return rows


def _fake_run(run: Path, config: FitConfig, seed: int = 0, lake: str | None = None) -> Path:
    """A run directory as ``fhb distill`` leaves it: config.yaml, metrics.jsonl, student.pt."""
    torch.manual_seed(seed)
    model = build_fit_student(config)
    run.mkdir(parents=True)
    resolved = {**config.to_dict(), "fhb_distill": {"cache": lake, "splits": ["train-clean-100"]}}
    (run / run_state.CONFIG).write_text(yaml.safe_dump(resolved, sort_keys=False))
    run_state.append_metrics(run, {"kind": "train", "step": 7, "loss": 1.5, "layer_losses": {}})
    run_state.append_metrics(run, {"kind": "eval", "step": 7, "split": "dev-clean", "dev_loss": 0.25,
                                   "layer_losses": {"layer_01": 0.5, "layer_02": 0.4, "layer_03": 0.25}})
    save_student(model, config, run / run_state.STUDENT)
    return run


def _no_tr(config: FitConfig) -> FitConfig:
    import dataclasses

    return dataclasses.replace(config, distiller=dataclasses.replace(config.distiller, enable_tr_layer=False))


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Exports of the tiny student, the tiny student without time reduction, and full FitHuBERT."""
    root = tmp_path_factory.mktemp("export")
    tiny = load_packaged_config("tiny")
    out = {}
    out["tiny"] = export_s3prl(_fake_run(root / "run-tiny", tiny), root / "tiny").out
    out["tiny_no_tr"] = export_s3prl(_fake_run(root / "run-notr", _no_tr(tiny), seed=1), root / "tiny_no_tr").out
    full = load_packaged_config("fithubert")
    torch.manual_seed(2)
    save_student(build_fit_student(full), full, root / "full-student.pt")
    out["full"] = export_s3prl(None, root / "full", checkpoint=root / "full-student.pt").out
    return out


_SCRIPT = textwrap.dedent("""
    import importlib, sys
    jobs, site = sys.argv[1], sys.argv[2:]
    sys.path[:] = [p for p in sys.path if "site-packages" not in p] + site
    import torch
    for export, wavs_file, out_file in torch.load(jobs):
        sys.path.insert(0, export)
        try:
            import fhb
        except ImportError:
            pass
        else:
            raise SystemExit("fhb is importable in the isolated process: " + fhb.__file__)
        hub = importlib.import_module("fithubert_fhb.hubconf")
        upstream = hub.fithubert_fhb(export + "/fithubert.ckpt", export + "/fithubert.yaml")
        with torch.no_grad():
            res = upstream(torch.load(wavs_file))
        rates = {k: upstream.get_downsample_rates(k) for k in ("hidden_states", "last_hidden_state")}
        torch.save({"hidden_states": res["hidden_states"], "last_hidden_state": res["last_hidden_state"],
                    "rates": rates, "modules": sorted(m for m in sys.modules if m.split(".")[0] == "fhb")},
                   out_file)
        sys.path.remove(export)
        for name in [m for m in sys.modules if m.split(".")[0] == "fithubert_fhb"]:
            del sys.modules[name]
""")


@pytest.fixture(scope="module")
def isolated(exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Each export run in one isolated subprocess on random waveforms of different lengths."""
    tmp = tmp_path_factory.mktemp("isolated")
    gen = torch.Generator().manual_seed(0)
    jobs, wavs = [], {}
    for name, folder in exports.items():
        lengths = [16000, 12345, 9001] if name != "full" else [16000, 8000]
        wavs[name] = [0.1 * torch.randn(n, generator=gen) for n in lengths]
        torch.save(wavs[name], tmp / f"{name}-wavs.pt")
        jobs.append((str(folder), str(tmp / f"{name}-wavs.pt"), str(tmp / f"{name}-out.pt")))
    torch.save(jobs, tmp / "jobs.pt")
    (tmp / "run.py").write_text(_SCRIPT)
    paths = sysconfig.get_paths()
    site = sorted({paths["purelib"], paths["platlib"]})
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_FORCE")}  # conftest sets one
    proc = subprocess.run([sys.executable, "-I", "-S", str(tmp / "run.py"), str(tmp / "jobs.pt"), *site],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {name: (wavs[name], torch.load(tmp / f"{name}-out.pt", weights_only=True)) for name in exports}


def _fhb_reference(folder: Path, wavs: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """fhb's own student, read back from the export, on the same padded batch."""
    model, config = load_student(folder / CKPT_NAME, folder / YAML_NAME)
    model.disable_projection_heads()
    model.eval()
    hooked: list[torch.Tensor] = []
    model.encoder.dropout.register_forward_hook(lambda _m, _i, o: hooked.append(o))
    lengths = torch.tensor([len(w) for w in wavs])
    with torch.no_grad():
        out = model(pad_sequence(wavs, batch_first=True), lengths)
    first = out.reduced if out.reduced is not None else hooked[-1]
    return [first, *out.hidden_states], out.last_hidden_state


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny", "tiny_no_tr", "full"])
def test_isolated_upstream_matches_fhb(name: str, exports: dict[str, Path], isolated: dict[str, tuple]) -> None:
    wavs, got = isolated[name]
    assert got["modules"] == []  # nothing named fhb was imported
    ref_hidden, ref_last = _fhb_reference(exports[name], wavs)
    hidden = got["hidden_states"]
    config = yaml.safe_load((exports[name] / YAML_NAME).read_text())["distiller"]
    assert len(hidden) == config["encoder_layers"] + 1
    assert len({tuple(h.shape) for h in hidden}) == 1, [h.shape for h in hidden]
    for i, (h, r) in enumerate(zip(hidden, ref_hidden, strict=True)):
        assert h.shape == r.shape
        assert (h - r).abs().max().item() <= 1e-5, f"hidden state {i}"
    assert (got["last_hidden_state"] - ref_last).abs().max().item() <= 1e-5
    # the downsample rates tell the truth about the frame counts
    reduce = 2 if config["enable_tr_layer"] else 1
    assert got["rates"] == {"hidden_states": 320 * reduce, "last_hidden_state": 320}
    longest = max(len(w) for w in wavs)
    frames = (longest - 400) // 320 + 1
    assert hidden[0].shape[1] == frames // reduce
    assert abs(hidden[0].shape[1] - longest / got["rates"]["hidden_states"]) <= 2
    assert abs(got["last_hidden_state"].shape[1] - longest / 320) <= 2
    assert hidden[0].shape[2] == config["encoder_embed_dim"]


def test_export_layout_and_published_keys(exports: dict[str, Path]) -> None:
    full = exports["full"]
    for file in (CKPT_NAME, YAML_NAME, "model_card.md", f"{UPSTREAM_NAME}/expert.py", f"{UPSTREAM_NAME}/hubconf.py",
                 f"{UPSTREAM_NAME}/README.md", f"{UPSTREAM_NAME}/_fhb/student/model.py",
                 f"{UPSTREAM_NAME}/_fhb/BUNDLE.json"):
        assert (full / file).is_file(), file
    ckpt = torch.load(full / CKPT_NAME, map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    assert all(k.startswith("student_model.") for k in state)
    published = _read_keys("fithubert_keys_train.tsv")
    assert [(k[len("student_model."):], tuple(v.shape)) for k, v in state.items()] == published
    assert "distiller" in yaml.safe_load((full / YAML_NAME).read_text())
    # the published format re-loads into fhb's student bit for bit
    model, _ = load_student(full / CKPT_NAME, full / YAML_NAME)
    reloaded = model.state_dict()
    assert list(reloaded) == [k[len("student_model."):] for k in state]
    assert all(torch.equal(reloaded[k[len("student_model."):]], v) for k, v in state.items())
    readme = (full / UPSTREAM_NAME / "README.md").read_text()
    assert "from s3prl.upstream.fithubert_fhb.hubconf import *" in readme
    assert "run_downstream.py -m train -n fit_asr -u fithubert_fhb -d asr" in readme


def test_bundle_has_no_fhb_imports(exports: dict[str, Path]) -> None:
    import ast

    bundle = exports["tiny"] / UPSTREAM_NAME
    for path in bundle.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in sys.stdlib_module_names | {"torch", "yaml", "__future__"}, path
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in sys.stdlib_module_names | {"torch", "yaml"} for a in node.names)
    manifest = json.loads((bundle / "_fhb" / "BUNDLE.json").read_text())
    assert "fhb/student/model.py" in manifest["sources"]


def test_model_card(exports: dict[str, Path]) -> None:
    card = (exports["tiny"] / "model_card.md").read_text()
    assert "| optimizer updates | 7 |" in card
    assert "layer_03 | 0.25" in card
    model, _ = load_student(exports["tiny"] / CKPT_NAME, exports["tiny"] / YAML_NAME)
    assert f"{model.num_parameters():,}" in card and f"{model.num_parameters(inference=True):,}" in card
    full = (exports["full"] / "model_card.md").read_text()
    assert "31,629,632" in full and "22,492,064" in full


def test_export_refuses_bad_input(tmp_path: Path, exports: dict[str, Path]) -> None:
    with pytest.raises(FhbError, match="not empty"):
        export_s3prl(None, exports["tiny"], checkpoint=exports["tiny"] / CKPT_NAME)
    with pytest.raises(FhbError, match="run directory"):
        export_s3prl(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(FhbError, match="one of --step and --checkpoint"):
        export_s3prl(tmp_path, tmp_path / "out", step=1, checkpoint=Path("x"))


def test_export_from_a_step_checkpoint(tmp_path: Path) -> None:
    """``--step N`` reads ``fhb distill``'s training state (``checkpoints/step-XXXXXXXX.pt``)."""
    config = load_packaged_config("tiny")
    torch.manual_seed(3)
    model = build_fit_student(config)
    run_state.save_checkpoint(tmp_path / "run", 5, {
        "model": model.state_dict(), "optimizer": {}, "scheduler": {}, "rng": run_state.rng_state(),
        "loader": {}, "config": config.to_dict(),
    })
    res = export_s3prl(tmp_path / "run", tmp_path / "out", step=5)
    assert res.step == 5
    state = torch.load(res.checkpoint, weights_only=True)["state_dict"]
    assert torch.load(res.checkpoint, weights_only=True)["global_step"] == 5
    assert all(torch.equal(state["student_model." + k], v) for k, v in model.state_dict().items())
    # without student.pt, the default is the checkpoint `latest` names
    assert export_s3prl(tmp_path / "run", tmp_path / "out2").source.name == "step-00000005.pt"


@pytest.mark.slow
def test_evaluate_on_a_small_lake(tmp_path: Path, libri_root: Path, tiny_teacher_path: Path) -> None:
    from fhb.stages.evaluate import evaluate_run
    from fhb.stages.extract import run_extract

    lake = tmp_path / "lake"
    run_extract(tiny_teacher_path, libri_root, ["dev-clean"], lake, workers=0, threads=1)
    run = _fake_run(tmp_path / "run", load_packaged_config("tiny"), lake=str(lake))
    res = evaluate_run(run, lake, "dev-clean", batch_size=2, show=True)
    assert set(res["layer_losses"]) == {"layer_01", "layer_02", "layer_03"}
    assert all(math.isfinite(v) and v > 0 for v in res["layer_losses"].values())
    assert res["dev_loss"] == res["layer_losses"]["layer_03"]
    assert res["weights"] == {"layer_01": 0.1, "layer_02": 0.1, "layer_03": 1.0}
    expected = sum(res["weights"][k] * v for k, v in res["layer_losses"].items())
    assert res["total"] == pytest.approx(expected, rel=1e-5)
    assert res["utterances"] >= 1 and res["batches"] >= 1
    # the model card of an export of that run names the lake's teacher
    from fhb.pipeline.teacher import load_teacher

    card = (export_s3prl(run, tmp_path / "exported").model_card).read_text()
    assert load_teacher(tiny_teacher_path).sha256 in card and str(lake) in card
