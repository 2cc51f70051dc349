"""DPUServiceIPAM (host cluster) → a per-node split over the DPU clusters' Nodes, recorded in its status and
streamed to each node's agent as dpf.v1.IPAMBlock; agent ACK/NACK/status → its conditions.

Keys:
- `ObjectKey("dpuserviceipam", namespace, name)`: split the pool over the DPU Nodes matching nodeSelector
  (`controller/ipam/split.py`), starting from the split its status records, so allocations survive
  controller restarts and failovers; then write allocations and conditions in one server-side apply that
  is conditional on the resourceVersion the split was computed from (two writers, or a cache that lags our
  own last write, get a 409 and recompute instead of clobbering). A node that left keeps its block,
  marked `departedAt`, until `settings.ipam.release_grace` has passed.
- `NodeSnapshotKey("dpuserviceipam", node)`: publish the node's IPAMBlock snapshot from what every pool's status
  records (`controller/cache/ipamblocks.py`). Only persisted allocations are ever streamed.
Nothing is published or split while a DPU cluster's caches are unsynced: a partial Node list would mark
nodes departed. No finalizer: deleting the object only removes its blocks from the nodes' snapshots (an
agent keeps existing leases until their pods go).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterable
from datetime import UTC, datetime

from pydantic import ValidationError

from dpf.controller.api import conditions as cond
from dpf.controller.cache.ipamblocks import (
    TYPE_URL,
    PoolState,
    block_version,
    compute_ipam_blocks,
    pool_state,
    status_nodes,
)
from dpf.controller.clusters import Cluster
from dpf.controller.errors import PermanentError, TemporaryError
from dpf.controller.ipam import split as ipam_split
from dpf.controller.ipam import status as ipam_status
from dpf.controller.kube.events import WARNING
from dpf.controller.kube.informer import Informer, key_of
from dpf.controller.kube.rest import KubeError, Obj
from dpf.controller.reconcilers.base import Context, Reconciler
from dpf.controller.reconcilers.keys import NodeSnapshotKey, ObjectKey
from dpf.controller.reconcilers.kinds import DPU_SERVICE_IPAM, NODE
from dpf.controller.server.node_status import Nack
from dpf.proto.v1 import nodestate_pb2 as pb

log = logging.getLogger(__name__)

NODE_INDEX = "allocated-node"
REJECTED_REASON = "AgentRejected"
CONFLICT_RETRY = 0.05  # our cache lags our own last write by about a watch event


class DPUServiceIPAMReconciler(Reconciler):
    name = "dpuserviceipam"
    kind = "DPUServiceIPAM"
    type_urls = (TYPE_URL,)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.clock: Callable[[], float] = time.time  # wall clock: departedAt is persisted
        self._parsed: dict[tuple[str, str], PoolState] = {}  # (uid, resourceVersion) -> parsed pool

    def setup(self) -> None:
        self.pools: Informer = self.ctx.clusters.host.informer(DPU_SERVICE_IPAM)
        self.pools.add_index(NODE_INDEX, status_nodes)
        self.pools.add_handler(self._on_pool_event)
        self.need_dpu_kind(NODE)
        self.ctx.clusters.on_dpu_added(self._attach)
        self.ctx.cache.serve(TYPE_URL)

    def _attach(self, cluster: Cluster) -> None:
        cluster.informer(NODE).add_handler(self._on_node_event)

    # ---- events (enqueue only) ------------------------------------------------------------------------
    def _on_pool_event(self, type_: str, old: Obj | None, new: Obj | None) -> None:
        namespace, name = key_of(new or old)  # type: ignore[arg-type]
        if type_ == "DELETED" and old is not None:
            uid = old["metadata"].get("uid", "")
            self._parsed = {k: v for k, v in self._parsed.items() if k[0] != uid}
        self.ctx.queue.add(ObjectKey(self.name, namespace, name))
        for node in {*(status_nodes(old) if old else ()), *(status_nodes(new) if new else ())}:
            self.ctx.queue.add(NodeSnapshotKey(self.name, node))

    def _on_node_event(self, type_: str, old: Obj | None, new: Obj | None) -> None:
        # Only membership matters (upstream's LabelChangedPredicate): Node status heartbeats are ignored.
        if type_ == "MODIFIED" and old and new and old["metadata"].get("labels") == new["metadata"].get("labels"):
            return
        self._enqueue_all_pools()

    def _enqueue_all_pools(self) -> None:
        for obj in self.pools.list():
            self.ctx.queue.add(ObjectKey(self.name, *key_of(obj)))

    def _enqueue_pools_of(self, node: str) -> None:
        for obj in self.pools.by_index(NODE_INDEX, node):
            self.ctx.queue.add(ObjectKey(self.name, *key_of(obj)))

    def all_keys(self) -> Iterable[Hashable]:
        nodes = set(self.pools.index_values(NODE_INDEX)) | set(self.ctx.nodes.connected())
        return ([ObjectKey(self.name, *key_of(o)) for o in self.pools.list()]
                + [NodeSnapshotKey(self.name, n) for n in sorted(nodes)])

    def synced(self) -> bool:
        return self.pools.synced.is_set() and self.dpu_synced()

    # ---- reconcile ------------------------------------------------------------------------------------
    async def reconcile(self, key: Hashable) -> float | None:
        if isinstance(key, NodeSnapshotKey):
            self._publish(key.node)
            return None
        assert isinstance(key, ObjectKey), key
        return await self._reconcile_pool(key.namespace, key.name)

    def _state(self, obj: Obj) -> PoolState:
        meta = obj["metadata"]
        cache_key = (meta.get("uid", ""), meta.get("resourceVersion", ""))
        state = self._parsed.get(cache_key)
        if state is None:
            state = pool_state(obj)
            self._parsed = {k: v for k, v in self._parsed.items() if k[0] != cache_key[0]}
            self._parsed[cache_key] = state
        return state

    def _publish(self, node: str) -> None:
        """The node's snapshot from the recorded allocations (only the pool cache is read: it must be whole)."""
        if not self.pools.synced.is_set():
            raise TemporaryError("DPUServiceIPAM cache not synced yet; holding snapshots", delay=0.5)
        states = []
        for obj in self.pools.by_index(NODE_INDEX, node):
            try:
                states.append(self._state(obj))
            except ValidationError:
                continue  # the pool reconcile reports it; no block from a spec we cannot read
        if self.ctx.cache.set(node, compute_ipam_blocks(node, states)):
            log.debug("node %s: IPAMBlock snapshot now has %d pools", node, len(states))

    def _dpu_nodes(self) -> list[ipam_split.Node]:
        found: dict[str, ipam_split.Node] = {}
        for _, informer in self.ctx.clusters.dpu_informers(NODE):
            for obj in informer.list():
                meta = obj["metadata"]
                found.setdefault(meta["name"], ipam_split.Node(meta["name"], meta.get("labels") or {}))
        return [found[n] for n in sorted(found)]

    async def _reconcile_pool(self, namespace: str, name: str) -> float | None:
        if not self.synced():
            raise TemporaryError("DPU cluster Node caches not synced yet; holding the split", delay=0.5)
        obj = self.pools.get(namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return None
        now = float(int(self.clock()))  # status keeps whole seconds; so does the split's clock
        try:
            state = self._state(obj)
        except ValidationError as exc:
            await self._write_invalid(obj, exc)
            raise PermanentError(f"DPUServiceIPAM {namespace}/{name}: {exc}") from None
        grace = self.ctx.settings.ipam.release_grace
        result = ipam_split.compute_allocations(state.spec, self._dpu_nodes(), list(state.allocations.values()),
                                                now=now, grace=grace)
        status = ipam_status.compute_status(obj, result, self.ctx.nodes, now=datetime.fromtimestamp(now, UTC))
        if status != ipam_status.normalized(obj.get("status")):
            await self._write(obj, status)
        await self._warn_rejections(obj, result)
        departed = [a.departed_at + grace - now for a in result.allocations if a.departed_at is not None]
        return max(min(departed), 0.0) + 1.0 if departed else None

    async def _write(self, obj: Obj, status: dict) -> None:
        meta = obj["metadata"]
        body = {"apiVersion": DPU_SERVICE_IPAM.api_version, "kind": DPU_SERVICE_IPAM.kind,
                "metadata": {"name": meta["name"], "namespace": meta.get("namespace", ""),
                             "resourceVersion": meta.get("resourceVersion", "")},
                "status": status}
        try:
            await self.ctx.clusters.host.rest.apply(DPU_SERVICE_IPAM, body, self.ctx.settings.kube.field_manager,
                                                    subresource="status")
        except KubeError as exc:
            if exc.conflict:
                raise TemporaryError("status changed since it was read; recomputing from the fresh object",
                                     delay=CONFLICT_RETRY) from None
            if exc.not_found:
                return
            raise

    async def _write_invalid(self, obj: Obj, exc: ValidationError) -> None:
        """A spec the apiserver accepted but the models refuse (e.g. a CRD older than this controller)."""
        now = datetime.now(UTC)
        generation = int(obj["metadata"].get("generation") or 0)
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        conditions = cond.ensure(ipam_status.current_conditions(obj), ipam_status.CONDITION_TYPES, now=now,
                                 generation=generation)
        conditions = cond.mark_false(conditions, ipam_status.RECONCILED, cond.FAILURE,
                                     f"spec.{where}: {first.get('msg', 'invalid')}", now=now, generation=generation)
        conditions = cond.summarize(conditions, now=now, generation=generation)
        status = {**ipam_status.normalized(obj.get("status")), "observedGeneration": generation,
                  "conditions": [c.to_json() for c in conditions]}
        if status != ipam_status.normalized(obj.get("status")):
            await self._write(obj, status)

    async def _warn_rejections(self, obj: Obj, result: ipam_split.Split) -> None:
        """A Warning Event per rejecting node (deduplicated by the recorder), next to the condition."""
        resource, pool = f"{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}", obj["metadata"]["name"]
        for allocation in result.allocations:
            status = self.ctx.nodes.get(allocation.node)
            nack = status.of(TYPE_URL).nack if status else None
            if (nack is None or allocation.departed_at is not None
                    or nack.implicated.get(resource) != block_version(pool, allocation)):
                continue
            why = nack.resource_errors.get(resource) or nack.message
            await self.ctx.events.emit(self.ctx.clusters.host.rest, obj, "DPUServiceIPAM", WARNING, REJECTED_REASON,
                                       f"node {allocation.node} rejected its block of {resource}: {why}",
                                       action="Apply")

    # ---- stream callbacks ------------------------------------------------------------------------------
    def on_connect(self, node: str, role: str) -> None:
        self.ctx.queue.add(NodeSnapshotKey(self.name, node))  # a node with no pool still needs its (empty) snapshot
        self._enqueue_pools_of(node)

    def on_disconnect(self, node: str) -> None:
        self._enqueue_pools_of(node)

    def on_ack(self, node: str, type_url: str, snapshot: object) -> None:
        if type_url == TYPE_URL:
            self._enqueue_pools_of(node)

    def on_nack(self, node: str, type_url: str, nack: Nack) -> None:
        if type_url == TYPE_URL:
            self._enqueue_pools_of(node)

    def on_status(self, node: str, type_url: str, report: pb.StatusReport) -> None:
        if type_url == TYPE_URL:
            self._enqueue_pools_of(node)
