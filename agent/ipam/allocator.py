"""Pick the next free IP of a pool block: pure, deterministic, no I/O.

Called by `dpf.agent.ipam.service` with the set of IPs already leased in that pool and the pool's
cursor (the last IP handed out). It scans round-robin from the cursor, like host-local, so a
released IP is not reused at once (a stale ARP entry on a chain peer would otherwise black-hole the
new pod). Never mutates its inputs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container

from dpf.agent.ipam.model import PoolBlock

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class AllocationError(Exception):
    """Base of the allocator's refusals; `field` names the request field at fault."""

    field = "ipam"


class PoolExhausted(AllocationError):
    pass


class AddressUnavailable(AllocationError):
    field = "ips"


class UnknownPool(AllocationError):
    field = "poolNames"


def usable(block: PoolBlock, ip: IP) -> bool:
    """In the node's range, not excluded, not the gateway."""
    return within(block, ip) and not block.excluded(ip) and ip != block.gateway_ip


def within(block: PoolBlock, ip: IP) -> bool:
    """In the node's range [first, last] (same address family; addresses of two families never compare)."""
    return ip.version == block.first.version and int(block.first) <= int(ip) <= int(block.last)


def capacity(block: PoolBlock) -> int:
    """How many pod IPs the block can hold at most (excluded IPs and the gateway subtracted)."""
    return sum(1 for i in range(int(block.first), int(block.last) + 1) if usable(block, ipaddress.ip_address(i)))


def pick(block: PoolBlock, taken: Container[str], cursor: str | None) -> IP:
    """The first usable, untaken IP after `cursor` (wrapping); PoolExhausted when there is none."""
    lo, hi = int(block.first), int(block.last)
    start = lo
    if cursor:
        try:
            last = int(ipaddress.ip_address(cursor))
        except ValueError:
            last = hi
        start = last + 1 if lo <= last < hi else lo
    span = hi - lo + 1
    for step in range(span):
        value = lo + (start - lo + step) % span
        ip = ipaddress.ip_address(value)
        if str(ip) not in taken and usable(block, ip):
            return ip
    raise PoolExhausted(f"pool {block.pool!r} has no free IP on this node "
                        f"(range {block.first}-{block.last}, all usable IPs leased)")


def claim(block: PoolBlock, taken: Container[str], requested: str) -> IP:
    """A specific IP asked for by the pod (runtimeConfig/CNI args `ips`); refused with the reason."""
    try:
        ip = ipaddress.ip_interface(requested).ip
    except ValueError as exc:
        raise AddressUnavailable(f"requested IP {requested!r} is not an IP address") from exc
    if ip not in block.network:
        raise AddressUnavailable(f"requested IP {ip} is outside pool {block.pool!r} ({block.network})")
    if str(ip) in taken:
        raise AddressUnavailable(f"requested IP {ip} of pool {block.pool!r} is already leased")
    if not within(block, ip):
        raise AddressUnavailable(f"requested IP {ip} is outside this node's block of pool {block.pool!r} "
                                 f"({block.first}-{block.last})")
    if block.excluded(ip) or ip == block.gateway_ip:
        raise AddressUnavailable(f"requested IP {ip} is excluded or the gateway of pool {block.pool!r}")
    return ip


def claim_gateway(block: PoolBlock, taken: Container[str]) -> IP:
    """nv-ipam's allocateDefaultGateway: the pod *is* the pool's gateway (e.g. HBN)."""
    if block.gateway_ip is None:
        raise AddressUnavailable(f"allocateDefaultGateway: pool {block.pool!r} has no gateway")
    if str(block.gateway_ip) in taken:
        raise AddressUnavailable(f"allocateDefaultGateway: gateway {block.gateway_ip} of pool {block.pool!r} "
                                 "is already leased")
    return block.gateway_ip
