"""The DistilHuBERT recipe of the published ``data/conf/ex.yaml`` (issue 12, option 1).

The references below re-implement the published code's formulas from its source
(glory20h/FitHuBERT at 36d999c: ``train.py``, ``modules/model.py``) on fhb's tensors; the published
code itself needs fairseq's model classes and a Lightning module, so it is not imported.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fhb.errors import FhbError
from fhb.pipeline.lake_teacher import load_lake_teacher_state, store_teacher
from fhb.pipeline.teacher import load_teacher
from fhb.storage import LakeWriter
from fhb.student.heads import split_predictions
from fhb.student.config import FitConfig, StudentConfig, load_fithubert_yaml, load_packaged_config
from fhb.student.loss import DistillLoss
from fhb.student.model import build_student
from fhb.training.teacher_weights import init_weights
from fhb.storage.reader import open_lake
from tests.pipeline.test_lake_teacher import _empty_lake
from tests.recipes import recipe_dict

MIRROR = Path("/work/.mirror/glory20h+FitHuBERT/repo")


def _tiny(**distiller: object) -> FitConfig:
    """distilhubert.yaml shrunk to the tiny teacher (dropouts off), with ``distiller`` changes."""
    data = recipe_dict("distilhubert", {"distiller": {"dropout": 0.0, "attention_dropout": 0.0,
                                                      "dropout_input": 0.0, **distiller}})
    return FitConfig.from_dict(data, "distilhubert-tiny")


# -- the config ------------------------------------------------------------------------------


def test_packaged_config_has_ex_yaml_values() -> None:
    fit = load_packaged_config("distilhubert")
    assert load_fithubert_yaml("distilhubert").to_dict() == fit.to_dict()  # fhb distill --config distilhubert
    d, loss = fit.distiller, fit.loss
    assert (d.encoder_layers, d.encoder_embed_dim, d.encoder_ffn_embed_dim, d.encoder_attention_heads) == (2, 768, 3072, 12)
    assert d.conv_feature_layers == ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
    assert (d.layerwise_proj, d.pred_layer_id, d.enable_tr_layer) == (False, (3, 7, 11), False)
    assert (d.init_conv_layers, d.init_encoder_layers, d.feature_grad_mult) == (True, 2, 0.1)
    assert d.mel_spec_head_conv_layers == ()  # 'None' in the yaml
    assert (loss.rec_loss_type, loss.rec_loss_weight, loss.sim_loss_weight, loss.distil_random_layer) == ("l1", 1.0, 1.0, 0)
    assert fit.optimizer["lr"] == 2e-4 and fit.train["batch_size"] == 4 and fit.train["accumulate_grad_batches"] == 3
    free = build_student(dataclasses.replace(d, init_conv_layers=False, init_encoder_layers=0))
    assert (free.num_parameters(), free.num_parameters(inference=True)) == (27_035_776, 23_492_224)


@pytest.mark.skipif(not MIRROR.is_dir(), reason="the published repository's mirror is not on this machine")
def test_packaged_config_equals_the_published_ex_yaml(tmp_path: Path) -> None:
    """The published file itself parses (``mel_spec_head_conv_layers: None``) to the same config."""
    text = subprocess.run(["git", "-C", str(MIRROR), "show", "HEAD:data/conf/ex.yaml"], check=True,
                          capture_output=True, text=True).stdout
    (tmp_path / "ex.yaml").write_text(text)
    assert load_fithubert_yaml(tmp_path / "ex.yaml").to_dict() == load_packaged_config("distilhubert").to_dict()


def test_none_mel_head_is_no_head() -> None:
    """yaml reads ``None`` as the string 'None'; the published model ``eval``s it to None."""
    for value in ("None", None, ""):
        assert StudentConfig.from_dict({"mel_spec_head_conv_layers": value}).mel_spec_head_conv_layers == ()


# -- initialisation from the lake's teacher ---------------------------------------------------


@pytest.fixture(scope="module")
def teacher_lake(tmp_path_factory: pytest.TempPathFactory, tiny_teacher_path: Path) -> Path:
    """A lake (no shards) that stores the tiny teacher's weights."""
    lake = _empty_lake(tiny_teacher_path, tmp_path_factory.mktemp("dh") / "lake")
    with LakeWriter.reopen(lake) as w:
        store_teacher(w, tiny_teacher_path)
    return lake


def _published_init(student: torch.nn.Module, teacher: torch.nn.Module, n_layers: int) -> None:
    """modules/model.py L560-588 (init_from_teacher_conv, init_from_teacher_enc), on fhb modules."""
    student.feature_extractor.load_state_dict(teacher.feature_extractor.state_dict())
    try:
        student.post_extract_proj.load_state_dict(teacher.post_extract_proj.state_dict())
    except (AttributeError, RuntimeError):  # published: a bare except
        pass
    student.encoder.pos_conv.load_state_dict(teacher.encoder.pos_conv.state_dict())
    for i in range(n_layers):
        student.encoder.layers[i].load_state_dict(teacher.encoder.layers[i].state_dict())


def test_init_from_the_lake_equals_the_published_copy(teacher_lake: Path, tiny_teacher_path: Path) -> None:
    """The student built from the lake's stored weights == a fresh student (same seed) into which
    the published code's copy of the .pt teacher was made: everything else keeps its fresh values
    (the CNN LayerNorm and the encoder LayerNorm are not copied, as published)."""
    fit = _tiny(encoder_layers=3)  # 3 layers, the first 2 initialised: layer 2 stays random
    _, state = load_lake_teacher_state(teacher_lake)
    torch.manual_seed(0)
    ours = build_student(fit.distiller, teacher=state)
    torch.manual_seed(0)
    reference = build_student(dataclasses.replace(fit.distiller, init_conv_layers=False, init_encoder_layers=0))
    teacher = load_teacher(tiny_teacher_path).model
    with torch.no_grad():
        _published_init(reference, teacher, 2)
    a, b = ours.state_dict(), reference.state_dict()
    assert list(a) == list(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert torch.equal(a["encoder.layers.1.fc1.weight"], teacher.encoder.layers[1].fc1.weight)
    assert not torch.equal(a["encoder.layers.2.fc1.weight"], teacher.encoder.layers[2].fc1.weight)
    assert torch.equal(a["post_extract_proj.weight"], teacher.post_extract_proj.weight)


def test_init_weights_come_from_the_lake_or_the_online_teacher(teacher_lake: Path, tiny_teacher_path: Path) -> None:
    fit = _tiny()
    meta = open_lake(teacher_lake).meta
    lake_state = init_weights(fit.distiller, teacher_lake, meta)
    online_state = init_weights(fit.distiller, teacher_lake, meta, load_teacher(tiny_teacher_path))
    assert lake_state is not None and online_state is not None and lake_state.keys() == online_state.keys()
    assert all(torch.equal(lake_state[k], online_state[k]) for k in lake_state)
    off = dataclasses.replace(fit.distiller, init_conv_layers=False, init_encoder_layers=0)
    assert init_weights(off, teacher_lake, meta) is None


def test_a_lake_without_the_teacher_names_add_teacher(tiny_teacher_path: Path, tmp_path: Path) -> None:
    lake = _empty_lake(tiny_teacher_path, tmp_path / "bare")
    with pytest.raises(FhbError) as info:
        init_weights(_tiny().distiller, lake, open_lake(lake).meta)
    message = str(info.value)
    assert "\n" not in message and f"fhb lake add-teacher {lake} --teacher CKPT" in message
    assert "init_conv_layers" in message and "tiny.pt" in message


# -- L1 + cosine on several layers from one split head ------------------------------------------


def _published_loss(student: torch.nn.Module, out: object, layer_results: list[torch.Tensor],
                    pred_layer_id: list[int], rec_type: str, rec_w: float, sim_w: float) -> dict[str, torch.Tensor]:
    """train.py L269-316 + L372-378 with distil_random_layer 0 and layerwise_proj False.

    ``projections`` as modules/model.py L508-516 builds them: the split head on the last output,
    reshaped ``B x T x N x D`` and permuted to ``B x N x T x D``; ``layer_results[i]``: teacher
    layer ``i``'s ``T x B x D`` (fairseq's layout).
    """
    x = out.last_hidden_state  # type: ignore[attr-defined]
    b_sz, t_sz, _ = x.shape
    pred = student.proj_head(x).reshape(b_sz, t_sz, len(pred_layer_id), -1).permute(0, 2, 1, 3)
    teacher_hiddens = torch.stack([layer_results[i].transpose(0, 1) for i in pred_layer_id], dim=1)
    target = teacher_hiddens.narrow(2, 0, pred.shape[2])
    rec = (F.l1_loss if rec_type == "l1" else F.mse_loss)(pred, target, reduction="none")
    rec_layer = rec.mean((0, 2, 3))
    sim = -F.logsigmoid(F.cosine_similarity(pred, target, dim=-1))
    total = rec_w * rec.mean() + sim_w * sim.mean()
    return {"total": total, "rec": rec.mean(), "sim": sim.mean(), "rec_layer": rec_layer}


@pytest.mark.parametrize("rec_type", ["l1", "mse"])
def test_l1_cosine_loss_equals_the_published_loss(rec_type: str) -> None:
    """Same student output, same teacher layers: fhb's loss, its per-layer values and its gradients
    equal the published formula's (teacher frames longer than the student's are narrowed)."""
    fit = _tiny(init_conv_layers=False, init_encoder_layers=0)
    fit = dataclasses.replace(fit, loss=dataclasses.replace(fit.loss, rec_loss_type=rec_type, sim_loss_weight=0.7))
    torch.manual_seed(0)
    student = build_student(fit.distiller)
    wavs = torch.randn(2, 8000)
    out = student(wavs, torch.tensor([8000, 6000]))
    frames = out.projections[0].shape[1]
    g = torch.Generator().manual_seed(3)
    teacher = torch.randn(2, 3, frames + 1, 64, generator=g)  # B x N x T x D, one extra frame
    ours = DistillLoss(fit.loss, 3, student=fit.distiller)(out, teacher)
    ref = _published_loss(student, out, [teacher[:, k].transpose(0, 1) for k in range(3)], [0, 1, 2],
                          rec_type, 1.0, 0.7)
    torch.testing.assert_close(ours.total, ref["total"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.rec, ref["rec"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.sim, ref["sim"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.stack([ours.per_layer[k] for k in (1, 2, 3)]), ref["rec_layer"],
                               rtol=1e-6, atol=1e-7)
    params = [p for p in student.parameters() if p.requires_grad]
    ga = torch.autograd.grad(ours.total, params, retain_graph=True, allow_unused=True)
    gb = torch.autograd.grad(ref["total"], params, allow_unused=True)
    for a, b in zip(ga, gb):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_split_head_equals_the_published_split_linear() -> None:
    """modules/module.py L606-619 (SplitLinear.forward) and model.py L508-516 on the same weights."""
    torch.manual_seed(0)
    student = build_student(_tiny(init_conv_layers=False, init_encoder_layers=0).distiller)
    x = torch.randn(2, 9, 64)
    split = student.proj_head[2]
    h = student.proj_head[1](student.proj_head[0](x))
    hx = h.reshape(h.shape[0], h.shape[1], split.in_split, 1, split.in_dim)
    ref = (torch.einsum("...klm,kmn->...kln", hx, split.weight).squeeze(3) + split.bias).reshape(2, 9, -1)
    torch.testing.assert_close(student.proj_head(x), ref, rtol=1e-6, atol=1e-6)
    projections = ref.reshape(2, 9, 3, -1).permute(0, 2, 1, 3)  # B x N x T x D, as published
    for j, p in enumerate(split_predictions(student.proj_head(x), 3)):
        torch.testing.assert_close(p, projections[:, j], rtol=1e-6, atol=1e-6)
