"""DPUFlavor and BFB in-use protection: deletion waits while a DPUSet or DPU in the same namespace uses them.

Upstream refuses such a delete in a validating webhook (upstream DPF v24.10); admission
cannot see other objects without one, so the controller keeps a protection finalizer on every DPUFlavor and
BFB instead. While a deleted one is still referenced, the finalizer stays, a Warning Event `InUse` names the
referencing objects (and a BFB shows `status.phase: Deleting`); once the last reference is gone the finalizer
is removed and the deletion completes. DPUSet/DPU changes re-trigger the objects they reference.

References: DPUSet `spec.dpuTemplate.spec.dpuFlavor` / `spec.dpuTemplate.spec.bfb.name`, DPU `spec.dpuFlavor`
/ `spec.bfb`. A DPU or DPUSet that is itself being deleted still counts until it is gone.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass

from dpf.controller.errors import TemporaryError
from dpf.controller.kube.events import WARNING
from dpf.controller.kube.informer import Handler, Informer, key_of, key_of_event
from dpf.controller.kube.rest import Kind, Obj
from dpf.controller.reconcilers import objects
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.keys import KindObjectKey
from dpf.controller.reconcilers.kinds import BFB, DPU, DPU_FLAVOR, DPU_SET

FLAVOR_FINALIZER = "provisioning.dpu.nvidia.com/dpuflavor-protection"
BFB_FINALIZER = "provisioning.dpu.nvidia.com/bfb-protection"  # upstream's name
MAX_NAMED = 10  # referencing objects named in the Event; the rest are counted


@dataclass(frozen=True)
class Protected:
    kind: Kind
    finalizer: str
    index: str  # index name on the DPU and DPUSet informers: "<namespace>/<name>" of the referenced object


FLAVOR_PROTECTION = Protected(DPU_FLAVOR, FLAVOR_FINALIZER, "dpuflavor")
BFB_PROTECTION = Protected(BFB, BFB_FINALIZER, "bfb")
PROTECTED = {p.kind.kind: p for p in (FLAVOR_PROTECTION, BFB_PROTECTION)}


def _ref(obj: Obj, name: str | None) -> list[str]:
    return [f"{obj['metadata'].get('namespace', '')}/{name}"] if isinstance(name, str) and name else []


def _template(obj: Obj) -> dict:
    return (((obj.get("spec") or {}).get("dpuTemplate") or {}).get("spec")) or {}


def dpuset_flavor(obj: Obj) -> list[str]:
    return _ref(obj, _template(obj).get("dpuFlavor"))


def dpuset_bfb(obj: Obj) -> list[str]:
    return _ref(obj, (_template(obj).get("bfb") or {}).get("name"))


def dpu_flavor(obj: Obj) -> list[str]:
    return _ref(obj, (obj.get("spec") or {}).get("dpuFlavor"))


def dpu_bfb(obj: Obj) -> list[str]:
    return _ref(obj, (obj.get("spec") or {}).get("bfb"))


class InUseProtectionReconciler(Reconciler):
    name = "inuseprotection"
    kind = "DPUFlavor/BFB"

    def setup(self) -> None:
        host = self.ctx.clusters.host
        self.protected: dict[str, Informer] = {k: host.informer(p.kind) for k, p in PROTECTED.items()}
        for kind_name, informer in self.protected.items():
            informer.add_handler(self._protected_changed(kind_name))
        self.users: list[tuple[str, Informer]] = [("DPUSet", host.informer(DPU_SET)), ("DPU", host.informer(DPU))]
        indexes = {"DPUSet": {FLAVOR_PROTECTION.index: dpuset_flavor, BFB_PROTECTION.index: dpuset_bfb},
                   "DPU": {FLAVOR_PROTECTION.index: dpu_flavor, BFB_PROTECTION.index: dpu_bfb}}
        for user_kind, informer in self.users:
            for index, func in indexes[user_kind].items():
                informer.add_index(index, func)
            informer.add_handler(self._user_changed(indexes[user_kind]))

    def _protected_changed(self, kind_name: str) -> Handler:
        def changed(_type: str, old: Obj | None, new: Obj | None) -> None:
            self._enqueue(kind_name, *key_of_event(old, new))
        return changed

    def _user_changed(self, index_funcs: Mapping[str, Callable[[Obj], list[str]]]) -> Handler:
        def changed(_type: str, old: Obj | None, new: Obj | None) -> None:
            self._on_user(index_funcs, old, new)
        return changed

    def _enqueue(self, kind_name: str, namespace: str, name: str) -> None:
        self.ctx.queue.add(KindObjectKey(self.name, kind_name, namespace, name))

    def _on_user(self, funcs: Mapping[str, Callable[[Obj], list[str]]], old: Obj | None, new: Obj | None) -> None:
        # Both old and new references: dropping a reference may be what lets a deletion finish.
        for kind_name, protected in PROTECTED.items():
            refs = {r for obj in (old, new) if obj is not None for r in funcs[protected.index](obj)}
            for ref in refs:
                namespace, name = ref.split("/", 1)
                if self.protected[kind_name].get(namespace, name) is not None:
                    self._enqueue(kind_name, namespace, name)

    def all_keys(self) -> Iterable[Hashable]:
        return [KindObjectKey(self.name, k, *key_of(o))
                for k, informer in self.protected.items() for o in informer.list()]

    def synced(self) -> bool:
        informers = [*self.protected.values(), *(i for _, i in self.users)]
        return all(i.synced.is_set() for i in informers)

    def users_of(self, protected: Protected, namespace: str, name: str) -> list[str]:
        """'DPUSet/x', 'DPU/y', ... referencing namespace/name, sorted."""
        return [f"{kind}/{obj['metadata']['name']}" for kind, informer in self.users
                for obj in informer.by_index(protected.index, f"{namespace}/{name}")]

    async def reconcile(self, key: KindObjectKey) -> float | None:
        kind_name, namespace, name = key.kind, key.namespace, key.name
        protected = PROTECTED[kind_name]
        obj = self.protected[kind_name].get(namespace, name)
        if obj is None:
            return None
        rest = self.ctx.clusters.host.rest
        meta = obj["metadata"]
        if not meta.get("deletionTimestamp"):
            await objects.add_finalizer(rest, protected.kind, obj, protected.finalizer)
            return None
        if protected.finalizer not in (meta.get("finalizers") or ()):
            return None  # deleted before we protected it: nothing of ours holds it
        if not all(i.synced.is_set() for _, i in self.users):
            # A partial view would look like "no references" and let the deletion through.
            raise TemporaryError(f"DPUSet/DPU caches not synced; keeping {kind_name} {namespace}/{name}", 1.0)
        users = self.users_of(protected, namespace, name)
        if not users:
            await objects.remove_finalizer(rest, protected.kind, obj, protected.finalizer)
            return None
        if protected is BFB_PROTECTION:
            await objects.write_status(rest, BFB, obj, {"phase": "Deleting"}, self.ctx.settings.kube.field_manager)
        named = ", ".join(users[:MAX_NAMED]) + (f" and {len(users) - MAX_NAMED} more" if len(users) > MAX_NAMED else "")
        await self.ctx.events.emit(rest, obj, kind_name, WARNING, "InUse",
                                   f"{kind_name} {namespace}/{name} is in use by {named}; deletion waits until "
                                   f"they no longer reference it")
        return None
