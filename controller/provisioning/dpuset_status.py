"""What a DPUSet's conditions say about a plan (`dpuset_plan.py`) and the API errors met applying it.

DPUsReconciled: every DPU the set wants exists and none is outdated; False/Failure names a spec or node problem
to fix, False/Error an apiserver error (retried), False/Pending something that resolves by itself (a rolling
update under way, a node whose DPU discovery is incomplete, an outdated DPU under Recreate waiting for the
user). Nodes without a discovered DPU are mentioned without making the set not Ready.
DPUsReady: every wanted DPU exists and is Ready. `Ready` summarises both (controller/api/conditions.py).
Pure; caller: controller/reconcilers/dpuset.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from dpf.controller.api import conditions as cond
from dpf.controller.provisioning.dpuset_plan import INFO, ROLLING_UPDATE, Obj, Plan

RECONCILED = "DPUsReconciled"
DPUS_READY = "DPUsReady"
CONDITION_TYPES = (cond.READY, RECONCILED, DPUS_READY)  # = api.provisioning.DPUSet.CONDITION_TYPES
NAMED = 10  # items named in a message; the rest are counted

Mark = tuple[str, str, str, str]  # (type, status, reason, message)


def named(items: Sequence[str], limit: int = NAMED) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def reconciled(plan: Plan, errors: Sequence[str]) -> Mark:
    if plan.spec_error:
        return (RECONCILED, "False", cond.FAILURE, plan.spec_error)
    failures = [g.message for g in plan.gaps if g.severity == cond.FAILURE]
    pending = [g.message for g in plan.gaps if g.severity == cond.PENDING]
    info = [g.message for g in plan.gaps if g.severity == INFO]
    if plan.outdated:
        old = named(plan.outdated)
        if plan.strategy == ROLLING_UPDATE:
            pending.append(f"rolling update: {len(plan.outdated)} of {plan.wanted} DPUs ({old}) still have an "
                           f"older bfb/dpuFlavor; at most {plan.max_unavailable} unavailable at a time")
        else:
            pending.append(f"{len(plan.outdated)} DPUs ({old}) have an older bfb/dpuFlavor than spec.dpuTemplate; "
                           f"strategy Recreate replaces a DPU only when you delete it")
    messages = [*failures, *errors, *pending, *info]
    message = "; ".join([*messages[:NAMED], *([f"and {len(messages) - NAMED} more"] if len(messages) > NAMED else [])])
    if failures:
        return (RECONCILED, "False", cond.FAILURE, message)
    if errors:
        return (RECONCILED, "False", cond.ERROR, message)
    if pending:
        return (RECONCILED, "False", cond.PENDING, message)
    return (RECONCILED, "True", cond.SUCCESS, message)


def dpus_ready(plan: Plan, dpuset: Obj) -> Mark:
    if plan.spec_error:
        return (DPUS_READY, "False", cond.PENDING, f"no DPUs are managed until the spec is fixed ({RECONCILED})")
    if plan.wanted == 0:
        selector = (dpuset.get("spec") or {}).get("nodeSelector")
        shown = json.dumps(selector, sort_keys=True, separators=(",", ":")) if selector else "(none: every node)"
        return (DPUS_READY, "False", cond.PENDING,
                f"spec.nodeSelector {shown} selects no host Node with a DPU to provision yet")
    if plan.not_ready:
        ready = plan.wanted - len(plan.not_ready)
        return (DPUS_READY, "False", cond.PENDING,
                f"{ready} of {plan.wanted} DPUs are Ready; waiting for {named(plan.not_ready)}")
    return (DPUS_READY, "True", cond.SUCCESS, "")


def marks(plan: Plan, dpuset: Obj, errors: Sequence[str]) -> list[Mark]:
    return [reconciled(plan, errors), dpus_ready(plan, dpuset)]
