"""ServiceInterfaceSet (DPU cluster) → one ServiceInterface `<set>-<node>` per matching DPU Node, and the set's
status: `ServiceInterfacesReconciled`, `ServiceInterfacesReady` (every child ACKed and reported PROGRAMMED by its
node's agent: the port exists and has its OpenFlow port), `Ready`, `numberApplied`, `numberReady`.

Upstream details kept (upstream DPF v24.10): children of `service` interfaces carry
`svc.dpu.nvidia.com/service-id`; a `vlan`/`vf` `parentInterfaceRef` gets the suffix `-<node>`, naming the
parent's child on the same node. The mechanics are `nodeset.py`'s.
"""

from __future__ import annotations

from typing import Any

from dpf.controller.cache.serviceinterfaces import TYPE_URL
from dpf.controller.kube.rest import Obj
from dpf.controller.reconcilers.kinds import SERVICE_INTERFACE, SERVICE_INTERFACE_SET
from dpf.controller.reconcilers.nodeset import NodeSetReconciler, SetKinds

SERVICE_ID_LABEL = "svc.dpu.nvidia.com/service-id"


class ServiceInterfaceSetReconciler(NodeSetReconciler):
    name = "serviceinterfaceset"
    kind = "ServiceInterfaceSet"
    kinds = SetKinds(set_kind=SERVICE_INTERFACE_SET, child_kind=SERVICE_INTERFACE, type_url=TYPE_URL,
                     finalizer="dpu.nvidia.com/serviceinterfaceset",
                     label_prefix="svc.dpu.nvidia.com/serviceinterfaceset",
                     reconciled="ServiceInterfacesReconciled", ready="ServiceInterfacesReady")
    type_urls = (TYPE_URL,)  # its readiness follows the agents' news about this type

    def child_spec(self, set_obj: Obj, node: str) -> dict[str, Any]:
        spec = super().child_spec(set_obj, node)
        for kind in ("vlan", "vf"):
            sub = spec.get(kind)
            if isinstance(sub, dict) and sub.get("parentInterfaceRef"):
                spec[kind] = {**sub, "parentInterfaceRef": f"{sub['parentInterfaceRef']}-{node}"}
        return spec

    def child_labels(self, set_obj: Obj) -> dict[str, str]:
        spec = ((set_obj.get("spec") or {}).get("template") or {}).get("spec") or {}
        service_id = (spec.get("service") or {}).get("serviceID")
        return {SERVICE_ID_LABEL: service_id} if spec.get("interfaceType") == "service" and service_id else {}
