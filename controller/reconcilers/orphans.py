"""The orphan sweep, the safety net behind ordered deletion. Every `orphan_sweep_period` seconds the leader
looks through every connected DPU cluster for
- a ServiceInterfaceSet / ServiceChainSet whose host owner (the uid in the mirror's owner label) no longer
  exists, or whose owner's name now holds another object;
- a ServiceInterface / ServiceChain whose controlling set (its ownerReference) no longer exists, or whose
  set's name now holds another object
and deletes it, logged and counted in `dpf_controller_orphans_deleted_total{kind}`. Besides the period, an
event on such an object (seen in the caches) brings the sweep forward to `SOON`, so an orphan born of a race
lives seconds, not a period. A set deleted this way
takes its per-node objects and the agents' flows and ports with it, in order, like any other (`nodeset.py`).

How such an object can exist at all: a DPU cluster that was unreachable while its owner was deleted, a
controller replica that lost the lease in the middle of a reconcile (its workers are cancelled, but a request
already sent still lands: an apply that creates a set after the next leader found none and let the owner go),
or a bug. The deletion paths themselves
leave none (`mirror.py`, `nodeset.py`).

Candidates come from the watch caches; each is confirmed against the apiserver (the owner is looked up, the
object read again and its claim re-checked) and deleted with uid and resourceVersion preconditions, so a
lagging cache, or an object adopted or re-created meanwhile, never costs a live object. Objects that claim
no owner (made by hand, or by a controller before the owner label existed) are not ours to judge. Only the
namespaces this controller watches on the host are swept.

Key: ("orphans",), requeued after the period.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from dpf.controller.clusters import Cluster
from dpf.controller.errors import TemporaryError
from dpf.controller.kube.informer import Informer
from dpf.controller.kube.rest import Kind, KubeError, Obj, Rest
from dpf.controller.reconcilers import objects
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.dpuservicechain import DPUServiceChainReconciler
from dpf.controller.reconcilers.dpuserviceinterface import DPUServiceInterfaceReconciler
from dpf.controller.reconcilers.keys import SweepKey
from dpf.controller.reconcilers.mirror import MirrorKinds, claimed_owner, read_live
from dpf.controller.reconcilers.nodeset import SetKinds
from dpf.controller.reconcilers.servicechainset import ServiceChainSetReconciler
from dpf.controller.reconcilers.serviceinterfaceset import ServiceInterfaceSetReconciler

log = logging.getLogger(__name__)

KEY = SweepKey("orphans")
UNSYNCED_RETRY = 1.0
SOON = 1.0
"""Seconds from an event on a likely orphan to the sweep: the events of a burst share one sweep, and a cache
that lags its owner's creation by that much has caught up (the sweep confirms against the apiserver anyway)."""


@dataclass(frozen=True)
class Claim:
    """Who an object says owns it: `kind` `namespace`/`name` with `uid`, in the cluster `rest` talks to."""

    rest: Rest
    kind: Kind
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.kind.kind} {self.namespace}/{self.name} (uid {self.uid})"


@dataclass(frozen=True)
class Candidate:
    cluster: Cluster
    kind: Kind
    obj: Obj
    claim: Claim


def set_claim(kinds: MirrorKinds, host: Rest, set_obj: Obj) -> Claim | None:
    """The host owner a DPU-cluster set claims (None: it claims none). Pure."""
    uid = claimed_owner(kinds, set_obj)
    meta = set_obj["metadata"]
    return Claim(host, kinds.parent, meta.get("namespace", ""), meta["name"], uid) if uid else None


def child_claim(kinds: SetKinds, rest: Rest, child: Obj) -> Claim | None:
    """The set a per-node object names as its controller (None: none). Pure."""
    meta = child["metadata"]
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == kinds.set_kind.kind and ref.get("name") and ref.get("uid"):
            return Claim(rest, kinds.set_kind, meta.get("namespace", ""), ref["name"], ref["uid"])
    return None


def holds(owners: Informer, claim: Claim) -> bool:
    """The cache shows the claimed owner, same uid. Pure."""
    owner = owners.get(claim.namespace, claim.name)
    return owner is not None and owner["metadata"].get("uid") == claim.uid


class OrphanSweeper(Reconciler):
    name = "orphans"
    kind = "Orphan"
    mirrors = (DPUServiceInterfaceReconciler.kinds, DPUServiceChainReconciler.kinds)
    sets = (ServiceInterfaceSetReconciler.kinds, ServiceChainSetReconciler.kinds)

    def setup(self) -> None:
        self.parents = {m.parent: self.ctx.clusters.host.informer(m.parent) for m in self.mirrors}
        for kind in (*(m.child for m in self.mirrors), *(s.child_kind for s in self.sets)):
            self.need_dpu_kind(kind)
        self.ctx.clusters.on_dpu_added(self._attach)

    def _attach(self, cluster: Cluster) -> None:
        host = self.ctx.clusters.host.rest
        for mirror in self.mirrors:
            self._watch(cluster.informer(mirror.child), self.parents[mirror.parent],
                        functools.partial(set_claim, mirror, host))
        for set_kinds in self.sets:
            self._watch(cluster.informer(set_kinds.child_kind), cluster.informer(set_kinds.set_kind),
                        functools.partial(child_claim, set_kinds, cluster.rest))

    def _watch(self, objects_: Informer, owners: Informer, claim_of: Callable[[Obj], Claim | None]) -> None:
        def on_event(_type: str, _old: Obj | None, new: Obj | None) -> None:
            if new is not None:
                self._on_object(new, claim_of(new), owners)

        objects_.add_handler(on_event)

    def _on_object(self, obj: Obj, claim: Claim | None, owners: Informer) -> None:
        """An object was added or changed: if its owner is not in the cache, sweep soon."""
        if claim is not None and self._judged(obj, claim) and not holds(owners, claim):
            self.ctx.queue.add_after(KEY, SOON)

    def all_keys(self) -> Iterable[Hashable]:
        return [KEY]

    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.parents.values()) and self.dpu_synced()

    async def reconcile(self, key: SweepKey) -> float | None:
        if not self.synced():
            return UNSYNCED_RETRY  # a partial cache would make every object look orphaned
        owners: dict[tuple[int, Kind, str], dict[str, str]] = {}
        failures = []
        for candidate in self.candidates():
            try:
                await self._confirm_and_delete(candidate, owners)
            except KubeError as exc:
                failures.append(f"{candidate.kind.kind} {objects.name_of(candidate.obj)} in DPU cluster "
                                f"{candidate.cluster.name}: {exc}")
        if failures:
            raise TemporaryError(f"orphan sweep: {'; '.join(failures)}")
        return self.ctx.settings.orphan_sweep_period

    def candidates(self) -> list[Candidate]:
        """Objects whose claimed owner the caches do not show (with that uid)."""
        out = []
        host = self.ctx.clusters.host.rest
        for mirror in self.mirrors:
            for cluster, informer in self.ctx.clusters.dpu_informers(mirror.child):
                for obj in informer.list():
                    claim = set_claim(mirror, host, obj)
                    if claim and self._judged(obj, claim) and not holds(self.parents[mirror.parent], claim):
                        out.append(Candidate(cluster, mirror.child, obj, claim))
        for set_kinds in self.sets:
            for cluster, informer in self.ctx.clusters.dpu_informers(set_kinds.child_kind):
                sets = cluster.informer(set_kinds.set_kind)
                for obj in informer.list():
                    claim = child_claim(set_kinds, cluster.rest, obj)
                    if claim and self._judged(obj, claim) and not holds(sets, claim):
                        out.append(Candidate(cluster, set_kinds.child_kind, obj, claim))
        return out

    def _judged(self, obj: Obj, claim: Claim) -> bool:
        """Ours to judge: not being deleted already, and in a namespace this controller watches."""
        watched = self.ctx.settings.kube.watch_namespace
        return not obj["metadata"].get("deletionTimestamp") and watched in (None, claim.namespace)

    async def _confirm_and_delete(self, candidate: Candidate, owners: dict[tuple[int, Kind, str], dict[str, str]]) \
            -> None:
        claim = candidate.claim
        listing = (id(claim.rest), claim.kind, claim.namespace)
        if listing not in owners:
            # A list, not a get: the controller's host RBAC reads the owner kinds by list and watch only.
            items = (await claim.rest.list(claim.kind, claim.namespace))["items"]
            owners[listing] = {o["metadata"]["name"]: o["metadata"].get("uid", "") for o in items}
        if owners[listing].get(claim.name) == claim.uid:
            return  # the cache lagged: the owner is there
        meta = candidate.obj["metadata"]
        namespace = meta.get("namespace", "")
        current = await read_live(candidate.cluster.rest, candidate.kind, namespace, meta["name"])
        if current is None or current["metadata"].get("uid") != meta["uid"] or \
                current["metadata"].get("deletionTimestamp") or self._claim(candidate, current) != claim:
            return  # gone, re-created, already going, or adopted meanwhile: not the object judged
        try:
            await candidate.cluster.rest.delete(candidate.kind, meta["name"], namespace, uid=meta["uid"],
                                                resource_version=current["metadata"]["resourceVersion"])
        except KubeError as exc:
            if exc.conflict:
                return  # changed since it was read: the next sweep judges it again
            raise
        self.ctx.metrics.orphans_deleted.labels(candidate.kind.kind).inc()
        holder = owners[listing].get(claim.name)
        log.warning("deleted orphaned %s %s/%s in DPU cluster %s: its owner %s %s", candidate.kind.kind, namespace,
                    meta["name"], candidate.cluster.name, claim,
                    f"is another object now (uid {holder})" if holder else "no longer exists")

    def _claim(self, candidate: Candidate, current: Obj) -> Claim | None:
        """The claim `current` (the candidate as read again) makes."""
        for mirror in self.mirrors:
            if mirror.child == candidate.kind:
                return set_claim(mirror, candidate.claim.rest, current)
        for set_kinds in self.sets:
            if set_kinds.child_kind == candidate.kind:
                return child_claim(set_kinds, candidate.claim.rest, current)
        return None
