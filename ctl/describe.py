"""`dpfctl describe`, the pure part: DPUSets and DPUs (as the apiserver returns them) → a tree → text or JSON.

The tree is DPUSet → its DPUs (by controller ownerReference, else by the DPUSet labels the DPU carries) →
the conditions that are not True. DPUs whose DPUSet is not among those read are listed under "DPUs without a
DPUSet". The JSON shape (`to_json`) is documented in docs/dpfctl.md and kept stable: fields are only added.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

API_VERSION = "dpfctl.dpu.nvidia.com/v1"
SET_NAME_LABEL = "provisioning.dpu.nvidia.com/dpuset-name"
SET_NAMESPACE_LABEL = "provisioning.dpu.nvidia.com/dpuset-namespace"
INSTALLING = "OS Installing"
ORPHANS = "DPUs without a DPUSet"


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str
    last_transition: str

    @classmethod
    def of(cls, raw: Obj) -> Condition:
        return cls(raw.get("type", ""), raw.get("status", "Unknown"), raw.get("reason", ""), raw.get("message", ""),
                   raw.get("lastTransitionTime", ""))

    def to_json(self) -> Obj:
        return {"type": self.type, "status": self.status, "reason": self.reason, "message": self.message,
                "lastTransitionTime": self.last_transition or None}


@dataclass(frozen=True)
class DPUNode:
    namespace: str
    name: str
    node_name: str
    phase: str
    ready: Condition | None
    problems: tuple[Condition, ...]
    """Conditions other than Ready that are not True, in the order the object stores them."""
    progress: str | None
    """The OSInstalled message while the phase is OS Installing (bytes, rate, ETA as the controller writes them)."""
    created: str

    def to_json(self) -> Obj:
        return {"namespace": self.namespace, "name": self.name, "nodeName": self.node_name or None,
                "phase": self.phase, "ready": _status(self.ready), "readyReason": self.ready.reason if self.ready
                else None, "readyMessage": self.ready.message if self.ready else None,
                "progress": self.progress, "conditions": [c.to_json() for c in self.problems]}


@dataclass(frozen=True)
class DPUSetNode:
    namespace: str
    name: str
    ready: Condition | None
    problems: tuple[Condition, ...]
    statistics: dict[str, int]
    created: str
    dpus: tuple[DPUNode, ...] = field(default=())

    def to_json(self) -> Obj:
        return {"namespace": self.namespace, "name": self.name, "ready": _status(self.ready),
                "readyReason": self.ready.reason if self.ready else None,
                "readyMessage": self.ready.message if self.ready else None,
                "dpuStatistics": dict(sorted(self.statistics.items())),
                "conditions": [c.to_json() for c in self.problems], "dpus": [d.to_json() for d in self.dpus]}


@dataclass(frozen=True)
class Tree:
    dpusets: tuple[DPUSetNode, ...]
    orphans: tuple[DPUNode, ...]

    def to_json(self) -> Obj:
        return {"apiVersion": API_VERSION, "kind": "Describe",
                "dpuSets": [s.to_json() for s in self.dpusets],
                "dpusWithoutDPUSet": [d.to_json() for d in self.orphans]}


def _status(condition: Condition | None) -> str | None:
    return condition.status if condition else None


def _split(conditions: Iterable[Obj]) -> tuple[Condition | None, tuple[Condition, ...]]:
    parsed = [Condition.of(c) for c in conditions]
    ready = next((c for c in parsed if c.type == "Ready"), None)
    return ready, tuple(c for c in parsed if c.type != "Ready" and c.status != "True")


def dpu_node(dpu: Obj) -> DPUNode:
    meta, status = dpu["metadata"], dpu.get("status") or {}
    conditions = status.get("conditions") or []
    ready, problems = _split(conditions)
    phase = status.get("phase") or "Initializing"
    installed = next((Condition.of(c) for c in conditions if c.get("type") == "OSInstalled"), None)
    progress = installed.message if phase == INSTALLING and installed and installed.message else None
    return DPUNode(meta.get("namespace", ""), meta["name"], (dpu.get("spec") or {}).get("nodeName", ""), phase,
                   ready, problems, progress, meta.get("creationTimestamp", ""))


def _set_key_of(dpu: Obj, sets_by_uid: dict[str, tuple[str, str]]) -> tuple[str, str] | None:
    """(namespace, name) of the DPUSet this DPU belongs to: its controller reference, else its set labels."""
    meta = dpu["metadata"]
    ref = next((r for r in meta.get("ownerReferences") or () if r.get("controller")), None)
    if ref is not None:
        if ref.get("kind") != "DPUSet":
            return None
        return sets_by_uid.get(ref.get("uid", ""), (meta.get("namespace", ""), ref.get("name", "")))
    labels = meta.get("labels") or {}
    if labels.get(SET_NAME_LABEL):
        return labels.get(SET_NAMESPACE_LABEL) or meta.get("namespace", ""), labels[SET_NAME_LABEL]
    return None


def build(dpusets: Sequence[Obj], dpus: Sequence[Obj]) -> Tree:
    sets_by_uid = {s["metadata"].get("uid", ""): (s["metadata"].get("namespace", ""), s["metadata"]["name"])
                   for s in dpusets}
    children: dict[tuple[str, str], list[DPUNode]] = {key: [] for key in sets_by_uid.values()}
    orphans: list[DPUNode] = []
    for dpu in sorted(dpus, key=_sort_key):
        key = _set_key_of(dpu, sets_by_uid)
        (children[key] if key is not None and key in children else orphans).append(dpu_node(dpu))
    nodes = []
    for dpuset in sorted(dpusets, key=_sort_key):
        meta, status = dpuset["metadata"], dpuset.get("status") or {}
        ready, problems = _split(status.get("conditions") or [])
        key = (meta.get("namespace", ""), meta["name"])
        nodes.append(DPUSetNode(key[0], key[1], ready, problems, dict(status.get("dpuStatistics") or {}),
                                meta.get("creationTimestamp", ""), tuple(children[key])))
    return Tree(tuple(nodes), tuple(orphans))


def _sort_key(obj: Obj) -> tuple[str, str]:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


# ---- text ------------------------------------------------------------------------------------------------
HEADER = ("NAME", "PHASE", "READY", "REASON", "SINCE", "MESSAGE")


def render(tree: Tree, now: dt.datetime, show_namespace: bool = False) -> str:
    """The tree as aligned columns, like `clusterctl describe cluster` (SINCE is relative to `now`)."""
    rows: list[tuple[str, ...]] = [HEADER]

    def name(kind: str, namespace: str, obj_name: str) -> str:
        return f"{kind}/{namespace}/{obj_name}" if show_namespace else f"{kind}/{obj_name}"

    def children(items: Sequence[Condition | DPUNode], indent: str) -> None:
        """Conditions first, then DPUs (each with its own conditions), as branches of one parent."""
        for i, item in enumerate(items):
            last = i == len(items) - 1
            branch = indent + ("└─" if last else "├─")
            if isinstance(item, Condition):
                rows.append((branch + item.type, "", item.status, item.reason, _since(item.last_transition, now),
                             _one_line(item.message)))
            else:
                rows.append(_object_row(branch + name("DPU", item.namespace, item.name), item.phase, item.ready,
                                        item.created, now))
                children(item.problems, indent + ("  " if last else "│ "))

    for dpuset in tree.dpusets:
        rows.append(_object_row(name("DPUSet", dpuset.namespace, dpuset.name), _statistics(dpuset.statistics),
                                dpuset.ready, dpuset.created, now))
        children([*dpuset.problems, *dpuset.dpus], "")
    if tree.orphans:
        rows.append((ORPHANS, "", "", "", "", ""))
        children(tree.orphans, "")
    if len(rows) == 1:
        return "No DPUSets or DPUs found.\n"
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER) - 1)]
    return "".join(_join(row, widths) for row in rows)


def _join(row: tuple[str, ...], widths: list[int]) -> str:
    return ("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]).rstrip() + "\n"


def _object_row(label: str, phase: str, ready: Condition | None, created: str, now: dt.datetime) -> tuple[str, ...]:
    if ready is None:
        return label, phase, "", "", _since(created, now), ""
    problem = ready.status != "True"
    return (label, phase, ready.status, ready.reason if problem else "", _since(ready.last_transition or created, now),
            _one_line(ready.message) if problem else "")


def _statistics(statistics: dict[str, int]) -> str:
    """A DPUSet's DPUs per phase, e.g. "2 Ready, 1 OS Installing"."""
    return ", ".join(f"{n} {phase}" for phase, n in sorted(statistics.items(), key=lambda kv: (-kv[1], kv[0])))


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _since(timestamp: str, now: dt.datetime) -> str:
    """kubectl's age format: 45s, 3m, 2h5m, 4d."""
    if not timestamp:
        return ""
    try:
        then = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return ""
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes}m" if minutes and hours < 6 else f"{hours}h"
    return f"{hours // 24}d"
