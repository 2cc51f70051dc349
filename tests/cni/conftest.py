"""Fixtures for the SFC CNI tests: the CNI binary (frozen and as a script), and a running agent.

- `cni_binary`: the PyInstaller onedir build of the shim, cached in ~/.cache/dpf/cni-build/<hash>/
  by packaging/pyinstaller/build.py (about 5 s to build, then a cache hit).
- `frozen_bin_dir` / `script_bin_dir`: a CNI bin dir holding `dpf-sfc-cni` and `dpf-ipam`, either
  the frozen binary or a tiny script that runs the same shim with the venv's Python (fast tests).
- `agent`: the agent's CNI server (`python -m dpf.agent.cni`) inside the `ovs` fixture's netns, as on
  a DPU where the agent shares the host netns with OVS, with bridge `br-sfc` (userspace, secure).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dpf.lab.bed.ovs import OvsSwitch
from dpf.lab.bed.process import Child, wait_until
from dpf.lab.bed.tools import REPO, tool

PLUGIN = "dpf-sfc-cni"
BRIDGE = "br-sfc"
POOL = {"pool": "pool1", "poolType": "ippool", "subnet": "10.77.0.0/24", "start": "10.77.0.10",
        "end": "10.77.0.60", "gateway": "10.77.0.1", "routes": [{"dst": "10.78.0.0/16"}]}

def _load_builder():
    spec = importlib.util.spec_from_file_location("dpf_cni_build", REPO / "packaging" / "pyinstaller" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def cni_binary() -> Path:
    return _load_builder().ensure_binary()


def _bin_dir(path: Path, target: Path | None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in (PLUGIN, "dpf-ipam"):
        link = path / name
        if target is not None:
            link.symlink_to(target)
        else:  # the same shim, run by the venv's Python: ~20 ms instead of ~45 ms and no build
            link.write_text(f"#!{sys.executable}\nimport sys\nfrom dpf.cni.shim import main\nsys.exit(main())\n")
            link.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def frozen_bin_dir(cni_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bin_dir(tmp_path_factory.mktemp("cni-frozen"), cni_binary)


@pytest.fixture(scope="session")
def script_bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bin_dir(tmp_path_factory.mktemp("cni-script"), None)


@dataclass
class Agent:
    """The CNI server process; restartable and killable for fault injection."""

    ovs: OvsSwitch
    workdir: Path
    pools: list[dict] = field(default_factory=lambda: [dict(POOL)])
    extra_args: list[str] = field(default_factory=list)
    child: Child | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "run" / "agent.sock"

    @property
    def leases_file(self) -> Path:
        return self.workdir / "state" / "leases.json"

    @property
    def pools_file(self) -> Path:
        return self.workdir / "pools.json"

    def start(self) -> Agent:
        self.pools_file.write_text(json.dumps(self.pools))
        argv = [tool("ip"), "netns", "exec", self.ovs.netns, sys.executable, "-m", "dpf.agent.cni",
                "--socket", str(self.socket), "--ovsdb", f"unix:{self.ovs.db_sock}",
                "--state-dir", str(self.workdir / "state"), "--pools", str(self.pools_file), *self.extra_args]
        self.child = Child("dpf-cni-agent", argv, self.workdir / "agent.log")
        wait_until(self.answers, 20, "the agent's CNI socket", while_alive=[self.child])
        return self

    def answers(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(self.socket))
            except OSError:
                return False
            return True

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None

    def kill(self) -> None:
        """SIGKILL to the agent's process group (its ovs-vsctl children too, as systemd's cgroup kill)."""
        if self.child is not None:
            os.killpg(self.child.pid, signal.SIGKILL)
            self.child.proc.wait(10)
            self.child.stop()
            self.child = None

    def restart(self) -> Agent:
        self.stop()
        return self.start()

    def leases(self) -> dict[str, str]:
        """ip -> owner key, from the agent's lease file."""
        data = json.loads(self.leases_file.read_text())["data"]
        return {ip: f"{rec['owner']['container_id']}/{rec['owner']['ifname']}"
                for pool in data.get("pools", {}).values() for ip, rec in pool["leases"].items()}

    def log_tail(self) -> str:
        return (self.workdir / "agent.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def agent(ovs: OvsSwitch, tmp_path: Path) -> Iterator[Agent]:
    if os.geteuid() != 0:
        pytest.skip("needs root for netns and OVS")
    ovs.add_bridge(BRIDGE)
    a = Agent(ovs=ovs, workdir=tmp_path / "agent")
    a.workdir.mkdir()
    try:
        yield a.start()
    finally:
        a.stop()
