"""Netlink for CNI attachments: the only module of the CNI server that imports pyroute2.

Blocking calls, run by the server in worker threads. Pod-side work enters the pod's netns with a
*thread-scoped* setns (Linux network namespaces are per thread) and creates its netlink socket
there, which costs about 1 ms instead of pyroute2's fork-per-netns (about 6 ms). Errnos become
`LinkError`; "already gone" is never an error for deletes.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from dpf.agent.cni.errors import LinkError

HOST_PREFIX = "dpc"
"""Host-side veth names: `dpc` + 12 hex digits of sha256(containerID/ifname) (IFNAMSIZ is 16)."""
_CLONE_NEWNET = 0x40000000
_SIOCETHTOOL = 0x8946
_ETHTOOL_STXCSUM = 0x17
_libc = ctypes.CDLL(None, use_errno=True)


def host_ifname(container_id: str, ifname: str) -> str:
    return HOST_PREFIX + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:12]


def mac_for_ip(ip: str) -> str:
    """0a:58:<IPv4 bytes>, as ovs-cni and OVN-Kubernetes do: readable, and stable for an IP."""
    octets = ipaddress.IPv4Address(ip).packed
    return "0a:58:" + ":".join(f"{b:02x}" for b in octets)


@dataclass(frozen=True)
class PodInterface:
    mac: str
    mtu: int
    addresses: tuple[str, ...]
    up: bool


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise LinkError(f"cannot enter netns {what}: {os.strerror(err)}", err)


@contextlib.contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run the block with this thread inside netns `path`; LinkError(ENOENT) if it is gone."""
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LinkError(f"netns {path} does not exist", exc.errno or errno.ENOENT) from exc
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target, path)
        try:
            yield
        finally:
            if _libc.setns(own, _CLONE_NEWNET) != 0:  # never leave a pool thread in a pod's netns
                os.abort()
    finally:
        os.close(target)
        os.close(own)


def netns_exists(path: str) -> bool:
    return bool(path) and os.path.exists(path)


def _ipr_error(exc: NetlinkError, what: str) -> LinkError:
    return LinkError(f"{what}: {os.strerror(exc.code)}", exc.code)


def create_veth(host: str, netns: str, ifname: str, mtu: int | None, mac: str | None) -> tuple[str, str]:
    """A veth pair: `host` here (up), `ifname` directly inside `netns`. Returns (host MAC, pod MAC)."""
    try:
        ns_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LinkError(f"netns {netns} does not exist", exc.errno or errno.ENOENT) from exc
    try:
        with IPRoute() as ipr:
            _delete(ipr, host)  # a leftover of a crashed ADD for the same attachment
            peer: dict = {"ifname": ifname, "net_ns_fd": ns_fd}
            extra = {"mtu": mtu} if mtu else {}
            if mac:
                peer["address"] = mac
            try:
                ipr.link("add", ifname=host, kind="veth", peer={**peer, **extra}, **extra)
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:
                    raise LinkError(f"interface {ifname} already exists in netns {netns}", exc.code) from exc
                raise _ipr_error(exc, f"creating veth {host}") from exc
            index = ipr.link_lookup(ifname=host)[0]
            ipr.link("set", index=index, state="up")
            host_mac = ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")
    finally:
        os.close(ns_fd)
    with in_netns(netns), IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        pod_mac = ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")
    return host_mac, pod_mac


def configure_pod(netns: str, ifname: str, addresses: Sequence[str], routes: Sequence[tuple[str, str | None]],
                  tx_checksum_off: bool) -> None:
    """Addresses, routes and link up on the pod end; TX checksum offload off for userspace bridges."""
    with in_netns(netns):
        if tx_checksum_off:
            _tx_checksum_off(ifname)
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise LinkError(f"interface {ifname} vanished from netns {netns}", errno.ENODEV)
            index = found[0]
            try:
                for cidr in addresses:
                    iface = ipaddress.ip_interface(cidr)
                    ipr.addr("replace", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
                ipr.link("set", index=index, state="up")
                for dst, gw in routes:
                    ipr.route("replace", dst=dst, **({"gateway": gw} if gw else {"oif": index}))
            except NetlinkError as exc:
                raise _ipr_error(exc, f"configuring {ifname} in {netns}") from exc


def _tx_checksum_off(ifname: str) -> None:
    """`ethtool -K <if> tx off`, via the legacy ioctl (no ethtool binary, no genetlink family lookup).

    Through OVS's userspace datapath a veth that offloads TX checksums sends TCP with bad
    checksums and connections hang (measured on OVS's userspace datapath here).
    """
    value = array.array("B", struct.pack("II", _ETHTOOL_STXCSUM, 0))
    ifreq = struct.pack("16sP", ifname.encode(), value.buffer_info()[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)
        except OSError as exc:
            raise LinkError(f"turning TX checksum offload off on {ifname}: {exc.strerror}", exc.errno or 0) from exc


def _delete(ipr: IPRoute, name: str) -> bool:
    try:
        ipr.link("del", ifname=name)
        return True
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise _ipr_error(exc, f"deleting {name}") from exc


def delete_link(name: str) -> bool:
    """Delete a host-side veth (and with it the pod end); False when it was already gone."""
    with IPRoute() as ipr:
        return _delete(ipr, name)


def host_links(prefix: str = HOST_PREFIX) -> set[str]:
    """Names of our host-side veths present in this netns."""
    with IPRoute() as ipr:
        names = (link.get_attr("IFLA_IFNAME") for link in ipr.get_links())
        return {n for n in names if n and n.startswith(prefix)}


def pod_interface(netns: str, ifname: str) -> PodInterface | None:
    """What `ifname` inside `netns` looks like now; None when the netns or interface is gone."""
    try:
        with in_netns(netns), IPRoute() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                return None
            link = ipr.get_links(found[0])[0]
            addrs = tuple(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=found[0]))
            return PodInterface(mac=link.get_attr("IFLA_ADDRESS"), mtu=link.get_attr("IFLA_MTU"),
                                addresses=addrs, up=bool(link["flags"] & 1))
    except LinkError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
