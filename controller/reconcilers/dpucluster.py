"""DPUCluster → a DPU-cluster client, and the cluster's `Created`/`Ready` conditions and phase (upstream's
static cluster manager and the provisioning controller's DPUCluster health check, in one reconciler).

Connection: for each DPUCluster with `spec.kubeconfig` set, read the Secret it names (key `admin.conf`,
exactly one cluster and one user) and connect to that cluster; reconnect when the kubeconfig changes;
disconnect when the DPUCluster goes away or its kubeconfig is emptied. A Secret that is missing or unusable
leaves an existing connection in place (a typo in an edited Secret must not drop the DPU cluster's state)
and is reported as a Warning Event and in `Created`. The lab may point the Secret at the host apiserver
itself (one apiserver for both clusters).

Status, as upstream:
- `Created` (the cluster manager's condition): for `static`, True `Created` once spec.kubeconfig names a
  Secret whose `admin.conf` is a usable kubeconfig; else False `EmptyKubeconfig`, `KubeconfigSecretNotFound`
  or `KubeconfigInvalid`, the message naming the Secret and key (upstream only checks that the field is set).
  `kamaji` is not implemented here: False `KamajiNotImplemented`. A vendor type (`prefix/name`) has its own
  cluster manager: its `Created` is read, never written.
- phase Pending → Creating (first pass) → Ready / NotReady: once every condition but `Ready` is True, the
  cluster's `/version` is asked through the connected client. Success: `Ready`=True `HealthCheckPassed`, the
  message giving the server version, the DPU cluster's Node count and the DPUs assigned against maxNodes
  (the kind has no version field; the `Version` column shows spec.version). Failure: `Ready`=False
  `HealthCheckFailed` naming the server and the error, phase NotReady. A Ready or NotReady cluster whose
  other conditions degrade is NotReady, `Ready`=False `ClusterNotCreated` (upstream leaves `Ready` stale).
- Re-checked every `health_period` (Secret included, so a fixed or rotated Secret is picked up within one
  period), on DPUCluster changes, and when a Node joins or leaves the DPU cluster or a DPU is (un)assigned.
  The Secret is read with `get` only: the controller may never list or watch Secrets (packaging RBAC), so
  there is no Secret watch; the period bounds how late a Secret change is seen.

Status is written by server-side apply on the status subresource, our condition types only (the
conditions list is a map keyed by type), and only when something differs; lastTransitionTime moves only when
a condition's status does. No finalizer is added (nothing outlives the object but the in-memory client, which
the DELETED event drops); upstream's two finalizers, if an object carries them, are removed on deletion so
they never block it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import aiohttp
from kubernetes_asyncio.client import ApiException, VersionApi

from dpf.controller.api import conditions as cond
from dpf.controller.api.meta import Condition
from dpf.controller.api.provisioning import DPUCluster as DPUClusterModel
from dpf.controller.clusters import Cluster
from dpf.controller.errors import TemporaryError
from dpf.controller.kube import clients
from dpf.controller.kube.events import WARNING
from dpf.controller.kube.informer import Informer, key_of, key_of_event
from dpf.controller.kube.rest import SECRET, KubeError, Obj
from dpf.controller.reconcilers import objects
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.keys import ObjectKey
from dpf.controller.reconcilers.kinds import DPU, DPU_CLUSTER, NODE

log = logging.getLogger(__name__)

CREATED, READY = "Created", "Ready"
PENDING, CREATING, PHASE_READY, NOT_READY = "Pending", "Creating", "Ready", "NotReady"
STATIC, KAMAJI = "static", "kamaji"
KEY = "admin.conf"
DEFAULT_MAX_NODES = 1000  # the CRD default of spec.maxNodes
ASSIGNED_INDEX = "dpucluster"  # DPUs by "namespace/name" of the DPUCluster their spec.cluster names
NEXT_PASS = 0.1  # Pending → Creating written: health-check right after, seconds
UNSYNCED_RETRY = 1.0  # the DPU cluster's Nodes are not listed yet: count them again soon, seconds


@dataclass(frozen=True)
class Mark:
    """One condition's outcome."""

    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Kubeconfig:
    """What reading spec.kubeconfig gave: the Created outcome for a static cluster, and whether a client is
    connected with the Secret's current content."""

    mark: Mark
    usable: bool


class DPUClusterReconciler(Reconciler):
    name = "dpucluster"
    kind = "DPUCluster"

    def setup(self) -> None:
        self.settings = self.ctx.settings.dpucluster
        host = self.ctx.clusters.host
        self.informer: Informer = host.informer(DPU_CLUSTER)
        self.informer.add_handler(lambda _t, old, new: self._enqueue(*key_of_event(old, new)))
        self.dpus: Informer = host.informer(DPU)
        self.dpus.add_index(ASSIGNED_INDEX, lambda o: [c] if (c := assigned_cluster(o)) else [])
        self.dpus.add_handler(self._on_dpu)
        self.need_dpu_kind(NODE)
        self.ctx.clusters.on_dpu_added(self._on_cluster_added)

    def _enqueue(self, namespace: str, name: str) -> None:
        self.ctx.queue.add(ObjectKey(self.name, namespace, name))

    def _on_dpu(self, _type: str, old: Obj | None, new: Obj | None) -> None:
        before = assigned_cluster(old) if old is not None else None
        after = assigned_cluster(new) if new is not None and not new["metadata"].get("deletionTimestamp") else None
        if before != after or _type != "MODIFIED":
            for cluster in {c for c in (before, after) if c is not None}:
                self._enqueue(*cluster.split("/", 1))

    def _on_cluster_added(self, cluster: Cluster) -> None:
        namespace, name = cluster.name.split("/", 1)

        def on_node(type_: str, _old: Obj | None, _new: Obj | None) -> None:
            if type_ != "MODIFIED":  # a Node's heartbeats do not change the count
                self._enqueue(namespace, name)

        cluster.informer(NODE).add_handler(on_node)

    def all_keys(self) -> Iterable[Hashable]:
        return [ObjectKey(self.name, *key_of(o)) for o in self.informer.list()]

    def synced(self) -> bool:
        return self.informer.synced.is_set() and self.dpus.synced.is_set()

    # ---- reconcile ---------------------------------------------------------------------------------------
    async def reconcile(self, key: ObjectKey) -> float | None:
        namespace, name = key.namespace, key.name
        cluster_name = f"{namespace}/{name}"
        obj = self.informer.get(namespace, name)
        if obj is None:
            await self.ctx.clusters.remove_dpu(cluster_name)
            return None
        if obj["metadata"].get("deletionTimestamp"):
            await self.ctx.clusters.remove_dpu(cluster_name)
            await self._release(obj)
            return None
        kubeconfig = await self._connect(obj, cluster_name)
        spec = obj.get("spec") or {}
        type_ = spec.get("type") or ""
        current = objects.current_conditions(obj)
        if type_ == STATIC:
            created: Mark | None = kubeconfig.mark
        elif type_ == KAMAJI:
            created = Mark(False, "KamajiNotImplemented",
                           "spec.type kamaji is not implemented by this controller (only static is): run the "
                           "cluster's control plane yourself and describe it with a static DPUCluster whose "
                           f"spec.kubeconfig names a Secret with key {KEY}")
        else:
            created = None  # a vendor's cluster manager owns Created
        marks = {} if created is None else {CREATED: created}
        blocking = _not_true(current, marks)
        phase = (obj.get("status") or {}).get("phase") or PENDING
        delay = self.settings.health_period
        if blocking:
            marks[READY] = Mark(False, "ClusterNotCreated", "not health-checked while " + "; ".join(blocking))
            if phase in (PHASE_READY, NOT_READY):
                phase = NOT_READY
        elif phase == PENDING:
            phase = CREATING  # upstream's first pass; the health check runs on the next
            delay = NEXT_PASS
        elif not kubeconfig.usable:
            marks[READY] = Mark(False, "HealthCheckFailed", kubeconfig.mark.message)
            phase = NOT_READY
        else:
            health, counted = await self._health_check(obj, cluster_name)
            marks[READY] = health
            phase = PHASE_READY if health.status else NOT_READY
            if not counted:
                delay = UNSYNCED_RETRY
        await self._write_status(obj, phase, marks)
        return delay

    # ---- the kubeconfig Secret and the connection --------------------------------------------------------
    async def _connect(self, obj: Obj, cluster_name: str) -> Kubeconfig:
        namespace = obj["metadata"]["namespace"]
        secret_name = (obj.get("spec") or {}).get("kubeconfig") or ""
        if not secret_name:
            await self.ctx.clusters.remove_dpu(cluster_name)
            return Kubeconfig(Mark(False, "EmptyKubeconfig",
                                   f"spec.kubeconfig is empty: name a Secret in {namespace} with key {KEY}"),
                              usable=False)
        where = f"Secret {namespace}/{secret_name} key {KEY}"
        try:
            secret = await self.ctx.clusters.host.rest.get(SECRET, secret_name, namespace)
        except KubeError as exc:
            raise TemporaryError(f"reading Secret {namespace}/{secret_name}: {exc}") from None
        if secret is None:
            message = f"Secret {namespace}/{secret_name} named by spec.kubeconfig does not exist"
            await self._warn(obj, "KubeconfigMissing", message)
            return Kubeconfig(Mark(False, "KubeconfigSecretNotFound", f"{message} (want key {KEY})"),
                              usable=False)
        try:
            document = clients.parse_admin_conf(secret)
        except clients.KubeconfigError as exc:
            await self._warn(obj, "KubeconfigInvalid", str(exc))
            return Kubeconfig(Mark(False, "KubeconfigInvalid", str(exc)), usable=False)  # names Secret and key
        digest = hashlib.sha256((secret.get("data") or {})[KEY].encode()).hexdigest()
        current = self.ctx.clusters.dpu.get(cluster_name)
        if current is None or current.config_hash != digest:
            try:
                rest = await clients.from_kubeconfig_dict(document, f"dpu/{cluster_name}",
                                                          self.ctx.settings.kube.request_timeout)
            except Exception as exc:  # noqa: BLE001 - the client library's own checks (certificates, auth)
                await self._warn(obj, "KubeconfigInvalid", f"{where}: {exc}")
                return Kubeconfig(Mark(False, "KubeconfigInvalid", f"{where}: {exc}"), usable=False)
            try:
                await self.ctx.clusters.remove_dpu(cluster_name)
                self.ctx.clusters.add_dpu(cluster_name, rest, digest)
            except BaseException:
                await rest.close()  # the controller is stopping: the new client was never handed over
                raise
        return Kubeconfig(Mark(True, CREATED, f"{where}: {_server(self.ctx.clusters.dpu[cluster_name])}"),
                          usable=True)

    # ---- the health check --------------------------------------------------------------------------------
    async def _health_check(self, obj: Obj, cluster_name: str) -> tuple[Mark, bool]:
        """The Ready outcome, and whether the DPU cluster's Nodes were counted (their cache has synced)."""
        cluster = self.ctx.clusters.dpu[cluster_name]
        server = _server(cluster)
        timeout = self.settings.health_timeout
        try:
            info = await asyncio.wait_for(VersionApi(cluster.rest.api).get_code(_request_timeout=timeout),
                                          timeout)
        except ApiException as exc:
            return Mark(False, "HealthCheckFailed",
                        f"GET {server}/version: HTTP {exc.status} {exc.reason}: {_body(exc)}"), True
        except TimeoutError:
            return Mark(False, "HealthCheckFailed", f"GET {server}/version: no answer within {timeout:g}s"), True
        except aiohttp.ClientError as exc:
            return Mark(False, "HealthCheckFailed", f"GET {server}/version: {exc}"), True
        spec = obj.get("spec") or {}
        version = info.git_version or "unknown"
        stated = spec.get("version")
        said = f"Kubernetes {version}" + (f" (spec.version {stated})" if stated and stated != version else "")
        nodes = cluster.informer(NODE)
        max_nodes = int(spec.get("maxNodes") or DEFAULT_MAX_NODES)
        assigned = sum(1 for d in self.dpus.by_index(ASSIGNED_INDEX, cluster_name)
                       if not d["metadata"].get("deletionTimestamp"))
        counted = nodes.synced.is_set()
        node_text = f"{len(nodes.list())} Nodes" if counted else "Nodes not yet listed"
        return Mark(True, "HealthCheckPassed",
                    f"{said} at {server}; {node_text}, {assigned} DPUs assigned of maxNodes {max_nodes}"), counted

    # ---- writes ------------------------------------------------------------------------------------------
    async def _write_status(self, obj: Obj, phase: str, marks: dict[str, Mark]) -> None:
        generation = int(obj["metadata"].get("generation") or 0)
        at = objects.now()
        current = objects.current_conditions(obj)
        mine: list[Condition] = [c for c in current if c.type in marks]
        for type_, mark in marks.items():
            mine = cond.set_condition(mine, type_, "True" if mark.status else "False", mark.reason, mark.message,
                                      now=at, generation=generation)
        before = {c.type: c.to_json() for c in current if c.type in marks}
        after = {c.type: c.to_json() for c in mine}
        old_phase = (obj.get("status") or {}).get("phase")
        if old_phase == phase and before == after:
            return
        meta = obj["metadata"]
        body = {"apiVersion": DPU_CLUSTER.api_version, "kind": DPU_CLUSTER.kind,
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "status": {"phase": phase, "conditions": list(after.values())}}
        await self.ctx.clusters.host.rest.apply(DPU_CLUSTER, body, self.ctx.settings.kube.field_manager,
                                                subresource="status")
        if old_phase != phase:
            log.info("DPUCluster %s: phase %s → %s (%s)", objects.name_of(obj), old_phase or PENDING, phase,
                     "; ".join(f"{t} {m.reason}" for t, m in marks.items()))

    async def _release(self, obj: Obj) -> None:
        """Remove upstream's finalizers from a DPUCluster being deleted: the internal one is the provisioning
        controller's (this reconciler's role), the clean-up one the static cluster manager's."""
        ours = [DPUClusterModel.FINALIZERS[1]]
        if (obj.get("spec") or {}).get("type") == STATIC:
            ours.append(DPUClusterModel.FINALIZERS[0])
        for finalizer in ours:
            if finalizer in (obj["metadata"].get("finalizers") or ()):
                await objects.remove_finalizer(self.ctx.clusters.host.rest, DPU_CLUSTER, obj, finalizer)
                return  # the patch changed resourceVersion: the next event removes the other one

    async def _warn(self, obj: Obj, reason: str, note: str) -> None:
        await self.ctx.events.emit(self.ctx.clusters.host.rest, obj, "DPUCluster", WARNING, reason, note)


def assigned_cluster(dpu: Obj) -> str | None:
    """"namespace/name" of the DPUCluster a DPU's spec.cluster names (an empty namespace: the DPU's own)."""
    cluster = (dpu.get("spec") or {}).get("cluster") or {}
    name = cluster.get("name")
    if not name:
        return None
    return f"{cluster.get('namespace') or dpu['metadata'].get('namespace', '')}/{name}"


def _not_true(current: list[Condition], marks: dict[str, Mark]) -> list[str]:
    """Every condition but Ready that is not True (ours from `marks`, others' from the object), described;
    Created counts even when absent (upstream waits for it)."""
    states = {c.type: (c.status == "True", c.reason, c.message) for c in current if c.type != READY}
    states.update({t: (m.status, m.reason, m.message) for t, m in marks.items()})
    states.setdefault(CREATED, (False, "Pending", "the cluster manager has not reported yet"))
    return [f"{t} is False ({reason}: {message})" if message else f"{t} is False ({reason})"
            for t, (ok, reason, message) in sorted(states.items()) if not ok]


def _server(cluster: Cluster) -> str:
    return str(cluster.rest.api.configuration.host)


def _body(exc: ApiException) -> str:
    text = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
    return text[:500]
