#!/usr/bin/env python3
"""Type-check every product package with mypy (config: `[tool.mypy]` in pyproject.toml).

The repository maps top-level folders under one import root (`controller/` is `dpf.controller`, see
setup.py); mypy cannot follow setuptools' editable-install finder, so this builds the same layout as a
tree of symlinks in `.venv/typecheck/dpf` and checks `-p dpf` there. Paths in the report are the
repository's own (`controller/...`), so editors and CI logs point at real files.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TREE = REPO / ".venv" / "typecheck"


def package_dirs() -> dict[str, str]:
    """setup.py's ROOTS literal (import root -> folder), read without running setup()."""
    module = ast.parse((REPO / "setup.py").read_text())
    for node in module.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ROOTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit("typecheck: setup.py has no ROOTS mapping")


def build_tree() -> dict[Path, Path]:
    """The symlink layout; returns link prefix -> real folder for rewriting the report."""
    root = TREE / "dpf"
    if root.exists():
        for path in sorted(root.rglob("*"), reverse=True):
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                path.rmdir()
    root.mkdir(parents=True, exist_ok=True)
    links: dict[Path, Path] = {}
    for package, folder in package_dirs().items():
        source = REPO / folder
        if package == "dpf":
            for item in source.glob("*.py"):
                (root / item.name).symlink_to(item)
            links[Path("dpf")] = Path(folder)
        else:
            sub = package.split(".", 1)[1]
            (root / sub).symlink_to(source, target_is_directory=True)
            links[Path("dpf") / sub] = Path(folder)
    return links


def main() -> int:
    links = build_tree()
    mypy = Path(sys.executable).with_name("mypy")
    env = {**os.environ, "MYPYPATH": str(TREE)}
    result = subprocess.run([str(mypy), "--config-file", str(REPO / "pyproject.toml"), "-p", "dpf"],
                            cwd=TREE, env=env, capture_output=True, text=True)
    # Longest prefix first: dpf/controller/... before dpf/...
    prefixes = sorted(links.items(), key=lambda item: -len(item[0].parts))
    for line in (result.stdout + result.stderr).splitlines():
        for link, real in prefixes:
            head = f"{link}/"
            if line.startswith(head):
                line = f"{real}/{line[len(head):]}"
                break
        print(line)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
