"""ServiceInterface (DPU cluster) → per-node NodeState snapshots of type dpf.v1.ServiceInterface, and agent
NACKs → Warning Events on the rejected ServiceInterfaces. A `service` interface carries the pod on its node
that serves it (DPU-cluster Pods are watched for that; `controller/cache/serviceinterfaces.py`).

Keys: ("serviceinterface", node) recomputes a node's snapshot from every DPU cluster's cache;
("serviceinterface", node, "nack") records the node's latest NACK as Events. No snapshot is published
while any DPU cluster's cache is unsynced: a partial view would make agents delete ports.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable

from dpf.controller.cache.serviceinterfaces import SERVICE_LABEL, TYPE_URL, compute_serviceinterfaces, resource_name
from dpf.controller.clusters import Cluster
from dpf.controller.errors import TemporaryError
from dpf.controller.kube.events import WARNING
from dpf.controller.kube.rest import Obj
from dpf.controller.reconcilers.base import Reconciler, dpu_clusters_synced
from dpf.controller.reconcilers.kinds import POD, SERVICE_INTERFACE
from dpf.controller.server.node_status import Nack

log = logging.getLogger(__name__)

NODE_INDEX = "node"
POD_NODE_INDEX = "service-pod-node"
REJECTED_REASON = "AgentRejected"


def node_of(obj: Obj) -> list[str]:
    node = (obj.get("spec") or {}).get("node")
    return [node] if node else []


def service_pod_node(pod: Obj) -> list[str]:
    """The node of a pod that may serve a service interface (it carries the service label)."""
    node = (pod.get("spec") or {}).get("nodeName")
    return [node] if node and SERVICE_LABEL in (pod["metadata"].get("labels") or {}) else []


def _pod_identity(pod: Obj | None) -> tuple:
    """What of a pod the snapshot depends on; status churn (phase, IPs, heartbeats) is ignored."""
    if pod is None:
        return ()
    return (service_pod_node(pod), (pod["metadata"].get("labels") or {}).get(SERVICE_LABEL),
            bool(pod["metadata"].get("deletionTimestamp")))


class ServiceInterfaceReconciler(Reconciler):
    name = "serviceinterface"
    kind = "ServiceInterface"
    type_urls = (TYPE_URL,)

    def setup(self) -> None:
        self.ctx.clusters.need_dpu_kind(SERVICE_INTERFACE)
        self.ctx.clusters.need_dpu_kind(POD)
        self.ctx.clusters.on_dpu_added(self._attach)
        self.ctx.cache.serve(TYPE_URL)

    def _attach(self, cluster: Cluster) -> None:
        informer = cluster.informer(SERVICE_INTERFACE)
        informer.add_index(NODE_INDEX, node_of)
        informer.add_handler(self._on_event)
        pods = cluster.informer(POD)
        pods.add_index(POD_NODE_INDEX, service_pod_node)
        pods.add_handler(self._on_pod_event)

    def _on_event(self, _type: str, old: Obj | None, new: Obj | None) -> None:
        for node in {*(node_of(old) if old else ()), *(node_of(new) if new else ())}:
            self.ctx.queue.add((self.name, node))

    def _on_pod_event(self, _type: str, old: Obj | None, new: Obj | None) -> None:
        if _pod_identity(old) == _pod_identity(new):
            return
        for node in {*(service_pod_node(old) if old else ()), *(service_pod_node(new) if new else ())}:
            self.ctx.queue.add((self.name, node))

    def all_keys(self) -> Iterable[Hashable]:
        nodes: set[str] = set(self.ctx.nodes.connected())
        for _, informer in self.ctx.clusters.dpu_informers(SERVICE_INTERFACE):
            nodes.update(informer.index_values(NODE_INDEX))
        return [(self.name, n) for n in sorted(nodes)]

    def synced(self) -> bool:
        """Every DPUCluster with a kubeconfig is connected and its ServiceInterface cache synced."""
        return dpu_clusters_synced(self.ctx.clusters)

    async def reconcile(self, key: tuple) -> float | None:
        if len(key) == 3:
            await self._record_nack(key[1])
            return None
        node = key[1]
        if not self.synced():
            raise TemporaryError("DPU cluster caches not synced yet; holding snapshots", delay=0.5)
        objects = [o for _, informer in self.ctx.clusters.dpu_informers(SERVICE_INTERFACE)
                   for o in informer.by_index(NODE_INDEX, node)]
        pods = [p for _, informer in self.ctx.clusters.dpu_informers(POD)
                for p in informer.by_index(POD_NODE_INDEX, node)]
        if self.ctx.cache.set(node, compute_serviceinterfaces(objects, pods)):
            log.debug("node %s: ServiceInterface snapshot now has %d resources", node, len(objects))
        return None

    # ---- stream callbacks ------------------------------------------------------------------------------
    def on_connect(self, node: str, role: str) -> None:
        # A node with no ServiceInterfaces still needs its (empty) snapshot to converge.
        self.ctx.queue.add((self.name, node))

    def on_nack(self, node: str, type_url: str, nack: Nack) -> None:
        if type_url == TYPE_URL:
            self.ctx.queue.add((self.name, node, "nack"))

    async def _record_nack(self, node: str) -> None:
        status = self.ctx.nodes.get(node)
        nack = status.of(TYPE_URL).nack if status else None
        if nack is None:
            return
        for cluster, informer in self.ctx.clusters.dpu_informers(SERVICE_INTERFACE):
            for obj in informer.by_index(NODE_INDEX, node):
                name = resource_name(obj)
                if name not in nack.implicated:
                    continue
                why = nack.resource_errors.get(name) or nack.message
                await self.ctx.events.emit(cluster.rest, obj, "ServiceInterface", WARNING, REJECTED_REASON,
                                           f"node {node} rejected ServiceInterface {name}: {why}",
                                           action="Apply")
