"""This node's share of each IP pool, as the controller computed it (frozen; filled from the stream).

The controller splits a DPUServiceIPAM into per-node blocks (`dpf.controller.ipam`); the agent only
ever allocates inside the block it was given. The DPU agent fills these from the gRPC stream
(`dpf.agent.ipam.handler`); `blocks_from_json` reads the same shape from a file (the standalone CNI
server and the tests use it).
Never does I/O beyond that one parse; never reads the clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

PoolType = Literal["ippool", "cidrpool"]


class BlockError(ValueError):
    """A pool block that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Route:
    dst: str
    gw: str | None = None


@dataclass(frozen=True)
class PoolBlock:
    """One pool's allocatable range on this node.

    `subnet` is the network the pod addresses are configured with (an IPPool's whole subnet, or a
    CIDRPool's per-node prefix); `start`..`end` is the part this node may hand out. The gateway is
    never handed out unless a request asks for it explicitly (nv-ipam's allocateDefaultGateway).
    """

    pool: str
    pool_type: PoolType
    subnet: str
    start: str
    end: str
    gateway: str | None = None
    exclusions: tuple[str, ...] = ()
    """Single IPs, or inclusive ranges written `a-b`."""
    routes: tuple[Route, ...] = ()
    default_gateway: bool = False
    """Add a default route through the gateway to every pod of this pool."""
    _parsed: tuple[Any, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            net = ipaddress.ip_network(self.subnet, strict=False)
        except ValueError as exc:
            raise BlockError(f"pool {self.pool!r}: subnet {self.subnet!r} is not a CIDR") from exc
        start, end = _ip(self.pool, "start", self.start), _ip(self.pool, "end", self.end)
        if start not in net or end not in net or int(end) < int(start):
            raise BlockError(f"pool {self.pool!r}: range {self.start}-{self.end} is not inside {net} in order")
        gateway = _ip(self.pool, "gateway", self.gateway) if self.gateway else None
        if gateway is not None and gateway not in net:
            raise BlockError(f"pool {self.pool!r}: gateway {gateway} is outside {net}")
        excluded: list[tuple[int, int]] = []
        for item in self.exclusions:
            lo, _, hi = item.partition("-")
            a = _ip(self.pool, "exclusions", lo)
            b = _ip(self.pool, "exclusions", hi) if hi else a
            excluded.append((int(a), int(b)))
        if self.pool_type not in ("ippool", "cidrpool"):
            raise BlockError(f"pool {self.pool!r}: poolType {self.pool_type!r} is not ippool or cidrpool")
        object.__setattr__(self, "_parsed", (net, start, end, gateway, tuple(excluded)))

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return self._parsed[0]

    @property
    def first(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return self._parsed[1]

    @property
    def last(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return self._parsed[2]

    @property
    def gateway_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return self._parsed[3]

    def excluded(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        value = int(ip)
        return any(lo <= value <= hi for lo, hi in self._parsed[4])

    def size(self) -> int:
        return int(self.last) - int(self.first) + 1


def _ip(pool: str, name: str, value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError as exc:
        raise BlockError(f"pool {pool!r}: {name} {value!r} is not an IP address") from exc


def block_from_dict(raw: Mapping[str, Any]) -> PoolBlock:
    """The camelCase wire/file shape -> PoolBlock (the same keys as the DPUServiceIPAM status)."""
    try:
        routes = tuple(Route(dst=r["dst"], gw=r.get("gw")) for r in raw.get("routes", ()))
        return PoolBlock(pool=raw["pool"], pool_type=raw.get("poolType", "ippool"), subnet=raw["subnet"],
                         start=raw["start"], end=raw["end"], gateway=raw.get("gateway"),
                         exclusions=tuple(raw.get("exclusions", ())), routes=routes,
                         default_gateway=bool(raw.get("defaultGateway", False)))
    except KeyError as exc:
        raise BlockError(f"pool block {raw.get('pool', '?')!r}: missing field {exc.args[0]!r}") from exc


def blocks_from_json(items: Iterable[Mapping[str, Any]]) -> dict[str, PoolBlock]:
    blocks = {}
    for raw in items:
        block = block_from_dict(raw)
        if block.pool in blocks:
            raise BlockError(f"pool {block.pool!r} appears twice")
        blocks[block.pool] = block
    return blocks
