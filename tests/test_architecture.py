"""The shape the code must keep (issue #9): the dose engine reads like eligibility — data, small
rule functions, an engine that composes — and dosing does not reach into eligibility's rules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "adapter"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_dosing_does_not_import_eligibility_rules() -> None:
    for path in (ROOT / "dosing").rglob("*.py"):
        assert "adapter.eligibility.rules" not in _imports(path), path
        assert "adapter.eligibility.select" not in _imports(path), path


def test_shared_checks_depend_on_neither_eligibility_nor_dosing() -> None:
    for path in (ROOT / "checks").rglob("*.py"):
        assert not any(m.startswith(("adapter.eligibility", "adapter.dosing")) for m in _imports(path)), path


def test_no_god_classes_and_a_small_engine() -> None:
    assert len((ROOT / "dosing" / "engine.py").read_text(encoding="utf-8").splitlines()) < 300
    for path in (ROOT / "dosing").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno
                assert length < 200, f"{path.name}: class {node.name} has {length} lines"
            if isinstance(node, ast.FunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno
                assert length < 120, f"{path.name}: {node.name} has {length} lines"
