"""ServiceChain (DPU cluster) → per-node NodeState snapshots of type dpf.v1.ServiceChain, with every port
resolved to one ServiceInterface of the node (`controller/cache/servicechains.py`), and agent NACKs →
Warning Events on the rejected ServiceChains.

Keys: ("servicechain", node) recomputes a node's snapshot; ("servicechain", node, "nack") records the node's
latest NACK as Events. A ServiceInterface change re-resolves the chains of its node. Chains whose ports do
not resolve are left out (their ServiceChainSet's condition says why). Nothing is published while a DPU
cluster's caches are unsynced: a partial view would make agents delete flows.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable

from dpf.controller.cache.servicechains import TYPE_URL, compute_servicechains, resource_name
from dpf.controller.clusters import Cluster
from dpf.controller.errors import TemporaryError
from dpf.controller.kube.events import WARNING
from dpf.controller.kube.rest import Obj
from dpf.controller.reconcilers.base import Reconciler, dpu_clusters_synced
from dpf.controller.reconcilers.kinds import SERVICE_CHAIN, SERVICE_INTERFACE
from dpf.controller.reconcilers.serviceinterface import NODE_INDEX, REJECTED_REASON, node_of
from dpf.controller.server.node_status import Nack

log = logging.getLogger(__name__)


class ServiceChainReconciler(Reconciler):
    name = "servicechain"
    kind = "ServiceChain"
    type_urls = (TYPE_URL,)

    def setup(self) -> None:
        self.ctx.clusters.need_dpu_kind(SERVICE_CHAIN)
        self.ctx.clusters.need_dpu_kind(SERVICE_INTERFACE)
        self.ctx.clusters.on_dpu_added(self._attach)
        self.ctx.cache.serve(TYPE_URL)

    def _attach(self, cluster: Cluster) -> None:
        chains = cluster.informer(SERVICE_CHAIN)
        chains.add_index(NODE_INDEX, node_of)
        chains.add_handler(self._on_event)
        interfaces = cluster.informer(SERVICE_INTERFACE)
        interfaces.add_index(NODE_INDEX, node_of)
        interfaces.add_handler(self._on_interface_event)

    def _on_event(self, _type: str, old: Obj | None, new: Obj | None) -> None:
        for node in {*(node_of(old) if old else ()), *(node_of(new) if new else ())}:
            self.ctx.queue.add((self.name, node))

    def _on_interface_event(self, _type: str, old: Obj | None, new: Obj | None) -> None:
        # Only labels, namespace, node and deletion decide how chain ports resolve.
        def identity(o: Obj | None) -> tuple:
            return () if o is None else (node_of(o), o["metadata"].get("labels"),
                                         bool(o["metadata"].get("deletionTimestamp")))

        if identity(old) != identity(new):
            self._on_event(_type, old, new)

    def all_keys(self) -> Iterable[Hashable]:
        nodes: set[str] = set(self.ctx.nodes.connected())
        for _, informer in self.ctx.clusters.dpu_informers(SERVICE_CHAIN):
            nodes.update(informer.index_values(NODE_INDEX))
        return [(self.name, n) for n in sorted(nodes)]

    def synced(self) -> bool:
        return dpu_clusters_synced(self.ctx.clusters)

    async def reconcile(self, key: tuple) -> float | None:
        if len(key) == 3:
            await self._record_nack(key[1])
            return None
        node = key[1]
        if not self.synced():
            raise TemporaryError("DPU cluster caches not synced yet; holding snapshots", delay=0.5)
        chains = [o for _, informer in self.ctx.clusters.dpu_informers(SERVICE_CHAIN)
                  for o in informer.by_index(NODE_INDEX, node)]
        interfaces = [o for _, informer in self.ctx.clusters.dpu_informers(SERVICE_INTERFACE)
                      for o in informer.by_index(NODE_INDEX, node)]
        snapshot, problems = compute_servicechains(chains, interfaces)
        if self.ctx.cache.set(node, snapshot):
            log.debug("node %s: ServiceChain snapshot now has %d chains (%d held back: %s)", node,
                      len(snapshot.resources), len(problems), "; ".join(problems.values()))
        return None

    # ---- stream callbacks ------------------------------------------------------------------------------
    def on_connect(self, node: str, role: str) -> None:
        self.ctx.queue.add((self.name, node))

    def on_nack(self, node: str, type_url: str, nack: Nack) -> None:
        if type_url == TYPE_URL:
            self.ctx.queue.add((self.name, node, "nack"))

    async def _record_nack(self, node: str) -> None:
        status = self.ctx.nodes.get(node)
        nack = status.of(TYPE_URL).nack if status else None
        if nack is None:
            return
        for cluster, informer in self.ctx.clusters.dpu_informers(SERVICE_CHAIN):
            for obj in informer.by_index(NODE_INDEX, node):
                name = resource_name(obj)
                if name in nack.implicated:
                    why = nack.resource_errors.get(name) or nack.message
                    await self.ctx.events.emit(cluster.rest, obj, "ServiceChain", WARNING, REJECTED_REASON,
                                               f"node {node} rejected ServiceChain {name}: {why}", action="Apply")
