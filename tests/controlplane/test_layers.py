"""Layering contracts: the controller never imports agent code and the agent never imports controller code;
both meet only in dpf.proto (the contract)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(folder: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / folder).rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        found[str(path.relative_to(ROOT))] = names
    return found


def test_controller_does_not_import_the_agent() -> None:
    bad = {f: sorted(m for m in mods if m.startswith("dpf.agent")) for f, mods in _imports("controller").items()}
    assert {f: m for f, m in bad.items() if m} == {}


def test_agent_runtime_does_not_import_the_controller() -> None:
    bad = {f: sorted(m for m in mods if m.startswith("dpf.controller")) for f, mods in
           _imports("agent/runtime").items()}
    assert {f: m for f, m in bad.items() if m} == {}
