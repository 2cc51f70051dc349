"""Pure builder: DPUServiceIPAM objects (dicts from the watch cache) → one node's dpf.v1.IPAMBlock snapshot.

A node's blocks come from what each pool's `status.allocations` records (the persisted split), read
against the pool's current spec; a node marked departed gets nothing (its block is only reserved).
Resource names are "namespace/name" of the DPUServiceIPAM; the block's `pool` is its name, which is what
CNI requests ask for. No I/O, no clock; output order is deterministic (the snapshot sorts by name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dpf.controller.api.svc_network import DPUServiceIPAMSpec
from dpf.controller.cache.snapshot import Snapshot
from dpf.controller.ipam.split import NodeAllocation, from_status
from dpf.proto import versioning
from dpf.proto.v1 import ipam_pb2

TYPE_URL = versioning.type_url(ipam_pb2.IPAMBlock)
POOL_TYPES = {"ippool": ipam_pb2.IPAM_POOL_TYPE_IPPOOL, "cidrpool": ipam_pb2.IPAM_POOL_TYPE_CIDRPOOL}


@dataclass(frozen=True)
class PoolState:
    """One DPUServiceIPAM as the builder needs it: parsed spec plus the allocations its status records."""

    resource: str
    """namespace/name: the snapshot resource name."""
    pool: str
    spec: DPUServiceIPAMSpec
    allocations: Mapping[str, NodeAllocation]
    """node name -> block, departed nodes included."""
    deleting: bool = False


def resource_name(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def status_nodes(obj: Mapping[str, Any]) -> list[str]:
    """Every node the object's status records a block for (departed ones too): the index of pools by node."""
    return [a["nodeName"] for a in (obj.get("status") or {}).get("allocations") or () if a.get("nodeName")]


def pool_state(obj: Mapping[str, Any]) -> PoolState:
    """Parse a DPUServiceIPAM dict; raises pydantic.ValidationError for a spec the models refuse."""
    spec = DPUServiceIPAMSpec.model_validate(obj.get("spec") or {})
    recorded = from_status(spec, (obj.get("status") or {}).get("allocations") or ())
    return PoolState(resource=resource_name(obj), pool=obj["metadata"]["name"], spec=spec,
                     allocations={a.node: a for a in recorded},
                     deleting=bool(obj["metadata"].get("deletionTimestamp")))


def to_message(pool: str, allocation: NodeAllocation) -> ipam_pb2.IPAMBlock:
    return ipam_pb2.IPAMBlock(
        pool=pool, pool_type=POOL_TYPES[allocation.pool_type], subnet=allocation.subnet, start=allocation.start,
        end=allocation.end, gateway=allocation.gateway or "", exclusions=list(allocation.exclusions),
        routes=[ipam_pb2.IPAMRoute(dst=r) for r in allocation.routes], default_gateway=allocation.default_gateway)


def block_version(pool: str, allocation: NodeAllocation) -> str:
    """The version this block has inside a node's snapshot (what the node's agent ACKs for it)."""
    return versioning.resource_version(versioning.pack(to_message(pool, allocation)))


def compute_ipam_blocks(node: str, pools: Iterable[PoolState]) -> Snapshot:
    """The node's snapshot: one block per pool whose status gives this node a (non-departed) block."""
    items = []
    for state in pools:
        allocation = state.allocations.get(node)
        if state.deleting or allocation is None or allocation.departed_at is not None:
            continue
        items.append((state.resource, to_message(state.pool, allocation)))
    return Snapshot.build(TYPE_URL, items)
