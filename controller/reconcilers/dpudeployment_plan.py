"""What a DPUDeployment (upstream DPF v24.10) asks for, computed without I/O: the prerequisite check, the resource
fitting arithmetic, the children (DPUServiceInterfaces, DPUServices, the DPUServiceChain, DPUSets) with upstream's
names, labels and spec, the `...Ready` mirror of the children's `Ready`, and which objects carry the dependency mark.
Caller: controller/reconcilers/dpudeployment.py (which reads the caches and writes the differences).

Names: DPUService `<dd>-<svc>`, DPUServiceInterface `<dd>-<svc>-<ifname with _ → ->`, DPUServiceChain `<dd>`,
DPUSet `<dd>-<nameSuffix>`; serviceID `dpudeployment_<dd>_<svc>`. "Version" is upstream's constant placeholder
(no staged rollout in this release): the DPUSets label their DPU Nodes with it and the services and the chain
select those Nodes with it, which is how only this deployment's DPUs run its services.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from dpf.controller.api import conditions as cond
from dpf.controller.kube.rest import Kind, Obj
from dpf.controller.reconcilers.kinds import (
    BFB,
    DPU_DEPLOYMENT,
    DPU_FLAVOR,
    DPU_SERVICE_CHAIN,
    DPU_SERVICE_CONFIGURATION,
    DPU_SERVICE_INTERFACE,
    DPU_SERVICE_TEMPLATE,
    DPU_SET,
    SVC,
    V1ALPHA1,
)

DPU_SERVICE = Kind(SVC, V1ALPHA1, "dpuservices", "DPUService")  # = reconcilers/dpuservice.py's
FINALIZER = "dpu.nvidia.com/dpudeployment"
OWNER_LABEL = "svc.dpu.nvidia.com/owned-by-dpudeployment"
CONSUMED_BY_LABEL = "dpu.nvidia.com/consumed-by-dpudeployment-name"
SERVICE_LABEL = "svc.dpu.nvidia.com/service"
INTERFACE_LABEL = "svc.dpu.nvidia.com/interface"
VERSION = "placeholder-for-version"
VERSION_ANNOTATION = "dpuservice.nvidia.com/version"
CHAIN_VERSION_LABEL = "svc.dpu.nvidia.com/dpuservicechain-version"
# Ours, not upstream's: a digest of the spec we last applied, so a field we drop is noticed (the apiserver's
# defaults make the live spec a superset of ours, so comparing specs alone cannot tell).
DIGEST_ANNOTATION = "svc.dpu.nvidia.com/dpudeployment-digest"

PREREQS, FITTING = "PrerequisitesReady", "ResourceFittingReady"
SETS_RECONCILED, SETS_READY = "DPUSetsReconciled", "DPUSetsReady"
SERVICES_RECONCILED, SERVICES_READY = "DPUServicesReconciled", "DPUServicesReady"
CHAINS_RECONCILED, CHAINS_READY = "DPUServiceChainsReconciled", "DPUServiceChainsReady"
INTERFACES_RECONCILED, INTERFACES_READY = "DPUServiceInterfacesReconciled", "DPUServiceInterfacesReady"
TYPES = (cond.READY, PREREQS, FITTING, SETS_RECONCILED, SETS_READY, SERVICES_RECONCILED, SERVICES_READY,
         CHAINS_RECONCILED, CHAINS_READY, INTERFACES_RECONCILED, INTERFACES_READY)
NAMED = 10  # objects named in a message; the rest are counted

Mark = tuple[str, str, str, str]  # (type, status, reason, message)


@dataclass(frozen=True)
class ChildKind:
    kind: Kind
    reconciled: str
    ready: str
    plural: str  # as upstream's deletion message says it


# In upstream's deletion order: chains, interfaces and services go first, the DPUSets last.
CHAINS = ChildKind(DPU_SERVICE_CHAIN, CHAINS_RECONCILED, CHAINS_READY, "DPUServiceChains")
INTERFACES = ChildKind(DPU_SERVICE_INTERFACE, INTERFACES_RECONCILED, INTERFACES_READY, "DPUServiceInterfaces")
SERVICES = ChildKind(DPU_SERVICE, SERVICES_RECONCILED, SERVICES_READY, "DPUServices")
SETS = ChildKind(DPU_SET, SETS_RECONCILED, SETS_READY, "DPUSets")
CHILD_KINDS = (INTERFACES, SERVICES, CHAINS, SETS)  # creation order: a service names its interfaces
FIRST_DELETED = (CHAINS, INTERFACES, SERVICES)

# The dependency kinds and how a DPUDeployment names them (a service's template and configuration by name).
DEPENDENCY_KINDS = (BFB, DPU_FLAVOR, DPU_SERVICE_TEMPLATE, DPU_SERVICE_CONFIGURATION)


def spec_of(obj: Obj | None) -> dict[str, Any]:
    return dict((obj or {}).get("spec") or {})


def services_of(dd: Obj) -> dict[str, dict[str, Any]]:
    return {k: dict(v or {}) for k, v in (spec_of(dd).get("services") or {}).items()}


def references(dd: Obj) -> set[tuple[str, str]]:
    """(kind, name) of every dependency `dd` names. Pure."""
    dpus = spec_of(dd).get("dpus") or {}
    refs = {(BFB.kind, dpus.get("bfb") or ""), (DPU_FLAVOR.kind, dpus.get("flavor") or "")}
    for service in services_of(dd).values():
        refs.add((DPU_SERVICE_TEMPLATE.kind, service.get("serviceTemplate") or ""))
        refs.add((DPU_SERVICE_CONFIGURATION.kind, service.get("serviceConfiguration") or ""))
    return {r for r in refs if r[1]}


def owner_value(dd: Obj) -> str:
    meta = dd["metadata"]
    return f"{meta.get('namespace', '')}_{meta['name']}"


def service_id(dd_name: str, service: str) -> str:
    return f"dpudeployment_{dd_name}_{service}"


def interface_name(dd_name: str, service: str, ifname: str) -> str:
    return f"{dd_name}-{service}-{ifname.replace('_', '-')}"


def service_version_label(service: str) -> str:
    return f"svc.dpu.nvidia.com/dpuservice-{service}-version"


def named(items: Sequence[str], limit: int = NAMED) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


# ---- 1. prerequisites -------------------------------------------------------------------------------------

@dataclass
class Dependencies:
    """What the caches hold for one DPUDeployment's references (None: not found)."""

    bfb: Obj | None
    flavor: Obj | None
    templates: dict[str, Obj | None] = field(default_factory=dict)  # by service key
    configurations: dict[str, Obj | None] = field(default_factory=dict)


def prerequisite_problems(dd: Obj, deps: Dependencies) -> list[str]:
    """Every missing or mismatched dependency, named; [] when all are there. Pure."""
    namespace = dd["metadata"].get("namespace", "")
    dpus = spec_of(dd).get("dpus") or {}
    problems = []
    if deps.bfb is None:
        problems.append(f"BFB {namespace}/{dpus.get('bfb')} (spec.dpus.bfb) not found")
    if deps.flavor is None:
        problems.append(f"DPUFlavor {namespace}/{dpus.get('flavor')} (spec.dpus.flavor) not found")
    for key, refs in sorted(services_of(dd).items()):
        for kind, ref, obj in ((DPU_SERVICE_TEMPLATE.kind, "serviceTemplate", deps.templates.get(key)),
                               (DPU_SERVICE_CONFIGURATION.kind, "serviceConfiguration",
                                deps.configurations.get(key))):
            where = f"{kind} {namespace}/{refs.get(ref)} (spec.services.{key}.{ref})"
            if obj is None:
                problems.append(f"{where} not found")
                continue
            named_service = spec_of(obj).get("deploymentServiceName")
            if named_service != key:
                problems.append(f"{where} has deploymentServiceName {named_service!r}, which does not match "
                                f"the service key {key!r}")
    return problems


# ---- 2. resource fitting ----------------------------------------------------------------------------------

def quantity(value: Any) -> Decimal:
    """A Kubernetes quantity ("6Gi", "500m", 3) as an exact Decimal; ValueError if it is none."""
    return Decimal(parse_quantity(value))


def show(value: Decimal) -> str:
    """A quantity as a person reads it: the largest binary suffix that divides it exactly, else plain."""
    if value == value.to_integral_value() and value > 0:
        for suffix, power in (("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)):
            if value % (1 << power) == 0:
                return f"{int(value) >> power}{suffix}"
        return str(int(value))
    return format(value.normalize(), "f")


def fitting_problem(templates: Mapping[str, Obj], flavor: Obj) -> str:
    """"" when Σ template resourceRequirements fits in the flavor's dpuResources - systemReservedResources (or
    the flavor sets no dpuResources: nothing to check, as upstream); else which resource, the need and the
    capacity. Pure."""
    flavor_spec = spec_of(flavor)
    resources = flavor_spec.get("dpuResources")
    if not resources:
        return ""
    reserved = flavor_spec.get("systemReservedResources") or {}
    problems = []
    needs: dict[str, list[tuple[str, Decimal]]] = {}
    for key, template in sorted(templates.items()):
        for resource, value in (spec_of(template).get("resourceRequirements") or {}).items():
            needs.setdefault(resource, []).append((key, quantity(value)))
    for resource, parts in sorted(needs.items()):
        need = sum((q for _, q in parts), Decimal(0))
        total = quantity(resources[resource]) if resource in resources else Decimal(0)
        held = quantity(reserved[resource]) if resource in reserved else Decimal(0)
        capacity = total - held
        if need > capacity:
            by = " + ".join(f"{show(q)} ({k})" for k, q in parts)
            problems.append(f"{resource}: the services need {show(need)} = {by}, but DPUFlavor "
                            f"{flavor['metadata']['name']} has {show(capacity) if capacity > 0 else '0'} "
                            f"(dpuResources {show(total) if total else '0'} - systemReservedResources "
                            f"{show(held) if held else '0'})")
    return ("there are not enough resources for DPUServices to fit in this DPUDeployment: " + "; ".join(problems)
            if problems else "")


# ---- 3. children ------------------------------------------------------------------------------------------

def coalesce(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of values: `over` (the configuration) wins, maps merge key by key, and a null in `over`
    removes the key. Pure."""
    out = dict(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = coalesce(out[key], value)
        else:
            out[key] = value
    return out


def digest(spec: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _child(kind: Kind, dd: Obj, name: str, spec: dict[str, Any], annotations: Mapping[str, str] | None = None,
           ) -> Obj:
    meta = dd["metadata"]
    owner = {"apiVersion": DPU_DEPLOYMENT.api_version, "kind": DPU_DEPLOYMENT.kind, "name": meta["name"],
             "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}
    return {"apiVersion": kind.api_version, "kind": kind.kind,
            "metadata": {"name": name, "namespace": meta.get("namespace", ""),
                         "labels": {OWNER_LABEL: owner_value(dd)},
                         "annotations": {**(annotations or {}), DIGEST_ANNOTATION: digest(spec)},
                         "ownerReferences": [owner]},
            "spec": spec}


def _in(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "operator": "In", "values": [value]}


def interfaces_of(configuration: Obj) -> list[dict[str, Any]]:
    return [dict(i) for i in spec_of(configuration).get("interfaces") or ()]


def plan_children(dd: Obj, templates: Mapping[str, Obj],
                  configurations: Mapping[str, Obj]) -> dict[str, dict[str, Obj]]:
    """The children `dd` wants, by child kind (its Kind.kind) and name. Pure; the dependencies must have passed
    `prerequisite_problems`."""
    dd_name = dd["metadata"]["name"]
    owner = owner_value(dd)
    spec = spec_of(dd)
    out: dict[str, dict[str, Obj]] = {k.kind.kind: {} for k in CHILD_KINDS}
    node_labels = {OWNER_LABEL: owner}
    for key in sorted(services_of(dd)):
        template, configuration = spec_of(templates[key]), spec_of(configurations[key])
        sid = service_id(dd_name, key)
        names = []
        for iface in interfaces_of(configurations[key]):
            name = interface_name(dd_name, key, iface["name"])
            names.append(name)
            out[INTERFACES.kind.kind][name] = _child(DPU_SERVICE_INTERFACE, dd, name, {"template": {"spec": {
                "template": {"metadata": {"labels": {SERVICE_LABEL: sid, INTERFACE_LABEL: iface["name"]}},
                             "spec": {"interfaceType": "service",
                                      "service": {"serviceID": sid, "network": iface["network"],
                                                  "interfaceName": iface["name"]}}}}}})
        settings = configuration.get("serviceConfiguration") or {}
        chart = template.get("helmChart") or {}
        values = coalesce(chart.get("values") or {}, (settings.get("helmChart") or {}).get("values") or {})
        helm_chart: dict[str, Any] = {"source": chart.get("source") or {}}
        if values:
            helm_chart["values"] = values
        daemon = {k: v for k, v in (settings.get("serviceDaemonSet") or {}).items()
                  if k in ("labels", "annotations") and v}
        in_cluster = settings.get("deployInCluster")
        if not in_cluster:
            daemon["nodeSelector"] = {"nodeSelectorTerms": [{"matchExpressions": [
                _in(service_version_label(key), VERSION), _in(OWNER_LABEL, owner)]}]}
            node_labels[service_version_label(key)] = VERSION
        service_spec: dict[str, Any] = {"helmChart": helm_chart, "serviceID": sid}
        if names:
            service_spec["interfaces"] = names
        if daemon:
            service_spec["serviceDaemonSet"] = daemon
        if in_cluster is not None:
            service_spec["deployInCluster"] = in_cluster
        out[SERVICES.kind.kind][f"{dd_name}-{key}"] = _child(DPU_SERVICE, dd, f"{dd_name}-{key}", service_spec,
                                                           {VERSION_ANNOTATION: VERSION})
    switches = []
    for switch in spec.get("serviceChains") or ():
        ports = []
        for port in switch.get("ports") or ():
            if port.get("service"):
                ref = port["service"]
                selected: dict[str, Any] = {"matchLabels": {SERVICE_LABEL: service_id(dd_name, ref["name"]),
                                                            INTERFACE_LABEL: ref["interface"]}}
                if ref.get("ipam"):
                    selected["ipam"] = ref["ipam"]
                ports.append({"serviceInterface": selected})
            else:
                ports.append({"serviceInterface": port.get("serviceInterface") or {}})
        switches.append({"ports": ports})
    if switches:
        node_labels[CHAIN_VERSION_LABEL] = VERSION
        out[CHAINS.kind.kind][dd_name] = _child(DPU_SERVICE_CHAIN, dd, dd_name, {"template": {"spec": {
            "nodeSelector": {"matchExpressions": [_in(CHAIN_VERSION_LABEL, VERSION), _in(OWNER_LABEL, owner)]},
            "template": {"spec": {"switches": switches}}}}})
    dpus = spec.get("dpus") or {}
    for dpu_set in dpus.get("dpuSets") or ():
        name = f"{dd_name}-{dpu_set['nameSuffix']}"
        dpu_template: dict[str, Any] = {"spec": {"bfb": {"name": dpus.get("bfb")}, "dpuFlavor": dpus.get("flavor"),
                                                 "cluster": {"nodeLabels": dict(node_labels)}}}
        if dpu_set.get("dpuAnnotations"):
            dpu_template["annotations"] = dict(dpu_set["dpuAnnotations"])
        set_spec: dict[str, Any] = {"strategy": {"type": "RollingUpdate"}, "dpuTemplate": dpu_template}
        for field_name in ("nodeSelector", "dpuSelector"):
            if dpu_set.get(field_name):
                set_spec[field_name] = dpu_set[field_name]
        out[SETS.kind.kind][name] = _child(DPU_SET, dd, name, set_spec)
    return out


def contains(current: Any, wanted: Any) -> bool:
    """Whether `current` holds everything `wanted` says (maps compared key by key, so fields the apiserver
    defaulted do not count as a difference; anything else by equality). Pure."""
    if isinstance(wanted, Mapping):
        return isinstance(current, Mapping) and all(contains(current.get(k), v) for k, v in wanted.items())
    return bool(current == wanted)


def child_differs(current: Obj | None, desired: Obj) -> bool:
    """True if applying `desired` would change `current`. Pure."""
    if current is None:
        return True
    have, want = current["metadata"], desired["metadata"]
    for key in ("labels", "annotations"):
        if not contains(have.get(key) or {}, want.get(key) or {}):
            return True
    uids = {ref.get("uid") for ref in have.get("ownerReferences") or ()}
    if any(ref["uid"] not in uids for ref in want["ownerReferences"]):
        return True
    return not contains(current.get("spec") or {}, desired["spec"])


# ---- readiness and the summary ------------------------------------------------------------------------------

def not_ready_why(child: Obj | None, kind: str, name: str) -> str:
    """"" if the child is Ready at its current generation, else why not. Pure."""
    if child is None:
        return f"{kind} {name} does not exist yet"
    status = child.get("status") or {}
    observed = status.get("observedGeneration")
    if observed is not None and int(observed) != int(child["metadata"].get("generation") or 0):
        return f"{kind} {name} is not reconciled at its current generation yet"
    ready = next((c for c in status.get("conditions") or () if c.get("type") == cond.READY), None)
    if ready is not None and ready.get("status") == "True":
        return ""
    if ready is None:
        return f"{kind} {name} reports no Ready condition yet"
    failing = [f"{c['type']}: {c.get('message') or c.get('reason', '')}" for c in status.get("conditions") or ()
               if c.get("type") != cond.READY and c.get("status") != "True"]
    return f"{kind} {name} is not ready ({'; '.join(failing) or ready.get('message') or ready.get('reason')})"


def ready_mark(child_kind: ChildKind, namespace: str, wanted: Iterable[str], cached: Mapping[str, Obj | None]) -> Mark:
    """`<Kind>sReady`: True when every wanted child is Ready (upstream mirrors the children's `Ready`; for DPUSets
    upstream hard-codes True, we read them too). Pure."""
    why = [w for name in sorted(wanted)
           if (w := not_ready_why(cached.get(name), child_kind.kind.kind, f"{namespace}/{name}"))]
    if why:
        return (child_kind.ready, "False", cond.PENDING, "Objects are not ready: " + "; ".join(why[:NAMED])
                + (f"; and {len(why) - NAMED} more" if len(why) > NAMED else ""))
    return (child_kind.ready, "True", cond.SUCCESS, "")


def reconciled_mark(child_kind: ChildKind, errors: Sequence[str]) -> Mark:
    if errors:
        return (child_kind.reconciled, "False", cond.ERROR, "; ".join(errors))
    return (child_kind.reconciled, "True", cond.SUCCESS, "")


def awaiting_deletion_mark(child_kind: ChildKind, remaining: int) -> Mark:
    if remaining:
        return (child_kind.reconciled, "False", cond.AWAITING_DELETION,
                f"There are still {remaining} {child_kind.plural} that are not completely deleted")
    return (child_kind.reconciled, "False", cond.AWAITING_DELETION, f"All {child_kind.plural} are deleted")


# ---- dependency marks -------------------------------------------------------------------------------------

LABEL_VALUE_LIMIT = 63


def desired_mark(referencers: Iterable[str]) -> tuple[bool, str | None]:
    """(finalizer wanted, consumed-by label value or None for no label) of one dependency.

    Upstream v24.10 keeps one label, `consumed-by-dpudeployment-name`, and its finalizer goes when any one
    DPUDeployment stops using the object, although another may still use it. We decide from every live
    DPUDeployment instead: the finalizer stays while any references the object, and the label names the
    smallest such name (every DPUDeployment computes the same value, so two never flip it back and forth; a
    name too long for a label value is skipped, and "" is written when all are). Pure.
    """
    users = sorted(set(referencers))
    if not users:
        return False, None
    fitting = [u for u in users if len(u) <= LABEL_VALUE_LIMIT]
    return True, fitting[0] if fitting else ""


def mark_patch(obj: Obj, referencers: Iterable[str]) -> dict[str, Any] | None:
    """The resourceVersion-guarded merge patch that gives `obj` its desired mark, or None if it has it. A
    finalizer is never added to an object being deleted (the apiserver refuses that). Pure."""
    meta = obj["metadata"]
    want_finalizer, label = desired_mark(referencers)
    finalizers = list(meta.get("finalizers") or ())
    labels = meta.get("labels") or {}
    has_finalizer = FINALIZER in finalizers
    if want_finalizer and meta.get("deletionTimestamp") and not has_finalizer:
        want_finalizer = False
    patch: dict[str, Any] = {}
    if want_finalizer != has_finalizer:
        patch["finalizers"] = [*finalizers, FINALIZER] if want_finalizer else [f for f in finalizers if f != FINALIZER]
    if labels.get(CONSUMED_BY_LABEL) != label:
        patch["labels"] = {CONSUMED_BY_LABEL: label}
    if not patch:
        return None
    return {"metadata": {**patch, "resourceVersion": meta["resourceVersion"]}}


def is_marked(obj: Obj) -> bool:
    meta = obj["metadata"]
    return FINALIZER in (meta.get("finalizers") or ()) or CONSUMED_BY_LABEL in (meta.get("labels") or {})
