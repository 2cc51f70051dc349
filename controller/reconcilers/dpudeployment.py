"""DPUDeployment (host cluster) → DPUServiceInterfaces, DPUServices, a DPUServiceChain, DPUSets (upstream DPF v24.10).

Each pass reads the watch caches, plans with the pure `dpudeployment_plan.py` and writes only differences:
1. `PrerequisitesReady`: the BFB, the DPUFlavor and each service's DPUServiceTemplate and DPUServiceConfiguration
   exist in the namespace and name the service key as their `deploymentServiceName`; otherwise False `Pending`
   naming each one, and no child is written. Every dependency a live DPUDeployment names carries the finalizer
   `dpu.nvidia.com/dpudeployment` and the label `dpu.nvidia.com/consumed-by-dpudeployment-name`; a marked one
   that no live DPUDeployment names any more is unmarked (see `dpudeployment_plan.desired_mark` for how two
   DPUDeployments sharing one dependency are handled).
2. `ResourceFittingReady`: the templates' resourceRequirements fit in the flavor (False `Failure` otherwise).
3. The children, server-side applied with a controller ownerReference and the owner label; children of this
   DPUDeployment (by controller uid) that the spec no longer wants are deleted (uid precondition).
   `<Kind>sReconciled` is False `Error` naming the child and the apiserver's answer when a write fails;
   `<Kind>sReady` mirrors the children's `Ready` (DPUSets included, unlike upstream's hard-coded True).
Template, configuration, BFB and flavor changes re-enqueue the DPUDeployments naming them; child changes
enqueue their controlling DPUDeployment.

Delete (finalizer `dpu.nvidia.com/dpudeployment`), in upstream's order: the chains, interfaces and services first
(AwaitingDeletion "There are still N DPUServices that are not completely deleted"), then the DPUSets, then the
dependencies are unmarked and the finalizer removed. The children left are asked of the apiserver, not the cache: a
child written by a pass racing the deletion must not be missed (the garbage collector would still take it, but
out of order).

Key: (reconciler name, namespace, name).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable

from dpf.controller.api import conditions as cond
from dpf.controller.errors import TemporaryError
from dpf.controller.kube.informer import Handler, Informer, key_of, key_of_event
from dpf.controller.kube.rest import Kind, KubeError, Obj
from dpf.controller.reconcilers import dpudeployment_plan as plan
from dpf.controller.reconcilers import objects
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.keys import ObjectKey
from dpf.controller.reconcilers.kinds import (
    BFB,
    DPU_DEPLOYMENT,
    DPU_FLAVOR,
    DPU_SERVICE_CONFIGURATION,
    DPU_SERVICE_TEMPLATE,
)

log = logging.getLogger(__name__)

REFS_INDEX = "dpudeployment.refs"  # DPUDeployment informer: "<Kind>/<namespace>/<name>" of each dependency
MARKED_INDEX = "dpudeployment.marked"  # dependency informers: the namespace of objects carrying our mark
OWNER_INDEX = "dpudeployment.owner"  # child informers: the controlling DPUDeployment's uid
DELETE_RETRY = 5.0  # upstream requeues every 10 s; child deletions also enqueue us through the watches
ERROR_RETRY = 10.0
CACHE_RETRY = 0.5


def _live(obj: Obj) -> bool:
    return not obj["metadata"].get("deletionTimestamp")


def _refs(obj: Obj) -> list[str]:
    """Index: the dependencies a live DPUDeployment names (a deleting one no longer holds them)."""
    if not _live(obj):
        return []
    namespace = obj["metadata"].get("namespace", "")
    return sorted(f"{kind}/{namespace}/{name}" for kind, name in plan.references(obj))


def _marked(obj: Obj) -> list[str]:
    return [obj["metadata"].get("namespace", "")] if plan.is_marked(obj) else []


class DPUDeploymentReconciler(Reconciler):
    name = "dpudeployment"
    kind = "DPUDeployment"

    def setup(self) -> None:
        host = self.ctx.clusters.host
        self.deployments: Informer = host.informer(DPU_DEPLOYMENT)
        self.deployments.add_index(REFS_INDEX, _refs)
        self.deployments.add_handler(lambda _t, old, new: self._enqueue(*key_of_event(old, new)))
        self.deps: dict[str, Informer] = {k.kind: host.informer(k) for k in plan.DEPENDENCY_KINDS}
        for kind_name, informer in self.deps.items():
            informer.add_index(MARKED_INDEX, _marked)
            informer.add_handler(self._dependency_changed(kind_name))
        self.children: dict[str, Informer] = {c.kind.kind: host.informer(c.kind) for c in plan.CHILD_KINDS}
        for informer in self.children.values():
            informer.add_index(OWNER_INDEX, objects.controller_uid(DPU_DEPLOYMENT.kind))
            informer.add_handler(self._child_changed)

    # ---- wiring ------------------------------------------------------------------------------------------
    def _enqueue(self, namespace: str, name: str) -> None:
        self.ctx.queue.add(ObjectKey(self.name, namespace, name))

    def _dependency_changed(self, kind_name: str) -> Handler:
        def changed(_type: str, old: Obj | None, new: Obj | None) -> None:
            namespace, name = key_of_event(old, new)
            for dd in self.deployments.by_index(REFS_INDEX, f"{kind_name}/{namespace}/{name}"):
                self._enqueue(*key_of(dd))
        return changed

    def _child_changed(self, _type: str, old: Obj | None, new: Obj | None) -> None:
        for obj in (old, new):
            if obj is not None and (owner := objects.controller_name(obj, DPU_DEPLOYMENT.kind)):
                self._enqueue(obj["metadata"].get("namespace", ""), owner)

    def all_keys(self) -> Iterable[Hashable]:
        return [ObjectKey(self.name, *key_of(o)) for o in self.deployments.list()]

    def synced(self) -> bool:
        informers = [self.deployments, *self.deps.values(), *self.children.values()]
        return all(i.synced.is_set() for i in informers)

    # ---- reconcile ---------------------------------------------------------------------------------------
    async def reconcile(self, key: ObjectKey) -> float | None:
        if not self.synced():
            # A partial child list would read as "nothing to delete", a partial dependency list as "missing".
            raise TemporaryError("DPUDeployment caches not synced yet", delay=CACHE_RETRY)
        dd = self.deployments.get(key.namespace, key.name)
        if dd is None:
            return None
        if not _live(dd):
            return await self._delete(dd)
        rest = self.ctx.clusters.host.rest
        dd = await objects.add_finalizer(rest, DPU_DEPLOYMENT, dd, plan.FINALIZER)
        deps = self._dependencies(dd)
        problems = plan.prerequisite_problems(dd, deps)
        try:
            await self._mark_dependencies(key.namespace)
        except KubeError as exc:
            await self._write(dd, [(plan.PREREQS, "False", cond.ERROR, f"marking the dependencies: {exc}")])
            raise TemporaryError(f"DPUDeployment {key}: marking the dependencies: {exc}", ERROR_RETRY) from None
        if problems:
            await self._write(dd, [(plan.PREREQS, "False", cond.PENDING, "; ".join(problems))])
            return None  # the dependencies' watches bring us back
        marks: list[plan.Mark] = [(plan.PREREQS, "True", cond.SUCCESS, "")]
        templates = {k: v for k, v in deps.templates.items() if v is not None}
        configurations = {k: v for k, v in deps.configurations.items() if v is not None}
        assert deps.flavor is not None  # prerequisite_problems said so
        try:
            unfit = plan.fitting_problem(templates, deps.flavor)
        except (ValueError, ArithmeticError) as exc:
            unfit = f"a resource quantity does not parse: {exc}"
        if unfit:
            await self._write(dd, [*marks, (plan.FITTING, "False", cond.FAILURE, unfit)])
            return None
        marks.append((plan.FITTING, "True", cond.SUCCESS, ""))
        wanted = plan.plan_children(dd, templates, configurations)
        failed = False
        for child_kind in plan.CHILD_KINDS:
            desired = wanted[child_kind.kind.kind]
            errors = await self._apply(dd, child_kind, desired)
            failed = failed or bool(errors)
            informer = self.children[child_kind.kind.kind]
            marks.append(plan.reconciled_mark(child_kind, errors))
            marks.append(plan.ready_mark(child_kind, key.namespace, desired,
                                         {name: informer.get(key.namespace, name) for name in desired}))
        await self._write(dd, marks)
        return ERROR_RETRY if failed else None

    def _dependencies(self, dd: Obj) -> plan.Dependencies:
        namespace = dd["metadata"].get("namespace", "")
        dpus = plan.spec_of(dd).get("dpus") or {}
        def get(kind: Kind, name: str | None) -> Obj | None:
            return self.deps[kind.kind].get(namespace, name) if name else None
        deps = plan.Dependencies(bfb=get(BFB, dpus.get("bfb")), flavor=get(DPU_FLAVOR, dpus.get("flavor")))
        for key, refs in plan.services_of(dd).items():
            deps.templates[key] = get(DPU_SERVICE_TEMPLATE, refs.get("serviceTemplate"))
            deps.configurations[key] = get(DPU_SERVICE_CONFIGURATION, refs.get("serviceConfiguration"))
        return deps

    async def _mark_dependencies(self, namespace: str) -> None:
        """Give every dependency in `namespace` its mark: the finalizer and label while a live DPUDeployment names
        it, neither once none does."""
        rest = self.ctx.clusters.host.rest
        for kind in plan.DEPENDENCY_KINDS:
            informer = self.deps[kind.kind]
            users: dict[str, set[str]] = {}
            for dd in self.deployments.list():
                if dd["metadata"].get("namespace", "") == namespace and _live(dd):
                    for ref_kind, ref in plan.references(dd):
                        if ref_kind == kind.kind:
                            users.setdefault(ref, set()).add(dd["metadata"]["name"])
            names = {o["metadata"]["name"] for o in informer.by_index(MARKED_INDEX, namespace)} | set(users)
            for name in sorted(names):
                obj = informer.get(namespace, name)
                if obj is None or (patch := plan.mark_patch(obj, users.get(name, ()))) is None:
                    continue
                try:
                    await rest.merge_patch(kind, name, patch, namespace)
                except KubeError as exc:
                    if exc.conflict:
                        raise TemporaryError(f"{kind.kind} {namespace}/{name} changed meanwhile; retrying",
                                             objects.CACHE_LAG_RETRY) from None
                    if not exc.not_found:
                        raise

    async def _apply(self, dd: Obj, child_kind: plan.ChildKind, desired: dict[str, Obj]) -> list[str]:
        """Write the children of one kind that differ and delete ours the spec no longer wants; the errors met."""
        rest = self.ctx.clusters.host.rest
        namespace = dd["metadata"].get("namespace", "")
        informer = self.children[child_kind.kind.kind]
        kind_name = child_kind.kind.kind
        errors = []
        for name, body in desired.items():
            current = informer.get(namespace, name)
            if current is not None and not _live(current):
                errors.append(f"{kind_name} {namespace}/{name} is still being deleted; it is re-created once it "
                              "is gone")
                continue
            if plan.child_differs(current, body):
                try:
                    await rest.apply(child_kind.kind, body, self.ctx.settings.kube.field_manager)
                except KubeError as exc:
                    errors.append(f"{kind_name} {namespace}/{name}: {exc}")
        for obj in informer.by_index(OWNER_INDEX, dd["metadata"]["uid"]):
            meta = obj["metadata"]
            if meta["name"] in desired or not _live(obj):
                continue
            try:
                await rest.delete(child_kind.kind, meta["name"], namespace, uid=meta["uid"])
                log.info("DPUDeployment %s/%s: deleted %s %s (no longer in the spec)", namespace,
                         dd["metadata"]["name"], kind_name, meta["name"])
            except KubeError as exc:
                if not exc.conflict:  # 409: the name holds another object now
                    errors.append(f"deleting {kind_name} {namespace}/{meta['name']}: {exc}")
        return errors

    async def _write(self, dd: Obj, marks: list[plan.Mark]) -> None:
        conditions = objects.build_conditions(dd, plan.TYPES, marks, objects.now())
        try:
            await objects.write_status(self.ctx.clusters.host.rest, DPU_DEPLOYMENT, dd,
                                       objects.status_body(dd, conditions), self.ctx.settings.kube.field_manager)
        except KubeError as exc:
            if not exc.not_found:  # deleted meanwhile: its DELETED event ends this key
                raise

    async def _children_left(self, dd: Obj, child_kind: plan.ChildKind) -> int:
        """Delete this DPUDeployment's children of one kind (asked of the apiserver); how many are left."""
        rest = self.ctx.clusters.host.rest
        namespace, uid = dd["metadata"].get("namespace", ""), dd["metadata"]["uid"]
        left = [o for o in (await rest.list(child_kind.kind, namespace))["items"]
                if uid in objects.controller_uid(DPU_DEPLOYMENT.kind)(o)]
        for obj in left:
            if _live(obj):
                await rest.delete(child_kind.kind, obj["metadata"]["name"], namespace, uid=obj["metadata"]["uid"])
        return len(left)

    async def _delete(self, dd: Obj) -> float | None:
        if plan.FINALIZER not in (dd["metadata"].get("finalizers") or ()):
            return None
        namespace, name = key_of(dd)
        left = {child_kind: await self._children_left(dd, child_kind) for child_kind in plan.FIRST_DELETED}
        marks = [plan.awaiting_deletion_mark(k, n) for k, n in left.items()]
        if any(left.values()):
            await self._write(dd, marks)
            return DELETE_RETRY
        sets_left = await self._children_left(dd, plan.SETS)
        if sets_left:
            await self._write(dd, [*marks, plan.awaiting_deletion_mark(plan.SETS, sets_left)])
            return DELETE_RETRY
        await self._mark_dependencies(namespace)  # this one is deleting: it no longer holds anything
        try:
            await objects.remove_finalizer(self.ctx.clusters.host.rest, DPU_DEPLOYMENT, dd, plan.FINALIZER)
        except KubeError as exc:
            if exc.not_found:  # our cache lagged behind our own finalizer removal: it is gone already
                return None
            raise
        log.info("DPUDeployment %s/%s: children deleted, dependencies released", namespace, name)
        return None
