"""SFC fixtures: a programmer bound to the per-test `ovs` switch, and pods whose switch-side veth has a chosen name."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterator

import pytest

from dpf.agent.sfc.programmer import SfcProgrammer
from dpf.agent.sfc.settings import SfcSettings
from dpf.lab.bed.netns import NetnsBed, Pod, ns_exec, ns_ipr
from dpf.lab.bed.ovs import OvsSwitch
from dpf.lab.bed.tools import tool

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns and OVS")


def sfc_settings(ovs: OvsSwitch, **overrides: object) -> SfcSettings:
    """Test-bed settings: veths instead of DPDK representors, short bounds so failures show fast."""
    values: dict[str, object] = {"ovs_rundir": ovs.rundir, "port_type": "system", "realize_timeout": 5.0,
                                 "ovsdb_txn_timeout": 5.0, "ofctl_timeout": 5.0, "resync_interval": 3600.0}
    values.update(overrides)
    return SfcSettings(**values)


@pytest.fixture
def programmers(ovs: OvsSwitch) -> Iterator[Callable[..., SfcProgrammer]]:
    """Start SFC programmers against the test's switch; every one is stopped at teardown."""
    started: list[SfcProgrammer] = []

    def start(state=None, on_statuses=None, **overrides: object) -> SfcProgrammer:
        programmer = SfcProgrammer(sfc_settings(ovs, **overrides), state, on_statuses=on_statuses)
        started.append(programmer)
        programmer.start()
        return programmer

    yield start
    for programmer in reversed(started):
        programmer.stop()


def named_pod(netns: NetnsBed, ovs: OvsSwitch, short: str, cidr: str, port: str) -> Pod:
    """A pod namespace whose eth0 is wired to a veth called `port` in the switch's namespace.

    On a DPU `port` would be a representor (p0, pf0hpf, pf0vf3); here it is the switch-side end of a veth.
    """
    name = netns.namespace(short)
    netns.veth(port, ovs.netns, "eth0", name)
    with ns_ipr(name) as ipr:
        index = ipr.link_lookup(ifname="eth0")[0]
        iface = ipaddress.ip_interface(cidr)
        ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        mac = ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")
    # TCP through the userspace datapath needs TX checksum offload off on the pod side.
    ns_exec(name, tool("ethtool"), "-K", "eth0", "tx", "off")
    return Pod(netns=name, ifname="eth0", peer=port, peer_ns=ovs.netns, cidr=cidr, mac=mac)


def base_flows(ovs: OvsSwitch, bridge: str) -> list[str]:
    """Flows on the bridge minus those `learn` made at runtime (which carry an idle timeout)."""
    return sorted(f for f in ovs.flows(bridge) if "idle_timeout=" not in f.split(" actions=")[0])


def cookie_flows(ovs: OvsSwitch, bridge: str, cookie: int, *, learned: bool = False) -> list[str]:
    """The flows carrying `cookie`. Flows `learn` adds at run time share the chain's cookie; any stray frame (an
    IPv6 router solicitation from a fresh veth) makes one, so they are left out unless `learned` is asked for."""
    flows = ovs.flows(bridge) if learned else base_flows(ovs, bridge)
    return [f for f in flows if f.startswith(f"cookie={cookie:#x},")]


def counters(ovs: OvsSwitch, bridge: str) -> dict[str, int]:
    """Flow text (without stats) → n_packets, for every flow on the bridge."""
    out = {}
    for line in ovs.ofctl("dump-flows", "--no-names", bridge).stdout.splitlines():
        if "n_packets=" not in line:
            continue
        fields = [f for f in line.strip().split(", ") if not f.startswith(("duration=", "n_bytes=", "idle_age=",
                                                                           "hard_age=", "table=0"))]
        packets = next(int(f.split("=")[1]) for f in fields if f.startswith("n_packets="))
        out[", ".join(f for f in fields if not f.startswith("n_packets="))] = packets
    return out
