"""Network namespaces and veth pairs as "pods" and "nodes" (pyroute2; the only netlink door of the bed).

Every namespace this process creates is named `dpf-<owner><pid>-<short>`, so a crashed run's
leftovers can be told apart from a live run's and reaped (`reap_stale`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

from pyroute2 import IPRoute, netns

from dpf.agent.cni.links import in_netns
from dpf.lab.bed.tools import tool

_NAME = re.compile(r"^dpf-(?P<owner>[a-z]+)(?P<pid>\d+)-")


def bed_namespaces(owner: str | None = None, pid: int | None = None) -> list[str]:
    """Namespaces created by a bed (of `owner` and process `pid`, if given), live or stale."""
    found = []
    for name in netns.listnetns():
        m = _NAME.match(name)
        if m and owner in (None, m["owner"]) and pid in (None, int(m["pid"])):
            found.append(name)
    return found


def reap_stale(owner: str) -> list[str]:
    """Remove namespaces of `owner` whose creating process is gone (a crashed run)."""
    reaped = []
    for name in bed_namespaces(owner):
        m = _NAME.match(name)
        assert m is not None, "bed_namespaces returns only names that match _NAME"
        pid = int(m["pid"])
        if not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(OSError):
                netns.remove(name)
                reaped.append(name)
    return reaped


@contextlib.contextmanager
def ns_ipr(name: str | None) -> Iterator[IPRoute]:
    """IPRoute scoped to netns `name` (None: ours); a missing netns is an error (LinkError), not created.

    Its socket is opened with this thread inside `name` (`setns`, as `ip netns exec` does for a process) rather
    than through pyroute2's `netns=`, which forks a helper process per socket: slow, and unsafe in the emulator's
    threaded processes (a fork inheriting a held lock hung a provisioning bench run). A netlink socket stays in
    the namespace it was opened in. Use the IPRoute on this thread only: pyroute2 opens another socket for
    another thread, and that one would be in that thread's namespace."""
    if name:
        with in_netns(f"/run/netns/{name}"):
            ipr = IPRoute()
    else:
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def ns_exec(name: str, *argv: str, check: bool = True, timeout: float = 30,
            capture: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command inside netns `name`."""
    return subprocess.run([tool("ip"), "netns", "exec", name, *argv], check=check, timeout=timeout,
                          capture_output=capture, text=True)


@dataclass
class Pod:
    """A namespace with one veth end (`ifname`) and an address; its peer lives in `peer_ns`."""

    netns: str
    ifname: str
    peer: str
    peer_ns: str | None
    cidr: str
    mac: str

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.cidr).ip)

    def exec(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return ns_exec(self.netns, *argv, check=check, timeout=timeout)

    def ping(self, ip: str, count: int = 1, wait: float = 1.0) -> bool:
        result = self.exec("ping", "-n", "-q", "-c", str(count), "-W", str(wait), "-i", "0.2", ip,
                           check=False, timeout=count * (wait + 1) + 5)
        return result.returncode == 0


@dataclass
class NetnsBed:
    """Creates namespaces and links on demand and removes all of them in `cleanup()`."""

    owner: str = "t"
    created: list[str] = field(default_factory=list)
    _counter: int = 0

    def namespace(self, short: str) -> str:
        name = f"dpf-{self.owner}{os.getpid()}-{short}"
        netns.create(name)
        self.created.append(name)
        with ns_ipr(name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return name

    def veth_name(self) -> str:
        """A short unique name for the side of a pair that lives in a shared namespace (IFNAMSIZ 15)."""
        self._counter += 1
        return f"dv{os.getpid() % 100000}x{self._counter}"[:15]

    def veth(self, a: str, a_ns: str | None, b: str, b_ns: str | None, mtu: int = 1500) -> None:
        """Create a veth pair with each end directly in its namespace, both up."""
        with ns_ipr(a_ns) as ipr:
            peer: dict[str, object] = {"ifname": b}
            if b_ns:
                peer["net_ns_fd"] = b_ns
            ipr.link("add", ifname=a, kind="veth", peer=peer, mtu=mtu)
            ipr.link("set", index=ipr.link_lookup(ifname=a)[0], state="up")
        with ns_ipr(b_ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=b)[0], state="up", mtu=mtu)

    def pod(self, short: str, cidr: str, peer_ns: str | None, ifname: str = "eth0",
            tx_checksum: bool = False, gateway: str | None = None) -> Pod:
        """A pod namespace wired by a veth to `peer_ns` (e.g. an OVS switch's namespace).

        TX checksum offload is off by default: through OVS's userspace (netdev) datapath a veth
        with offload on sends TCP segments with bad checksums and connections hang.
        """
        name = self.namespace(short)
        peer = self.veth_name()
        self.veth(ifname, name, peer, peer_ns)
        with ns_ipr(name) as ipr:
            index = ipr.link_lookup(ifname=ifname)[0]
            iface = ipaddress.ip_interface(cidr)
            ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            if gateway:
                ipr.route("add", dst="default", gateway=gateway)
            mac = ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")
        if not tx_checksum:
            ns_exec(name, tool("ethtool"), "-K", ifname, "tx", "off")
        return Pod(netns=name, ifname=ifname, peer=peer, peer_ns=peer_ns, cidr=cidr, mac=mac)

    def cleanup(self) -> None:
        # Removing a namespace destroys its veth ends, and with them their peers elsewhere.
        for name in reversed(self.created):
            with contextlib.suppress(OSError):
                netns.remove(name)
        self.created.clear()
