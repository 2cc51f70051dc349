"""DPUService (host cluster) → ArgoCD Applications, as upstream DPF does: the `argocd` backend, for sites that run
ArgoCD (`--dpuservice-backend argocd`; the default `helm` backend is reconcilers/dpuservice.py).

Objects (controller/argocd.py builds them), all in the controller's namespace (`--namespace`, upstream's operator
namespace, where ArgoCD must look for Applications):
- per connected DPUCluster an Argo cluster Secret `<dpuclusterNs>-<dpuclusterName>` from its kubeconfig Secret, and
  the DPUService's namespace made in that cluster (upstream's prereqs; Argo does not create it);
- the namespace's image pull secrets mirrored into every DPU cluster, and removed with its last DPUService (as
  the Helm backend: dpuservice_prereqs.PullSecretMirror);
- AppProjects `doca-platform-project-dpu` (one destination per DPUCluster) and `doca-platform-project-host`
  (`in-cluster`);
- per DPUCluster an Application `<cluster>-<dpuservice>` (or `in-cluster-<dpuservice>` with `deployInCluster`):
  the chart (mirrored as with Helm, `oci://` stripped as Argo wants), values = dpuservice.helm_values(), automated
  sync with prune and selfHeal, Argo's cascading-delete finalizer.
Stale objects go: Applications of a gone cluster or DPUService, cluster Secrets of gone DPUClusters.

Status: `ApplicationPrereqsReconciled`, `ApplicationsReconciled`, `ApplicationsReady` (each Application Synced and
Healthy as ArgoCD reports, and as many Applications as targets), `Ready`. An informer on our Applications
re-enqueues the DPUService on every status change ArgoCD writes. `paused` sets `argocd.argoproj.io/skip-reconcile`
on the Applications. Delete: the Applications are deleted (un-paused first: a skipped Application is never
finalized) and the DPUService waits, `AwaitingDeletion`, until ArgoCD's finalizer lets them go.

Without ArgoCD's CRDs the conditions say which CRD is missing; the reconciler checks again every 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Hashable, Iterable

from dpf.controller import argocd
from dpf.controller.api import conditions as cond
from dpf.controller.clusters import Cluster
from dpf.controller.kube import clients
from dpf.controller.kube.informer import Informer, key_of, key_of_event
from dpf.controller.kube.rest import SECRET, KubeError, Obj, Rest
from dpf.controller.reconcilers import dpuservice_claims as claims
from dpf.controller.reconcilers import dpuservice_configports as configports
from dpf.controller.reconcilers import dpuservice_prereqs as prereqs
from dpf.controller.reconcilers import objects
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.dpuservice import (
    APPS_READY,
    CONFIG_PORTS,
    DPU_SERVICE,
    FINALIZER,
    INTERFACES,
    PREREQS,
    RECONCILED,
    chart_of,
    helm_values,
    problem_mark,
    write_status,
)
from dpf.controller.reconcilers.keys import ObjectKey
from dpf.controller.reconcilers.kinds import DPU_CLUSTER, DPU_SERVICE_INTERFACE

log = logging.getLogger(__name__)

RESYNC = 60.0
RETRY = 10.0
SYNC_WAIT = 0.5  # our Applications informer is listing
DELETE_POLL = 30.0  # upstream's requeue while ArgoCD deletes (each Application's deletion also enqueues)
OURS = f"{argocd.COMPONENT_LABEL}={argocd.COMPONENT}"


class ArgoCDDPUServiceReconciler(Reconciler):
    name = "dpuservice"  # the same keys and metrics as the Helm backend: exactly one of the two runs
    kind = "DPUService"

    def setup(self) -> None:
        self.namespace = self.ctx.settings.kube.namespace
        self.rest: Rest = self.ctx.clusters.host.rest
        self.services: Informer = self.ctx.clusters.host.informer(DPU_SERVICE)
        self.services.add_handler(lambda _t, old, new: self._enqueue(*key_of_event(old, new)))
        self.dpuclusters: Informer = self.ctx.clusters.host.informer(DPU_CLUSTER)
        self.dpuclusters.add_handler(self._on_dpucluster)
        self.ctx.clusters.on_dpu_added(self._dpu_added)
        self.interfaces: Informer = self.ctx.clusters.host.informer(DPU_SERVICE_INTERFACE)
        self.claims = claims.InterfaceClaims(self.rest, self.services, self.interfaces, self._enqueue)
        self.pull_secrets = prereqs.PullSecretMirror(self.rest, self.ctx.clusters.dpu.values, self.ctx.settings.kube,
                                                     self._enqueue_namespace)
        configports.follow_dpu_nodes(self.ctx.clusters, self.services, self._enqueue)
        # Our own informer, not the host Cluster's: it watches only our Applications in our namespace, and it is
        # started once the CRD is found (a missing CRD must not hold the controller's readiness).
        self.apps: Informer | None = None
        self._apps_task: asyncio.Task[None] | None = None
        self._namespaces: set[tuple[str, str]] = set()  # (DPU cluster, namespace) made this leader term

    def _dpu_added(self, cluster: Cluster) -> None:
        self._namespaces = {made for made in self._namespaces if made[0] != cluster.name}  # maybe a new apiserver
        self._enqueue_all()

    def _on_dpucluster(self, kind: str, old: Obj | None, new: Obj | None) -> None:
        """A DPUCluster added, gone, being deleted or pointed at another kubeconfig changes every DPUService's
        targets; its status (health checks every 30 s) does not."""
        if kind != "MODIFIED" or old is None or new is None or old.get("spec") != new.get("spec") or \
                bool(old["metadata"].get("deletionTimestamp")) != bool(new["metadata"].get("deletionTimestamp")):
            self._enqueue_all()

    def _enqueue(self, namespace: str, name: str) -> None:
        self.ctx.queue.add(ObjectKey(self.name, namespace, name))

    def _enqueue_namespace(self, namespace: str) -> None:
        for obj in self.services.list():
            if obj["metadata"]["namespace"] == namespace:
                self._enqueue(*key_of(obj))

    def _enqueue_all(self) -> None:
        for obj in self.services.list():
            self._enqueue(*key_of(obj))

    def _on_app(self, old: Obj | None, new: Obj | None) -> None:
        labels = ((new or old or {}).get("metadata") or {}).get("labels") or {}
        namespace, name = labels.get(argocd.SERVICE_NAMESPACE_LABEL), labels.get(argocd.SERVICE_NAME_LABEL)
        if namespace and name:
            self._enqueue(namespace, name)

    def all_keys(self) -> Iterable[Hashable]:
        return [ObjectKey(self.name, *key_of(o)) for o in self.services.list()]

    def synced(self) -> bool:
        return all(i.synced.is_set() for i in (self.services, self.dpuclusters, self.interfaces))

    async def close(self) -> None:
        """Stop the Applications informer; the next leader term finds the CRD again and starts a fresh one."""
        task, self._apps_task, self.apps = self._apps_task, None, None
        self._namespaces.clear()
        await self.pull_secrets.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _missing_crds(self) -> list[str]:
        """The Argo CRDs this cluster lacks; starts the Applications informer once both are there."""
        if self.apps is not None:
            return []
        missing = []
        for kind, crd in argocd.CRDS.items():
            try:
                await self.rest.list(kind, self.namespace, label_selector=OURS)
            except KubeError as exc:
                if exc.status != 404:
                    raise
                missing.append(crd)
        if not missing:
            self.apps = Informer(self.rest, argocd.APPLICATION, self.ctx.settings.kube, namespace=self.namespace,
                                 label_selector=OURS)
            self.apps.add_handler(lambda _t, old, new: self._on_app(old, new))
            self._apps_task = asyncio.create_task(self.apps.run(), name="informer/argocd-applications")
        return missing

    def _apps_of(self, namespace: str, name: str) -> list[Obj]:
        assert self.apps is not None
        return sorted((a for a in self.apps.list()
                       if (a["metadata"].get("labels") or {}).get(argocd.SERVICE_NAME_LABEL) == name
                       and a["metadata"]["labels"].get(argocd.SERVICE_NAMESPACE_LABEL) == namespace),
                      key=lambda a: str(a["metadata"]["name"]))

    def _dpuclusters(self) -> list[Obj]:
        """DPUClusters the controller is connected to (so their kubeconfig works), not being deleted."""
        return sorted((c for c in self.dpuclusters.list()
                       if not c["metadata"].get("deletionTimestamp")
                       and f"{c['metadata']['namespace']}/{c['metadata']['name']}" in self.ctx.clusters.dpu),
                      key=lambda c: (c["metadata"]["namespace"], c["metadata"]["name"]))

    async def reconcile(self, key: ObjectKey) -> float | None:
        obj = self.services.get(key.namespace, key.name)
        missing = await self._missing_crds()
        if obj is None:
            if not missing:
                await self._delete_apps(key.namespace, key.name)  # a DPUService gone without our finalizer
            return None
        if obj["metadata"].get("deletionTimestamp"):
            return await self._delete(obj, missing)
        if missing:
            return await self._report_missing(obj, missing)
        assert self.apps is not None
        if not self.apps.synced.is_set():
            return SYNC_WAIT
        obj = await objects.add_finalizer(self.rest, DPU_SERVICE, obj, FINALIZER)
        spec = obj.get("spec") or {}
        step1 = await self.claims.step(obj)  # as the Helm backend: no Application with a partial set of interfaces
        if step1.problems:
            await self._write(obj, [(INTERFACES, "False", cond.ERROR, "; ".join(step1.problems))])
            return RETRY
        clusters = self._dpuclusters()
        prereq_problems = await self._prereqs(obj, clusters) + await self.pull_secrets.sync(key.namespace)
        targets = [argocd.IN_CLUSTER] if spec.get("deployInCluster") else [c["metadata"]["name"] for c in clusters]
        apply_problems, desired = await self._applications(obj, targets, bool(spec.get("paused")), step1.networks)
        not_ready = self._not_ready(obj, desired)
        ports = await configports.reconcile(self.rest, [] if spec.get("deployInCluster") else [
            self.ctx.clusters.dpu[f"{c['metadata']['namespace']}/{c['metadata']['name']}"] for c in clusters],
            obj, self.ctx.settings.kube.field_manager)
        marks = [
            (INTERFACES, "True", cond.SUCCESS, ""),
            problem_mark(PREREQS, prereq_problems),
            problem_mark(RECONCILED, apply_problems),
            problem_mark(CONFIG_PORTS, ports.problems),
        ]
        if not targets:
            marks.append((APPS_READY, "False", cond.PENDING, "no DPU cluster is connected"))
        elif not_ready:
            marks.append((APPS_READY, "False", cond.PENDING,
                          "The following applications are not ready: " + "; ".join(not_ready)))
        else:
            marks.append((APPS_READY, "True", cond.SUCCESS, ""))
        await self._write(obj, marks, ports)
        return RETRY if prereq_problems or apply_problems or ports.problems else RESYNC

    async def _write(self, obj: Obj, marks: list[tuple[str, str, str, str]],
                     ports: configports.Outcome | None = None) -> None:
        await write_status(self.rest, obj, marks, self.ctx.settings.kube.field_manager, ports)

    async def _report_missing(self, obj: Obj, missing: list[str]) -> float:
        message = (f"CustomResourceDefinition {', '.join(missing)} is not installed: the argocd DPUService backend "
                   "(--dpuservice-backend argocd) needs ArgoCD installed in the host cluster")
        await self._write(obj, [(PREREQS, "False", cond.ERROR, message),
                                (RECONCILED, "False", cond.PENDING, "waiting for ArgoCD's CRDs"),
                                (APPS_READY, "False", cond.PENDING, "waiting for ArgoCD's CRDs")])
        return RETRY

    # ---- prereqs: cluster Secrets, namespaces in the DPU clusters, AppProjects ----------------------------
    async def _prereqs(self, obj: Obj, clusters: list[Obj]) -> list[str]:
        problems: list[str] = []
        wanted: set[str] = set()
        deploy_in_cluster = bool((obj.get("spec") or {}).get("deployInCluster"))
        for dpucluster in clusters:
            meta = dpucluster["metadata"]
            where = f"{meta['namespace']}/{meta['name']}"
            wanted.add(argocd.cluster_secret_name(meta["namespace"], meta["name"]))
            try:
                await self._cluster_secret(dpucluster)
                made = (where, obj["metadata"]["namespace"])
                if not deploy_in_cluster and made not in self._namespaces:
                    await objects.ensure_namespace(self.ctx.clusters.dpu[where].rest, made[1])
                    self._namespaces.add(made)  # once per term: a namespace deleted by hand is not remade
            except (clients.KubeconfigError, KubeError, KeyError) as exc:
                problems.append(f"cluster {where}: {exc}")
        try:
            await self._prune_cluster_secrets(wanted)
            names = sorted({c["metadata"]["name"] for c in clusters})
            await self._apply_if_changed(argocd.app_project(argocd.PROJECT_DPU, self.namespace, names))
            await self._apply_if_changed(argocd.app_project(argocd.PROJECT_HOST, self.namespace,
                                                            [argocd.IN_CLUSTER]))
        except KubeError as exc:
            problems.append(f"AppProjects and cluster Secrets in namespace {self.namespace}: {exc}")
        return problems

    async def _cluster_secret(self, dpucluster: Obj) -> None:
        meta = dpucluster["metadata"]
        secret_name = (dpucluster.get("spec") or {}).get("kubeconfig")
        if not secret_name:
            raise clients.KubeconfigError("the DPUCluster names no kubeconfig Secret")
        admin = await self.rest.get(SECRET, secret_name, meta["namespace"])
        if admin is None:
            raise clients.KubeconfigError(f"its kubeconfig Secret {meta['namespace']}/{secret_name} is gone")
        desired = argocd.cluster_secret(self.namespace, meta["namespace"], meta["name"], admin)
        current = await self.rest.get(SECRET, desired["metadata"]["name"], self.namespace)
        labels = (current or {}).get("metadata", {}).get("labels") or {}
        if current is None or current.get("data") != desired["data"] or any(
                labels.get(k) != v for k, v in desired["metadata"]["labels"].items()):
            await self.rest.apply(SECRET, desired, self.ctx.settings.kube.field_manager)

    async def _prune_cluster_secrets(self, wanted: set[str]) -> None:
        listing = await self.rest.list(SECRET, self.namespace, label_selector=f"{argocd.SECRET_TYPE}=cluster,{OURS}")
        for secret in listing["items"]:
            if secret["metadata"]["name"] not in wanted:
                await self.rest.delete(SECRET, secret["metadata"]["name"], self.namespace)
                log.info("Argo cluster Secret %s/%s deleted: its DPUCluster is gone", self.namespace,
                         secret["metadata"]["name"])

    async def _apply_if_changed(self, desired: Obj) -> None:
        kind = argocd.APP_PROJECT
        current = await self.rest.get(kind, desired["metadata"]["name"], self.namespace)
        if objects.child_differs(current, desired):
            await self.rest.apply(kind, desired, self.ctx.settings.kube.field_manager)

    # ---- Applications -----------------------------------------------------------------------------------
    async def _applications(self, obj: Obj, targets: list[str], paused: bool,
                            networks: str | None) -> tuple[list[str], dict[str, Obj]]:
        """Apply each target's Application; returns the problems and the Applications as wanted, by name."""
        assert self.apps is not None
        meta = obj["metadata"]
        chart, values = chart_of(obj, self.ctx.settings.services.chart_mirrors), helm_values(obj, networks)
        problems: list[str] = []
        wanted: dict[str, Obj] = {}
        for target in targets:
            desired = argocd.application(obj, self.namespace, target, chart, values, paused)
            name = desired["metadata"]["name"]
            wanted[name] = desired
            current = self.apps.get(self.namespace, name)
            if not _app_differs(current, desired):
                continue
            try:
                await self.rest.apply(argocd.APPLICATION, desired, self.ctx.settings.kube.field_manager)
            except KubeError as exc:
                problems.append(f"Application {self.namespace}/{name}: {exc}")
        for app in self._apps_of(meta["namespace"], meta["name"]):
            if app["metadata"]["name"] not in wanted and not app["metadata"].get("deletionTimestamp"):
                try:
                    await self._delete_app(app)
                except KubeError as exc:
                    problems.append(f"deleting Application {self.namespace}/{app['metadata']['name']}: {exc}")
        return problems, wanted

    def _not_ready(self, obj: Obj, desired: dict[str, Obj]) -> list[str]:
        """Why each wanted Application is not ready, judged against the spec just written (not the informer's
        copy, which may not have our write yet), and every unwanted one still there."""
        assert self.apps is not None
        meta = obj["metadata"]
        names = sorted(desired)
        out = [f"{self.namespace}/{n}: {why}" for n in names
               if (why := argocd.readiness(self.apps.get(self.namespace, n), desired[n]))]
        out += [f"{self.namespace}/{a['metadata']['name']}: no longer wanted, being deleted"
                for a in self._apps_of(meta["namespace"], meta["name"]) if a["metadata"]["name"] not in names]
        return out

    async def _delete_app(self, app: Obj) -> None:
        meta = app["metadata"]
        if (meta.get("annotations") or {}).get(argocd.SKIP_RECONCILE):
            # A skipped Application is never finalized by ArgoCD: let it reconcile the deletion.
            await self.rest.merge_patch(argocd.APPLICATION, meta["name"],
                                        {"metadata": {"annotations": {argocd.SKIP_RECONCILE: None}}}, self.namespace)
        await self.rest.delete(argocd.APPLICATION, meta["name"], self.namespace)
        log.info("Application %s/%s deleted", self.namespace, meta["name"])

    async def _delete_apps(self, namespace: str, name: str) -> list[Obj]:
        """Delete this DPUService's Applications; returns those still there (ArgoCD's finalizer holds them)."""
        if self.apps is None or not self.apps.synced.is_set():
            raise KubeError(0, "NotSynced", "the Applications informer is still listing")
        remaining = self._apps_of(namespace, name)
        for app in remaining:
            if not app["metadata"].get("deletionTimestamp"):
                await self._delete_app(app)
        return remaining

    async def _delete(self, obj: Obj, missing: list[str]) -> float | None:
        meta = obj["metadata"]
        if FINALIZER not in (meta.get("finalizers") or ()):
            return None
        if argocd.CRDS[argocd.APPLICATION] not in missing:
            assert self.apps is not None
            if not self.apps.synced.is_set():
                return SYNC_WAIT
            remaining = await self._delete_apps(meta["namespace"], meta["name"])
            if remaining:
                names = ", ".join(f"{self.namespace}/{a['metadata']['name']}" for a in remaining)
                await self._write(obj, [(RECONCILED, "False", cond.AWAITING_DELETION,
                                         f"waiting for ArgoCD to delete Applications {names} (finalizer "
                                         f"{argocd.APP_FINALIZER})")])
                return DELETE_POLL
        await self.claims.release_all(obj)
        problems = await self.pull_secrets.release(meta["namespace"], prereqs.live_namespaces(self.services.list()))
        if problems:
            await self._write(obj, [(RECONCILED, "False", cond.AWAITING_DELETION, "; ".join(problems))])
            return RETRY
        await configports.remove(self.rest, obj)  # upstream's order: Applications, prereqs, configPorts Service
        await objects.remove_finalizer(self.rest, DPU_SERVICE, obj, FINALIZER)
        log.info("DPUService %s/%s: Applications deleted", meta["namespace"], meta["name"])
        return None


def _app_differs(current: Obj | None, desired: Obj) -> bool:
    if objects.child_differs(current, desired) or current is None:
        return True
    if argocd.APP_FINALIZER not in (current["metadata"].get("finalizers") or ()):
        return True
    held = (current["metadata"].get("annotations") or {}).get(argocd.SKIP_RECONCILE)
    return held != (desired["metadata"].get("annotations") or {}).get(argocd.SKIP_RECONCILE)

