"""What the node agents said about per-node objects: the one rule that turns a node's ACKs, NACKs and status
reports into an outcome per object, and the one mapping from outcomes to condition reasons. Pure.

An object is READY on its node only when the node's agent has ACKed the exact resource version the
controller published for it **and** (where the agent reports per object) reported it PROGRAMMED at that
version: an ACK alone says "accepted and persisted", PROGRAMMED says the port has its OpenFlow port or the
chain's flows are installed. At that version, a NACK naming it or a REJECTED report is REJECTED (reason
Failure: it stays until the spec changes), a FAILED report is FAILED (reason Error: the agent retries, the
message says what to fix on the node); everything else is PENDING with the reason (agent not connected,
not applied yet, the agent's own progress message), or UNPUBLISHED while the controller has not put it in
the node's snapshot yet. Agents that predate the typed verdict are read through `dpf.proto.status`.
Callers: the ServiceInterfaceSet and ServiceChainSet reconcilers (`fold`) and DPUServiceIPAM status.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from dpf.controller.api import conditions as cond
from dpf.controller.cache.snapshot_cache import SnapshotCache
from dpf.controller.server.node_status import NodeRegistry
from dpf.proto.status import verdict_of
from dpf.proto.v1 import nodestate_pb2 as pb

MESSAGE_LIMIT = 4096
LISTED = 10  # pending objects spelled out before "and N more"


class Outcome(StrEnum):
    READY = "ready"
    PENDING = "pending"
    UNPUBLISHED = "unpublished"  # not in the node's snapshot yet (the controller's own work is behind)
    FAILED = "failed"
    REJECTED = "rejected"


REASONS = {Outcome.READY: cond.SUCCESS, Outcome.PENDING: cond.PENDING, Outcome.UNPUBLISHED: cond.PENDING,
           Outcome.FAILED: cond.ERROR, Outcome.REJECTED: cond.FAILURE}
"""The condition reason of each outcome: the only place agent news becomes a reason."""
_SEVERITY = (Outcome.REJECTED, Outcome.FAILED, Outcome.PENDING, Outcome.UNPUBLISHED, Outcome.READY)


@dataclass(frozen=True)
class Judgement:
    """One object on one node. `detail`: the agent's message (REJECTED/FAILED) or why it is pending."""

    outcome: Outcome
    detail: str = ""
    aside: bool = False  # the detail qualifies "not applied yet" (shown in parentheses)


def judge(registry: NodeRegistry, node: str, type_url: str, name: str, version: str | None,
          require_report: bool = True) -> Judgement:
    """The outcome of resource `name` published to `node` at `version` (None: not published yet).
    `require_report`: READY needs a PROGRAMMED report besides the ACK (types whose agents report per object)."""
    if version is None:
        return Judgement(Outcome.UNPUBLISHED, "not published to the node yet")
    status = registry.get(node)
    types = status.types.get(type_url) if status else None
    nack = types.nack if types else None
    if nack is not None and nack.implicated.get(name) == version:
        return Judgement(Outcome.REJECTED, nack.resource_errors.get(name) or nack.message)
    observed = types.observed.get(name) if types else None
    current = observed if observed is not None and observed.resource_version == version else None
    reported = verdict_of(current) if current is not None else None
    said = current.message if current is not None else ""
    if reported == pb.VERDICT_REJECTED:
        return Judgement(Outcome.REJECTED, said)
    if reported == pb.VERDICT_FAILED:
        return Judgement(Outcome.FAILED, said)
    if types is None or types.acked.get(name) != version:
        why = "" if status is not None and status.connected else "agent not connected"
        if nack is not None and not why:
            why = f"held back: the node rejected its last update: {nack.message}"
        return Judgement(Outcome.PENDING, why, aside=True)
    if not require_report or reported == pb.VERDICT_PROGRAMMED:
        return Judgement(Outcome.READY)
    if reported is None:
        return Judgement(Outcome.PENDING, "applied, waiting for the agent's status report")
    return Judgement(Outcome.PENDING, said or "in progress")


def worst(outcomes: Iterable[Outcome]) -> Outcome:
    found = set(outcomes)
    return next((o for o in _SEVERITY if o in found), Outcome.READY)


@dataclass(frozen=True)
class Verdict:
    """The judgement on one child of a set, with the sentence its condition shows."""

    name: str
    node: str
    outcome: Outcome
    message: str = ""

    @property
    def ready(self) -> bool:
        return self.outcome is Outcome.READY


def verdict(registry: NodeRegistry, cache: SnapshotCache, node: str, type_url: str, name: str) -> Verdict:
    """The verdict on resource `name` of `type_url` on `node`."""
    published = cache.get(node, type_url).resources.get(name)
    if published is None and (held_back := cache.held_back(node, type_url).get(name)):
        # The controller kept it off the node: an invalid stored spec, or an elder object holds its port.
        return Verdict(name, node, Outcome.REJECTED, f"{name} on {node}: {held_back}")
    judgement = judge(registry, node, type_url, name, published.version if published else None)
    match judgement.outcome:
        case Outcome.READY:
            return Verdict(name, node, Outcome.READY)
        case Outcome.REJECTED:
            message = f"node {node} rejected {name}: {judgement.detail}"
        case Outcome.FAILED:
            message = f"node {node} failed to apply {name}: {judgement.detail}"
        case Outcome.PENDING if judgement.aside:
            message = f"{name} on {node}" + (f" ({judgement.detail})" if judgement.detail else "")
        case _:
            message = f"{name} on {node}" + (f": {judgement.detail}" if judgement.detail else "")
    return Verdict(name, node, judgement.outcome, message)


def fold(verdicts: Iterable[Verdict], total: int) -> tuple[str, str, str]:
    """(status, reason, message) of a `...Ready` condition over all verdicts of a set's children."""
    items = list(verdicts)
    outcome = worst(v.outcome for v in items)
    if outcome in (Outcome.REJECTED, Outcome.FAILED):
        broken = [v.message for v in items if v.outcome in (Outcome.REJECTED, Outcome.FAILED)]
        return "False", REASONS[outcome], "; ".join(broken)[:MESSAGE_LIMIT]
    if outcome is not Outcome.READY:
        pending = [v.message for v in items if not v.ready]
        shown = ", ".join(pending[:LISTED]) + (f" and {len(pending) - LISTED} more" if len(pending) > LISTED else "")
        return ("False", REASONS[outcome],
                f"waiting for agents to apply {len(pending)} of {total}: {shown}"[:MESSAGE_LIMIT])
    return "True", cond.SUCCESS, ""
