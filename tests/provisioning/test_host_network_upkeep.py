"""A DPU's host network after it is ready, as a host's admin sees it: `dpf agent host` (its own process in the
emulated host's network namespace, real configurator and detection) keeps VF0 in br-dpu and the VF count set,
and repairs drift within the documented bound (`--host-network-recheck` for what only netlink sees, the next
poll for a reset `sriov_numvfs` or a host reboot), while it keeps one netlink socket instead of opening one per
pass (a pass per DPU every few seconds with a fresh pyroute2 IPRoute was most of the agent's CPU at 50 DPUs per
host).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from dpf.agent.cni.links import in_netns
from dpf.agent.host.rtnl import Rtnl
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import provisioning_pb2 as ppb
from tests.hostagent.harness import (
    agent_on_emulated_host,
    eventually,
    image,
    ip,
    provisioning,
    run,
)

POLL = 0.3
RECHECK = 2.0
SLACK = 30.0
"""Beyond the bound, for a 2-core machine shared with other runs: the bound is a cadence, not a latency."""
NETLINK_ROUTE = 0
PF0 = "sys/bus/pci/devices/0000:08:00.0"



def netlink_sockets(pid: int) -> set[int]:
    """Inodes of the rtnetlink sockets `pid` holds open (its fds, matched against its namespace's netlink table)."""
    route = set()
    with open(f"/proc/{pid}/net/netlink") as table:
        next(table)  # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        for line in table:
            fields = line.split()
            if int(fields[1]) == NETLINK_ROUTE:
                route.add(int(fields[-1]))
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            held.add(int(target[len("socket:["):-1]))
    return held & route


def vf0_index(netns: str) -> int | None:
    """VF0's ifindex: a VF count reset removes the VF netdevs, and new ones get new indexes."""
    try:
        return int(ip(netns, "-o", "link", "show", "ens1f0v0").split(":", 1)[0])
    except subprocess.CalledProcessError:
        return None


def in_bridge(netns: str) -> bool:
    try:
        return "master br-dpu" in ip(netns, "link", "show", "ens1f0v0")
    except subprocess.CalledProcessError:
        return False  # no VF0 (yet)


def test_a_ready_host_network_is_kept_and_repaired_over_one_netlink_socket(tmp_path: Path) -> None:
    async def scenario() -> None:
        bfb_dir = tmp_path / "bfb"
        image(bfb_dir, size=1 << 20)
        async with agent_on_emulated_host(tmp_path, bfb_dir, "--poll-interval", str(POLL), "--host-network-recheck",
                                          str(RECHECK), "--log-level", "info") as (emulator, controller, agent):
            netns = emulator.netns

            def programmed() -> bool:
                seen = controller.latest("dpf/dpu-a")
                return seen is not None and seen.verdict == pb.VERDICT_PROGRAMMED and seen.detail.host_network.ready

            def state() -> str:
                return f"last status {controller.latest('dpf/dpu-a')}; agent log:\n{agent.log_tail()}"

            network = ppb.HostNetwork(num_vfs=4, vf_mtu=1400, bridge="br-dpu")
            controller.publish({"dpf/dpu-a": provisioning(host_network=network)})
            await eventually(programmed, "the host network ready", timeout=60, detail=state)
            assert in_bridge(netns)
            sockets = netlink_sockets(agent.pid)
            assert len(sockets) == 1, f"the agent holds {len(sockets)} rtnetlink sockets between passes, not 1"

            # VF0 taken out of the bridge (only netlink sees it): back within the re-check bound.
            ip(netns, "link", "set", "ens1f0v0", "nomaster")
            await eventually(lambda: in_bridge(netns), f"VF0 back in br-dpu (re-check every {RECHECK} s)",
                             timeout=RECHECK + SLACK, detail=state)

            # The VF count reset behind the agent's back (as a reboot does): restored, VF0 in the bridge again.
            before = vf0_index(netns)
            (emulator.root / PF0 / "sriov_numvfs").write_text("0\n")
            await eventually(lambda: vf0_index(netns) not in (None, before) and in_bridge(netns) and
                             (emulator.root / PF0 / "sriov_numvfs").read_text().strip() == "4",
                             "new VFs made and the new VF0 in br-dpu", timeout=SLACK, detail=state)
            await eventually(programmed, "the host network ready again", timeout=SLACK, detail=state)

            # A host reboot (power reset: a new boot id, SR-IOV back to 0 VFs): restored at the next poll.
            before, boot_id = vf0_index(netns), emulator.boot_id
            assert (await emulator.power("reset"))["ok"]
            assert emulator.boot_id != boot_id
            await eventually(lambda: vf0_index(netns) not in (None, before) and in_bridge(netns) and
                             (emulator.root / PF0 / "sriov_numvfs").read_text().strip() == "4",
                             "the VFs restored after the reboot, VF0 in br-dpu", timeout=SLACK, detail=state)

            # Every repair went over the socket the agent already had: none opened per pass.
            assert netlink_sockets(agent.pid) == sockets
            agent.check_alive()

    run(scenario(), timeout=240)


def test_the_kept_socket_answers_in_the_namespace_of_the_calling_thread() -> None:
    """The provisioning bench runs many hosts' agents in one process, each call entering its host's namespace on
    a pool thread: one kept `Rtnl` must answer from the caller's namespace, not from wherever it first opened."""
    names = [f"dpf-t{os.getpid()}-rtnl{i}" for i in range(2)]
    rtnl = Rtnl()
    try:
        for i, name in enumerate(names):
            subprocess.run(["ip", "netns", "add", name], check=True)
            ip(name, "link", "add", f"br-{i}", "type", "bridge")
            ip(name, "addr", "add", f"192.0.2.{i + 1}/24", "dev", f"br-{i}")
        for _ in range(2):  # each namespace twice: the second time over the socket kept from the first
            for i, name in enumerate(names):
                with in_netns(f"/run/netns/{name}"):
                    assert rtnl.link(f"br-{1 - i}") is None
                    bridge = rtnl.link(f"br-{i}")
                    assert bridge is not None
                    assert [a.get_attr("IFA_ADDRESS") for a in rtnl.ipv4_addresses(bridge["index"])] == \
                        [f"192.0.2.{i + 1}"]
    finally:
        rtnl.close()
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
