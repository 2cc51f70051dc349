"""Agent reports → ServiceInterfaceSet status: the condition `ServiceInterfacesReady` says whether every
ServiceInterface the set owns has been applied by its node's agent at its current version.

False/Error carries the agents' own messages (a NACK, or an object the agent reports FAILED); False/Pending
lists the nodes still to apply; True/Success when all have. Written with server-side apply under our own
field manager, touching only this one condition (the conditions list is a map keyed by type), and only
when it differs from what the cache holds. Key: ("serviceinterfaceset-status", cluster, namespace, name).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable, Iterable
from typing import Any

from dpf.controller.cache.serviceinterfaces import TYPE_URL, resource_name, resource_version
from dpf.controller.cache.snapshot import Snapshot
from dpf.controller.clusters import Cluster
from dpf.controller.kube.rest import Obj
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.kinds import SERVICE_INTERFACE, SERVICE_INTERFACE_SET
from dpf.controller.reconcilers.serviceinterface import NODE_INDEX
from dpf.controller.server.node_status import Nack, NodeRegistry
from dpf.proto.v1 import nodestate_pb2 as pb

CONDITION = "ServiceInterfacesReady"
OWNER_INDEX = "controller-uid"
FIELD_MANAGER_SUFFIX = "agent-status"
MESSAGE_LIMIT = 4096


def controller_uid(obj: Obj) -> list[str]:
    return [ref["uid"] for ref in obj["metadata"].get("ownerReferences") or ()
            if ref.get("controller") and ref.get("kind") == "ServiceInterfaceSet" and ref.get("uid")]


def compute_condition(children: list[Obj], nodes: NodeRegistry) -> tuple[str, str, str]:
    """(status, reason, message) of ServiceInterfacesReady from the children and what their agents said. Pure."""
    errors: list[str] = []
    pending: list[str] = []
    for child in sorted(children, key=resource_name):
        node = ((child.get("spec") or {}).get("node")) or ""
        name, version = resource_name(child), resource_version(child)
        status = nodes.get(node)
        types = status.of(TYPE_URL) if status else None
        nack: Nack | None = types.nack if types else None
        observed = types.observed.get(name) if types else None
        if nack is not None and nack.implicated.get(name) == version:
            errors.append(f"node {node} rejected {name}: {nack.resource_errors.get(name) or nack.message}")
        elif (observed is not None and observed.state == pb.OBJECT_STATE_FAILED
              and observed.resource_version == version):
            errors.append(f"node {node} failed to apply {name}: {observed.message}")
        elif types is None or types.acked.get(name) != version:
            pending.append(f"{name} on {node or '(no node)'}"
                           + ("" if status is not None and status.connected else " (agent not connected)"))
    if errors:
        return "False", "Error", "; ".join(errors)[:MESSAGE_LIMIT]
    if pending:
        return "False", "Pending", f"waiting for agents to apply {len(pending)} of {len(children)}: " + \
            ", ".join(pending)[:MESSAGE_LIMIT]
    return "True", "Success", ""


class ServiceInterfaceSetStatusReconciler(Reconciler):
    name = "serviceinterfaceset-status"
    kind = "ServiceInterfaceSet"

    def setup(self) -> None:
        self.ctx.clusters.need_dpu_kind(SERVICE_INTERFACE_SET)
        self.ctx.clusters.on_dpu_added(self._attach)

    def _attach(self, cluster: Cluster) -> None:
        cluster.informer(SERVICE_INTERFACE).add_index(OWNER_INDEX, controller_uid)
        cluster.informer(SERVICE_INTERFACE).add_handler(
            lambda _t, old, new: self._enqueue_owners(cluster, [o for o in (old, new) if o is not None]))
        cluster.informer(SERVICE_INTERFACE_SET).add_handler(
            lambda _t, old, new: self._enqueue_set(cluster, new or old))  # type: ignore[arg-type]

    def _enqueue_set(self, cluster: Cluster, sis: Obj) -> None:
        self.ctx.queue.add((self.name, cluster.name, sis["metadata"].get("namespace", ""), sis["metadata"]["name"]))

    def _enqueue_owners(self, cluster: Cluster, children: Iterable[Obj]) -> None:
        for child in children:
            for ref in child["metadata"].get("ownerReferences") or ():
                if ref.get("controller") and ref.get("kind") == "ServiceInterfaceSet":
                    self.ctx.queue.add((self.name, cluster.name, child["metadata"].get("namespace", ""), ref["name"]))

    def _enqueue_for_node(self, node: str) -> None:
        for cluster, informer in self.ctx.clusters.dpu_informers(SERVICE_INTERFACE):
            self._enqueue_owners(cluster, informer.by_index(NODE_INDEX, node))

    def all_keys(self) -> Iterable[Hashable]:
        return [(self.name, cluster.name, o["metadata"].get("namespace", ""), o["metadata"]["name"])
                for cluster, informer in self.ctx.clusters.dpu_informers(SERVICE_INTERFACE_SET)
                for o in informer.list()]

    async def reconcile(self, key: tuple) -> float | None:
        _, cluster_name, namespace, name = key
        cluster = self.ctx.clusters.dpu.get(cluster_name)
        if cluster is None:
            return None
        sis = cluster.informer(SERVICE_INTERFACE_SET).get(namespace, name)
        if sis is None or sis["metadata"].get("deletionTimestamp"):
            return None
        children = cluster.informer(SERVICE_INTERFACE).by_index(OWNER_INDEX, sis["metadata"]["uid"])
        status, reason, message = compute_condition(children, self.ctx.nodes)
        current = next((c for c in (sis.get("status") or {}).get("conditions") or () if c.get("type") == CONDITION),
                       None)
        if current is not None and (current.get("status"), current.get("reason"), current.get("message", "")) == (
                status, reason, message):
            return None
        await cluster.rest.apply(SERVICE_INTERFACE_SET, status_patch(sis, current, status, reason, message),
                                 f"{self.ctx.settings.kube.field_manager}-{FIELD_MANAGER_SUFFIX}",
                                 subresource="status")
        return None

    # ---- stream callbacks: any agent news may change a set's condition ----------------------------------
    def on_connect(self, node: str, role: str) -> None:
        self._enqueue_for_node(node)

    def on_disconnect(self, node: str) -> None:
        self._enqueue_for_node(node)

    def on_ack(self, node: str, type_url: str, snapshot: Snapshot) -> None:
        if type_url == TYPE_URL:
            self._enqueue_for_node(node)

    def on_nack(self, node: str, type_url: str, nack: Nack) -> None:
        if type_url == TYPE_URL:
            self._enqueue_for_node(node)

    def on_status(self, node: str, type_url: str, report: pb.StatusReport) -> None:
        if type_url == TYPE_URL:
            self._enqueue_for_node(node)


def status_patch(sis: Obj, current: dict[str, Any] | None, status: str, reason: str, message: str,
                 now: dt.datetime | None = None) -> Obj:
    """The server-side-apply body that sets only our condition. Pure (the clock is a parameter)."""
    since = current.get("lastTransitionTime") if current and current.get("status") == status else None
    stamp = since or (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": SERVICE_INTERFACE_SET.api_version, "kind": SERVICE_INTERFACE_SET.kind,
        "metadata": {"name": sis["metadata"]["name"], "namespace": sis["metadata"].get("namespace", "")},
        "status": {"conditions": [{
            "type": CONDITION, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": stamp, "observedGeneration": int(sis["metadata"].get("generation") or 0)}]},
    }
