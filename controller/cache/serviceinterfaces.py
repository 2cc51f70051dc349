"""Pure builder: ServiceInterface CRs (dicts from the watch cache) → one node's ServiceInterface snapshot.

A `service` interface also carries the pod it belongs to: the one pod on the node, in the interface's
namespace, labelled `svc.dpu.nvidia.com/service=<serviceID>` (upstream's rule); the agent finds that
pod's OVS port by the CNI's `external_ids:dpf-id=<pod>/<interfaceName>`.
No I/O, no clock; output order is deterministic (the snapshot sorts by name). Resource names are
"namespace/name" of the CR.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dpf.controller.cache.snapshot import Snapshot
from dpf.proto import versioning
from dpf.proto.v1 import sfc_pb2

TYPE_URL = versioning.type_url(sfc_pb2.ServiceInterface)
SERVICE_LABEL = "svc.dpu.nvidia.com/service"


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


def compute_serviceinterfaces(objects: Iterable[Mapping[str, Any]],
                              pods: Iterable[Mapping[str, Any]] = ()) -> Snapshot:
    """The snapshot for one node from the ServiceInterfaces whose spec.node is that node (being deleted: left
    out) and the pods scheduled to that node."""
    pods = list(pods)
    live = (o for o in objects if not o["metadata"].get("deletionTimestamp"))
    return Snapshot.build(TYPE_URL, ((resource_name(o), to_message(o, match_pod(o, pods))) for o in live))
