"""The DPUSet plan (upstream DPF v24.10): which DPUs a DPUSet wants on which host Nodes, and what
to do about the DPUs it has. Create the missing ones, delete those whose node (or DPU index) left the
selection, replace outdated ones under RollingUpdate with at most maxUnavailable unavailable at once, merge the
template's cluster.nodeLabels into existing DPUs in place (RollingUpdate only, as upstream), adopt orphans.

Pure: plain objects from the watch caches in, a frozen Plan out. No I/O, no clock, deterministic order.
Caller: controller/reconcilers/dpuset.py, which applies the plan and writes the status
(`dpuset_status.py`). It must never decide anything from caches that have not synced.

Differences from upstream, on purpose: DPUs are keyed by name, not by node, so a dpuSelector that picks two
DPUs of one node gets both; `total` for maxUnavailable counts the DPUs the set wants, not the selected nodes
(a node without a discovered DPU would otherwise block every rolling update); a DPU counts as available only
when its Ready condition is True (upstream: not missing and not False); a dpuSelector key that names no DPU
is a spec error instead of being ignored; a DPU name held by another owner is reported, never taken over.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dpf.controller.api import conditions as cond
from dpf.controller.kube.selectors import SelectorError, matches, validate

Obj = dict[str, Any]

API_VERSION = "provisioning.dpu.nvidia.com/v1alpha1"
_LABELS = "provisioning.dpu.nvidia.com/"
SET_NAME_LABEL = _LABELS + "dpuset-name"
SET_NAMESPACE_LABEL = _LABELS + "dpuset-namespace"
PCI_ADDRESS_LABEL = _LABELS + "dpu-pciAddress"
PF_NAME_LABEL = _LABELS + "dpu-pf-name"
HOST_IP_LABEL = _LABELS + "dpu-host-ip"
NFD = "feature.node.kubernetes.io/"  # node-feature-discovery labels set by the DPU detector
SELECTOR_KEY = re.compile(r"^feature\.node\.kubernetes\.io/dpu-(\d+)-.+$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
PERCENT = re.compile(r"^(\d+)%$")
RECREATE, ROLLING_UPDATE = "Recreate", "RollingUpdate"
INFO = ""  # a Gap severity: nothing to wait for (no DPU was discovered on the node)


@dataclass(frozen=True)
class Wanted:
    """A DPU the set wants, with the body that creates it (server-side apply)."""

    name: str
    node: str
    index: int
    body: Obj = field(compare=False)


@dataclass(frozen=True)
class Gap:
    """A selected node (or DPU of it) that has no DPU of this set, and why. Severity: a condition reason
    (cond.PENDING: will resolve, cond.FAILURE: needs a change) or INFO."""

    node: str
    severity: str
    message: str
    warn: bool = True
    """Worth a Warning Event FailedCreate (not for a wait that ends by itself shortly)."""


@dataclass(frozen=True)
class Deletion:
    name: str
    uid: str
    node: str
    why: str


@dataclass(frozen=True)
class Patch:
    """A JSON merge patch for an existing DPU, guarded by the resourceVersion it was computed from."""

    name: str
    body: Obj = field(compare=False)
    why: str = ""


@dataclass(frozen=True)
class Plan:
    strategy: str
    spec_error: str = ""
    """Set when the spec cannot be acted on; nothing else is planned then."""
    creates: tuple[Wanted, ...] = ()
    deletes: tuple[Deletion, ...] = ()
    patches: tuple[Patch, ...] = ()
    gaps: tuple[Gap, ...] = ()
    wanted: int = 0
    not_ready: tuple[str, ...] = ()
    """Wanted DPUs that are missing or not available, as "name (state)"."""
    outdated: tuple[str, ...] = ()
    """Wanted DPUs made from an older bfb/dpuFlavor that are not being deleted (yet, or by this plan)."""
    max_unavailable: int = 1
    statistics: Mapping[str, int] = field(default_factory=dict)


# ---- reading the objects ----------------------------------------------------------------------------------

def template_spec(dpuset: Obj) -> Obj:
    return ((dpuset.get("spec") or {}).get("dpuTemplate") or {}).get("spec") or {}


def strategy_of(dpuset: Obj) -> str:
    return ((dpuset.get("spec") or {}).get("strategy") or {}).get("type") or RECREATE


def template_bfb(dpuset: Obj) -> str:
    return (template_spec(dpuset).get("bfb") or {}).get("name") or ""


def controller_ref(obj: Obj) -> Obj | None:
    return next((r for r in obj["metadata"].get("ownerReferences") or () if r.get("controller")), None)


def set_of_labels(obj: Obj) -> str | None:
    """"namespace/name" of the DPUSet a DPU's labels name, or None."""
    labels = obj["metadata"].get("labels") or {}
    name, namespace = labels.get(SET_NAME_LABEL), labels.get(SET_NAMESPACE_LABEL)
    return f"{namespace}/{name}" if name and namespace is not None else None


def owned_by(dpu: Obj, dpuset: Obj) -> bool:
    """The set's DPU: controlled by it, or labelled as its own with no controller at all (an orphan to adopt)."""
    meta = dpuset["metadata"]
    ref = controller_ref(dpu)
    if ref is not None:
        return ref.get("uid") == meta["uid"]
    return set_of_labels(dpu) == f"{meta.get('namespace', '')}/{meta['name']}"


def is_ready(dpu: Obj) -> bool:
    return any(c.get("type") == cond.READY and c.get("status") == "True"
               for c in (dpu.get("status") or {}).get("conditions") or ())


def phase_of(dpu: Obj) -> str:
    return (dpu.get("status") or {}).get("phase") or "Initializing"


def node_label(labels: Mapping[str, str], index: int, prop: str) -> str | None:
    """The value of the node label ending in `dpu-<index>-<prop>` (the detector's NFD key preferred)."""
    suffix = f"dpu-{index}-{prop}"
    if NFD + suffix in labels:
        return labels[NFD + suffix]
    return next((labels[k] for k in sorted(labels) if k.endswith(suffix)), None)


def host_ip(node: Obj) -> str | None:
    """The node's first InternalIP usable as a label value (an IPv6 address is not)."""
    for address in (node.get("status") or {}).get("addresses") or ():
        value = address.get("address") or ""
        if address.get("type") == "InternalIP" and value and LABEL_VALUE.match(value):
            return value
    return None


def max_unavailable(dpuset: Obj, total: int) -> int:
    """maxUnavailable scaled to `total` (percentages round up), clamped to [1, total] (at least 1)."""
    value = (((dpuset.get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}).get("maxUnavailable")
    if value is None:
        scaled = 0
    elif isinstance(value, int) and not isinstance(value, bool):
        scaled = value
    elif isinstance(value, str) and (m := PERCENT.match(value)):
        scaled = -(-int(m.group(1)) * total // 100)
    else:
        raise ValueError(f"spec.strategy.rollingUpdate.maxUnavailable {value!r} must be a count such as 1 or a "
                         f"percentage such as '10%'")
    return max(1, min(scaled, total))


def spec_problem(dpuset: Obj) -> str:
    """Why the spec cannot be acted on, naming the field and the fix; '' if it can."""
    spec = dpuset.get("spec") or {}
    try:
        validate(spec.get("nodeSelector"), "spec.nodeSelector")
    except SelectorError as exc:
        return f"{exc}; fix the selector"
    bad = sorted(k for k in spec.get("dpuSelector") or {} if not SELECTOR_KEY.match(k))
    if bad:
        return (f"spec.dpuSelector key {', '.join(map(repr, bad))} names no DPU: keys look like "
                f"{NFD}dpu-<index>-<property>, e.g. {NFD}dpu-1-pci-address")
    if not template_bfb(dpuset):
        return "spec.dpuTemplate.spec.bfb.name is not set: name the BFB (in this namespace) the DPUs install"
    if strategy_of(dpuset) == ROLLING_UPDATE:
        try:
            max_unavailable(dpuset, 1)
        except ValueError as exc:
            return str(exc)
    return ""


# ---- what the set wants ------------------------------------------------------------------------------------

def dpu_indexes(dpu_selector: Mapping[str, str], labels: Mapping[str, str]) -> list[int]:
    """Which DPUs of a node the set takes: the index of every dpuSelector key the node carries with that value;
    without a dpuSelector, DPU 0 if the node has a dpu-0-pci-address label."""
    if dpu_selector:
        return sorted({int(m.group(1)) for k, v in dpu_selector.items()
                       if labels.get(k) == v and (m := SELECTOR_KEY.match(k))})
    return [0] if node_label(labels, 0, "pci-address") is not None else []


def owner_reference(dpuset: Obj) -> Obj:
    meta = dpuset["metadata"]
    return {"apiVersion": API_VERSION, "kind": "DPUSet", "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def dpu_body(dpuset: Obj, node: Obj, name: str, index: int, pci: str) -> Obj:
    """The DPU for DPU `index` of `node`: labels, template annotations, the template's spec, nodeName."""
    meta = dpuset["metadata"]
    node_labels = node["metadata"].get("labels") or {}
    labels = {**(meta.get("labels") or {}), SET_NAME_LABEL: meta["name"],
              SET_NAMESPACE_LABEL: meta.get("namespace", ""), PCI_ADDRESS_LABEL: pci}
    if pf := node_label(node_labels, index, "pf0-name"):
        labels[PF_NAME_LABEL] = pf
    if ip := host_ip(node):
        labels[HOST_IP_LABEL] = ip
    template = (dpuset.get("spec") or {}).get("dpuTemplate") or {}
    tspec = template.get("spec") or {}
    spec: Obj = {"nodeName": node["metadata"]["name"], "bfb": template_bfb(dpuset)}
    for key in ("nodeEffect", "dpuFlavor", "automaticNodeReboot"):
        if tspec.get(key) is not None:
            spec[key] = json.loads(json.dumps(tspec[key]))  # a deep copy: bodies must not share the cache's dicts
    if node_labels_t := (tspec.get("cluster") or {}).get("nodeLabels"):
        spec["cluster"] = {"nodeLabels": dict(node_labels_t)}
    dpu_meta: Obj = {"name": name, "namespace": meta.get("namespace", ""), "labels": labels,
                     "ownerReferences": [owner_reference(dpuset)]}
    if template.get("annotations"):
        dpu_meta["annotations"] = dict(template["annotations"])
    return {"apiVersion": API_VERSION, "kind": "DPU", "metadata": dpu_meta, "spec": spec}


def wanted_dpus(dpuset: Obj, nodes: Iterable[Obj]) -> tuple[dict[str, Wanted], list[Gap], set[str]]:
    """The DPUs the set wants by name, the selected nodes (or DPUs) that get none and why, and the names of
    the nodes the nodeSelector matches. The spec must have passed spec_problem()."""
    spec = dpuset.get("spec") or {}
    selector, dpu_selector = spec.get("nodeSelector"), spec.get("dpuSelector") or {}
    wanted: dict[str, Wanted] = {}
    gaps: list[Gap] = []
    matched: set[str] = set()
    for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        node_name, labels = node["metadata"]["name"], node["metadata"].get("labels") or {}
        if node["metadata"].get("deletionTimestamp") or not matches(selector, labels):
            continue
        matched.add(node_name)
        indexes = dpu_indexes(dpu_selector, labels)
        if not indexes and not dpu_selector:
            gaps.append(Gap(node_name, INFO, f"node {node_name} has no {NFD}dpu-0-pci-address label "
                                             f"(no DPU discovered there)", warn=False))
        for index in indexes:
            pci = node_label(labels, index, "pci-address")
            if not pci:
                state = "an empty" if pci == "" else "no"
                gaps.append(Gap(node_name, cond.PENDING,
                                f"node {node_name} has {state} {NFD}dpu-{index}-pci-address label: DPU {index} "
                                f"gets its DPU object once DPU discovery sets it"))
                continue
            name = f"{node_name.lower()}-{pci}"
            if not DNS_SUBDOMAIN.match(name):
                gaps.append(Gap(node_name, cond.FAILURE,
                                f"node {node_name}: DPU name {name!r} (node name + '-' + PCI address label) is not "
                                f"a valid object name; the PCI address label must look like 0000-04-00"))
                continue
            wanted.setdefault(name, Wanted(name, node_name, index, dpu_body(dpuset, node, name, index, pci)))
    return wanted, gaps, matched


# ---- the plan ----------------------------------------------------------------------------------------------

def outdated(dpu: Obj, dpuset: Obj) -> bool:
    """Upstream's update rule: the DPU's bfb or dpuFlavor differs from the template's."""
    spec = dpu.get("spec") or {}
    return ((spec.get("bfb") or "") != template_bfb(dpuset)
            or (spec.get("dpuFlavor") or "") != (template_spec(dpuset).get("dpuFlavor") or ""))


@dataclass(frozen=True)
class _Liveness:
    deleting: Collection[str]
    """Uids deleted by an earlier pass that the cache does not show as deleted yet."""

    def going(self, dpu: Obj) -> bool:
        return bool(dpu["metadata"].get("deletionTimestamp")) or dpu["metadata"].get("uid") in self.deleting

    def available(self, dpu: Obj) -> bool:
        return not self.going(dpu) and is_ready(dpu)


def compute_plan(dpuset: Obj, nodes: Iterable[Obj], dpus: Iterable[Obj], deleting: Collection[str] = ()) -> Plan:
    """The plan for `dpuset` given the host Nodes and the DPUs of its namespace. `deleting` holds uids of DPUs
    deleted by an earlier pass that the cache does not show as deleted yet: they count as going."""
    nodes, live = list(nodes), _Liveness(deleting)
    by_name = {d["metadata"]["name"]: d for d in dpus}
    ours = {name: d for name, d in sorted(by_name.items()) if owned_by(d, dpuset)}
    strategy = strategy_of(dpuset)
    statistics = cond.phase_counts(phase_of(d) for d in ours.values())
    if problem := spec_problem(dpuset):
        return Plan(strategy, spec_error=problem, statistics=statistics)

    wanted, gaps, matched = wanted_dpus(dpuset, nodes)
    creates: list[Wanted] = []
    for want in wanted.values():
        current = by_name.get(want.name)
        if current is None:
            creates.append(want)
        elif want.name not in ours:
            gaps.append(_name_taken(want, current, dpuset))
    deletes = _departed(ours, wanted, {n["metadata"]["name"] for n in nodes}, matched, live)
    mine = {name: ours[name] for name in wanted if name in ours}
    limit = max_unavailable(dpuset, len(wanted)) if strategy == ROLLING_UPDATE else 1
    stale = [name for name, dpu in mine.items() if not live.going(dpu) and outdated(dpu, dpuset)]
    replacing = _rollout(dpuset, wanted, mine, stale, limit, live) if strategy == ROLLING_UPDATE else []
    replaced = {d.name for d in replacing}
    patches = [p for name, dpu in mine.items() if not live.going(dpu) and name not in replaced
               and (p := _patch(dpu, dpuset, merge_labels=strategy == ROLLING_UPDATE)) is not None]
    not_ready = tuple(f"{name} ({_state(mine.get(name), live)})" for name in wanted
                      if name not in mine or not live.available(mine[name]))
    return Plan(strategy, creates=tuple(creates), deletes=(*deletes, *replacing), patches=tuple(patches),
                gaps=tuple(gaps), wanted=len(wanted), not_ready=not_ready, outdated=tuple(stale),
                max_unavailable=limit, statistics=statistics)


def _departed(ours: Mapping[str, Obj], wanted: Mapping[str, Wanted], nodes: Collection[str],
              matched: Collection[str], live: _Liveness) -> list[Deletion]:
    """The set's DPUs it no longer wants, with why."""
    out = []
    for name, dpu in ours.items():
        if name in wanted or live.going(dpu):
            continue
        node = (dpu.get("spec") or {}).get("nodeName") or ""
        why = (f"node {node} no longer exists" if node not in nodes else
               f"node {node} no longer matches spec.nodeSelector" if node not in matched else
               f"node {node} no longer selects this DPU (spec.dpuSelector or its PCI address label changed)")
        out.append(Deletion(name, dpu["metadata"]["uid"], node, why))
    return out


def _rollout(dpuset: Obj, wanted: Mapping[str, Wanted], mine: Mapping[str, Obj], stale: Iterable[str], limit: int,
             live: _Liveness) -> list[Deletion]:
    """Upstream's RollingUpdate step: an outdated DPU that is unavailable anyway goes at once; an available one
    only while fewer than `limit` wanted DPUs are unavailable (missing ones count). The next pass recreates."""
    unavailable = sum(1 for name in wanted if name not in mine or not live.available(mine[name]))
    why = (f"rolling update to bfb {template_bfb(dpuset)!r}, "
           f"dpuFlavor {template_spec(dpuset).get('dpuFlavor') or ''!r}")
    out = []
    for name in stale:
        dpu = mine[name]
        if live.available(dpu):
            if unavailable >= limit:
                continue
            unavailable += 1
        out.append(Deletion(name, dpu["metadata"]["uid"], wanted[name].node, why))
    return out


def _name_taken(want: Wanted, current: Obj, dpuset: Obj) -> Gap:
    ref = controller_ref(current)
    if current["metadata"].get("deletionTimestamp"):
        return Gap(want.node, cond.PENDING, f"DPU {want.name} is being deleted; this set makes its own once it is "
                                            f"gone", warn=False)
    if ref is not None and ref.get("kind") == "DPUSet" and ref.get("name") == dpuset["metadata"]["name"]:
        return Gap(want.node, cond.PENDING, f"DPU {want.name} belongs to an earlier DPUSet of this name (uid "
                                            f"{ref.get('uid')}); the garbage collector deletes it, then this set "
                                            f"makes its own", warn=False)
    labelled = set_of_labels(current)
    holder = (f"{ref.get('kind')} {ref.get('name')}" if ref else f"DPUSet {labelled}" if labelled else "no DPUSet")
    return Gap(want.node, cond.FAILURE, f"DPU {want.name} for node {want.node} already exists and belongs to "
                                        f"{holder}: a DPU can be in one DPUSet only; make the node selections disjoint")


def _state(dpu: Obj | None, live: _Liveness) -> str:
    if dpu is None:
        return "missing"
    if live.going(dpu):
        return "being deleted"
    return f"{phase_of(dpu)}, not Ready"


def _patch(dpu: Obj, dpuset: Obj, merge_labels: bool) -> Patch | None:
    """Adopt an orphan (add our controller reference) and, under RollingUpdate, add template nodeLabels the DPU
    lacks (upstream merges, never removes: the DPU controller adds labels of its own there)."""
    meta: Obj = {}
    spec: Obj = {}
    whys = []
    if controller_ref(dpu) is None:
        meta["ownerReferences"] = [*(dpu["metadata"].get("ownerReferences") or ()), owner_reference(dpuset)]
        whys.append("adopted")
    if merge_labels:
        have = ((dpu.get("spec") or {}).get("cluster") or {}).get("nodeLabels") or {}
        want = (template_spec(dpuset).get("cluster") or {}).get("nodeLabels") or {}
        missing = {k: v for k, v in sorted(want.items()) if have.get(k) != v}
        if missing:
            spec["cluster"] = {"nodeLabels": missing}
            whys.append(f"cluster.nodeLabels {', '.join(f'{k}={v}' for k, v in missing.items())} merged")
    if not whys:
        return None
    body: Obj = {"metadata": {**meta, "resourceVersion": dpu["metadata"].get("resourceVersion", "")}}
    if spec:
        body["spec"] = spec
    return Patch(dpu["metadata"]["name"], body, "; ".join(whys))
