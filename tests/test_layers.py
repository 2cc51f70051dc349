"""Import layers (anchors.md pattern 1), checked on the source so a violation fails CI.

import-linter cannot see our folder-to-package mapping (it scans the root package's directory
only), so the rule is read here straight from each module's import statements.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"dpf.controller": "controller", "dpf.agent": "agent", "dpf.cni": "cni", "dpf.proto": "proto",
           "dpf.lab": "lab", "dpf.shared": "shared", "dpf.ctl": "ctl"}

# package -> (forbidden import prefixes, why)
CONTRACTS = {
    "dpf.agent": (("dpf.controller", "dpf.lab", "kubernetes", "kubernetes_asyncio"),
                  "agents know only the proto contract, never the controller or Kubernetes"),
    "dpf.controller": (("dpf.agent", "dpf.cni", "dpf.lab"), "the controller never imports node code or the lab"),
    "dpf.cni": (("dpf.agent", "dpf.controller", "dpf.lab", "dpf.proto", "pyroute2", "ovs", "grpc", "kubernetes"),
                "the CNI shim stays thin and starts fast: stdlib and its own wire module only"),
    "dpf.proto": (("dpf.agent", "dpf.controller", "dpf.lab", "dpf.cni"), "the contract depends on nothing of ours"),
    "dpf.ctl": (("dpf.agent", "dpf.cni", "dpf.lab", "dpf.proto", "grpc", "ovs", "pyroute2"),
                "dpfctl is a kubectl-like client: it reads the API, never node code, the proto or the lab"),
    "dpf.shared": (("dpf.agent", "dpf.controller", "dpf.lab", "dpf.cni", "dpf.proto", "kubernetes",
                    "kubernetes_asyncio", "grpc", "ovs", "pyroute2"),
                   "the shared runtime serves the controller and the agents, so it depends on neither"),
}


def imports_of(path: Path, module: str) -> set[str]:
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            found.add(".".join([*base, *([node.module] if node.module else [])]))
    return found


def modules(package: str) -> list[tuple[str, Path]]:
    folder = REPO / FOLDERS[package]
    out = []
    for path in sorted(folder.rglob("*.py")):
        rel = path.relative_to(folder).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out.append((".".join([package, *parts]), path))
    return out


@pytest.mark.parametrize("package", sorted(CONTRACTS))
def test_import_layers(package: str) -> None:
    forbidden, why = CONTRACTS[package]
    violations = [
        f"{path.relative_to(REPO)} imports {name}"
        for module, path in modules(package)
        for name in imports_of(path, module)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]
    assert violations == [], f"{why}:\n" + "\n".join(violations)
