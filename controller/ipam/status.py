"""DPUServiceIPAM status from a split and from what the nodes' agents said: `allocations` plus the conditions
`DPUIPAMObjectReconciled`, `DPUIPAMObjectReady` and the `Ready` summary (upstream DPF v24.10).

- Reconciled: every node that matches nodeSelector has a block (False/Error names the nodes left without
  one when the pool is exhausted).
- ObjectReady: every node with a block has applied it at its current version (False/Error carries the
  agent's NACK or failure message; False/Pending lists the nodes still to apply; no matching node at all
  is Pending, as upstream's "pool has no allocations").
Pure: the clock is a parameter, the node registry is only read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from dpf.controller.api import conditions as cond
from dpf.controller.api.meta import Condition
from dpf.controller.cache.ipamblocks import TYPE_URL, block_version
from dpf.controller.ipam.split import NodeAllocation, Split
from dpf.controller.reconcilers.agent_verdicts import REASONS, Outcome, judge, worst
from dpf.controller.server.node_status import NodeRegistry

RECONCILED = "DPUIPAMObjectReconciled"
OBJECT_READY = "DPUIPAMObjectReady"
CONDITION_TYPES = (cond.READY, RECONCILED, OBJECT_READY)
MESSAGE_LIMIT = 4096
LISTED = 20  # node names spelled out in a message before "and N more"


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:LISTED])
    return shown + (f" and {len(items) - LISTED} more" if len(items) > LISTED else "")


def agent_verdicts(resource: str, pool: str, allocations: Sequence[NodeAllocation],
                   registry: NodeRegistry) -> tuple[list[tuple[Outcome, str]], list[str]]:
    """(errors, pending) over the nodes holding an active block of this pool, from their agents' reports
    (the rules are `agent_verdicts.judge`'s, shared with the SFC sets)."""
    errors: list[tuple[Outcome, str]] = []
    pending: list[str] = []
    for allocation in allocations:
        if allocation.departed_at is not None:
            continue
        node = allocation.node
        # The CNI server reports blocks only when they change: its ACK is what says a block is in use.
        judgement = judge(registry, node, TYPE_URL, resource, block_version(pool, allocation), require_report=False)
        match judgement.outcome:
            case Outcome.REJECTED:
                errors.append((Outcome.REJECTED, f"node {node} rejected the block: {judgement.detail}"))
            case Outcome.FAILED:
                errors.append((Outcome.FAILED, f"node {node} failed to apply the block: {judgement.detail}"))
            case Outcome.PENDING:
                pending.append(node + (f" ({judgement.detail})" if judgement.detail else ""))
    return errors, pending


def current_conditions(obj: Mapping[str, Any]) -> list[Condition]:
    out = []
    for raw in (obj.get("status") or {}).get("conditions") or ():
        try:
            out.append(Condition.model_validate(raw))
        except ValidationError:
            continue  # a condition someone wrote by hand that we cannot read: ours replace it
    return out


def compute_status(obj: Mapping[str, Any], split: Split, registry: NodeRegistry, *, now: datetime) -> dict[str, Any]:
    """The complete status the controller owns for one DPUServiceIPAM."""
    generation = int(obj["metadata"].get("generation") or 0)
    meta = obj["metadata"]
    resource, pool = f"{meta.get('namespace', '')}/{meta['name']}", meta["name"]
    conditions = cond.ensure(current_conditions(obj), CONDITION_TYPES, now=now, generation=generation)
    if split.unallocated:
        conditions = cond.mark_false(
            conditions, RECONCILED, cond.ERROR,
            f"the pool has no block left for {len(split.unallocated)} matching node(s): "
            f"{_names(split.unallocated)}; grow the network/subnet or narrow nodeSelector",
            now=now, generation=generation)
    else:
        conditions = cond.mark_true(conditions, RECONCILED, now=now, generation=generation)
    active = [a for a in split.allocations if a.departed_at is None]
    errors, pending = agent_verdicts(resource, pool, active, registry)
    if errors:
        reason = REASONS[worst(outcome for outcome, _ in errors)]
        conditions = cond.mark_false(conditions, OBJECT_READY, reason, "; ".join(m for _, m in errors)[:MESSAGE_LIMIT],
                                     now=now, generation=generation)
    elif pending:
        message = f"waiting for {len(pending)} of {len(active)} node(s) to apply their block: {_names(pending)}"
        conditions = cond.mark_false(conditions, OBJECT_READY, cond.PENDING, message[:MESSAGE_LIMIT],
                                     now=now, generation=generation)
    elif not active:
        conditions = cond.mark_false(conditions, OBJECT_READY, cond.PENDING,
                                     "no DPU node has a block: none matches nodeSelector" if not split.unallocated
                                     else "no DPU node has a block yet", now=now, generation=generation)
    else:
        conditions = cond.mark_true(conditions, OBJECT_READY, now=now, generation=generation)
    conditions = cond.summarize(conditions, now=now, generation=generation)
    return {"observedGeneration": generation, "conditions": [c.to_json() for c in conditions],
            "allocations": [a.status_entry() for a in split.allocations]}


def normalized(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """A status as read back from the apiserver, in `compute_status`'s shape (for the "changed?" test)."""
    status = status or {}
    return {"observedGeneration": status.get("observedGeneration", 0),
            "conditions": [c.to_json() for c in current_conditions({"status": status})],
            "allocations": list(status.get("allocations") or [])}
