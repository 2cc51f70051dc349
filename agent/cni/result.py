"""Render CNI results in the shape of the requested spec version, and read prevResult: pure.

1.0.0 and 1.1.0 share one shape; 0.4.0 adds `version` to each IP. Interfaces are listed host end
first, then the pod end with its `sandbox`, like ovs-cni, and every IP points at the pod end.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from dpf.agent.ipam.service import Assignment


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str
    sandbox: str = ""
    mtu: int | None = None


def render(version: str, interfaces: Sequence[Interface], assignments: Sequence[Assignment],
           pod_index: int | None) -> dict:
    ifaces = []
    for iface in interfaces:
        entry: dict = {"name": iface.name, "mac": iface.mac}
        if iface.sandbox:
            entry["sandbox"] = iface.sandbox
        if iface.mtu and version == "1.1.0":
            entry["mtu"] = iface.mtu
        ifaces.append(entry)
    ips, routes, seen = [], [], set()
    for a in assignments:
        ip: dict = {"address": a.address}
        if version == "0.4.0":
            ip["version"] = str(ipaddress.ip_interface(a.address).version)
        if a.gateway:
            ip["gateway"] = a.gateway
        if pod_index is not None:
            ip["interface"] = pod_index
        ips.append(ip)
        for r in a.routes:
            if (r.dst, r.gw) not in seen:
                seen.add((r.dst, r.gw))
                routes.append({"dst": r.dst, **({"gw": r.gw} if r.gw else {})})
    out: dict = {"cniVersion": version}
    if ifaces:
        out["interfaces"] = ifaces
    out["ips"] = ips
    if routes:
        out["routes"] = routes
    out["dns"] = {}
    return out


def merge(prev: dict | None, mine: dict) -> dict:
    """Chain onto a previous plugin's result: its interfaces first, indices of ours shifted."""
    if not prev:
        return mine
    prev_ifaces = list(prev.get("interfaces") or [])
    shift = len(prev_ifaces)
    ips = list(prev.get("ips") or [])
    for ip in mine.get("ips", []):
        ips.append({**ip, "interface": ip["interface"] + shift} if "interface" in ip else ip)
    out = {**prev, **mine, "interfaces": prev_ifaces + mine.get("interfaces", []), "ips": ips}
    routes = list(prev.get("routes") or []) + [r for r in mine.get("routes", []) if r not in (prev.get("routes") or [])]
    if routes:
        out["routes"] = routes
    return out


def expected_addresses(prev: dict, ifname: str, sandbox: str) -> tuple[str | None, list[str]]:
    """(MAC, addresses) prevResult promised for the pod interface `ifname`; for CHECK."""
    ifaces = prev.get("interfaces") or []
    index = next((i for i, it in enumerate(ifaces)
                  if it.get("name") == ifname and it.get("sandbox") in (sandbox, None, "")), None)
    if index is None:
        return None, []
    mac = ifaces[index].get("mac")
    addrs = [ip["address"] for ip in prev.get("ips") or [] if ip.get("interface") == index and "address" in ip]
    return mac, addrs
