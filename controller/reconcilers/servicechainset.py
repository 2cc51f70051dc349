"""ServiceChainSet (DPU cluster) → one ServiceChain `<set>-<node>` per matching DPU Node, and the set's status:
`ServiceChainsReconciled`, `ServiceChainsReady`, `Ready`, `numberApplied`, `numberReady`.

A chain is ready on its node when every port resolved to exactly one ServiceInterface there and the node's
agent ACKed the chain and reported its flows installed. A port selector that matches no interface (or
several) makes `ServiceChainsReady` False with a message naming the selector; that chain is not sent to
the node at all (`controller/cache/servicechains.py`). The mechanics are `nodeset.py`'s.
"""

from __future__ import annotations

from dpf.controller.cache.servicechains import TYPE_URL, resolve
from dpf.controller.clusters import Cluster
from dpf.controller.kube.rest import Obj
from dpf.controller.reconcilers.kinds import SERVICE_CHAIN, SERVICE_CHAIN_SET, SERVICE_INTERFACE
from dpf.controller.reconcilers.nodeset import NodeSetReconciler, SetKinds
from dpf.controller.reconcilers.serviceinterface import NODE_INDEX, node_of


class ServiceChainSetReconciler(NodeSetReconciler):
    name = "servicechainset"
    kind = "ServiceChainSet"
    kinds = SetKinds(set_kind=SERVICE_CHAIN_SET, child_kind=SERVICE_CHAIN, type_url=TYPE_URL,
                     finalizer="dpu.nvidia.com/servicechainset", label_prefix="svc.dpu.nvidia.com/servicechainset",
                     reconciled="ServiceChainsReconciled", ready="ServiceChainsReady")
    type_urls = (TYPE_URL,)  # its readiness follows the agents' news about this type

    def setup(self) -> None:
        super().setup()
        self.need_dpu_kind(SERVICE_INTERFACE)

    def _attach(self, cluster: Cluster) -> None:
        super()._attach(cluster)
        interfaces = cluster.informer(SERVICE_INTERFACE)
        interfaces.add_index(NODE_INDEX, node_of)
        # An interface appearing, changing labels or going away changes how chains on its node resolve.
        interfaces.add_handler(lambda _t, old, new: self._enqueue_nodes_of(old, new))

    def _enqueue_nodes_of(self, *objects: Obj | None) -> None:
        for node in {n for o in objects if o for n in node_of(o)}:
            self.enqueue_for_node(node)

    def problems(self, cluster: Cluster, children: list[Obj]) -> dict[str, str]:
        interfaces = cluster.informer(SERVICE_INTERFACE)
        out = {}
        for chain in children:
            resolution = resolve(chain, [si for node in node_of(chain) for si in interfaces.by_index(NODE_INDEX, node)])
            if resolution.message is None:
                out[resolution.name] = resolution.problem
        return out
