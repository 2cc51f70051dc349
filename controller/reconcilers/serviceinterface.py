"""ServiceInterface (DPU cluster) → per-node NodeState snapshots of type dpf.v1.ServiceInterface, and agent
NACKs → Warning Events on the rejected ServiceInterfaces.

Keys: ("serviceinterface", node) recomputes a node's snapshot from every DPU cluster's cache;
("serviceinterface", node, "nack") records the node's latest NACK as Events. No snapshot is published
while any DPU cluster's cache is unsynced: a partial view would make agents delete ports.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable

from dpf.controller.cache.serviceinterfaces import TYPE_URL, compute_serviceinterfaces, resource_name
from dpf.controller.clusters import Cluster
from dpf.controller.errors import TemporaryError
from dpf.controller.kube.events import WARNING
from dpf.controller.kube.rest import Obj
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.kinds import DPU_CLUSTER, SERVICE_INTERFACE
from dpf.controller.server.node_status import Nack

log = logging.getLogger(__name__)

NODE_INDEX = "node"
REJECTED_REASON = "AgentRejected"


def node_of(obj: Obj) -> list[str]:
    node = (obj.get("spec") or {}).get("node")
    return [node] if node else []


class ServiceInterfaceReconciler(Reconciler):
    name = "serviceinterface"
    kind = "ServiceInterface"
    type_urls = (TYPE_URL,)

    def setup(self) -> None:
        self.ctx.clusters.need_dpu_kind(SERVICE_INTERFACE)
        self.ctx.clusters.on_dpu_added(self._attach)
        self.ctx.cache.serve(TYPE_URL)

    def _attach(self, cluster: Cluster) -> None:
        informer = cluster.informer(SERVICE_INTERFACE)
        informer.add_index(NODE_INDEX, node_of)
        informer.add_handler(self._on_event)

    def _on_event(self, _type: str, old: Obj | None, new: Obj | None) -> None:
        for node in {*(node_of(old) if old else ()), *(node_of(new) if new else ())}:
            self.ctx.queue.add((self.name, node))

    def all_keys(self) -> Iterable[Hashable]:
        nodes: set[str] = set(self.ctx.nodes.connected())
        for _, informer in self.ctx.clusters.dpu_informers(SERVICE_INTERFACE):
            nodes.update(informer.index_values(NODE_INDEX))
        return [(self.name, n) for n in sorted(nodes)]

    def synced(self) -> bool:
        """Every DPUCluster with a kubeconfig is connected and its ServiceInterface cache synced."""
        clusters = self.ctx.clusters
        if not clusters.host.informer(DPU_CLUSTER).synced.is_set():
            return False
        for obj in clusters.host.informer(DPU_CLUSTER).list():
            meta = obj["metadata"]
            if meta.get("deletionTimestamp") or not (obj.get("spec") or {}).get("kubeconfig"):
                continue
            cluster = clusters.dpu.get(f"{meta.get('namespace', '')}/{meta['name']}")
            if cluster is None or not cluster.synced():
                return False
        return True

    async def reconcile(self, key: tuple) -> float | None:
        if len(key) == 3:
            await self._record_nack(key[1])
            return None
        node = key[1]
        if not self.synced():
            raise TemporaryError("DPU cluster caches not synced yet; holding snapshots", delay=0.5)
        objects = [o for _, informer in self.ctx.clusters.dpu_informers(SERVICE_INTERFACE)
                   for o in informer.by_index(NODE_INDEX, node)]
        if self.ctx.cache.set(node, compute_serviceinterfaces(objects)):
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
