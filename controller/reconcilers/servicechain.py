"""ServiceChain (DPU cluster) → per-node NodeState snapshots of type dpf.v1.ServiceChain, with every port
resolved to one ServiceInterface of the node (`controller/cache/servicechains.py`), and agent NACKs →
Warning Events on the rejected ServiceChains.

Keys: NodeSnapshotKey("servicechain", node) recomputes a node's snapshot; NodeNackKey records the node's
latest NACK as Events. A ServiceInterface change re-resolves the chains of its node. Chains whose ports do
not resolve are left out (their ServiceChainSet's condition says why). Nothing is published while a DPU
cluster's caches are unsynced: a partial view would make agents delete flows.
"""

from __future__ import annotations

import logging

from dpf.controller.cache.servicechains import TYPE_URL, compute_servicechains, resource_name
from dpf.controller.clusters import Cluster
from dpf.controller.kube.rest import Obj
from dpf.controller.reconcilers.kinds import SERVICE_CHAIN, SERVICE_INTERFACE
from dpf.controller.reconcilers.pernode import NODE_INDEX, PerNodeReconciler, node_of

log = logging.getLogger(__name__)


def _resolution_identity(interface: Obj | None) -> tuple:
    """What of a ServiceInterface decides how chain ports resolve: node, labels, deletion, and the spec (an
    interface held back for a bad spec or a taken port is no candidate)."""
    if interface is None:
        return ()
    return (node_of(interface), interface["metadata"].get("labels"),
            bool(interface["metadata"].get("deletionTimestamp")), interface.get("spec"))


class ServiceChainReconciler(PerNodeReconciler):
    name = "servicechain"
    kind = "ServiceChain"
    source = SERVICE_CHAIN
    type_url = TYPE_URL
    type_urls = (TYPE_URL,)
    resource_name = staticmethod(resource_name)

    def setup(self) -> None:
        self.need_dpu_kind(SERVICE_INTERFACE)
        super().setup()

    def attach(self, cluster: Cluster) -> None:
        super().attach(cluster)
        interfaces = cluster.informer(SERVICE_INTERFACE)
        interfaces.add_index(NODE_INDEX, node_of)
        interfaces.add_handler(self._on_interface_event)

    def _on_interface_event(self, _type: str, old: Obj | None, new: Obj | None) -> None:
        if _resolution_identity(old) != _resolution_identity(new):
            self.enqueue_nodes(node_of, old, new)

    def compute(self, node: str) -> None:
        chains = self.on_node(SERVICE_CHAIN, node)
        interfaces = self.on_node(SERVICE_INTERFACE, node)
        snapshot, problems = compute_servicechains(chains, interfaces)
        if self.ctx.cache.set(node, snapshot, problems):
            log.debug("node %s: ServiceChain snapshot now has %d chains (%d held back: %s)", node,
                      len(snapshot.resources), len(problems), "; ".join(problems.values()))
