"""Inside agent/sfc: one door to OVSDB (`ovsdb.py` alone imports `ovs`, with `ovsjson.py`, the JSON parser it
installs into python-ovs), one to OpenFlow (`flows.py` alone
runs ovs-ofctl, and the OpenFlow connection it uses, `ofconn.py`, alone opens sockets), and `desired.py` and
the flow types `flowspec.py` and the wire framing `ofwire.py` stay pure (no I/O modules at all)."""

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


def dotted(path: Path) -> set[str]:
    """Full names of the modules `path` imports; `from a import b` counts as `a.b` too."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_ovsdb_imports_ovs_and_only_flows_runs_processes() -> None:
    modules = {path.name: imported(path) for path in SFC.glob("*.py")}
    assert sorted(name for name, names in modules.items() if "ovs" in names) == ["ovsdb.py", "ovsjson.py"]
    assert [name for name, names in modules.items() if "subprocess" in names] == ["flows.py"]
    assert [name for name, names in modules.items() if "socket" in names] == ["ofconn.py"]
    openflow = {"dpf.agent.sfc.ofconn", "dpf.agent.sfc.ofwire"}
    users = [path.name for path in SFC.glob("*.py") if openflow & dotted(path)]
    assert sorted(users) == ["flows.py", "ofconn.py"]


def test_planning_and_model_do_no_io() -> None:
    for name in ("desired.py", "model.py", "view.py", "settings.py", "flowspec.py", "ofwire.py"):
        assert imported(SFC / name) & IO_MODULES == set(), name
