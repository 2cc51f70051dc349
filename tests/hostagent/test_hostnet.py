"""Host network against the emulated host: VFs through `sriov_numvfs` (with the kernel's refusals and a power
cycle's reset), VF0 in `br-dpu` with the MTU, packets from the DPU's VF0 representor to the host's bridge."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpf.agent.cni.links import in_netns
from dpf.agent.host.hostnet import HostNetworkConfigurator
from dpf.lab.bed.netns import ns_exec, ns_ipr
from dpf.lab.bed.process import wait_until
from dpf.lab.emulator import DpuSpec, EmulatedHost
from dpf.lab.emulator.pci import PhysicalFunction
from dpf.proto.v1 import provisioning_pb2 as pb

PCI = "0000-08-00"  # as the DPU's labels carry it
SPEC = pb.HostNetwork(num_vfs=4, vf_mtu=9000, bridge="br-dpu")
_RTMGRP_LINK, _RTMGRP_IPV4_IFADDR = 0x1, 0x10
_names = itertools.count()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[EmulatedHost]:
    with EmulatedHost(f"hn{next(_names)}", tmp_path / "host",
                      [DpuSpec("BlueField-3", totalvfs=8), DpuSpec("BlueField-2", totalvfs=8)]) as h:
        yield h


class Agent:
    """Calls the configurator as the host agent does: in the host's netns, again until ready or stuck."""

    def __init__(self, host: EmulatedHost) -> None:
        self.host = host
        self.configurator = HostNetworkConfigurator(host.root)
        self.longest = 0.0

    def ensure(self, spec: pb.HostNetwork = SPEC, pci: str = PCI) -> pb.HostNetworkStatus:
        start = time.monotonic()
        with in_netns(f"/run/netns/{self.host.netns}"):
            status = self.configurator.ensure(pci, spec)
        self.longest = max(self.longest, time.monotonic() - start)
        return status

    def ensure_until(self, done: str, spec: pb.HostNetwork = SPEC, pci: str = PCI) -> pb.HostNetworkStatus:
        """Call until ready (`done=""`) or until the message contains `done`; every call under 1 s."""
        def attempt() -> pb.HostNetworkStatus | None:
            status = self.ensure(spec, pci)
            return status if (status.ready if not done else done in status.message) else None

        status = wait_until(attempt, 15, f"host network status {done or 'ready'!r}", interval=0.1)
        assert self.longest < 1.0, f"an ensure() call took {self.longest:.2f} s"
        return status

    def release(self, spec: pb.HostNetwork = SPEC, pci: str = PCI) -> None:
        with in_netns(f"/run/netns/{self.host.netns}"):
            self.configurator.release(pci, spec)


def make_bridge(host: EmulatedHost, address: str | None = "192.0.2.1") -> int:
    with ns_ipr(host.netns) as ipr:
        if not ipr.link_lookup(ifname="br-dpu"):
            ipr.link("add", ifname="br-dpu", kind="bridge")
        index = ipr.link_lookup(ifname="br-dpu")[0]
        ipr.link("set", index=index, state="up")
        if address:
            ipr.addr("add", index=index, address=address, prefixlen=24)
        return index


def link(host: EmulatedHost, name: str) -> dict[str, object] | None:
    with ns_ipr(host.netns) as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        msg = ipr.get_links(found[0])[0]
        return {"master": msg.get_attr("IFLA_MASTER"), "mtu": msg.get_attr("IFLA_MTU"), "up": bool(msg["flags"] & 1)}


def bridge_ports(host: EmulatedHost, bridge: int) -> set[str]:
    with ns_ipr(host.netns) as ipr:
        return {m.get_attr("IFLA_IFNAME") for m in ipr.get_links() if m.get_attr("IFLA_MASTER") == bridge}


def dpu_reaches_bridge(host: EmulatedHost) -> bool:
    """A ping from the DPU side of VF0 (representor pf0vf0) to the host's bridge address."""
    dpu = host.dpus[0]
    with ns_ipr(dpu.netns) as ipr:
        index = ipr.link_lookup(ifname="pf0vf0")[0]
        if not ipr.get_addr(family=socket.AF_INET, index=index):
            ipr.addr("add", index=index, address="192.0.2.2", prefixlen=24)
    return ns_exec(dpu.netns, "ping", "-n", "-q", "-c", "1", "-W", "2", "192.0.2.1", check=False).returncode == 0


def operstates_up(host: EmulatedHost, names: list[str]) -> bool:
    with ns_ipr(host.netns) as ipr:
        return all(ipr.get_links(ipr.link_lookup(ifname=n)[0])[0].get_attr("IFLA_OPERSTATE") == "UP" for n in names)


def numvfs(pf: PhysicalFunction) -> int:
    return int(pf.numvfs_file.read_text())


def settled(pf: PhysicalFunction, count: int) -> None:
    """Wait until the emulator has applied the last write on `pf` (its VFs made and the file rewritten)."""
    wait_until(lambda: pf.numvfs == count, 15, f"{pf.address} at {count} VFs")
    with pf._lock:  # held while it creates the VFs and rewrites sriov_numvfs
        pass


def test_vf0_joins_the_bridge_once_it_has_an_address(host: EmulatedHost) -> None:
    agent = Agent(host)
    status = agent.ensure_until("br-dpu")
    assert not status.ready
    assert status.message.startswith("waiting for bridge br-dpu to exist")
    assert (status.num_vfs, status.vf0) == (4, "ens1f0v0")
    pf0, pf1 = host.dpus[0].pfs
    assert (numvfs(pf0), numvfs(pf1)) == (4, 4)  # PF1 is a BlueField function: it gets VFs too
    assert [numvfs(pf) for pf in host.dpus[1].pfs] == [0, 0]  # the other DPU is not touched

    bridge = make_bridge(host, address=None)
    status = agent.ensure()
    assert (status.ready, status.message) == (False, "waiting for br-dpu to have an IPv4 address")
    assert bridge_ports(host, bridge) == set()

    make_bridge(host)
    status = agent.ensure()
    assert status == pb.HostNetworkStatus(ready=True, num_vfs=4, vf0="ens1f0v0")
    assert link(host, "ens1f0v0") == {"master": bridge, "mtu": 9000, "up": True}
    assert bridge_ports(host, bridge) == {"ens1f0v0"}
    assert dpu_reaches_bridge(host)
    assert agent.longest < 1.0


def test_ensure_again_changes_nothing(host: EmulatedHost) -> None:
    agent = Agent(host)
    make_bridge(host)
    first = agent.ensure_until("")
    for pf in host.dpus[0].pfs:
        settled(pf, 4)
    # The kernel reports carrier changes up to a second late (linkwatch): let them pass before listening.
    wait_until(lambda: operstates_up(host, ["br-dpu", "ens1f0v0"]), 10, "br-dpu and VF0 operationally up")
    stamps = [os.stat(pf.numvfs_file).st_mtime_ns for pf in host.dpus[0].pfs]
    with in_netns(f"/run/netns/{host.netns}"):
        monitor = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    with contextlib.closing(monitor):
        monitor.bind((0, _RTMGRP_LINK | _RTMGRP_IPV4_IFADDR))
        monitor.setblocking(False)
        again = agent.ensure()
        events = 0
        with contextlib.suppress(BlockingIOError):
            while monitor.recv(65536):
                events += 1
    assert again == first
    assert events == 0, "the second ensure() changed links or addresses"
    assert [os.stat(pf.numvfs_file).st_mtime_ns for pf in host.dpus[0].pfs] == stamps  # no sysfs write either


def test_release_takes_vf0_out_and_removes_the_vfs(host: EmulatedHost) -> None:
    agent = Agent(host)
    bridge = make_bridge(host)
    agent.ensure_until("")
    agent.release()
    for pf in host.dpus[0].pfs:
        wait_until(lambda pf=pf: numvfs(pf) == 0 and not (pf.path / "virtfn0").exists(), 10,
                   f"{pf.address} back to 0 VFs")
    assert bridge_ports(host, bridge) == set()
    assert link(host, "ens1f0v0") is None
    assert link(host, "ens1f1v0") is None
    assert link(host, "br-dpu") is not None  # the bridge is the host admin's: it stays
    agent.release()  # nothing left to release: a no-op

    assert agent.ensure_until("") == pb.HostNetworkStatus(ready=True, num_vfs=4, vf0="ens1f0v0")  # and back


def test_a_refused_numvfs_is_reported_with_the_value_and_the_limit(host: EmulatedHost) -> None:
    agent = Agent(host)
    make_bridge(host)
    status = agent.ensure_until("refused", spec=pb.HostNetwork(num_vfs=9, vf_mtu=1500, bridge="br-dpu"))
    assert not status.ready
    assert "0000:08:00.0 refused sriov_numvfs=9" in status.message
    assert "sriov_totalvfs is 8" in status.message
    pf0 = host.dpus[0].pfs[0]
    assert [(r.value, r.errno_name) for r in pf0.rejected][:1] == [("9", "ERANGE")]
    assert numvfs(pf0) == 0


def test_another_vf_count_is_left_as_found_and_said(host: EmulatedHost) -> None:
    pf0, pf1 = host.dpus[0].pfs
    pf0.numvfs_file.write_text("2\n")
    settled(pf0, 2)
    make_bridge(host)
    status = Agent(host).ensure_until("")
    assert (status.num_vfs, status.vf0) == (2, "ens1f0v0")
    assert "0000:08:00.0 has sriov_numvfs=2, not 4: left as found" in status.message
    assert numvfs(pf0) == 2
    assert pf0.rejected == []
    assert numvfs(pf1) == 4


def test_a_power_cycle_drops_the_vfs_and_ensure_restores_them(host: EmulatedHost) -> None:
    agent = Agent(host)
    bridge = make_bridge(host)
    agent.ensure_until("")
    assert dpu_reaches_bridge(host)
    host.power_action("cycle")
    assert numvfs(host.dpus[0].pfs[0]) == 0
    assert bridge_ports(host, bridge) == set()
    status = agent.ensure_until("")
    assert status == pb.HostNetworkStatus(ready=True, num_vfs=4, vf0="ens1f0v0")
    assert link(host, "ens1f0v0") == {"master": bridge, "mtu": 9000, "up": True}
    assert dpu_reaches_bridge(host)


def test_an_unknown_device_is_named(host: EmulatedHost) -> None:
    status = Agent(host).ensure(pci="0000:0a:00")
    assert not status.ready
    assert status.message == "no BlueField PCI function 0000:0a:00.0 under /sys/bus/pci/devices"


def test_vf_netdevs_still_coming_are_counted_in_the_message(tmp_path: Path) -> None:
    # The emulated PF probes its VFs 0.2 s apart (as mlx5 does, after the sriov_numvfs write has returned), and
    # the configurator waits 0.1 s: the first pass sees at most one of the 8 netdevs.
    with EmulatedHost(f"hn{next(_names)}", tmp_path / "host", [DpuSpec("BlueField-3", totalvfs=8)],
                      vf_probe_seconds=0.2) as slow:
        make_bridge(slow)
        spec = pb.HostNetwork(num_vfs=8, vf_mtu=1500, bridge="br-dpu")
        agent = Agent(slow)
        agent.configurator = HostNetworkConfigurator(slow.root, budget_seconds=0.1)
        status = agent.ensure(spec)
        assert not status.ready
        assert status.message.startswith("waiting for the VF netdevs of 0000:08:00.0: ")
        assert f"{status.num_vfs} of 8 present" in status.message
        assert status.num_vfs < 8
        assert agent.ensure_until("", spec=spec).num_vfs == 8


def test_a_bridge_name_on_another_kind_of_link_is_refused(host: EmulatedHost) -> None:
    with ns_ipr(host.netns) as ipr:
        ipr.link("add", ifname="br-dpu", kind="veth", peer={"ifname": "br-dpu-peer"})
    status = Agent(host).ensure_until("br-dpu")
    assert status.message == "br-dpu is a veth link, not a Linux bridge"
