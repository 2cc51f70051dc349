"""Resync of CNI attachments: reclaim what belongs to pods that are gone, re-adopt what is in use.

Run by the server at start-up (before the socket opens) and on a slow timer. The switch is the
record of attachments (our OVS ports' external_ids), the kernel says what is alive:
- an attachment whose host veth or netns has vanished is unplugged (port, veth, lease), which is
  how a DEL that succeeded while the agent was down gets finished;
- a lease whose netns has vanished is released (this also covers the IPAM-plugin mode);
- an IP recorded on a live port but missing from the lease table (lost or corrupt lease file) is
  leased again to its owner, so it can never be handed out twice.
Attachments whose per-pod lock is held (an ADD in flight) are left alone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass, field

from dpf.agent.cni import links
from dpf.agent.cni.attach import (
    EXT_CONTAINER,
    EXT_IFNAME,
    EXT_IPS,
    EXT_NETNS,
    EXT_NETWORK,
    EXT_POOLS,
    Attacher,
)
from dpf.agent.ipam.service import Lease, Owner

log = logging.getLogger(__name__)


@dataclass
class ResyncReport:
    reason: str
    unplugged: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)


async def resync(attacher: Attacher, reason: str) -> ResyncReport:
    report = ResyncReport(reason)
    ports = await attacher.ports.owned()
    veths = await asyncio.to_thread(links.host_links)
    for port in ports:
        ids = port.external_ids
        container, ifname = ids.get(EXT_CONTAINER, ""), ids.get(EXT_IFNAME, "")
        key = f"{container}/{ifname}"
        if attacher.locks.busy(key):
            continue
        alive = port.name in veths and links.netns_exists(ids.get(EXT_NETNS, ""))
        async with attacher.locks.hold(key):
            if not alive:
                await attacher.ports.delete(port.name)
                await asyncio.to_thread(links.delete_link, port.name)
                gone = await attacher.ipam.release([key])
                report.unplugged.append(key)
                report.released += [f"{lease.pool}/{lease.ip}" for lease in gone]
                continue
            owner = Owner(container, ifname, ids.get(EXT_NETWORK, ""), ids.get(EXT_NETNS, ""),
                          "/".join(ids.get("dpf-id", "").split("/")[:2]) if ids.get("dpf-id") else "")
            report.adopted += await _adopt(attacher, owner, ids)
    for lease in attacher.ipam.all_leases():
        key = lease.owner.key
        if attacher.locks.busy(key) or links.netns_exists(lease.owner.netns):
            continue
        async with attacher.locks.hold(key):
            gone = await attacher.ipam.release([key])
            report.released += [f"{g.pool}/{g.ip}" for g in gone]
    if report.unplugged or report.released or report.adopted:
        log.info("CNI resync (%s): unplugged %s, released %s, re-adopted %s", reason, report.unplugged,
                 report.released, report.adopted)
    return report


async def _adopt(attacher: Attacher, owner: Owner, ids: dict[str, str]) -> list[str]:
    pools = [p for p in ids.get(EXT_POOLS, "").split(",") if p]
    addresses = [a for a in ids.get(EXT_IPS, "").split(",") if a]
    adopted = []
    for pool, address in zip(pools, addresses, strict=False):
        ip = str(ipaddress.ip_interface(address).ip)
        if await attacher.ipam.adopt(Lease(pool=pool, ip=ip, owner=owner)):
            adopted.append(f"{pool}/{ip}")
    return adopted
