"""ServiceInterface (DPU cluster) → per-node NodeState snapshots of type dpf.v1.ServiceInterface, and agent
NACKs → Warning Events on the rejected ServiceInterfaces. A `service` interface carries the pod on its node
that serves it (DPU-cluster Pods with the service label are watched for that; `controller/cache/serviceinterfaces.py`).
Interfaces held back (a bad spec, a port an elder interface holds, labels that only duplicate those of an
interface a chain already uses; the node's ServiceChains are watched for that) go to the snapshot cache with
their reason, which the ServiceInterfaceSet's condition shows.

Keys: NodeSnapshotKey("serviceinterface", node) recomputes a node's snapshot from every DPU cluster's cache;
NodeNackKey records the node's latest NACK as Events. No snapshot is published
while any DPU cluster's cache is unsynced: a partial view would make agents delete ports.
"""

from __future__ import annotations

import logging

from dpf.controller.cache.serviceinterfaces import SERVICE_LABEL, TYPE_URL, plan_serviceinterfaces, resource_name
from dpf.controller.clusters import Cluster
from dpf.controller.kube.rest import Obj
from dpf.controller.reconcilers.kinds import POD, SERVICE_CHAIN, SERVICE_INTERFACE
from dpf.controller.reconcilers.pernode import NODE_INDEX, REJECTED_REASON, PerNodeReconciler, node_of

__all__ = ["NODE_INDEX", "REJECTED_REASON", "ServiceInterfaceReconciler", "node_of"]

log = logging.getLogger(__name__)

POD_NODE_INDEX = "service-pod-node"


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


def _chain_selectors(chain: Obj | None) -> tuple:
    """What of a ServiceChain decides which interfaces wait: node, port selectors, age and deletion."""
    if chain is None:
        return ()
    meta = chain["metadata"]
    return (node_of(chain), (chain.get("spec") or {}).get("switches"), meta.get("creationTimestamp"),
            bool(meta.get("deletionTimestamp")))


class ServiceInterfaceReconciler(PerNodeReconciler):
    name = "serviceinterface"
    kind = "ServiceInterface"
    source = SERVICE_INTERFACE
    type_url = TYPE_URL
    type_urls = (TYPE_URL,)
    resource_name = staticmethod(resource_name)

    def setup(self) -> None:
        # Only pods carrying the service label can serve an interface: watch those, not every Pod.
        self.need_dpu_kind(POD, label_selector=SERVICE_LABEL)
        # Chains decide which of two interfaces with the same labels waits (the one no chain uses).
        self.need_dpu_kind(SERVICE_CHAIN)
        super().setup()

    def attach(self, cluster: Cluster) -> None:
        super().attach(cluster)
        pods = cluster.informer(POD)
        pods.add_index(POD_NODE_INDEX, service_pod_node)
        pods.add_handler(self._on_pod_event)
        chains = cluster.informer(SERVICE_CHAIN)
        chains.add_index(NODE_INDEX, node_of)
        chains.add_handler(self._on_chain_event)

    def _on_pod_event(self, _type: str, old: Obj | None, new: Obj | None) -> None:
        if _pod_identity(old) != _pod_identity(new):
            self.enqueue_nodes(service_pod_node, old, new)

    def _on_chain_event(self, _type: str, old: Obj | None, new: Obj | None) -> None:
        if _chain_selectors(old) != _chain_selectors(new):
            self.enqueue_nodes(node_of, old, new)

    def compute(self, node: str) -> None:
        objects = self.on_node(SERVICE_INTERFACE, node)
        pods = self.on_node(POD, node, POD_NODE_INDEX)
        plan = plan_serviceinterfaces(objects, pods, self.on_node(SERVICE_CHAIN, node))
        if self.ctx.cache.set(node, plan.snapshot, plan.held_back):
            log.debug("node %s: ServiceInterface snapshot now has %d resources (%d held back: %s)", node,
                      len(plan.snapshot.resources), len(plan.held_back), "; ".join(plan.held_back.values()))
