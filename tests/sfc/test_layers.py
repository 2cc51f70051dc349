"""Inside agent/sfc: one door to OVSDB (`ovsdb.py` alone imports `ovs`), one to OpenFlow (`flows.py` alone
runs ovs-ofctl), and `desired.py` stays pure (no I/O modules at all)."""

from __future__ import annotations

import ast
from pathlib import Path

SFC = Path(__file__).resolve().parents[2] / "agent" / "sfc"
IO_MODULES = {"subprocess", "socket", "os", "ovs", "pyroute2", "threading", "time", "select"}


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_only_ovsdb_imports_ovs_and_only_flows_runs_processes() -> None:
    modules = {path.name: imported(path) for path in SFC.glob("*.py")}
    assert [name for name, names in modules.items() if "ovs" in names] == ["ovsdb.py"]
    assert [name for name, names in modules.items() if "subprocess" in names] == ["flows.py"]


def test_planning_and_model_do_no_io() -> None:
    for name in ("desired.py", "model.py", "view.py", "settings.py"):
        assert imported(SFC / name) & IO_MODULES == set(), name
