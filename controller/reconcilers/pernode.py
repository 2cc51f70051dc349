"""The shared shape of reconcilers that publish one NodeState type per DPU node from DPU-cluster objects
that name their node in `spec.node` (ServiceInterface, ServiceChain).

What they share: a node index on the source kind's informers; keys `NodeSnapshotKey` to recompute a node's
snapshot and `NodeNackKey` to record its latest NACK (or the objects it reported REJECTED) as Warning Events;
no snapshot while any DPU cluster's caches are unsynced (a partial view would make agents delete ports or
flows); an (empty) snapshot for every connected node. A subclass sets `source`, `type_url` (and `type_urls`),
`resource_name` and implements `compute(node)`; it may watch more kinds by extending `attach` and calling
`enqueue_nodes`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable
from typing import ClassVar

from dpf.controller.clusters import Cluster
from dpf.controller.errors import TemporaryError
from dpf.controller.kube.events import WARNING
from dpf.controller.kube.rest import Kind, Obj
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.keys import NodeNackKey, NodeSnapshotKey
from dpf.controller.server.node_status import Nack
from dpf.proto.status import verdict_of
from dpf.proto.v1 import nodestate_pb2 as pb

log = logging.getLogger(__name__)

NODE_INDEX = "node"
REJECTED_REASON = "AgentRejected"


def node_of(obj: Obj) -> list[str]:
    node = (obj.get("spec") or {}).get("node")
    return [node] if node else []


class PerNodeReconciler(Reconciler):
    source: ClassVar[Kind]  # the per-node kind in the DPU clusters
    type_url: ClassVar[str]  # the NodeState type its snapshots carry

    @staticmethod
    def resource_name(obj: Obj) -> str:
        """An object's name as the snapshot knows it."""
        raise NotImplementedError

    def setup(self) -> None:
        self.need_dpu_kind(self.source)
        self.ctx.clusters.on_dpu_added(self.attach)
        self.ctx.cache.serve(self.type_url)

    def attach(self, cluster: Cluster) -> None:
        informer = cluster.informer(self.source)
        informer.add_index(NODE_INDEX, node_of)
        informer.add_handler(lambda _type, old, new: self.enqueue_nodes(node_of, old, new))

    def enqueue_nodes(self, nodes_of: Callable[[Obj], list[str]], old: Obj | None, new: Obj | None) -> None:
        for node in {*(nodes_of(old) if old else ()), *(nodes_of(new) if new else ())}:
            self.ctx.queue.add(NodeSnapshotKey(self.name, node))

    def on_node(self, kind: Kind, node: str, index: str = NODE_INDEX) -> list[Obj]:
        """Every DPU cluster's cached objects of `kind` on `node`."""
        return [o for _, informer in self.ctx.clusters.dpu_informers(kind) for o in informer.by_index(index, node)]

    def all_keys(self) -> Iterable[Hashable]:
        nodes: set[str] = set(self.ctx.nodes.connected())
        for _, informer in self.ctx.clusters.dpu_informers(self.source):
            nodes.update(informer.index_values(NODE_INDEX))
        return [NodeSnapshotKey(self.name, n) for n in sorted(nodes)]

    def synced(self) -> bool:
        return self.dpu_synced()

    async def reconcile(self, key: Hashable) -> float | None:
        if isinstance(key, NodeNackKey):
            await self._record_nack(key.node)
            return None
        assert isinstance(key, NodeSnapshotKey), key
        if not self.synced():
            raise TemporaryError("DPU cluster caches not synced yet; holding snapshots", delay=0.5)
        self.compute(key.node)
        return None

    def compute(self, node: str) -> None:
        """Recompute and publish `node`'s snapshot from the caches."""
        raise NotImplementedError

    # ---- stream callbacks ------------------------------------------------------------------------------
    def on_connect(self, node: str, role: str) -> None:
        # A node with no objects still needs its (empty) snapshot to converge.
        self.ctx.queue.add(NodeSnapshotKey(self.name, node))

    def on_nack(self, node: str, type_url: str, nack: Nack) -> None:
        if type_url == self.type_url:
            self.ctx.queue.add(NodeNackKey(self.name, node))

    def on_status(self, node: str, type_url: str, report: pb.StatusReport) -> None:
        if type_url == self.type_url and any(verdict_of(o) == pb.VERDICT_REJECTED for o in report.objects):
            self.ctx.queue.add(NodeNackKey(self.name, node))

    async def _record_nack(self, node: str) -> None:
        """A Warning Event on each object the node refused: named by its last NACK, or reported REJECTED (one bad
        object among good ones) at the version published now. Repeats are deduplicated by the recorder."""
        status = self.ctx.nodes.get(node)
        types = status.of(self.type_url) if status else None
        if types is None:
            return
        published = self.ctx.cache.get(node, self.type_url).resources
        refused: dict[str, str] = {}
        if types.nack is not None:
            refused = {n: types.nack.resource_errors.get(n) or types.nack.message for n in types.nack.implicated}
        for name, observed in types.observed.items():
            current = published.get(name)
            if verdict_of(observed) == pb.VERDICT_REJECTED and current and current.version == observed.resource_version:
                refused.setdefault(name, observed.message)
        if not refused:
            return
        for cluster, informer in self.ctx.clusters.dpu_informers(self.source):
            for obj in informer.by_index(NODE_INDEX, node):
                name = type(self).resource_name(obj)
                if name in refused:
                    await self.ctx.events.emit(cluster.rest, obj, self.kind, WARNING, REJECTED_REASON,
                                               f"node {node} rejected {self.kind} {name}: {refused[name]}",
                                               action="Apply")
