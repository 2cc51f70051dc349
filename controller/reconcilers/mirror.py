"""The host → DPU-cluster mirror (as upstream DPF v24.10), shared by the DPUServiceInterface and
DPUServiceChain reconcilers: for every connected DPU cluster, ensure the namespace and server-side apply a
same-name child (ServiceInterfaceSet / ServiceChainSet) whose labels and annotations are
`spec.template.metadata` and whose spec is `spec.template.spec`.

Status: `<Child>Reconciled` (every cluster has the current child), `<Child>Ready` (the child's `Ready` is
True at its current generation in every cluster; otherwise the message carries the child's own failing
conditions, e.g. which chain selector matches nothing on which node), and the `Ready` summary.
Deletion: our finalizer stays until the child is gone from every cluster (the child's own finalizer in turn
waits for its per-node objects), so deleting the host object tears the chain down in order. Whether a child
is left is asked of each DPU cluster's apiserver, not its watch cache: a reconcile that raced the deletion
may have written a child the cache has not seen yet, and dropping the finalizer then would leak it.

Ownership: the child carries its parent's uid in the label `<group>/<parent kind>-uid`. A child that claims
another uid is a leftover of an earlier object of the same name; it is deleted (uid precondition) and made
anew, never adopted. The same label lets the orphan sweep (`orphans.py`) find a child whose parent is gone.

Key: (reconciler name, namespace, name). Subclasses only name the kinds.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import ClassVar

from dpf.controller.api import conditions as cond
from dpf.controller.clusters import Cluster
from dpf.controller.errors import TemporaryError
from dpf.controller.kube.informer import Informer, key_of
from dpf.controller.kube.rest import Kind, KubeError, Obj, Rest
from dpf.controller.reconcilers import objects
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.keys import ObjectKey

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 4096


@dataclass(frozen=True)
class MirrorKinds:
    parent: Kind
    child: Kind
    finalizer: str
    reconciled: str
    ready: str

    @property
    def condition_types(self) -> tuple[str, ...]:
        return (cond.READY, self.reconciled, self.ready)

    @property
    def owner_label(self) -> str:
        """The child's label holding its parent's uid, e.g. `svc.dpu.nvidia.com/dpuservicechain-uid`."""
        return f"{self.parent.group}/{self.parent.kind.lower()}-uid"


def claimed_owner(kinds: MirrorKinds, child: Obj) -> str:
    """The parent uid `child` claims ("" if none: made by hand or before the label existed). Pure."""
    return (child["metadata"].get("labels") or {}).get(kinds.owner_label, "")


async def read_live(rest: Rest, kind: Kind, namespace: str, name: str) -> Obj | None:
    """`namespace/name` as the apiserver has it now, not the cache. A list, not a get: the controller's RBAC
    reads these kinds by list and watch only."""
    items = (await rest.list(kind, namespace))["items"]
    return next((o for o in items if o["metadata"]["name"] == name), None)


def child_body(kinds: MirrorKinds, parent: Obj) -> Obj:
    """The DPU-cluster child of `parent`. Pure."""
    meta = parent["metadata"]
    template = (parent.get("spec") or {}).get("template") or {}
    template_meta = template.get("metadata") or {}
    child_meta = {"name": meta["name"], "namespace": meta.get("namespace", ""),
                  "labels": {**(template_meta.get("labels") or {}), kinds.owner_label: meta["uid"]}}
    if template_meta.get("annotations"):
        child_meta["annotations"] = dict(template_meta["annotations"])
    return {"apiVersion": kinds.child.api_version, "kind": kinds.child.kind, "metadata": child_meta,
            "spec": template.get("spec") or {}}


def child_readiness(cluster: str, child: Obj | None, kind: str, name: str) -> str:
    """"" if the child is Ready at its current generation, else why not (for the parent's message). Pure."""
    where = f"{kind} {name} in DPU cluster {cluster}"
    if child is None:
        return f"{where} does not exist yet"
    status = child.get("status") or {}
    if int(status.get("observedGeneration") or 0) != int(child["metadata"].get("generation") or 0):
        return f"{where} is not reconciled at its current generation yet"
    conditions = status.get("conditions") or ()
    ready = next((c for c in conditions if c.get("type") == cond.READY), None)
    if ready is not None and ready.get("status") == "True":
        return ""
    failing = [f"{c['type']}: {c.get('message') or c.get('reason', '')}" for c in conditions
               if c.get("type") != cond.READY and c.get("status") != "True"]
    return f"{where}: " + ("; ".join(failing) or "not ready")


def child_reason(child: Obj | None) -> str:
    """The reason the parent's `...Ready` shows for a child that is not ready: Failure or Error when one of the
    child's conditions says so (a port conflict, a rejected field), otherwise Pending. Pure."""
    reasons = {c.get("reason") for c in ((child or {}).get("status") or {}).get("conditions") or ()
               if c.get("type") != cond.READY and c.get("status") == "False"}
    return next((r for r in (cond.FAILURE, cond.ERROR) if r in reasons), cond.PENDING)


class MirrorReconciler(Reconciler):
    kinds: ClassVar[MirrorKinds]

    def setup(self) -> None:
        self.parents: Informer = self.ctx.clusters.host.informer(self.kinds.parent)
        self.parents.add_handler(lambda _t, old, new: self._enqueue(new or old))  # type: ignore[arg-type]
        self.need_dpu_kind(self.kinds.child)
        self.ctx.clusters.on_dpu_added(self._attach)
        self._namespaces: set[tuple[str, str]] = set()

    def _attach(self, cluster: Cluster) -> None:
        cluster.informer(self.kinds.child).add_handler(self._on_child)
        for parent in self.parents.list():  # a new cluster needs every child
            self._enqueue(parent)

    def _on_child(self, _type: str, old: Obj | None, new: Obj | None) -> None:
        namespace, name = key_of(new or old)  # type: ignore[arg-type]
        if self.parents.get(namespace, name) is not None:
            self.ctx.queue.add(ObjectKey(self.name, namespace, name))

    def _enqueue(self, parent: Obj) -> None:
        self.ctx.queue.add(ObjectKey(self.name, *key_of(parent)))

    def all_keys(self) -> Iterable[Hashable]:
        return [ObjectKey(self.name, *key_of(o)) for o in self.parents.list()]

    def synced(self) -> bool:
        return self.parents.synced.is_set() and self.dpu_synced()

    async def reconcile(self, key: ObjectKey) -> float | None:
        namespace, name = key.namespace, key.name
        parent = self.parents.get(namespace, name)
        if parent is None:
            return None
        if parent["metadata"].get("deletionTimestamp"):
            return await self._delete(parent)
        if self.ctx.nodes.grace_left() and not self.dpu_synced():
            # Just started (or leading anew): the DPU clusters are still connecting, and their children would read
            # as missing ("no DPU cluster is connected", "does not exist yet") and flap Ready. Wait for them,
            # within the term's grace (a DPUCluster that never connects must not silence status for good).
            raise TemporaryError(f"{self.kinds.parent.kind} {namespace}/{name}: DPU clusters not synced yet",
                                 delay=0.5)
        clusters = sorted(self.ctx.clusters.dpu.values(), key=lambda c: c.name)
        if any(c.informer(self.kinds.child).get(namespace, name) is None for c in clusters):
            # About to create a child: only for the parent as it is now. A cached parent can be an incarnation
            # already deleted (watch lag under create/delete churn); a child made for it would outlive it.
            live = await read_live(self.ctx.clusters.host.rest, self.kinds.parent, namespace, name)
            if live is None:
                return None
            if live["metadata"]["uid"] != parent["metadata"]["uid"] or live["metadata"].get("deletionTimestamp"):
                raise TemporaryError(f"{self.kinds.parent.kind} {namespace}/{name} changed since it was cached; "
                                     "looking again", delay=0.2)
            parent = live
        parent = await objects.add_finalizer(self.ctx.clusters.host.rest, self.kinds.parent, parent,
                                             self.kinds.finalizer)
        errors = []
        for cluster in clusters:
            try:
                await self._apply(cluster, parent)
            except KubeError as exc:
                errors.append(f"DPU cluster {cluster.name}: {exc}")
        reconciled = ("False", cond.ERROR, "; ".join(errors)[:MESSAGE_LIMIT]) if errors else ("True", cond.SUCCESS, "")
        children = {cluster.name: cluster.informer(self.kinds.child).get(namespace, name) for cluster in clusters}
        not_ready = {cluster: why for cluster, child in children.items()
                     if (why := child_readiness(cluster, child, self.kinds.child.kind, f"{namespace}/{name}"))}
        if not clusters:
            ready = ("False", cond.PENDING, "no DPU cluster is connected (a DPUCluster whose spec.kubeconfig names "
                                            "a Secret with a usable admin.conf)")
        elif not_ready:
            reasons = {child_reason(children[cluster]) for cluster in not_ready}
            reason = next((r for r in (cond.FAILURE, cond.ERROR) if r in reasons), cond.PENDING)
            ready = ("False", reason, "; ".join(not_ready.values())[:MESSAGE_LIMIT])
        else:
            ready = ("True", cond.SUCCESS, "")
        conditions = objects.build_conditions(parent, self.kinds.condition_types,
                                              [(self.kinds.reconciled, *reconciled), (self.kinds.ready, *ready)],
                                              objects.now())
        await objects.write_status(self.ctx.clusters.host.rest, self.kinds.parent, parent,
                                   objects.status_body(parent, conditions), self.ctx.settings.kube.field_manager)
        if errors:
            raise TemporaryError(f"{self.kinds.parent.kind} {namespace}/{name}: {'; '.join(errors)}")
        return None

    async def _apply(self, cluster: Cluster, parent: Obj) -> None:
        body = child_body(self.kinds, parent)
        namespace = body["metadata"]["namespace"]
        if (cluster.name, namespace) not in self._namespaces:
            await objects.ensure_namespace(cluster.rest, namespace)
            self._namespaces.add((cluster.name, namespace))
        name = body["metadata"]["name"]
        current = cluster.informer(self.kinds.child).get(namespace, name)
        if current is not None and current["metadata"].get("deletionTimestamp"):
            raise KubeError(409, "Terminating", f"{self.kinds.child.kind} {namespace}/{name} "
                                                "is still being deleted; it is re-created once it is gone")
        if current is not None and (claimed := claimed_owner(self.kinds, current)) != parent["metadata"]["uid"] \
                and claimed:
            await self._delete_child(cluster, current)
            raise KubeError(409, "Replaced", f"{self.kinds.child.kind} {namespace}/{name} belonged to an earlier "
                                             f"{self.kinds.parent.kind} of this name (uid {claimed}); it is deleted "
                                             "and re-created once it is gone")
        if objects.child_differs(current, body):
            await cluster.rest.apply(self.kinds.child, body, self.ctx.settings.kube.field_manager)

    async def _delete_child(self, cluster: Cluster, child: Obj) -> None:
        """Delete this incarnation of `child` (uid precondition: a newer object of its name is left alone)."""
        meta = child["metadata"]
        try:
            await cluster.rest.delete(self.kinds.child, meta["name"], meta.get("namespace", ""), uid=meta["uid"])
        except KubeError as exc:
            if not exc.conflict:  # 409: the name holds another object now; the caller looks again
                raise

    async def _delete(self, parent: Obj) -> float | None:
        if self.kinds.finalizer not in (parent["metadata"].get("finalizers") or ()):
            return None
        namespace, name = key_of(parent)
        remaining = []
        for cluster in self.ctx.clusters.dpu.values():
            # Asked of the apiserver: the cache may not hold yet a child that the previous reconcile of this key
            # wrote from a cached parent that was already being deleted.
            child = await read_live(cluster.rest, self.kinds.child, namespace, name)
            if child is None:
                continue
            remaining.append(cluster.name)
            if not child["metadata"].get("deletionTimestamp"):
                await self._delete_child(cluster, child)
        if remaining:
            message = f"waiting for {self.kinds.child.kind} {namespace}/{name} to be deleted in DPU cluster(s) " \
                      f"{', '.join(sorted(remaining))}"
            conditions = objects.build_conditions(
                parent, self.kinds.condition_types,
                [(self.kinds.reconciled, "False", cond.AWAITING_DELETION, message)], objects.now())
            await objects.write_status(self.ctx.clusters.host.rest, self.kinds.parent, parent,
                                       objects.status_body(parent, conditions), self.ctx.settings.kube.field_manager)
            return 1.0
        await objects.remove_finalizer(self.ctx.clusters.host.rest, self.kinds.parent, parent, self.kinds.finalizer)
        return None
