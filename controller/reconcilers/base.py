"""What a reconciler is, what it gets, and the registry of them (one module per CR kind).

A reconciler is level-triggered and idempotent: `reconcile(key)` reads caches (informers, node
registry), computes, and writes only differences. It raises TemporaryError/PermanentError
(dpf.controller.errors) and may return a requeue-after delay. Keys are tuples whose first element is the
reconciler's name; informer handlers and stream callbacks only enqueue keys.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from dpf.controller.cache.snapshot import Snapshot
from dpf.controller.cache.snapshot_cache import SnapshotCache
from dpf.controller.clusters import ClusterSet
from dpf.controller.kube.events import EventRecorder
from dpf.controller.kube.rest import Kind
from dpf.controller.kube.workqueue import WorkQueue
from dpf.controller.metrics import Metrics
from dpf.controller.reconcilers.kinds import DPU_CLUSTER
from dpf.controller.server.node_status import Nack, NodeRegistry
from dpf.controller.settings import ControllerSettings
from dpf.proto.v1 import nodestate_pb2 as pb


@dataclass
class Context:
    settings: ControllerSettings
    clusters: ClusterSet
    queue: WorkQueue
    cache: SnapshotCache
    nodes: NodeRegistry
    events: EventRecorder
    metrics: Metrics


class Reconciler:
    """Base class: override what applies. `name` prefixes every key this reconciler handles."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # the CR kind, for error metrics
    type_urls: ClassVar[tuple[str, ...]] = ()  # NodeState types whose ACKs, NACKs and reports it follows

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.dpu_kinds: set[Kind] = set()
        """The DPU-cluster kinds this reconciler reads: only their caches gate it (`dpu_synced`)."""

    def need_dpu_kind(self, kind: Kind, label_selector: str | None = None) -> None:
        """Watch `kind` in every DPU cluster for this reconciler (see `ClusterSet.need_dpu_kind`)."""
        self.dpu_kinds.add(kind)
        self.ctx.clusters.need_dpu_kind(kind, label_selector)

    def dpu_synced(self) -> bool:
        """Every DPU cluster is connected and the caches of this reconciler's kinds have synced. Only those: a
        watch that cannot sync (say, a DPU cluster's RBAC without DaemonSets, which only DPUServices read) must
        not stop the service chains."""
        return dpu_clusters_synced(self.ctx.clusters, self.dpu_kinds)

    def setup(self) -> None:
        """Register informers, indexes and handlers (called once, before anything runs)."""

    def all_keys(self) -> Iterable[Hashable]:
        """Every key to reconcile at start-up and on the periodic resync."""
        return ()

    def synced(self) -> bool:
        """True once every cache this reconciler reads has synced."""
        return True

    async def reconcile(self, key: Any) -> float | None:
        """Reconcile one work key: whatever hashable this reconciler enqueued (a tuple or a `keys` dataclass)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop work started outside reconcile (e.g. downloads): leadership ended or the controller is stopping."""

    # Stream callbacks for the types in `type_urls` (sync: enqueue only).
    def on_connect(self, node: str, role: str) -> None: ...
    def on_disconnect(self, node: str) -> None: ...
    def on_ack(self, node: str, type_url: str, snapshot: Snapshot) -> None: ...
    def on_nack(self, node: str, type_url: str, nack: Nack) -> None: ...
    def on_status(self, node: str, type_url: str, report: pb.StatusReport) -> None: ...


def dpu_clusters_synced(clusters: ClusterSet, kinds: Collection[Kind] | None = None) -> bool:
    """Every DPUCluster with a kubeconfig is connected and its watch caches of `kinds` (None: all) have synced (a
    reconciler that reads DPU-cluster state must not publish a partial view: agents would delete what is
    missing)."""
    clusters_informer = clusters.host.informer(DPU_CLUSTER)
    if not clusters_informer.synced.is_set():
        return False
    for obj in clusters_informer.list():
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") or not (obj.get("spec") or {}).get("kubeconfig"):
            continue
        cluster = clusters.dpu.get(f"{meta.get('namespace', '')}/{meta['name']}")
        if cluster is None or not cluster.synced(kinds):
            return False
    return True


def default_reconcilers(settings: ControllerSettings | None = None) -> list[type[Reconciler]]:
    """The registry: every reconciler the controller runs, in setup order. DPUServices go through one of two
    backends (`settings.services.backend`): Helm (the default) or ArgoCD."""
    from dpf.controller.reconcilers.bfb import BFBReconciler
    from dpf.controller.reconcilers.credentials import CredentialRequestReconciler
    from dpf.controller.reconcilers.csr import CSRReconciler
    from dpf.controller.reconcilers.dpu import DPUReconciler
    from dpf.controller.reconcilers.dpucluster import DPUClusterReconciler
    from dpf.controller.reconcilers.dpudeployment import DPUDeploymentReconciler
    from dpf.controller.reconcilers.dpuservice import DPUServiceReconciler
    from dpf.controller.reconcilers.dpuservice_argocd import ArgoCDDPUServiceReconciler
    from dpf.controller.reconcilers.dpuservicechain import DPUServiceChainReconciler
    from dpf.controller.reconcilers.dpuserviceinterface import DPUServiceInterfaceReconciler
    from dpf.controller.reconcilers.dpuserviceipam import DPUServiceIPAMReconciler
    from dpf.controller.reconcilers.dpuservicenad import DPUServiceNADReconciler
    from dpf.controller.reconcilers.dpuset import DPUSetReconciler
    from dpf.controller.reconcilers.hostnode import HostNodeReconciler
    from dpf.controller.reconcilers.inuse_protection import InUseProtectionReconciler
    from dpf.controller.reconcilers.orphans import OrphanSweeper
    from dpf.controller.reconcilers.servicechain import ServiceChainReconciler
    from dpf.controller.reconcilers.servicechainset import ServiceChainSetReconciler
    from dpf.controller.reconcilers.serviceinterface import ServiceInterfaceReconciler
    from dpf.controller.reconcilers.serviceinterfaceset import ServiceInterfaceSetReconciler

    return [DPUClusterReconciler, ServiceInterfaceReconciler, ServiceInterfaceSetReconciler,
            DPUServiceInterfaceReconciler, ServiceChainReconciler, ServiceChainSetReconciler,
            DPUServiceChainReconciler, DPUServiceIPAMReconciler, InUseProtectionReconciler, BFBReconciler,
            DPUSetReconciler, HostNodeReconciler, DPUReconciler, CSRReconciler, OrphanSweeper,
            CredentialRequestReconciler, DPUServiceNADReconciler,
            ArgoCDDPUServiceReconciler if settings and settings.services.backend == "argocd" else DPUServiceReconciler,
            DPUDeploymentReconciler]
