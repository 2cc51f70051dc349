"""What the node agents said about per-node objects, folded into one readiness condition. Pure.

An object counts as ready on its node only when the node's agent has ACKed the exact resource version the
controller published for it (`SnapshotCache`) **and** reported it `OBJECT_STATE_READY` at that version:
an ACK alone says "accepted and persisted", the READY report says the port has its OpenFlow port or the
chain's flows are installed. A NACK or a FAILED report at that version is an error carrying the agent's
message; everything else is pending with the reason (agent not connected, not applied yet, the agent's
own progress message). Callers: the ServiceInterfaceSet and ServiceChainSet reconcilers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dpf.controller.cache.snapshot_cache import SnapshotCache
from dpf.controller.server.node_status import NodeRegistry
from dpf.proto.v1 import nodestate_pb2 as pb

READY, PENDING, ERROR = "ready", "pending", "error"
MESSAGE_LIMIT = 4096
LISTED = 10  # pending objects spelled out before "and N more"


@dataclass(frozen=True)
class Verdict:
    name: str
    node: str
    state: str  # READY | PENDING | ERROR
    message: str = ""


def verdict(registry: NodeRegistry, cache: SnapshotCache, node: str, type_url: str, name: str) -> Verdict:
    """The verdict on resource `name` of `type_url` on `node`."""
    published = cache.get(node, type_url).resources.get(name)
    if published is None:
        held_back = cache.held_back(node, type_url).get(name)
        if held_back:
            return Verdict(name, node, ERROR, f"{name} on {node}: {held_back}")
        return Verdict(name, node, PENDING, f"{name} on {node}: not published to the node yet")
    version = published.version
    status = registry.get(node)
    types = status.types.get(type_url) if status else None
    nack = types.nack if types else None
    observed = types.observed.get(name) if types else None
    if nack is not None and nack.implicated.get(name) == version:
        return Verdict(name, node, ERROR,
                       f"node {node} rejected {name}: {nack.resource_errors.get(name) or nack.message}")
    current = observed is not None and observed.resource_version == version
    if current and observed.state == pb.OBJECT_STATE_FAILED:
        return Verdict(name, node, ERROR, f"node {node} failed to apply {name}: {observed.message}")
    if types is None or types.acked.get(name) != version:
        why = "" if status is not None and status.connected else " (agent not connected)"
        if nack is not None and not why:
            why = f" (held back: the node rejected its last update: {nack.message})"
        return Verdict(name, node, PENDING, f"{name} on {node}{why}")
    if not current:
        return Verdict(name, node, PENDING, f"{name} on {node}: applied, waiting for the agent's status report")
    if observed.state != pb.OBJECT_STATE_READY:
        return Verdict(name, node, PENDING, f"{name} on {node}: {observed.message or 'in progress'}")
    return Verdict(name, node, READY)


def fold(verdicts: Iterable[Verdict], total: int) -> tuple[str, str, str]:
    """(status, reason, message) of a `...Ready` condition over all verdicts of a set's children."""
    items = list(verdicts)
    errors = [v.message for v in items if v.state == ERROR]
    pending = [v.message for v in items if v.state == PENDING]
    if errors:
        return "False", "Error", "; ".join(errors)[:MESSAGE_LIMIT]
    if pending:
        shown = ", ".join(pending[:LISTED]) + (f" and {len(pending) - LISTED} more" if len(pending) > LISTED else "")
        return "False", "Pending", f"waiting for agents to apply {len(pending)} of {total}: {shown}"[:MESSAGE_LIMIT]
    return "True", "Success", ""
