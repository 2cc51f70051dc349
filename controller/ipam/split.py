"""Split a DPUServiceIPAM into per-node blocks, the way NVIDIA's nv-ipam splits IPPools and CIDRPools.

Pure and deterministic (upstream DPF v24.10): the reconciler passes the spec, the DPU
nodes with their labels, the allocations recorded in status last time, and the clock; it writes
the result back to status and streams each node its block. Stability comes from `previous`: a
node keeps its block across controller restarts (`from_status` reads it back from status) and as
other nodes come and go, and a node that leaves keeps its block for `grace` seconds (a rebooting
DPU must get the same addresses back).

- ipv4Subnet (an IPPool): the subnet is cut into consecutive blocks of perNodeIPCount addresses,
  starting after the network address; one shared gateway, which the agent never hands to pods.
- ipv4Network (a CIDRPool): the network is cut into /prefixSize prefixes, one per node; static
  `allocations` first; gateway at gatewayIndex inside each prefix; exclusions; network and
  broadcast addresses are not handed out unless the prefix is /31 or /32.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from dpf.controller.api.meta import NodeSelector, NodeSelectorRequirement
from dpf.controller.api.svc_network import DPUServiceIPAMSpec

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Node:
    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class NodeAllocation:
    """One node's block of the pool."""

    node: str
    pool_type: Literal["ippool", "cidrpool"]
    subnet: str
    """The network pod addresses are configured with (IPPool: the whole subnet; CIDRPool: the prefix)."""
    start: str
    end: str
    gateway: str | None = None
    exclusions: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    default_gateway: bool = False
    departed_at: float | None = None
    """When the node stopped matching; the block is kept until the grace period ends."""

    def status_entry(self) -> dict[str, str]:
        """nv-ipam's status.allocations shape for this kind of pool (plus `departedAt` while departed)."""
        if self.pool_type == "ippool":
            entry = {"nodeName": self.node, "startIP": self.start, "endIP": self.end}
        else:
            entry = {"nodeName": self.node, "prefix": self.subnet}
            if self.gateway:
                entry["gateway"] = self.gateway
        if self.departed_at is not None:
            entry["departedAt"] = _rfc3339(self.departed_at)
        return entry

    def block(self, pool: str) -> dict[str, object]:
        """The shape the node's agent allocates from (`dpf.agent.ipam.model.block_from_dict`)."""
        return {"pool": pool, "poolType": self.pool_type, "subnet": self.subnet, "start": self.start,
                "end": self.end, "gateway": self.gateway, "exclusions": list(self.exclusions),
                "routes": [{"dst": r} for r in self.routes], "defaultGateway": self.default_gateway}


@dataclass(frozen=True)
class Split:
    allocations: tuple[NodeAllocation, ...]
    """Sorted by node name; includes departed nodes still within their grace period."""
    unallocated: tuple[str, ...] = ()
    """Matching nodes that got no block because the pool is full."""


def from_status(spec: DPUServiceIPAMSpec, entries: Iterable[Mapping[str, Any]]) -> list[NodeAllocation]:
    """The allocations a status recorded (`status_entry()` dicts), rebuilt against the current spec: the
    `previous` of the next split after a controller restart. Entries the spec no longer has are dropped."""
    out = []
    for entry in entries:
        node = entry.get("nodeName")
        block = _entry_block(spec, entry) if node else None
        if block is None or not node:
            continue
        departed = entry.get("departedAt")
        out.append(replace(block, node=node, departed_at=_epoch(departed) if departed else None))
    return out


def _entry_block(spec: DPUServiceIPAMSpec, entry: Mapping[str, Any]) -> NodeAllocation | None:
    try:
        if spec.ipv4_subnet is not None and entry.get("startIP"):
            subnet = ipaddress.ip_network(spec.ipv4_subnet.subnet, strict=False)
            return _block_at(spec, str(subnet), str(entry["startIP"]))
        if spec.ipv4_network is not None and entry.get("prefix"):
            return _prefix_block(spec, ipaddress.ip_network(str(entry["prefix"]), strict=False))
    except ValueError:
        return None
    return None


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(stamp: str) -> float | None:
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except (TypeError, ValueError):
        return None


# -- node selection ---------------------------------------------------------------------------------------


def _requirement(req: NodeSelectorRequirement, value: str | None) -> bool:
    values = req.values or []
    op = req.operator
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt") and value is not None and len(values) == 1:
        try:
            a, b = int(value), int(values[0])
        except ValueError:
            return False
        return a > b if op == "Gt" else a < b
    return False


def node_matches(selector: NodeSelector | None, node: Node) -> bool:
    """corev1.NodeSelector semantics: terms ORed, requirements within a term ANDed; no selector = all."""
    if selector is None or not selector.node_selector_terms:
        return True
    for term in selector.node_selector_terms:
        exprs = term.match_expressions or []
        fields = term.match_fields or []
        if not exprs and not fields:
            continue  # an empty term matches nothing (as kube-scheduler)
        if all(_requirement(r, node.labels.get(r.key)) for r in exprs) and all(
                _requirement(r, node.name if r.key == "metadata.name" else None) for r in fields):
            return True
    return False


# -- the split ----------------------------------------------------------------------------------------------


def compute_allocations(spec: DPUServiceIPAMSpec, nodes: Sequence[Node], previous: Sequence[NodeAllocation],
                        now: float, grace: float) -> Split:
    matching = sorted(n.name for n in nodes if node_matches(spec.node_selector, n))
    static = _static(spec)
    kept: dict[str, NodeAllocation] = {}
    for alloc in sorted(previous, key=lambda a: a.node):
        current = _block_at(spec, alloc.subnet, alloc.start)  # the spec may have changed under it
        if alloc.node in static or current is None:
            continue
        if alloc.node in matching:
            kept[alloc.node] = replace(current, node=alloc.node)
        else:
            since = alloc.departed_at if alloc.departed_at is not None else now
            if now - since < grace:
                kept[alloc.node] = replace(current, node=alloc.node, departed_at=since)
    for node, block in static.items():
        if node in matching:
            kept[node] = replace(block, node=node)
    taken = {(a.subnet, a.start) for a in kept.values()} | {(b.subnet, b.start) for b in static.values()}
    waiting = [n for n in matching if n not in kept]
    unallocated: list[str] = []
    if waiting:
        free = (b for b in _blocks(spec) if (b.subnet, b.start) not in taken)
        for node in waiting:
            fresh = next(free, None)
            if fresh is None:
                unallocated.append(node)
            else:
                kept[node] = replace(fresh, node=node)
    return Split(allocations=tuple(kept[n] for n in sorted(kept)), unallocated=tuple(unallocated))


def _static(spec: DPUServiceIPAMSpec) -> dict[str, NodeAllocation]:
    net = spec.ipv4_network
    if net is None or not net.allocations:
        return {}
    out = {}
    for node, prefix in net.allocations.items():
        block = _prefix_block(spec, ipaddress.ip_network(prefix, strict=False))
        if block is not None:
            out[node] = block
    return out


def _usable_range(prefix: Net) -> tuple[str, str]:
    if prefix.num_addresses <= 2:
        return str(prefix.network_address), str(prefix.broadcast_address)
    return str(prefix.network_address + 1), str(prefix.broadcast_address - 1)


def _subnet_block(spec: DPUServiceIPAMSpec, lo: int) -> NodeAllocation:
    s = spec.ipv4_subnet
    assert s is not None
    net = ipaddress.ip_network(s.subnet, strict=False)
    return NodeAllocation(node="", pool_type="ippool", subnet=str(net), start=str(ipaddress.ip_address(lo)),
                          end=str(ipaddress.ip_address(lo + max(int(s.per_node_ip_count), 1) - 1)),
                          gateway=s.gateway, routes=tuple(r.dst for r in s.routes or ()),
                          default_gateway=bool(s.default_gateway))


def _inside(inner: Net, outer: Net) -> bool:
    """subnet_of, typed per family: a network of the other family is simply not inside."""
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def _prefix_block(spec: DPUServiceIPAMSpec, prefix: Net) -> NodeAllocation | None:
    n = spec.ipv4_network
    assert n is not None
    net = ipaddress.ip_network(n.network, strict=False)
    if prefix.prefixlen != n.prefix_size or not _inside(prefix, net):
        return None
    start, end = _usable_range(prefix)
    gateway = None
    if n.gateway_index is not None and 0 <= n.gateway_index < prefix.num_addresses:
        gateway = str(prefix.network_address + n.gateway_index)
    excluded = tuple(e for e in n.exclusions or () if ipaddress.ip_address(e) in prefix)
    return NodeAllocation(node="", pool_type="cidrpool", subnet=str(prefix), start=start, end=end, gateway=gateway,
                          exclusions=excluded, routes=tuple(r.dst for r in n.routes or ()),
                          default_gateway=bool(n.default_gateway))


def _subnet_bounds(spec: DPUServiceIPAMSpec) -> tuple[int, int, int]:
    """(first block start, last usable address, block size) of an ipv4Subnet."""
    s = spec.ipv4_subnet
    assert s is not None
    net = ipaddress.ip_network(s.subnet, strict=False)
    last = int(net.broadcast_address) - (1 if net.num_addresses > 2 else 0)
    first = int(net.network_address) + (1 if net.num_addresses > 2 else 0)
    return first, last, max(int(s.per_node_ip_count), 1)


def _blocks(spec: DPUServiceIPAMSpec) -> Iterator[NodeAllocation]:
    """Every block the pool can hand out, lazily, in address order (a /8 has millions)."""
    if spec.ipv4_subnet is not None:
        first, last, size = _subnet_bounds(spec)
        for lo in range(first, last - size + 2, size):
            yield _subnet_block(spec, lo)
    elif spec.ipv4_network is not None:
        net = ipaddress.ip_network(spec.ipv4_network.network, strict=False)
        for prefix in net.subnets(new_prefix=spec.ipv4_network.prefix_size):
            block = _prefix_block(spec, prefix)
            if block is not None:
                yield block


def _block_at(spec: DPUServiceIPAMSpec, subnet: str, start: str) -> NodeAllocation | None:
    """The block the current spec has at (subnet, start), or None if the spec no longer has it."""
    try:
        lo = int(ipaddress.ip_address(start))
        if spec.ipv4_subnet is not None:
            first, last, size = _subnet_bounds(spec)
            in_subnet = _subnet_block(spec, lo)
            aligned = (lo - first) % size == 0 and first <= lo and lo + size - 1 <= last
            return in_subnet if aligned and in_subnet.subnet == subnet else None
        if spec.ipv4_network is not None:
            block = _prefix_block(spec, ipaddress.ip_network(subnet, strict=False))
            return block if block is not None and block.start == start else None
    except ValueError:
        return None
    return None
