"""Bundling fhb's student code into a hand-off, and checking what a hand-off wrote.

**One source of truth for the model code.** A hand-off that ships model code (the S3PRL upstream,
the transformers remote code) does not carry a second, hand-kept copy of the student: `bundle`
copies the source of the fhb modules the student needs (the import closure of `BUNDLE_ROOTS`) at
export time and rewrites their ``from fhb.a.b import`` lines, in one of two layouts:

- ``package``: ``fhb.x.y`` -> ``DEST/x/y.py`` with package-relative imports (``from ..nn.conv
  import``) and a docstring-only ``__init__.py`` per level (the S3PRL upstream's ``_fhb/``);
- ``flat``: ``fhb.x.y`` -> ``DEST/fhb_x_y.py`` with sibling imports (``from .fhb_nn_conv import``),
  as transformers' remote-code loader follows only files next to ``modeling_*.py``.

A bundled module may import the standard library, the bundle and the third-party names a hand-off
allows (at module level, or also inside functions only); anything else is a bug in fhb and raises
AssertionError. The manifest records the fhb version and the sha256 of every source file.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import torch

import fhb

__all__ = ["BUNDLE_ROOTS", "assert_same_state", "bundle", "closure", "fhb_imports"]

BUNDLE_ROOTS: tuple[str, ...] = ("fhb.student.model", "fhb.student.config")
"""Modules whose fhb import closure is bundled."""


def module_file(name: str) -> Path:
    """The source file of the fhb module ``name`` (a module, not a package)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, name
    assert spec.submodule_search_locations is None, f"{name} is a package; bundle its modules instead"
    return Path(spec.origin)


def fhb_imports(tree: ast.AST) -> list[ast.ImportFrom | ast.Import]:
    """Absolute imports of ``fhb`` modules anywhere in ``tree`` (function-level ones included)."""
    found: list[ast.ImportFrom | ast.Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
            node.module == "fhb" or node.module.startswith("fhb.")
        ):
            found.append(node)
        elif isinstance(node, ast.Import) and any(a.name == "fhb" or a.name.startswith("fhb.") for a in node.names):
            found.append(node)
    return found


def third_party(tree: ast.AST) -> set[str]:
    """Top-level names of absolute non-fhb, non-stdlib imports in ``tree``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n != "fhb" and n != "__future__" and n not in sys.stdlib_module_names}


def closure(roots: tuple[str, ...]) -> list[str]:
    """fhb modules the roots import, transitively (sorted)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse(module_file(name).read_text(encoding="utf-8"))
        for node in fhb_imports(tree):
            if isinstance(node, ast.Import) or node.module == "fhb":
                raise AssertionError(f"{name}: `import fhb...` / `from fhb import` cannot be bundled; "
                                     "import from the defining module")
            assert node.module is not None
            todo.append(node.module)
    return sorted(seen)


def _rewrite(name: str, source: str, target: Callable[[str], str]) -> str:
    """``source`` of module ``name`` with every ``from fhb.a.b import`` made ``from <target(fhb.a.b)> import``."""
    lines = source.splitlines(keepends=True)
    for node in fhb_imports(ast.parse(source)):
        assert isinstance(node, ast.ImportFrom) and node.module is not None
        line = lines[node.lineno - 1]
        new, count = re.subn(rf"\bfrom\s+{re.escape(node.module)}\b", f"from {target(node.module)}", line, count=1)
        assert count == 1, f"{name}:{node.lineno}: cannot rewrite {line!r}"
        lines[node.lineno - 1] = new
    out = "".join(lines)
    assert not fhb_imports(ast.parse(out)), f"{name}: fhb imports left after rewriting"
    return out


def flat_name(module: str) -> str:
    """``fhb.student.model`` -> ``fhb_student_model`` (a sibling module in a flat bundle)."""
    return module.replace(".", "_")


def bundle(
    dest: Path,
    *,
    layout: Literal["package", "flat"],
    allowed: frozenset[str],
    allowed_in_functions: frozenset[str] = frozenset(),
    manifest: str,
    purpose: str,
    roots: tuple[str, ...] = BUNDLE_ROOTS,
) -> dict[str, str]:
    """Copy the import closure of ``roots`` into ``dest`` (see the module docstring).

    Args:
        dest: the bundle folder; created.
        layout: ``package`` or ``flat``.
        allowed: third-party packages a bundled module may import anywhere.
        allowed_in_functions: ones it may import inside functions only (never run by the model).
        manifest: file name of the manifest in ``dest``.
        purpose: what the bundle is for (in the docstrings and assertion messages).
        roots: modules whose closure is bundled.

    Returns:
        ``{"fhb/x/y.py": sha256 of the original source}``, also written to the manifest.
    """
    dest.mkdir(parents=True, exist_ok=True)
    hashes: dict[str, str] = {}
    packages: set[tuple[str, ...]] = {()}
    for name in closure(roots):
        source = module_file(name).read_text(encoding="utf-8")
        tree = ast.parse(source)
        top = ast.Module(body=[n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))],
                         type_ignores=[])
        extra = (third_party(top) - allowed) | (third_party(tree) - allowed - allowed_in_functions)
        assert not extra, f"{name} imports {sorted(extra)}: {purpose} may depend on {sorted(allowed)} only"
        parts = name.split(".")[1:]
        if layout == "flat":
            target = dest / f"{flat_name(name)}.py"
            text = _rewrite(name, source, lambda module: "." + flat_name(module))
        else:
            target = dest.joinpath(*parts[:-1], parts[-1] + ".py")
            dots = "." * len(parts)  # fhb.student.model -> `..`: one package below the bundle root
            text = _rewrite(name, source, lambda module: dots + module[len("fhb."):])
            packages.update(tuple(parts[:i]) for i in range(len(parts)))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        hashes["/".join(name.split(".")) + ".py"] = hashlib.sha256(source.encode()).hexdigest()
    if layout == "package":
        for package in packages:
            dotted = ".".join(("fhb", *package))
            dest.joinpath(*package, "__init__.py").write_text(
                f'"""{dotted}, bundled by fhb {fhb.__version__} for {purpose} (see {manifest})."""\n',
                encoding="utf-8")
    record = {"fhb_version": fhb.__version__, "roots": list(roots), "sources": hashes}
    (dest / manifest).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return hashes


def assert_same_state(ours: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor], what: str,
                      *, ordered: bool = True) -> None:
    """Every tensor of ``theirs`` (read back from a hand-off) equals ``ours`` bit for bit, under the
    same keys (in the same order when ``ordered``); AssertionError naming ``what`` otherwise."""
    if ordered:
        assert list(ours) == list(theirs), f"{what}: keys or their order differ"
    else:
        assert set(ours) == set(theirs), f"{what}: keys differ"
    bad = [k for k in ours if not torch.equal(ours[k].cpu(), theirs[k].cpu())]
    assert not bad, f"{what}: tensors differ: {bad[:5]}"
