"""DPUServiceNAD (host cluster, DPF v25.4) → a NetworkAttachmentDefinition of the same name and namespace in every
DPU cluster, for the SFC CNI plugin (`dpf-sfc-cni`, docs/cni.md).

The NAD's config: `{"cniVersion": "1.0.0", "name": <name>, "type": "dpf-sfc-cni", "bridge": spec.bridge or
"br-sfc"}`, plus `mtu` when set and, with `ipam: true`, `"ipam": {"type": "nv-ipam"}` (the pool is named per
pod, as upstream: a DPUServiceChain port's ipam or Multus cni-args `poolNames`). Labels: `spec.metadata.labels`
plus `dpu.nvidia.com/dpuservicenad-name` / `-namespace`; annotations: `spec.metadata.annotations` plus, for `sf`
and `vf`, `k8s.v1.cni.cncf.io/resourceName` (`nvidia.com/bf_sf`, `nvidia.com/bf_sf_trusted` with the
annotation `dpuservicenad.svc.dpu.nvidia.com/use-trusted-sfs`, `nvidia.com/bf_vf`); `veth` asks for none.

The NADs are read and written with plain requests, not watched: the NetworkAttachmentDefinition CRD is Multus'
and may be missing from a DPU cluster, which must not hold back the caches every other reconciler waits for.
A DPU cluster without it is named in `DPUNADObjectReconciled`. Reconciled again on every DPUServiceNAD change,
when a DPU cluster connects, and every `resync` seconds (a NAD edited or deleted in a DPU cluster is put back).

Status (upstream's condition types): `DPUNADObjectReconciled` (applied in every connected DPU cluster),
`DPUNADObjectReady` (every DPU cluster holds the current NAD), `Ready`. Deletion: the NADs are deleted from every
connected DPU cluster (only ones carrying this object's labels), then the finalizer
`svc.dpu.nvidia.com/dpuservicenad` goes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Iterable
from typing import Any

from dpf.controller.api import conditions as cond
from dpf.controller.api.svc import DPUServiceNAD
from dpf.controller.clusters import Cluster
from dpf.controller.kube.informer import Informer, key_of, key_of_event
from dpf.controller.kube.rest import Kind, KubeError, Obj
from dpf.controller.reconcilers import objects
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.keys import ObjectKey
from dpf.controller.reconcilers.kinds import SVC, V1ALPHA1

log = logging.getLogger(__name__)

DPU_SERVICE_NAD = Kind(SVC, V1ALPHA1, "dpuservicenads", "DPUServiceNAD")
NAD = Kind("k8s.cni.cncf.io", "v1", "network-attachment-definitions", "NetworkAttachmentDefinition")
FINALIZER = DPUServiceNAD.FINALIZERS[0]
NAME_LABEL = "dpu.nvidia.com/dpuservicenad-name"
NAMESPACE_LABEL = "dpu.nvidia.com/dpuservicenad-namespace"
RESOURCE_ANNOTATION = "k8s.v1.cni.cncf.io/resourceName"
TRUSTED_SFS_ANNOTATION = "dpuservicenad.svc.dpu.nvidia.com/use-trusted-sfs"
CNI_TYPE = "dpf-sfc-cni"
DEFAULT_BRIDGE = "br-sfc"
RECONCILED, READY_TYPE = "DPUNADObjectReconciled", "DPUNADObjectReady"
TYPES = (cond.READY, RECONCILED, READY_TYPE)
RESYNC = 60.0  # seconds: a NAD changed or removed in a DPU cluster is put back within this
RETRY = 5.0


def resource_name(obj: Obj) -> str | None:
    """The device-plugin resource the NAD asks for (None for veth). Pure."""
    kind = (obj.get("spec") or {}).get("resourceType")
    if kind == "sf":
        trusted = TRUSTED_SFS_ANNOTATION in (obj["metadata"].get("annotations") or {})
        return "nvidia.com/bf_sf_trusted" if trusted else "nvidia.com/bf_sf"
    if kind == "vf":
        return "nvidia.com/bf_vf"
    return None


def nad_body(obj: Obj) -> Obj:
    """The NetworkAttachmentDefinition a DPUServiceNAD stands for. Pure."""
    meta, spec = obj["metadata"], obj.get("spec") or {}
    config: dict[str, Any] = {"cniVersion": "1.0.0", "name": meta["name"], "type": CNI_TYPE,
                              "bridge": spec.get("bridge") or DEFAULT_BRIDGE}
    if spec.get("mtu"):
        config["mtu"] = spec["mtu"]
    if spec.get("ipam"):
        config["ipam"] = {"type": "nv-ipam"}
    template = spec.get("metadata") or {}
    labels = {**(template.get("labels") or {}), NAME_LABEL: meta["name"], NAMESPACE_LABEL: meta["namespace"]}
    annotations = dict(template.get("annotations") or {})
    resource = resource_name(obj)
    if resource:
        annotations[RESOURCE_ANNOTATION] = resource
    body_meta: dict[str, Any] = {"name": meta["name"], "namespace": meta["namespace"], "labels": labels}
    if annotations:
        body_meta["annotations"] = annotations
    return {"apiVersion": NAD.api_version, "kind": NAD.kind, "metadata": body_meta,
            "spec": {"config": json.dumps(config, sort_keys=True)}}


def _ours(nad: Obj, owner: Obj) -> bool:
    labels = nad["metadata"].get("labels") or {}
    return labels.get(NAME_LABEL) == owner["metadata"]["name"] and \
        labels.get(NAMESPACE_LABEL) == owner["metadata"]["namespace"]


class DPUServiceNADReconciler(Reconciler):
    name = "dpuservicenad"
    kind = "DPUServiceNAD"

    def setup(self) -> None:
        self.nads: Informer = self.ctx.clusters.host.informer(DPU_SERVICE_NAD)
        self.nads.add_handler(lambda _t, old, new: self._enqueue(*key_of_event(old, new)))
        self.ctx.clusters.on_dpu_added(self._on_cluster)

    def _enqueue(self, namespace: str, name: str) -> None:
        self.ctx.queue.add(ObjectKey(self.name, namespace, name))

    def _on_cluster(self, _cluster: Cluster) -> None:
        for obj in self.nads.list():
            self._enqueue(*key_of(obj))

    def all_keys(self) -> Iterable[Hashable]:
        return [ObjectKey(self.name, *key_of(o)) for o in self.nads.list()]

    def synced(self) -> bool:
        return self.nads.synced.is_set()

    async def reconcile(self, key: ObjectKey) -> float | None:
        obj = self.nads.get(key.namespace, key.name)
        if obj is None:
            return None
        host = self.ctx.clusters.host.rest
        if obj["metadata"].get("deletionTimestamp"):
            return await self._delete(obj)
        obj = await objects.add_finalizer(host, DPU_SERVICE_NAD, obj, FINALIZER)
        desired = nad_body(obj)
        problems: list[str] = []
        for cluster in sorted(self.ctx.clusters.dpu.values(), key=lambda c: c.name):
            try:
                await self._apply(cluster, obj, desired)
            except KubeError as exc:
                problems.append(self._explain(cluster, exc))
        where = f"NetworkAttachmentDefinition {key.namespace}/{key.name}"
        count = len(self.ctx.clusters.dpu)
        if problems:
            marks = [(RECONCILED, "False", cond.ERROR, "; ".join(problems)),
                     (READY_TYPE, "False", cond.PENDING, f"{where} is not in every DPU cluster")]
        elif count == 0:
            marks = [(RECONCILED, "True", cond.SUCCESS, ""),
                     (READY_TYPE, "False", cond.PENDING, "no DPU cluster is connected")]
        else:
            marks = [(RECONCILED, "True", cond.SUCCESS, ""), (READY_TYPE, "True", cond.SUCCESS, "")]
        conditions = objects.build_conditions(obj, TYPES, marks, objects.now())
        await objects.write_status(host, DPU_SERVICE_NAD, obj, objects.status_body(obj, conditions),
                                   self.ctx.settings.kube.field_manager)
        return RETRY if problems else RESYNC

    async def _apply(self, cluster: Cluster, owner: Obj, desired: Obj) -> None:
        namespace, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        current = await cluster.rest.get(NAD, name, namespace)
        if current is not None and not _ours(current, owner):
            raise KubeError(409, "NotOurs", f"{NAD.kind} {namespace}/{name} exists and was not made by this "
                                            "DPUServiceNAD; it is not overwritten")
        if not objects.child_differs(current, desired):
            return
        try:
            await cluster.rest.apply(NAD, desired, self.ctx.settings.kube.field_manager)
        except KubeError as exc:
            if not (exc.not_found and current is None):
                raise
            # The namespace, made when missing (as the mirror does); a missing CRD fails again below.
            await objects.ensure_namespace(cluster.rest, namespace)
            try:
                await cluster.rest.apply(NAD, desired, self.ctx.settings.kube.field_manager)
            except KubeError as again:
                if again.not_found:  # the namespace is there now: the resource type is not
                    raise KubeError(404, "CRDMissing", f"the {NAD.kind} CRD ({NAD.plural}.{NAD.group}, Multus') "
                                                      "is not installed") from None
                raise

    @staticmethod
    def _explain(cluster: Cluster, exc: KubeError) -> str:
        return f"DPU cluster {cluster.name}: {exc.message if exc.reason in ('CRDMissing', 'NotOurs') else exc}"

    async def _delete(self, obj: Obj) -> float | None:
        if FINALIZER not in (obj["metadata"].get("finalizers") or ()):
            return None
        namespace, name = key_of(obj)
        remaining: list[str] = []
        for cluster in self.ctx.clusters.dpu.values():
            try:
                current = await cluster.rest.get(NAD, name, namespace)
            except KubeError as exc:
                if exc.not_found:
                    continue  # no such resource: the CRD is not there, nor any NAD
                raise
            if current is None or not _ours(current, obj):
                continue
            remaining.append(cluster.name)
            if not current["metadata"].get("deletionTimestamp"):
                await cluster.rest.delete(NAD, name, namespace, uid=current["metadata"]["uid"])
        if remaining:
            message = f"waiting for {NAD.kind} {namespace}/{name} to be deleted in DPU cluster(s) " \
                      f"{', '.join(sorted(remaining))}"
            conditions = objects.build_conditions(obj, TYPES, [(RECONCILED, "False", cond.AWAITING_DELETION,
                                                                message)], objects.now())
            await objects.write_status(self.ctx.clusters.host.rest, DPU_SERVICE_NAD, obj,
                                       objects.status_body(obj, conditions), self.ctx.settings.kube.field_manager)
            return 1.0
        await objects.remove_finalizer(self.ctx.clusters.host.rest, DPU_SERVICE_NAD, obj, FINALIZER)
        log.info("DPUServiceNAD %s/%s: NetworkAttachmentDefinitions deleted", namespace, name)
        return None
