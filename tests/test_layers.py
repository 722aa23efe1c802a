"""Data flows one way: every fhb package imports only packages below it (README, Layout).

``cli → stages → training → student → pipeline → storage → nn``; every package may use the
leaf modules ``fhb.errors``, ``fhb.files`` and ``fhb.locks``. Imports inside functions count too, and
``fhb.storage`` (read by stage two's loader workers) must not import torch at module level.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fhb

ORDER = ("cli", "stages", "training", "student", "pipeline", "storage", "nn")
LEAVES = ("errors", "files", "locks", "configs")
ROOT = Path(fhb.__file__).parent


def _package(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("fhb."):
            out.append((node.lineno, node.module.split(".")[1]))
        elif isinstance(node, ast.ImportFrom) and node.module == "fhb":
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("fhb.")]
    return out


MODULES = sorted(p for p in ROOT.rglob("*.py") if _package(p) in ORDER)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_only_flow_down(path: Path) -> None:
    here = ORDER.index(_package(path))
    upward = [f"line {line}: fhb.{target}" for line, target in _imports(path)
              if target in ORDER and ORDER.index(target) < here]
    assert not upward, f"{path.relative_to(ROOT)} imports a layer above it ({_package(path)}): {upward}"
    unknown = [t for _, t in _imports(path) if t not in ORDER + LEAVES + ("__version__",)]
    assert not unknown, f"{path.relative_to(ROOT)} imports {unknown}: add them to the layer order"


def test_leaves_import_no_package() -> None:
    for leaf in ("errors", "files"):
        targets = [t for _, t in _imports(ROOT / f"{leaf}.py")]
        assert not [t for t in targets if t in ORDER], f"fhb.{leaf} must stay a leaf: {targets}"
