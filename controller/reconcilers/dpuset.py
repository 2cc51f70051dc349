"""DPUSet → one DPU per selected host Node and DPU index (upstream DPF v24.10).

Each pass reads the watch caches (DPUSets, DPUs, host Nodes), computes a plan with the pure
`controller/provisioning/dpuset_plan.py`, and applies only its differences: new DPUs by server-side apply
(controller ownerReference, so the garbage collector deletes them with the set), deletions guarded by uid,
in-place merge patches guarded by resourceVersion. Events SuccessfulCreate / FailedCreate / SuccessfulDelete /
FailedDelete go on the DPUSet; status.dpuStatistics plus the conditions of `dpuset_status.py` say how it went.

Nothing is decided from caches that have not synced. A DPU deleted by one pass counts as going until the DPU
cache shows it so (an uncached deletion would otherwise let the next pass exceed maxUnavailable).
The set gets no finalizer (it has no state outside the apiserver; the garbage collector does the rest); an
upstream-created set's `dpuset-protection` finalizer is removed on deletion.

Key: (reconciler name, namespace, name).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Iterable

from dpf.controller.errors import TemporaryError
from dpf.controller.kube.events import NORMAL, WARNING
from dpf.controller.kube.informer import Informer, key_of
from dpf.controller.kube.rest import KubeError, Obj
from dpf.controller.provisioning import dpuset_status
from dpf.controller.provisioning.dpuset_plan import Plan, Wanted, compute_plan, controller_ref, set_of_labels
from dpf.controller.reconcilers import objects
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.keys import ObjectKey
from dpf.controller.reconcilers.kinds import DPU, DPU_FLAVOR, DPU_SET, NODE

log = logging.getLogger(__name__)

LEGACY_FINALIZER = "provisioning.dpu.nvidia.com/dpuset-protection"
NAMESPACE_INDEX = "dpuset.namespace"  # DPU informer: the DPU's namespace
FLAVOR_INDEX = "dpuset.flavor"  # DPUSet informer: "<namespace>/<template dpuFlavor>"
CACHE_RETRY = 0.5
CREATES_AT_ONCE = 16  # DPU creations of one plan in flight at once


def _template_flavor(obj: Obj) -> list[str]:
    flavor = ((((obj.get("spec") or {}).get("dpuTemplate") or {}).get("spec")) or {}).get("dpuFlavor")
    return [f"{obj['metadata'].get('namespace', '')}/{flavor}"] if isinstance(flavor, str) and flavor else []


def _node_changed(old: Obj | None, new: Obj | None) -> bool:
    """Membership and DPU labels depend on a Node's labels, InternalIP and deletion only (not heartbeats)."""
    if old is None or new is None:
        return True
    def view(node: Obj) -> tuple:
        meta, status = node["metadata"], node.get("status") or {}
        return meta.get("labels"), bool(meta.get("deletionTimestamp")), status.get("addresses")
    return view(old) != view(new)


class DPUSetReconciler(Reconciler):
    name = "dpuset"
    kind = "DPUSet"

    def setup(self) -> None:
        host = self.ctx.clusters.host
        self.sets: Informer = host.informer(DPU_SET)
        self.dpus: Informer = host.informer(DPU)
        self.nodes: Informer = host.informer(NODE)
        self.flavors: Informer = host.informer(DPU_FLAVOR)
        self.dpus.add_index(NAMESPACE_INDEX, lambda o: [o["metadata"].get("namespace", "")])
        self.sets.add_index(FLAVOR_INDEX, _template_flavor)
        self.sets.add_handler(lambda _t, old, new: self._enqueue(*key_of(new or old)))  # type: ignore[arg-type]
        self.dpus.add_handler(lambda _t, old, new: self._enqueue_owners(o for o in (old, new) if o))
        self.nodes.add_handler(lambda _t, old, new: self._on_node(old, new))
        # A flavor has no say in the plan today; upstream re-checks the sets naming it, and so do we.
        self.flavors.add_handler(lambda _t, old, new: self._enqueue_users(new or old))  # type: ignore[arg-type]
        self._deleting: dict[tuple[str, str], set[str]] = {}

    # ---- wiring ------------------------------------------------------------------------------------------
    def _enqueue(self, namespace: str, name: str) -> None:
        self.ctx.queue.add(ObjectKey(self.name, namespace, name))

    def _enqueue_all(self) -> None:
        for obj in self.sets.list():
            self._enqueue(*key_of(obj))

    def _on_node(self, old: Obj | None, new: Obj | None) -> None:
        if _node_changed(old, new):  # any DPUSet may select the node (upstream enqueues them all too)
            self._enqueue_all()

    def _enqueue_owners(self, dpus: Iterable[Obj]) -> None:
        for dpu in dpus:
            namespace = dpu["metadata"].get("namespace", "")
            ref = controller_ref(dpu)
            if ref is not None and ref.get("kind") == "DPUSet" and ref.get("name"):
                self._enqueue(namespace, ref["name"])
            if labelled := set_of_labels(dpu):
                self._enqueue(*labelled.split("/", 1))

    def _enqueue_users(self, flavor: Obj) -> None:
        for obj in self.sets.by_index(FLAVOR_INDEX, "/".join(key_of(flavor))):
            self._enqueue(*key_of(obj))

    def all_keys(self) -> Iterable[Hashable]:
        return [ObjectKey(self.name, *key_of(o)) for o in self.sets.list()]

    def synced(self) -> bool:
        return all(i.synced.is_set() for i in (self.sets, self.dpus, self.nodes, self.flavors))

    # ---- reconcile ---------------------------------------------------------------------------------------
    async def reconcile(self, key: ObjectKey) -> float | None:
        namespace, name = key.namespace, key.name
        if not self.synced():
            # A partial Node or DPU list would delete DPUs that must stay.
            raise TemporaryError("DPUSet/DPU/Node caches not synced yet", delay=CACHE_RETRY)
        dpuset = self.sets.get(namespace, name)
        if dpuset is None:
            self._deleting.pop((namespace, name), None)
            return None
        rest = self.ctx.clusters.host.rest
        if dpuset["metadata"].get("deletionTimestamp"):
            self._deleting.pop((namespace, name), None)
            await objects.remove_finalizer(rest, DPU_SET, dpuset, LEGACY_FINALIZER)
            return None
        in_namespace = self.dpus.by_index(NAMESPACE_INDEX, namespace)
        deleting = self._still_deleting((namespace, name), in_namespace)
        plan = compute_plan(dpuset, self.nodes.list(), in_namespace, deleting)
        errors, conflict = await self._apply(dpuset, plan)
        at = objects.now()
        conditions = objects.build_conditions(dpuset, dpuset_status.CONDITION_TYPES,
                                              dpuset_status.marks(plan, dpuset, errors), at)
        # No DPUs: the field is left out, not applied as {} (which server-side apply turns into null, and the
        # schema refuses: 422); leaving it out of our apply removes it.
        statistics = dict(plan.statistics) or None
        status = objects.status_body(dpuset, conditions, dpuStatistics=statistics)
        try:
            await objects.write_status(rest, DPU_SET, dpuset, status, self.ctx.settings.kube.field_manager,
                                       absent=() if statistics else ("dpuStatistics",))
        except KubeError as exc:
            if not exc.not_found:  # deleted meanwhile: its DELETED event ends this key
                raise
        if errors:
            raise TemporaryError(f"DPUSet {namespace}/{name}: {'; '.join(errors)}")
        if conflict:
            raise TemporaryError(f"DPUSet {namespace}/{name}: a DPU changed meanwhile", objects.CACHE_LAG_RETRY)
        return None

    def _still_deleting(self, key: tuple[str, str], dpus: list[Obj]) -> set[str]:
        """Uids we deleted that the cache still shows alive (no deletionTimestamp); the rest are seen."""
        pending = self._deleting.get(key)
        if not pending:
            return set()
        alive = {d["metadata"].get("uid") for d in dpus if not d["metadata"].get("deletionTimestamp")}
        pending &= alive
        if not pending:
            del self._deleting[key]
        return set(pending)

    async def _apply(self, dpuset: Obj, plan: Plan) -> tuple[list[str], bool]:
        """Carry out the plan; the API errors met (for the status) and whether a guarded write lost a race."""
        rest = self.ctx.clusters.host.rest
        namespace, set_name = key_of(dpuset)
        errors: list[str] = []
        conflict = False
        async def create(want: Wanted) -> None:
            async with creating:
                try:
                    await rest.apply(DPU, want.body, self.ctx.settings.kube.field_manager)
                except KubeError as exc:
                    errors.append(f"creating DPU {want.name}: {exc}")
                    await self._event(dpuset, WARNING, "FailedCreate",
                                      f"Failed to create DPU {namespace}/{want.name} on node {want.node}: {exc}")
                    return
            spec = want.body["spec"]
            # The template in the note also keeps a rolling update's re-creation from being deduplicated with
            # the first creation (and a repeated apply before our cache shows the DPU yields no second Event).
            note = (f"Created DPU {namespace}/{want.name} on node {want.node} with bfb {spec['bfb']}"
                    + (f", dpuFlavor {spec['dpuFlavor']}" if spec.get("dpuFlavor") else ""))
            log.info("DPUSet %s/%s: %s", namespace, set_name, note)
            await self._event(dpuset, NORMAL, "SuccessfulCreate", note)

        # Concurrently (bounded): one at a time, a fleet's last DPU waited ~N apiserver round trips for its turn
        # (bench/provision, N=100: 15-75 s of the total), while each DPU alone provisions in seconds.
        creating = asyncio.Semaphore(CREATES_AT_ONCE)
        await asyncio.gather(*(create(want) for want in plan.creates))
        for gap in plan.gaps:
            if gap.warn:
                await self._event(dpuset, WARNING, "FailedCreate", f"No DPU created: {gap.message}")
        for patch in plan.patches:
            try:
                await rest.merge_patch(DPU, patch.name, patch.body, namespace)
            except KubeError as exc:
                if exc.conflict:
                    conflict = True
                elif not exc.not_found:
                    errors.append(f"updating DPU {patch.name}: {exc}")
                continue
            log.info("DPUSet %s/%s: DPU %s: %s", namespace, set_name, patch.name, patch.why)
        for deletion in plan.deletes:
            try:
                await rest.delete(DPU, deletion.name, namespace, uid=deletion.uid)
            except KubeError as exc:
                if exc.conflict:  # the name holds another DPU now: the one we meant is gone
                    continue
                errors.append(f"deleting DPU {deletion.name}: {exc}")
                await self._event(dpuset, WARNING, "FailedDelete",
                                  f"Failed to delete DPU {namespace}/{deletion.name} ({deletion.why}): {exc}")
                continue
            self._deleting.setdefault((namespace, set_name), set()).add(deletion.uid)
            log.info("DPUSet %s/%s: deleted DPU %s: %s", namespace, set_name, deletion.name, deletion.why)
            await self._event(dpuset, NORMAL, "SuccessfulDelete",
                              f"Deleted DPU {namespace}/{deletion.name} on node {deletion.node}: {deletion.why}")
        return errors, conflict

    async def _event(self, dpuset: Obj, type_: str, reason: str, note: str) -> None:
        await self.ctx.events.emit(self.ctx.clusters.host.rest, dpuset, "DPUSet", type_, reason, note)
