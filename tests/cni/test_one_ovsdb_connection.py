"""The DPU agent process holds one OVSDB connection: its SFC programmer and its CNI server share one client.

The agent (`dpf agent dpu --cni-socket`) runs inside the OVS netns as on a DPU, with no controller (the
runtime keeps retrying; nothing here needs it): its programmer creates and programs br-sfc at start-up,
then a CNI ADD plugs a pod into br-sfc. The agent's unix sockets connected to ovsdb-server's `db.sock`
are counted from the kernel's socket table (`ss -xp`: each socket with its peer's inode).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpf.lab.bed.netns import NetnsBed
from dpf.lab.bed.ovs import OvsSwitch
from dpf.lab.bed.process import Child, wait_until
from dpf.lab.bed.tools import tool
from tests.cni.cnirun import call, owned_ports
from tests.cni.conftest import PLUGIN


def ovsdb_connections(ovs: OvsSwitch, pid: int) -> int:
    """How many of process `pid`'s unix sockets are connected to ovsdb-server's db.sock."""
    out = subprocess.run([tool("ip"), "netns", "exec", ovs.netns, "ss", "-xpnH"], capture_output=True, text=True,
                         check=True).stdout
    rows = [line.split() for line in out.splitlines()]
    # Columns: netid state recv-q send-q local-address local-inode peer-address peer-inode [process]
    server_side = {row[5] for row in rows if len(row) >= 8 and row[4] == str(ovs.db_sock)}
    return sum(1 for row in rows if len(row) >= 9 and row[7] in server_side and f"pid={pid}," in row[8])


@pytest.fixture
def dpu_agent(ovs: OvsSwitch, tmp_path: Path) -> Iterator[Child]:
    if os.geteuid() != 0:
        pytest.skip("needs root for netns and OVS")
    socket = tmp_path / "run" / "cni.sock"
    argv = [tool("ip"), "netns", "exec", ovs.netns, sys.executable, "-m", "dpf.cli", "agent", "dpu",
            "--node", "dpu-1", "--controller", f"unix:{tmp_path / 'no-controller.sock'}", "--insecure",
            "--state-dir", str(tmp_path / "state"), "--ovs-rundir", str(ovs.rundir), "--port-type", "system",
            "--cni-socket", str(socket)]
    agent = Child("dpu-agent", argv, tmp_path / "agent.log")
    try:
        wait_until(socket.exists, 30, "the DPU agent to serve CNI", while_alive=[agent])
        yield agent
    finally:
        agent.stop()


def test_the_dpu_agent_talks_to_ovsdb_over_one_connection(dpu_agent: Child, ovs: OvsSwitch, netns: NetnsBed,
                                                          script_bin_dir: Path, tmp_path: Path) -> None:
    owner = ovs.vsctl("--if-exists", "get", "Bridge", "br-sfc", "external_ids:dpf-owner").stdout.strip().strip('"')
    assert owner == "dpf-sfc", "the programmer did not create br-sfc"
    conf = {"cniVersion": "1.0.0", "name": "sfc", "type": PLUGIN, "bridge": "br-sfc",
            "agentSocket": str(tmp_path / "run" / "cni.sock"),
            "ipam": {"type": "static", "addresses": [{"address": "10.79.0.5/24"}]}}
    res = call(script_bin_dir / PLUGIN, "ADD", conf, "c1", netns.namespace("pod"),
               args="IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod")
    assert res.rc == 0, res.doc
    assert [ids["dpf-id"] for ids in owned_ports(ovs).values()] == ["ns/pod/net1"]
    assert ovsdb_connections(ovs, dpu_agent.pid) == 1
