"""Pure builder: ServiceInterface CRs (dicts from the watch cache) → one node's ServiceInterface snapshot.

A `service` interface also carries the pod it belongs to: the one pod on the node, in the interface's
namespace, labelled `svc.dpu.nvidia.com/service=<serviceID>` (upstream's rule); the agent finds that
pod's OVS port by the CNI's `external_ids:dpf-id=<pod>/<interfaceName>`.
No I/O, no clock; output order is deterministic (the snapshot sorts by name). Resource names are
"namespace/name" of the CR.

One bad object affects only itself (`plan_serviceinterfaces`): an interface whose spec the models refuse
(stored before the CRD had the bound, or written to the DPU cluster directly) or that does not fit the
wire format is held back with the field and the fix. Two interfaces that would take the same OVS port on a
node (both `physical` p0, the same pf/vf, two `ovn`) are a conflict decided by age (`claims.py`): the
elder keeps the port, the newcomer is held back naming it, whatever the names. So is a newcomer whose labels
only duplicate those of an interface a chain port already selects (the chain keeps the elder).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dpf.controller.api.svc_network import ServiceInterfaceSpec
from dpf.controller.cache.claims import held_since, oldest_first
from dpf.controller.cache.snapshot import InconsistentSnapshot, Snapshot
from dpf.controller.kube.selectors import describe
from dpf.proto import versioning
from dpf.proto.v1 import sfc_pb2

TYPE_URL = versioning.type_url(sfc_pb2.ServiceInterface)
SERVICE_LABEL = "svc.dpu.nvidia.com/service"
OVN_SFC_PORT = "puplinkbrsfc"
Obj = Mapping[str, Any]  # the br-sfc end of the ovn patch pair (the DPU agent's name for it)


def resource_name(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def match_pod(obj: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> str:
    """`<namespace>/<name>` of the one live pod (of `pods`, those on the interface's node) serving a
    `service` interface; "" for other types, or when no pod or several pods match."""
    spec = obj.get("spec") or {}
    service_id = (spec.get("service") or {}).get("serviceID")
    if spec.get("interfaceType") != "service" or not service_id:
        return ""
    namespace = obj["metadata"].get("namespace", "")
    hits = [p for p in pods if p["metadata"].get("namespace", "") == namespace
            and not p["metadata"].get("deletionTimestamp")
            and (p["metadata"].get("labels") or {}).get(SERVICE_LABEL) == service_id]
    return resource_name(hits[0]) if len(hits) == 1 else ""


def to_message(obj: Mapping[str, Any], pod: str = "") -> sfc_pb2.ServiceInterface:
    spec = obj.get("spec") or {}
    message = sfc_pb2.ServiceInterface(
        interface_type=spec.get("interfaceType", ""),
        labels=(obj["metadata"].get("labels") or {}),
        generation=int(obj["metadata"].get("generation") or 0),
        pod=pod,
    )
    if (physical := spec.get("physical")) is not None:
        message.physical.interface_name = physical.get("interfaceName", "")
    if (vlan := spec.get("vlan")) is not None:
        message.vlan.vlan_id = int(vlan.get("vlanID") or 0)
        message.vlan.parent_interface_ref = vlan.get("parentInterfaceRef", "")
    if (vf := spec.get("vf")) is not None:
        message.vf.vf_id = int(vf.get("vfID") or 0)
        message.vf.pf_id = int(vf.get("pfID") or 0)
        message.vf.parent_interface_ref = vf.get("parentInterfaceRef", "")
    if (pf := spec.get("pf")) is not None:
        message.pf.pf_id = int(pf.get("pfID") or 0)
    if (service := spec.get("service")) is not None:
        message.service.service_id = service.get("serviceID", "")
        message.service.network = service.get("network", "")
        message.service.interface_name = service.get("interfaceName", "")
    return message


def resource_version(obj: Mapping[str, Any], pod: str = "") -> str:
    """The version this CR has inside a snapshot (what an agent ACKs for it)."""
    return versioning.resource_version(versioning.pack(to_message(obj, pod)))


def port_of(obj: Mapping[str, Any]) -> str | None:
    """What the interface takes for itself on its node, as messages name it: its br-sfc port (named as the
    DPU agent names it) or, for `service`, the pod interface; None for vlan (nothing is plugged)."""
    spec = obj.get("spec") or {}
    kind = spec.get("interfaceType")
    sub = spec.get(kind) or {} if isinstance(kind, str) else {}
    if kind == "physical":
        return f"OVS port {sub.get('interfaceName')}"
    if kind == "pf":
        return f"OVS port pf{sub.get('pfID')}hpf"
    if kind == "vf":
        return f"OVS port pf{sub.get('pfID')}vf{sub.get('vfID')}"
    if kind == "ovn":
        return f"OVS port {OVN_SFC_PORT}"
    if kind == "service":
        return (f"interface {sub.get('interfaceName')} of the service {sub.get('serviceID')} pod in namespace "
                f"{obj['metadata'].get('namespace', '')}")
    return None


def spec_problem(obj: Mapping[str, Any], pod: str = "") -> str:
    """Why the interface can never be sent to its node as it stands ("" when it can): the field and the fix."""
    try:
        ServiceInterfaceSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        got = repr(first.get("input"))
        got = got if len(got) <= 80 else got[:77] + "..."
        return f"spec.{where}: {first.get('msg', 'invalid')} (got {got}); fix the spec"
    try:
        to_message(obj, pod)
    except (TypeError, ValueError) as exc:
        return f"spec does not fit the node protocol: {exc}; fix the spec"
    return ""


@dataclass(frozen=True)
class InterfacePlan:
    snapshot: Snapshot
    held_back: dict[str, str]
    """namespace/name -> why the interface is not in the snapshot."""


def plan_serviceinterfaces(objects: Iterable[Obj], pods: Iterable[Obj] = (),
                           chains: Iterable[Obj] = ()) -> InterfacePlan:
    """One node's snapshot from the ServiceInterfaces whose spec.node is that node (being deleted: left out),
    the pods scheduled to that node and the ServiceChains on it; bad and conflicting interfaces are held back,
    each with its reason."""
    pods = list(pods)
    items: dict[str, tuple[Obj, sfc_pb2.ServiceInterface]] = {}
    held_back: dict[str, str] = {}
    holders: dict[str, Obj] = {}
    for obj in oldest_first(o for o in objects if not o["metadata"].get("deletionTimestamp")):
        name, pod = resource_name(obj), match_pod(obj, pods)
        problem = spec_problem(obj, pod)
        if problem:
            held_back[name] = problem
            continue
        port = port_of(obj)
        holder = holders.get(port) if port else None
        if holder is not None:
            held_back[name] = (f"{port} is already taken by ServiceInterface {resource_name(holder)} "
                               f"({held_since(holder)}; the elder keeps it); this one waits until that one "
                               "is deleted or changed, or change this one to use another port")
            continue
        if port:
            holders[port] = obj
        if name in items:
            raise InconsistentSnapshot(f"resource {name!r} appears twice in the {TYPE_URL} snapshot")
        items[name] = (obj, to_message(obj, pod))
    held_back.update(_outmatched(chains, [obj for obj, _ in items.values()]))
    return InterfacePlan(Snapshot.build(TYPE_URL, ((n, m) for n, (_, m) in items.items() if n not in held_back)),
                         held_back)


def _outmatched(chains: Iterable[Obj], interfaces: list[Obj]) -> dict[str, str]:
    """Interfaces that a chain port selector also matches while it keeps an elder interface, and that no chain
    uses: they wait (their port would serve nothing), naming the chain and the elder. One a chain does use
    stays, so a chain created later never takes a port away from a running one."""
    used: set[str] = set()
    outmatched: dict[str, str] = {}
    by_age = oldest_first(interfaces)
    for chain in oldest_first(c for c in chains if not c["metadata"].get("deletionTimestamp")):
        namespace = chain["metadata"].get("namespace", "")
        candidates = [si for si in by_age if si["metadata"].get("namespace", "") == namespace]
        for i, switch in enumerate((chain.get("spec") or {}).get("switches") or ()):
            for j, port in enumerate(switch.get("ports") or ()):
                selector = (port.get("serviceInterface") or {}).get("matchLabels") or {}
                hits = [si for si in candidates if selector_matches(selector, si)]
                if not hits:
                    continue
                used.add(resource_name(hits[0]))
                for later in hits[1:]:
                    outmatched.setdefault(resource_name(later), (
                        f"its labels also match switches[{i}].ports[{j}] selector {describe(selector)} of "
                        f"ServiceChain {resource_name(chain)}, which keeps the elder ServiceInterface "
                        f"{resource_name(hits[0])} ({held_since(hits[0])}); this one waits until that one is "
                        "deleted or relabelled, or give it labels of its own"))
    return {name: why for name, why in outmatched.items() if name not in used}


def selector_matches(match_labels: Mapping[str, str], interface: Obj) -> bool:
    labels = interface["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in match_labels.items())


def compute_serviceinterfaces(objects: Iterable[Obj], pods: Iterable[Obj] = ()) -> Snapshot:
    """The node's snapshot (`plan_serviceinterfaces` without the reasons)."""
    return plan_serviceinterfaces(objects, pods).snapshot
