"""A DPU's node effect on its host Node: applied in phase "Node Effect", undone at Ready, Error and deletion
(upstream DPF v24.10, `spec.nodeEffect`; modes checked in upstream's order customLabel > taint > drain).

- customLabel: the labels are merged onto the Node; undo leaves them there, as upstream does.
- taint: appended when no taint with its key is on the Node; undo removes it.
- drain: upstream creates a NodeMaintenance CR for NVIDIA's maintenance operator. That operator is not part of
  this project, so this module does what it does: cordon the Node, then evict its pods through the Eviction API
  (policy/v1), which enforces PodDisruptionBudgets. DaemonSet and mirror (static) pods stay; pods with emptyDir
  volumes and pods without a controller are evicted (upstream's drainSpec: force + deleteEmptyDir). An eviction
  a budget refuses (HTTP 429) is tried again on the next pass; the message names the pod and the budget. A
  drain not finished `drain_timeout` seconds after it started returns failed=True naming what blocks. Undo
  uncordons. The drain is done when no pod but the skipped ones is left on the Node (terminating pods count
  as left, as for `kubectl drain`).
- noEffect, or no mode: nothing.

Several DPUs on one host share the Node, so taints and the cordon are reference-counted in the Node annotation
`provisioning.dpu.nvidia.com/node-effect` (JSON):

    {"holders": {"<namespace>/<dpu>": {"taint": "<key>"} | {"drain": "<ISO 8601 start, ms>"}},
     "added": {"taints": ["<key>", ...], "cordon": true}}

`holders` says which DPU needs which effect; `added` what this module put on the Node. Undoing one DPU's effect
drops its holder and then removes only what no other holder needs AND this module added: a taint or cordon the
Node had before (an administrator's) stays. The drain's start time lives there too, so the bound holds across
controller restarts. Applying a mode also releases what the DPU held under a previous one (spec edited).
Every Node write is one JSON merge patch carrying the resourceVersion it was computed from, so concurrent
writers (another DPU's reconcile, kubectl) cause a 409 and a re-read, never a lost update.

Callers: the DPU reconciler's phase machine. Both calls are idempotent; call again while `done` is False.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dpf.controller.kube.rest import Kind, KubeError, Obj, Rest
from dpf.controller.kube.selectors import matches
from dpf.controller.reconcilers.kinds import NODE, POD

ANNOTATION = "provisioning.dpu.nvidia.com/node-effect"
DRAIN_TIMEOUT = 600.0  # seconds; the caller may pass its setting
CONFLICT_RETRIES = 5
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
PDB = Kind("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget")
LISTED = 5  # pods named in a message; the rest are counted


@dataclass(frozen=True)
class EffectState:
    done: bool
    """The effect is in place (apply) / gone (undo)."""
    message: str
    """Progress or the problem, for the NodeEffectReady condition."""
    failed: bool = False
    """An API error, or a drain that cannot finish past its bound: reason NodeEffectError."""


# ---- the spec --------------------------------------------------------------------------------------------


def dpu_key(dpu: Obj) -> str:
    meta = dpu["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def effect_mode(dpu: Obj) -> tuple[str, Any]:
    """("customLabel", labels) | ("taint", taint) | ("drain", drain) | ("noEffect", None), upstream's order."""
    effect = (dpu.get("spec") or {}).get("nodeEffect") or {}
    if effect.get("customLabel"):
        return "customLabel", effect["customLabel"]
    if effect.get("taint"):
        return "taint", effect["taint"]
    if effect.get("drain") is not None:
        return "drain", effect["drain"]
    return "noEffect", None


# ---- the record on the Node ------------------------------------------------------------------------------


@dataclass
class Record:
    holders: dict[str, dict[str, str]] = field(default_factory=dict)
    added_taints: list[str] = field(default_factory=list)
    added_cordon: bool = False

    @classmethod
    def of(cls, node: Obj) -> Record:
        raw = ((node["metadata"].get("annotations") or {}).get(ANNOTATION)) or ""
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}  # hand-edited into garbage: start over (we then own nothing, so we remove nothing)
        added = data.get("added") or {}
        holders = {k: dict(v) for k, v in (data.get("holders") or {}).items() if isinstance(v, dict)}
        return cls(holders, [str(k) for k in added.get("taints") or ()], bool(added.get("cordon")))

    def dump(self) -> str | None:
        """The annotation value, or None (annotation removed) when nothing is held or added."""
        if not self.holders and not self.added_taints and not self.added_cordon:
            return None
        added: dict[str, Any] = {}
        if self.added_taints:
            added["taints"] = sorted(self.added_taints)
        if self.added_cordon:
            added["cordon"] = True
        return json.dumps({"holders": dict(sorted(self.holders.items())), "added": added},
                          separators=(",", ":"), sort_keys=True)


@dataclass
class NodeView:
    """The parts of a Node this module writes, to change and compare."""

    taints: list[Obj]
    unschedulable: bool
    record: Record

    @classmethod
    def of(cls, node: Obj) -> NodeView:
        spec = node.get("spec") or {}
        return cls([dict(t) for t in spec.get("taints") or ()], bool(spec.get("unschedulable")), Record.of(node))

    def release_unneeded(self) -> list[str]:
        """Remove added taints and the added cordon no holder needs any more; what was removed."""
        needed_taints = {h["taint"] for h in self.record.holders.values() if "taint" in h}
        needs_cordon = any("drain" in h for h in self.record.holders.values())
        removed: list[str] = []
        for key in list(self.record.added_taints):
            if key not in needed_taints:
                self.record.added_taints.remove(key)
                self.taints = [t for t in self.taints if t.get("key") != key]
                removed.append(f"taint {key}")
        if self.record.added_cordon and not needs_cordon:
            self.record.added_cordon = False
            self.unschedulable = False
            removed.append("cordon")
        return removed

    def patch_from(self, node: Obj) -> Obj | None:
        """The merge patch turning `node` into this view (guarded by its resourceVersion), or None."""
        before = NodeView.of(node)
        spec: Obj = {}
        if self.taints != before.taints:
            spec["taints"] = self.taints or None
        if self.unschedulable != before.unschedulable:
            spec["unschedulable"] = self.unschedulable or None
        meta: Obj = {}
        if self.record.dump() != before.record.dump():
            meta["annotations"] = {ANNOTATION: self.record.dump()}
        if not spec and not meta:
            return None
        patch: Obj = {"metadata": {**meta, "resourceVersion": node["metadata"]["resourceVersion"]}}
        if spec:
            patch["spec"] = spec
        return patch


async def _change_node(rest: Rest, node_name: str, change: Callable[[NodeView], str]) -> tuple[Obj | None, str]:
    """Read the Node, let `change` edit its view (returning a note), write the difference guarded by the
    resourceVersion; re-read and recompute on a conflict. (None, "") when the Node does not exist."""
    for _ in range(CONFLICT_RETRIES):
        node = await rest.get(NODE, node_name)
        if node is None:
            return None, ""
        view = NodeView.of(node)
        note = change(view)
        patch = view.patch_from(node)
        if patch is None:
            return node, note
        try:
            return await rest.merge_patch(NODE, node_name, patch), note
        except KubeError as exc:
            if not exc.conflict:
                raise
    raise _Busy(f"node {node_name} changed under each of {CONFLICT_RETRIES} attempts to write it; trying again")


class _Busy(Exception):
    """Every guarded write lost a race: not an error, the next pass tries again."""


# ---- apply / undo ----------------------------------------------------------------------------------------


async def apply_node_effect(rest: Rest, node_name: str, dpu: Obj, *,
                            drain_timeout: float = DRAIN_TIMEOUT) -> EffectState:
    """Put the DPU's node effect in place (one step of it for a drain); idempotent."""
    mode, value = effect_mode(dpu)
    key = dpu_key(dpu)
    try:
        if mode == "drain":
            return await _drain(rest, node_name, key, drain_timeout)
        node, _ = await _change_node(rest, node_name, lambda view: _hold(view, key, mode, value))
        if node is None:
            return EffectState(mode == "noEffect", f"host node {node_name} not found")
        if mode == "customLabel":
            labels = node["metadata"].get("labels") or {}
            missing = {k: v for k, v in value.items() if labels.get(k) != v}
            if missing:
                await rest.merge_patch(NODE, node_name, {"metadata": {"labels": missing}})
            return EffectState(True, f"labels {_pairs(value)} set on node {node_name}")
        if mode == "taint":
            return EffectState(True, f"node {node_name} tainted {_taint_text(value)}")
        return EffectState(True, f"no node effect on node {node_name}")
    except _Busy as exc:
        return EffectState(False, str(exc))
    except KubeError as exc:
        return EffectState(False, f"applying the {mode} node effect to node {node_name}: {exc}", failed=True)


async def undo_node_effect(rest: Rest, node_name: str, dpu: Obj) -> EffectState:
    """Remove what the DPU's node effect put on the Node, except what another DPU there still needs and
    custom labels (they stay, as upstream); idempotent."""
    key = dpu_key(dpu)
    kept: list[str] = []

    def release(view: NodeView) -> str:
        kept.clear()
        mine = view.record.holders.pop(key, None) or {}
        removed = view.release_unneeded()
        if "taint" in mine:
            others = sorted(k for k, h in view.record.holders.items() if h.get("taint") == mine["taint"])
            if others:
                kept.append(f"taint {mine['taint']} kept for {', '.join(others)}")
        if "drain" in mine:
            others = sorted(k for k, h in view.record.holders.items() if "drain" in h)
            if others:
                kept.append(f"cordon kept for {', '.join(others)}")
        return ", ".join(removed)

    try:
        node, removed = await _change_node(rest, node_name, release)
    except _Busy as exc:
        return EffectState(False, str(exc))
    except KubeError as exc:
        return EffectState(False, f"undoing the node effect on node {node_name}: {exc}", failed=True)
    if node is None:
        return EffectState(True, f"host node {node_name} is gone")
    parts = ([f"removed {removed} from node {node_name}"] if removed else []) + kept
    if effect_mode(dpu)[0] == "customLabel":
        parts.append(f"custom labels stay on node {node_name}")
    return EffectState(True, "; ".join(parts) or f"no node effect left on node {node_name}")


def _hold(view: NodeView, key: str, mode: str, value: Any) -> str:
    """Record what `key` holds under `mode` (taint), releasing what it held before; taint the Node if needed."""
    view.record.holders.pop(key, None)
    if mode == "taint":
        taint = {k: value[k] for k in ("key", "value", "effect") if value.get(k) is not None}
        view.record.holders[key] = {"taint": taint["key"]}
        if not any(t.get("key") == taint["key"] for t in view.taints):
            view.taints.append(taint)
            if taint["key"] not in view.record.added_taints:
                view.record.added_taints.append(taint["key"])
    view.release_unneeded()
    return ""


def _cordon(view: NodeView, key: str, now: str) -> str:
    """Hold a drain for `key` (keeping its start time) and cordon the Node; the drain's start time."""
    held = view.record.holders.get(key) or {}
    since = held.get("drain") or now
    view.record.holders[key] = {"drain": since}
    if not view.unschedulable:
        view.unschedulable = True
        view.record.added_cordon = True
    view.release_unneeded()
    return since


# ---- drain -----------------------------------------------------------------------------------------------


@dataclass
class _Left:
    """A pod still on the Node and why."""

    name: str
    why: str


async def _drain(rest: Rest, node_name: str, key: str, bound: float) -> EffectState:
    now = datetime.now(UTC)
    node, since_text = await _change_node(rest, node_name,
                                          lambda view: _cordon(view, key, now.isoformat(timespec="milliseconds")))
    if node is None:
        return EffectState(False, f"host node {node_name} not found")
    try:
        since = datetime.fromisoformat(since_text)
    except ValueError:
        since = now
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    elapsed = max(0.0, (now - since).total_seconds())
    pods = (await rest.list(POD, field_selector=f"spec.nodeName={node_name}"))["items"]
    skipped = {"DaemonSet": 0, "mirror": 0}
    left: list[_Left] = []
    budgets: dict[str, list[Obj]] = {}
    for pod in pods:
        meta = pod["metadata"]
        name = f"{meta.get('namespace', '')}/{meta['name']}"
        if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
            skipped["mirror"] += 1
            continue
        if any(r.get("controller") and r.get("kind") == "DaemonSet" for r in meta.get("ownerReferences") or ()):
            skipped["DaemonSet"] += 1
            continue
        if meta.get("deletionTimestamp"):
            left.append(_Left(name, "terminating"))
            continue
        outcome = await _evict(rest, pod, budgets)
        if outcome != "gone":
            left.append(_Left(name, outcome))
    kept = ", ".join(f"{n} {kind} pod{'s' if n != 1 else ''}" for kind, n in skipped.items() if n)
    kept_note = f"; {kept} left in place" if kept else ""
    if not left:
        return EffectState(True, f"node {node_name} drained (cordoned{kept_note})")
    if elapsed > bound:
        return EffectState(False, f"drain of node {node_name} did not finish within {bound:.0f}s: "
                                  f"{_left_text(left)}", failed=True)
    return EffectState(False, f"draining node {node_name} ({elapsed:.0f}s of {bound:.0f}s): "
                              f"{_left_text(left)}{kept_note}")


def _left_text(left: list[_Left]) -> str:
    shown = "; ".join(f"{p.name} {p.why}" for p in left[:LISTED])
    more = f"; and {len(left) - LISTED} more" if len(left) > LISTED else ""
    return f"{len(left)} pod{'s' if len(left) != 1 else ''} left: {shown}{more}"


async def _evict(rest: Rest, pod: Obj, budgets: dict[str, list[Obj]]) -> str:
    """Ask the Eviction API to evict `pod`; what happened, for the message."""
    meta = pod["metadata"]
    namespace = meta.get("namespace", "")
    body = {"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": meta["name"], "namespace": namespace}}
    try:
        await rest.create(POD, body, namespace, subresource="eviction")
    except KubeError as exc:
        if exc.not_found:
            return "gone"
        if exc.status == 429:  # a PodDisruptionBudget refuses it now; the next pass asks again
            return await _blocked_by(rest, pod, budgets, exc)
        return f"not evicted: {exc}"
    return "evicted"


async def _blocked_by(rest: Rest, pod: Obj, budgets: dict[str, list[Obj]], exc: KubeError) -> str:
    namespace = pod["metadata"].get("namespace", "")
    if namespace not in budgets:
        try:
            budgets[namespace] = (await rest.list(PDB, namespace))["items"]
        except KubeError:
            budgets[namespace] = []
    labels = pod["metadata"].get("labels") or {}
    mine = [b for b in budgets[namespace]
            if (b.get("spec") or {}).get("selector") is not None and matches(b["spec"]["selector"], labels)]
    if not mine:
        return f"blocked: {exc.message or exc}"
    return "blocked by " + ", ".join(_budget_text(b) for b in mine)


def _budget_text(budget: Obj) -> str:
    status = budget.get("status") or {}
    return (f"PodDisruptionBudget {budget['metadata'].get('namespace', '')}/{budget['metadata']['name']} "
            f"({int(status.get('disruptionsAllowed') or 0)} disruptions allowed, "
            f"{int(status.get('currentHealthy') or 0)} healthy, {int(status.get('desiredHealthy') or 0)} needed)")


def _pairs(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _taint_text(taint: Mapping[str, Any]) -> str:
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint['key']}{value}:{taint.get('effect', '')}"
