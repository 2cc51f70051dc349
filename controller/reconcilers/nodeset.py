"""The per-node set pattern of the DPU cluster (as upstream DPF v24.10), shared by the
ServiceInterfaceSet and ServiceChainSet reconcilers: one child `<set>-<node>` (spec.node = node) for every
DPU-cluster Node matching `spec.nodeSelector`, written by server-side apply with a controller
ownerReference and the set's labels, stale children deleted; status from what the nodes' agents said.

Differences from upstream, on purpose: readiness is real (a child is ready when its node's agent ACKed and
reported it READY, `agent_verdicts.py`; `numberReady` counts those), and deletion is ordered: the set's
finalizer stays until its children are gone and the connected agents have ACKed a state without them
(bounded by `deletion_ack_timeout`), so when the set disappears the data plane has let go.

Key: `ClusterObjectKey` (the DPU cluster, namespace and name of a set). Subclasses name the kinds and build the
child spec.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from dpf.controller.api import conditions as cond
from dpf.controller.clusters import Cluster
from dpf.controller.errors import TemporaryError
from dpf.controller.kube.informer import key_of
from dpf.controller.kube.rest import Kind, KubeError, Obj
from dpf.controller.kube.selectors import SelectorError, matches, validate
from dpf.controller.reconcilers import objects
from dpf.controller.reconcilers.agent_verdicts import Outcome, Verdict, fold, verdict
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.keys import ClusterObjectKey
from dpf.controller.reconcilers.kinds import NODE
from dpf.controller.reconcilers.serviceinterface import NODE_INDEX, node_of
from dpf.controller.server.node_status import Nack
from dpf.proto.v1 import nodestate_pb2 as pb

log = logging.getLogger(__name__)

OWNER_INDEX = "controller-uid"
SET_INDEX = "set-label"
NODE_LABEL = "svc.dpu.nvidia.com/nodeName"
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
DELETION_ACK_TIMEOUT = 30.0  # a set being deleted waits at most this long for connected agents to let go
UNPUBLISHED_RETRY = 0.5  # a child not yet in its node's snapshot: look again shortly


@dataclass(frozen=True)
class SetKinds:
    set_kind: Kind
    child_kind: Kind
    type_url: str
    finalizer: str
    label_prefix: str
    """Children carry `<prefix>-name` and `<prefix>-namespace` = the set's name and namespace."""
    reconciled: str
    ready: str

    @property
    def condition_types(self) -> tuple[str, ...]:
        return (cond.READY, self.reconciled, self.ready)


def set_labels(kinds: SetKinds, namespace: str, name: str) -> dict[str, str]:
    return {f"{kinds.label_prefix}-name": name, f"{kinds.label_prefix}-namespace": namespace}


def set_label_key(obj: Obj, kinds: SetKinds) -> list[str]:
    labels = obj["metadata"].get("labels") or {}
    name = labels.get(f"{kinds.label_prefix}-name")
    namespace = labels.get(f"{kinds.label_prefix}-namespace")
    return [f"{namespace}/{name}"] if name and namespace is not None else []


def selected_nodes(set_obj: Obj, nodes: Iterable[Obj]) -> list[str]:
    """Names of the live Nodes matching the set's nodeSelector (raises SelectorError for an invalid one)."""
    selector = (set_obj.get("spec") or {}).get("nodeSelector")
    validate(selector, "spec.nodeSelector")
    return sorted(n["metadata"]["name"] for n in nodes
                  if not n["metadata"].get("deletionTimestamp") and matches(selector, n["metadata"].get("labels")))


def no_nodes_selected(set_obj: Obj) -> tuple[str, str, str]:
    """The Ready condition of a set whose selector matches no DPU node: waiting, not Ready (upstream says Ready,
    which tells a user their chain is on the DPUs when it is on none)."""
    selector = (set_obj.get("spec") or {}).get("nodeSelector")
    shown = json.dumps(selector, sort_keys=True, separators=(",", ":")) if selector else "(none: every node)"
    return ("False", cond.PENDING,
            f"spec.nodeSelector {shown} selects no DPU node yet; a child is made for each matching node that joins")


def child_body(kinds: SetKinds, set_obj: Obj, node: str, spec: Mapping[str, Any],
               extra_labels: Mapping[str, str]) -> Obj:
    """The child for `node`: name `<set>-<node>`, template labels plus ours, the set's annotations. Pure."""
    meta = set_obj["metadata"]
    template_meta = ((set_obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
    labels = {**(template_meta.get("labels") or {}), **extra_labels,
              **set_labels(kinds, meta.get("namespace", ""), meta["name"]), NODE_LABEL: node}
    annotations = {**objects.carried_annotations(meta.get("annotations")), **(template_meta.get("annotations") or {})}
    child_meta: dict[str, Any] = {"name": f"{meta['name']}-{node}", "namespace": meta.get("namespace", ""),
                                  "labels": labels, "ownerReferences": [objects.owner_reference(set_obj)]}
    if annotations:
        child_meta["annotations"] = annotations
    return {"apiVersion": kinds.child_kind.api_version, "kind": kinds.child_kind.kind, "metadata": child_meta,
            "spec": {**spec, "node": node}}


class NodeSetReconciler(Reconciler):
    kinds: ClassVar[SetKinds]

    # ---- subclass hooks --------------------------------------------------------------------------------
    def child_spec(self, set_obj: Obj, node: str) -> dict[str, Any]:
        """The child's spec without `node` (default: the template's spec)."""
        return dict(((set_obj.get("spec") or {}).get("template") or {}).get("spec") or {})

    def child_labels(self, set_obj: Obj) -> dict[str, str]:
        return {}

    def problems(self, cluster: Cluster, children: list[Obj]) -> dict[str, str]:
        """Children (by namespace/name) that cannot be sent to their node, and why."""
        return {}

    # ---- wiring ----------------------------------------------------------------------------------------
    def setup(self) -> None:
        k = self.kinds
        for kind in (k.set_kind, k.child_kind, NODE):
            self.need_dpu_kind(kind)
        self.ctx.clusters.on_dpu_added(self._attach)

    def _attach(self, cluster: Cluster) -> None:
        k = self.kinds
        children = cluster.informer(k.child_kind)
        children.add_index(OWNER_INDEX, objects.controller_uid(k.set_kind.kind))
        children.add_index(SET_INDEX, lambda o: set_label_key(o, k))
        children.add_index(NODE_INDEX, node_of)
        children.add_handler(lambda _t, old, new: self._enqueue_owners(cluster, [o for o in (old, new) if o]))
        cluster.informer(k.set_kind).add_handler(
            lambda _t, old, new: self._enqueue(cluster, new or old))  # type: ignore[arg-type]
        cluster.informer(NODE).add_handler(lambda t, old, new: self._on_node(cluster, t, old, new))

    def _key(self, cluster: Cluster, namespace: str, name: str) -> ClusterObjectKey:
        return ClusterObjectKey(self.name, cluster.name, namespace, name)

    def _enqueue(self, cluster: Cluster, set_obj: Obj) -> None:
        self.ctx.queue.add(self._key(cluster, *key_of(set_obj)))

    def _enqueue_owners(self, cluster: Cluster, children: Iterable[Obj]) -> None:
        for child in children:
            owner = objects.controller_name(child, self.kinds.set_kind.kind)
            if owner:
                self.ctx.queue.add(self._key(cluster, child["metadata"].get("namespace", ""), owner))
            for value in set_label_key(child, self.kinds):
                self.ctx.queue.add(self._key(cluster, *value.split("/", 1)))

    def _on_node(self, cluster: Cluster, type_: str, old: Obj | None, new: Obj | None) -> None:
        # Membership depends on labels only; Node status heartbeats are ignored.
        if type_ == "MODIFIED" and old and new and old["metadata"].get("labels") == new["metadata"].get("labels") \
                and bool(old["metadata"].get("deletionTimestamp")) == bool(new["metadata"].get("deletionTimestamp")):
            return
        for set_obj in cluster.informer(self.kinds.set_kind).list():
            self._enqueue(cluster, set_obj)

    def enqueue_for_node(self, node: str) -> None:
        for cluster, informer in self.ctx.clusters.dpu_informers(self.kinds.child_kind):
            self._enqueue_owners(cluster, informer.by_index(NODE_INDEX, node))

    def synced(self) -> bool:
        return self.dpu_synced()

    def all_keys(self) -> Iterable[Hashable]:
        return [self._key(cluster, *key_of(o))
                for cluster, informer in self.ctx.clusters.dpu_informers(self.kinds.set_kind) for o in informer.list()]

    # ---- stream callbacks: agent news may change readiness ----------------------------------------------
    def on_connect(self, node: str, role: str) -> None:
        self.enqueue_for_node(node)

    def on_disconnect(self, node: str) -> None:
        self.enqueue_for_node(node)

    def on_ack(self, node: str, type_url: str, snapshot: object) -> None:
        if type_url == self.kinds.type_url:
            self.enqueue_for_node(node)
            # A set being deleted waits for agents to ACK a state without its children.
            for cluster, informer in self.ctx.clusters.dpu_informers(self.kinds.set_kind):
                for set_obj in informer.list():
                    if set_obj["metadata"].get("deletionTimestamp"):
                        self._enqueue(cluster, set_obj)

    def on_nack(self, node: str, type_url: str, nack: Nack) -> None:
        if type_url == self.kinds.type_url:
            self.enqueue_for_node(node)

    def on_status(self, node: str, type_url: str, report: pb.StatusReport) -> None:
        if type_url == self.kinds.type_url:
            self.enqueue_for_node(node)

    # ---- reconcile -------------------------------------------------------------------------------------
    async def reconcile(self, key: Hashable) -> float | None:
        assert isinstance(key, ClusterObjectKey), key
        cluster_name, namespace, name = key.cluster, key.namespace, key.name
        cluster = self.ctx.clusters.dpu.get(cluster_name)
        if cluster is None:
            return None
        if not cluster.synced(self.dpu_kinds):
            # A partial Node or child list would delete children that must stay (and their flows with them).
            raise TemporaryError(f"DPU cluster {cluster_name} caches not synced yet", delay=0.5)
        set_obj = cluster.informer(self.kinds.set_kind).get(namespace, name)
        if set_obj is None:
            return None
        if set_obj["metadata"].get("deletionTimestamp"):
            return await self._delete(cluster, set_obj)
        set_obj = await objects.add_finalizer(cluster.rest, self.kinds.set_kind, set_obj, self.kinds.finalizer)
        reconciled, errors, desired = await self._sync_children(cluster, set_obj)
        verdicts, applied = self._verdicts(cluster, set_obj, desired)
        held = self._hold(set_obj, verdicts)
        marks = [(self.kinds.reconciled, *reconciled)]
        number_ready = (set_obj.get("status") or {}).get("numberReady")
        if not held:
            marks.append((self.kinds.ready, *(fold(verdicts, len(verdicts)) if verdicts
                                              else no_nodes_selected(set_obj))))
            number_ready = sum(v.ready for v in verdicts)
        conditions = objects.build_conditions(set_obj, self.kinds.condition_types, marks, objects.now())
        status = objects.status_body(set_obj, conditions, numberApplied=applied, numberReady=number_ready)
        await objects.write_status(cluster.rest, self.kinds.set_kind, set_obj, status,
                                   self.ctx.settings.kube.field_manager)
        if errors:
            raise TemporaryError(f"{self.kinds.set_kind.kind} {namespace}/{name}: {'; '.join(errors)}")
        if held:
            return held
        if any(v.outcome is Outcome.UNPUBLISHED for v in verdicts):
            return UNPUBLISHED_RETRY
        return None

    def _hold(self, set_obj: Obj, verdicts: list[Verdict]) -> float:
        """Seconds to keep the readiness written before this controller's term (0: write it now).

        After a controller restart or failover the agents reconnect within seconds, with their state unchanged;
        judging them before they have spoken would flap Ready to False ("agent not connected") and back. A Ready
        condition over the same children stands until every node of the set was heard from, or the grace has
        passed; a spec change (new generation) or a child more or less is judged at once."""
        grace = self.ctx.nodes.grace_left()
        if not grace or not verdicts:
            return 0.0
        status = set_obj.get("status") or {}
        if int(status.get("observedGeneration") or 0) != int(set_obj["metadata"].get("generation") or 0):
            return 0.0
        old = next((c for c in status.get("conditions") or () if c.get("type") == self.kinds.ready), None)
        if old is None or old.get("status") != "True" or status.get("numberReady") != len(verdicts):
            return 0.0  # only a Ready set of the same children is kept: anything else is news to write at once
        unheard = any(v.node and not self.ctx.nodes.heard(v.node, self.kinds.type_url) for v in verdicts)
        return grace if unheard else 0.0

    async def _sync_children(self, cluster: Cluster, set_obj: Obj
                             ) -> tuple[tuple[str, str, str], list[str], dict[str, str]]:
        """Apply desired children, delete stale ones; the Reconciled condition, the API errors met and the
        desired children (namespace/name -> node)."""
        k = self.kinds
        try:
            nodes = selected_nodes(set_obj, cluster.informer(NODE).list())
        except SelectorError as exc:
            return ("False", cond.FAILURE, f"{exc}; fix the selector"), [], {}
        children = cluster.informer(k.child_kind)
        namespace, name = key_of(set_obj)
        desired = {}
        invalid = []
        for node in nodes:
            body = child_body(k, set_obj, node, self.child_spec(set_obj, node), self.child_labels(set_obj))
            child_name = body["metadata"]["name"]
            if not DNS_SUBDOMAIN.match(child_name):
                invalid.append(f"{child_name!r} (for node {node}) is not a valid object name")
                continue
            desired[child_name] = body
        errors: list[str] = []
        for child_name, body in sorted(desired.items()):
            if objects.child_differs(children.get(namespace, child_name), body):
                try:
                    await cluster.rest.apply(k.child_kind, body, self.ctx.settings.kube.field_manager)
                except KubeError as exc:
                    errors.append(f"applying {k.child_kind.kind} {child_name}: {exc}")
        for child in children.by_index(SET_INDEX, f"{namespace}/{name}"):
            if child["metadata"]["name"] not in desired and not child["metadata"].get("deletionTimestamp"):
                try:
                    await cluster.rest.delete(k.child_kind, child["metadata"]["name"], namespace)
                except KubeError as exc:
                    errors.append(f"deleting {k.child_kind.kind} {child['metadata']['name']}: {exc}")
        wanted = {f"{namespace}/{child_name}": body["spec"]["node"] for child_name, body in desired.items()}
        if errors:
            return ("False", cond.ERROR, "; ".join(errors)[:4096]), errors, wanted
        if invalid:
            return ("False", cond.FAILURE, "; ".join(invalid) + "; shorten the set's name"), [], wanted
        return ("True", cond.SUCCESS, ""), [], wanted

    def _verdicts(self, cluster: Cluster, set_obj: Obj, desired: Mapping[str, str]) -> tuple[list[Verdict], int]:
        """A verdict per child in the cache, and per desired child the cache has not seen yet (just applied: it
        is in no node's snapshot, so the set is not Ready over the nodes that have theirs already)."""
        children = [c for c in cluster.informer(self.kinds.child_kind).by_index(OWNER_INDEX, set_obj["metadata"]["uid"])
                    if not c["metadata"].get("deletionTimestamp")]
        problems = self.problems(cluster, children)
        verdicts = []
        for child in sorted(children, key=objects.name_of):
            name, node = objects.name_of(child), (child.get("spec") or {}).get("node") or ""
            if name in problems:
                verdicts.append(Verdict(name, node, Outcome.FAILED, f"{name}: {problems[name]}"))
            elif not node:
                verdicts.append(Verdict(name, node, Outcome.FAILED, f"{name} has no spec.node"))
            else:
                verdicts.append(verdict(self.ctx.nodes, self.ctx.cache, node, self.kinds.type_url, name))
        cached = {v.name for v in verdicts}
        for name, node in sorted(desired.items()):
            if name not in cached:
                verdicts.append(Verdict(name, node, Outcome.UNPUBLISHED, f"{name} on {node}: not published to the "
                                                                         "node yet"))
        return verdicts, len(children)

    async def _delete(self, cluster: Cluster, set_obj: Obj) -> float | None:
        """Delete the children, wait until they are gone and the agents let go, then drop our finalizer."""
        k = self.kinds
        if k.finalizer not in (set_obj["metadata"].get("finalizers") or ()):
            return None
        namespace, name = key_of(set_obj)
        informer = cluster.informer(k.child_kind)
        children = {objects.name_of(c): c for c in (*informer.by_index(OWNER_INDEX, set_obj["metadata"]["uid"]),
                                                     *informer.by_index(SET_INDEX, f"{namespace}/{name}"))}
        for child in children.values():
            if not child["metadata"].get("deletionTimestamp"):
                await cluster.rest.delete(k.child_kind, child["metadata"]["name"], namespace)
        holding = [] if children else self._agents_holding(set_obj)
        if children or holding:
            waiting = (f"waiting for {len(children)} {k.child_kind.kind}(s) to be deleted" if children else
                       f"waiting for the agents of {', '.join(holding)} to remove it")
            at = objects.now()
            conditions = objects.build_conditions(set_obj, k.condition_types,
                                                  [(k.reconciled, "False", cond.AWAITING_DELETION, waiting)], at)
            await objects.write_status(cluster.rest, k.set_kind, set_obj, objects.status_body(set_obj, conditions),
                                       self.ctx.settings.kube.field_manager)
            return 1.0
        if await self._unseen_children(cluster, set_obj):
            return 1.0
        await objects.remove_finalizer(cluster.rest, k.set_kind, set_obj, k.finalizer)
        return None

    async def _unseen_children(self, cluster: Cluster, set_obj: Obj) -> bool:
        """Children the cache has not seen (written by a reconcile that raced the deletion), found by label in
        the apiserver and deleted: the finalizer must not go while one exists, or it outlives the set."""
        k, (namespace, name) = self.kinds, key_of(set_obj)
        selector = ",".join(f"{key}={value}" for key, value in set_labels(k, namespace, name).items())
        live = (await cluster.rest.list(k.child_kind, namespace, label_selector=selector))["items"]
        for child in live:
            if not child["metadata"].get("deletionTimestamp"):
                await cluster.rest.delete(k.child_kind, child["metadata"]["name"], namespace,
                                          uid=child["metadata"]["uid"])
        return bool(live)

    def _agents_holding(self, set_obj: Obj) -> list[str]:
        """Connected nodes whose agent still holds one of the set's children (bounded by the deletion's age)."""
        stamp = set_obj["metadata"].get("deletionTimestamp")
        try:
            age = (objects.now() - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()
        except (AttributeError, ValueError):
            age = DELETION_ACK_TIMEOUT
        if age >= DELETION_ACK_TIMEOUT:
            return []
        namespace, name = key_of(set_obj)
        holding = []
        for node in self.ctx.nodes.connected():
            status = self.ctx.nodes.get(node)
            types = status.types.get(self.kinds.type_url) if status else None
            if types is not None and f"{namespace}/{name}-{node}" in types.acked:
                holding.append(node)
        return holding
