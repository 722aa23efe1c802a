"""API misuse inside fhb is a bug, not a user error: it raises ValueError/AssertionError (a traceback
that gets reported), never `FhbError` (one line that tells the user to fix something they did not do).

* ``fhb/nn`` (pure torch modules, no user input reaches them unchecked) never imports `FhbError`.
* The loss called with an inference-layout student, without targets, or with targets of the wrong
  layout raises ValueError.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import fhb

PACKAGE = Path(fhb.__file__).parent


def _raises_fhb_error(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(call, ast.Name) and call.id == "FhbError":
                lines.append(node.lineno)
    return lines


def test_nn_modules_never_raise_fhb_error() -> None:
    found = {str(p.relative_to(PACKAGE)): _raises_fhb_error(p) for p in sorted((PACKAGE / "nn").rglob("*.py"))}
    assert not {k: v for k, v in found.items() if v}, found
    assert not any("FhbError" in p.read_text() for p in (PACKAGE / "nn").rglob("*.py"))


def test_loss_misuse_raises_value_error() -> None:
    from tests.student.test_loss import _output, _student, _targets

    from fhb.student.config import LossConfig
    from fhb.student.loss import DistillLoss

    loss = DistillLoss(LossConfig(distil_random_layer=2, random_layer_weight=0.1), 3, student=_student())
    out, targets = _output(), _targets()
    with pytest.raises(ValueError, match="found None"):
        loss(out, None)
    with pytest.raises(ValueError, match="every teacher layer"):
        loss(out, targets[:, :2] if isinstance(targets, torch.Tensor) else torch.zeros(2, 2, 5, 4))
    with pytest.raises(ValueError, match="list of all 3"):
        loss(out, [torch.zeros(1)])
