"""DPUService (host cluster) → one Helm release per DPU cluster, or one in the host cluster with `deployInCluster`.

Upstream DPF renders each DPUService as ArgoCD Applications named `<cluster>-<dpuservice>`; we run Helm itself
(`controller/helm.py`, `helm upgrade --install --rollback-on-failure --wait=watcher`) against each target cluster
with the kubeconfig the DPUCluster's Secret (`admin.conf`) holds, written to a private 0600 temp file per call.

- Release: `spec.helmChart.source.releaseName`, else upstream's Application name `<dpucluster>-<dpuservice>`
  (`in-cluster-<dpuservice>` in the host cluster), bounded to Helm's 53 characters; namespace: the DPUService's
  (made when missing, as upstream's prereqs step does).
- Step 1, interfaces (`DPUServiceInterfaceReconciled`, `dpuservice_interfaces.py`): every listed
  DPUServiceInterface must be a `service` one of this serviceID, unclaimed or claimed by this DPUService; then
  all are claimed (annotation `dpu.nvidia.com/consumed-by`) and their Multus selections go into the pods'
  `k8s.v1.cni.cncf.io/networks`. Any problem: the condition names each interface and why, and nothing is
  claimed, installed or upgraded. Interfaces no longer listed are released. A DPUServiceInterface event
  enqueues the DPUServices listing it (an index) and its consumer.
- Step 2, prereqs (`ApplicationPrereqsReconciled`): every target's kubeconfig read; the namespace's image pull
  secrets mirrored into every DPU cluster (`dpuservice_prereqs.py`); a cluster whose copy fails is named with the
  Secret and gets no install or upgrade. The target namespace is made by Helm (`--create-namespace`), or first
  by the mirroring.
- Values: `spec.helmChart.values` deep-merged with a `serviceDaemonSet` block (nodeSelector, updateStrategy, labels
  incl. `svc.dpu.nvidia.com/service` = serviceID, else the DPUService name; annotations, with the networks of
  Step 1); the block wins on conflict (upstream's mergemaps).
- Upgrades run as background tasks (bounded by the Helm wrapper's semaphore), not inside reconcile: `--wait` may
  take minutes and the reconcile workers are shared by every reconciler. A spec change cancels a running upgrade
  of the older spec; a finished one enqueues the DPUService; a failed one is retried every 10 s, its error shown.
- Idempotence: each upgrade records a digest of (chart, version, values) as the release description; a release
  whose deployed description matches is not upgraded again. Helm is asked (`helm status`) at most every VERIFY
  seconds per release, and for the manifest once per digest; readiness in DPU clusters comes from DaemonSet
  events, so a resync of a Ready DPUService usually runs no Helm process (bench/services: idle Helm cost).
- Conditions (upstream's types): `DPUServiceInterfaceReconciled`, `ApplicationPrereqsReconciled` (above),
  `ApplicationsReconciled` (every release at the desired digest; False `Error` naming the cluster, the chart and
  Helm's stderr, and Helm has rolled the failed upgrade back), `ApplicationsReady` (every release deployed and
  each DaemonSet in its manifest has numberReady == desiredNumberScheduled; upstream's "Synced+Healthy", so a
  DaemonSet with 0 desired pods (no matching node) is ready; else False `Pending`), `Ready` (summary).
- `paused`: Steps 1 and 2 run, no Helm call does (upstream's skip-reconcile pauses only the Applications); the
  other conditions stay as they were.
- Delete (paused or not): `helm uninstall` in every target; its interfaces released; when it was the namespace's
  last live DPUService, the mirrored pull secrets removed from every DPU cluster; then the finalizer
  `dpu.nvidia.com/dpuservice` goes.

Not done (upstream has them): git `path` sources, repairing objects edited in a DPU cluster between spec changes
(Argo's selfHeal). Upstream's Argo cluster Secrets and AppProjects (Step 2) have no Helm counterpart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dpf.controller import helm
from dpf.controller.api import conditions as cond
from dpf.controller.api.svc import DPUService
from dpf.controller.clusters import Cluster
from dpf.controller.gitcharts import GitCharts, GitError, chart_dir, redacted
from dpf.controller.kube import clients, events
from dpf.controller.kube.informer import Informer, key_of, key_of_event
from dpf.controller.kube.rest import SECRET, Kind, KubeError, Obj, Rest
from dpf.controller.reconcilers import dpuservice_claims as claims
from dpf.controller.reconcilers import dpuservice_configports as configports
from dpf.controller.reconcilers import dpuservice_interfaces as interfaces
from dpf.controller.reconcilers import dpuservice_prereqs as prereqs
from dpf.controller.reconcilers import objects
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.keys import ObjectKey
from dpf.controller.reconcilers.kinds import DPU_CLUSTER, DPU_SERVICE_INTERFACE, SVC, V1ALPHA1

log = logging.getLogger(__name__)

DPU_SERVICE = Kind(SVC, V1ALPHA1, "dpuservices", "DPUService")
DAEMON_SET = Kind("apps", "v1", "daemonsets", "DaemonSet")
FINALIZER = DPUService.FINALIZERS[0]
SERVICE_LABEL = "svc.dpu.nvidia.com/service"
PREREQS, RECONCILED, APPS_READY = "ApplicationPrereqsReconciled", "ApplicationsReconciled", "ApplicationsReady"
INTERFACES = interfaces.INTERFACES_RECONCILED
CONFIG_PORTS = configports.CONFIG_PORTS_RECONCILED
TYPES = (cond.READY, INTERFACES, PREREQS, RECONCILED, APPS_READY, CONFIG_PORTS)
IN_CLUSTER = "in-cluster"
DESCRIPTION_PREFIX = "dpf-dpuservice "
RELEASE_LIMIT = 53  # Helm's release-name limit
RESYNC = 60.0
VERIFY = 300.0  # `helm status` confirms a release at most this often (a release removed by hand is seen then)
RETRY = 10.0
NOT_READY_RETRY = 3.0  # polled: a release in the host cluster (its DaemonSets are not watched)
WATCHED_RETRY = 30.0  # a safety net only: DaemonSet events in DPU clusters enqueue the DPUService
RELEASE_INDEX = "dpuservice.release"  # DPU-cluster DaemonSets by "<namespace>/<Helm release>"
RELEASE_NAME, RELEASE_NAMESPACE = "meta.helm.sh/release-name", "meta.helm.sh/release-namespace"  # set by Helm
HELM_TIMEOUT = 300.0  # Helm's --timeout for an upgrade's --wait (then it rolls back)
CANCEL_TIMEOUT = 10.0


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge; `over` wins on conflict (maps merge key by key, anything else is replaced). Pure."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def helm_values(obj: Obj, networks: str | None = None) -> dict[str, Any]:
    """The chart values of a DPUService: user values under upstream's `serviceDaemonSet` block, whose annotations
    carry `networks` (the Multus annotation from its interfaces) when given. Pure."""
    spec = obj.get("spec") or {}
    daemon = spec.get("serviceDaemonSet") or {}
    labels = {**(daemon.get("labels") or {}), SERVICE_LABEL: spec.get("serviceID") or obj["metadata"]["name"]}
    block: dict[str, Any] = {"labels": labels}
    for field in ("nodeSelector", "updateStrategy"):
        if daemon.get(field):
            block[field] = daemon[field]
    annotations = {**(daemon.get("annotations") or {}), **({interfaces.NETWORKS: networks} if networks else {})}
    if annotations:
        block["annotations"] = annotations
    return merge((spec.get("helmChart") or {}).get("values") or {},
                 {"serviceDaemonSet": block, **configports.chart_values(obj)})


def problem_mark(type_: str, problems: Sequence[str]) -> tuple[str, str, str, str]:
    """A step's condition: False `Error` naming every problem, else True. Pure."""
    return (type_, "False", cond.ERROR, "; ".join(problems)) if problems else (type_, "True", cond.SUCCESS, "")


async def write_status(rest: Rest, obj: Obj, marks: Sequence[tuple[str, str, str, str]], field_manager: str,
                       ports: configports.Outcome | None = None) -> None:
    """Our conditions after `marks`, and status.configPorts from a configPorts pass (without one, as it was).
    Both backends write the DPUService's status through this."""
    conditions = objects.build_conditions(obj, TYPES, marks, objects.now())
    reported = configports.kept(obj) if ports is None else ports.status
    await objects.write_status(rest, DPU_SERVICE, obj, objects.status_body(obj, conditions, configPorts=reported),
                               field_manager, absent=() if reported else ("configPorts",))


def chart_of(obj: Obj, mirrors: Sequence[tuple[str, str]] = ()) -> helm.Chart:
    """The chart to install: the DPUService's source, from its mirror when one is configured. Pure."""
    source = obj["spec"]["helmChart"]["source"]
    return helm.Chart(repo_url=source["repoURL"], chart=source.get("chart"), version=source["version"],
                      path=source.get("path")).mirrored(mirrors)


def release_name(obj: Obj, target: str) -> str:
    """Upstream's Application name `<cluster>-<dpuservice>` unless spec names the release. Pure."""
    named = obj["spec"]["helmChart"]["source"].get("releaseName")
    name = named or f"{target.rsplit('/', 1)[-1]}-{obj['metadata']['name']}"
    if len(name) <= RELEASE_LIMIT:
        return name
    suffix = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:RELEASE_LIMIT - 9].rstrip('-')}-{suffix}"


def desired_digest(chart: helm.Chart, values: Mapping[str, Any]) -> str:
    # A git source's commit counts (a branch that moved rolls); other charts' digests stay as they were.
    source = [chart.repo_url, chart.chart, chart.path, chart.version, *([chart.commit] if chart.commit else [])]
    payload = json.dumps({"chart": source, "values": values}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def daemonsets_in(manifest: str) -> list[tuple[str | None, str]]:
    """(namespace, name) of every DaemonSet in a release manifest. Pure."""
    found = []
    for doc in yaml.safe_load_all(manifest):
        if isinstance(doc, dict) and doc.get("kind") == "DaemonSet" and doc.get("apiVersion") == "apps/v1":
            meta = doc.get("metadata") or {}
            found.append((meta.get("namespace"), meta["name"]))
    return found


@dataclass
class Rollout:
    """A `helm upgrade` of one DPUService into one cluster, running or finished (its last failure kept)."""

    digest: str
    task: asyncio.Task[None]
    error: str = ""
    finished: float = 0.0


@dataclass
class Deployed:
    """A release this term found deployed at a DPUService's digest: its DaemonSets (from its manifest, read once
    per digest) and when `helm status` last confirmed it (again after VERIFY, so a release removed behind our
    back is seen)."""

    digest: str
    daemonsets: list[tuple[str | None, str]]
    checked: float


def release_of(ds: Obj) -> list[str]:
    """The "<namespace>/<release>" of the Helm release a DaemonSet belongs to (Helm annotates what it makes)."""
    annotations = ds["metadata"].get("annotations") or {}
    name, namespace = annotations.get(RELEASE_NAME), annotations.get(RELEASE_NAMESPACE)
    return [f"{namespace}/{name}"] if name and namespace else []


@dataclass
class Target:
    name: str  # "in-cluster" or the DPU cluster's "namespace/name"
    cluster: Cluster


class DPUServiceReconciler(Reconciler):
    name = "dpuservice"
    kind = "DPUService"

    def setup(self) -> None:
        self.helm = helm.Helm(concurrency=self.ctx.settings.services.helm_concurrency, on_run=self._helm_ran)
        self.git = GitCharts()
        self._rollouts: dict[tuple[str, str, str], Rollout] = {}  # by (namespace, name, target)
        self._deployed: dict[tuple[str, str, str], Deployed] = {}  # by (namespace, name, target)
        self._seen_state: dict[tuple[str, str, str], str] = {}  # the release state the last pass read ('' none)
        self._release_owner: dict[tuple[str, str, str], ObjectKey] = {}  # (cluster, namespace, release) -> owner
        # DaemonSet events, not polling, tell when a release's pods are rolled out in a DPU cluster: at scale,
        # polling kept the Helm slots busy with `helm status` / `get manifest` and delayed the upgrades.
        self.need_dpu_kind(DAEMON_SET)
        self.ctx.clusters.on_dpu_added(self._watch_daemonsets)
        self.services: Informer = self.ctx.clusters.host.informer(DPU_SERVICE)
        self.services.add_handler(lambda _t, old, new: self._enqueue(*key_of_event(old, new)))
        self.dpuclusters: Informer = self.ctx.clusters.host.informer(DPU_CLUSTER)
        self.interfaces: Informer = self.ctx.clusters.host.informer(DPU_SERVICE_INTERFACE)
        self.claims = claims.InterfaceClaims(self.ctx.clusters.host.rest, self.services, self.interfaces,
                                             self._enqueue)
        self.pull_secrets = prereqs.PullSecretMirror(self.ctx.clusters.host.rest, self.ctx.clusters.dpu.values,
                                                     self.ctx.settings.kube, self._enqueue_namespace)
        self.ctx.clusters.on_dpu_added(lambda _cluster: self._enqueue_all())
        configports.follow_dpu_nodes(self.ctx.clusters, self.services, self._enqueue)

    def _helm_ran(self, command: str, seconds: float, ok: bool) -> None:
        self.ctx.metrics.helm_runs.labels(command, "success" if ok else "failure").observe(seconds)

    def _watch_daemonsets(self, cluster: Cluster) -> None:
        daemonsets = cluster.informer(DAEMON_SET)
        daemonsets.add_index(RELEASE_INDEX, release_of)

        def changed(_type: str, old: Obj | None, new: Obj | None) -> None:
            for release in release_of(new or old or {"metadata": {}}):
                namespace, name = release.split("/", 1)
                owner = self._release_owner.get((cluster.name, namespace, name))
                if owner is not None:
                    self.ctx.queue.add(owner)
        daemonsets.add_handler(changed)

    def _enqueue_namespace(self, namespace: str) -> None:
        for obj in self.services.list():
            if obj["metadata"]["namespace"] == namespace:
                self._enqueue(*key_of(obj))

    def _enqueue(self, namespace: str, name: str) -> None:
        self.ctx.queue.add(ObjectKey(self.name, namespace, name))

    def _enqueue_all(self) -> None:
        for obj in self.services.list():
            self._enqueue(*key_of(obj))

    def all_keys(self) -> Iterable[Hashable]:
        return [ObjectKey(self.name, *key_of(o)) for o in self.services.list()]

    def synced(self) -> bool:
        return all(i.synced.is_set() for i in (self.services, self.dpuclusters, self.interfaces))

    def _targets(self, obj: Obj) -> list[Target]:
        if (obj.get("spec") or {}).get("deployInCluster"):
            return [Target(IN_CLUSTER, self.ctx.clusters.host)]
        return [Target(c.name, c) for c in sorted(self.ctx.clusters.dpu.values(), key=lambda c: c.name)]

    async def _kubeconfig_text(self, target: Target) -> str | None:
        """The target's kubeconfig (YAML) from its DPUCluster's Secret; None for the host cluster's own."""
        if target.name == IN_CLUSTER:
            return None
        namespace, name = target.name.split("/", 1)
        dpucluster = self.dpuclusters.get(namespace, name)
        secret_name = ((dpucluster or {}).get("spec") or {}).get("kubeconfig")
        if not secret_name:
            raise clients.KubeconfigError(f"DPUCluster {target.name} names no kubeconfig Secret")
        secret = await self.ctx.clusters.host.rest.get(SECRET, secret_name, namespace)
        if secret is None:
            raise clients.KubeconfigError(f"Secret {namespace}/{secret_name} of DPUCluster {target.name} is gone")
        return json.dumps(clients.parse_admin_conf(secret))  # JSON is YAML, and every string stays a string

    @contextlib.contextmanager
    def _kubeconfig_file(self, text: str | None) -> Iterator[Path | None]:
        if text is None:
            yield self.ctx.settings.kube.kubeconfig  # None: Helm uses the pod's in-cluster service account
        else:
            with helm.private_file(text, ".kubeconfig") as path:
                yield path

    async def close(self) -> None:
        """Cancel every running Helm upgrade (Helm rolls a killed one back on its next upgrade: a release left
        pending is replaced) and forget outcomes; the next leader term starts from the releases' state."""
        tasks = [r.task for r in self._rollouts.values() if not r.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_TIMEOUT)
        self._rollouts.clear()
        self._deployed.clear()
        self._seen_state.clear()
        self._release_owner.clear()
        await self.pull_secrets.close()

    async def reconcile(self, key: ObjectKey) -> float | None:
        obj = self.services.get(key.namespace, key.name)
        if obj is None:
            return None
        if obj["metadata"].get("deletionTimestamp"):
            return await self._delete(key, obj)
        obj = await objects.add_finalizer(self.ctx.clusters.host.rest, DPU_SERVICE, obj, FINALIZER)
        step1 = await self.claims.step(obj)
        if step1.problems:  # upstream stops here: nothing is installed or upgraded with a partial set
            await self._write_conditions(obj, [(INTERFACES, "False", cond.ERROR, "; ".join(step1.problems))])
            return RETRY
        if (obj.get("spec") or {}).get("paused"):
            # Upstream's skip-reconcile pauses the Applications only: Steps 1 and 2 still run, no Helm call does.
            problems = await self.pull_secrets.sync(key.namespace)
            await self._write_conditions(obj, [(INTERFACES, "True", cond.SUCCESS, ""),
                                               problem_mark(PREREQS, problems)])
            return RETRY if problems else RESYNC
        targets = self._targets(obj)
        chart, source_problem = await self._chart(obj)
        values = helm_values(obj, step1.networks)
        digest = desired_digest(chart, values)
        prereq_problems = await self.pull_secrets.sync(key.namespace)
        apply_problems: list[str] = [source_problem] if source_problem else []
        not_ready: list[str] = []
        for target in targets if not source_problem else ():
            if any(p.startswith(f"cluster {target.name}: ") for p in prereq_problems):
                continue  # its pods could not pull their images: not installed until the Secret is there
            try:
                text = await self._kubeconfig_text(target)
            except (clients.KubeconfigError, KubeError) as exc:
                prereq_problems.append(f"cluster {target.name}: {exc}")
                continue
            release = release_name(obj, target.name)
            try:
                waiting, error = await self._target(key, target, release, chart, values, digest, text)
            except helm.HelmError as exc:
                apply_problems.append(f"cluster {target.name}: {exc}")
                continue
            if error:
                apply_problems.append(f"cluster {target.name}: {error}")
            elif waiting:
                not_ready.append(f"cluster {target.name}: {waiting}")
        ports = await configports.reconcile(self.ctx.clusters.host.rest, [t.cluster for t in targets
                                            if t.name != IN_CLUSTER], obj, self.ctx.settings.kube.field_manager)
        marks = [
            (INTERFACES, "True", cond.SUCCESS, ""),
            problem_mark(PREREQS, prereq_problems),
            problem_mark(RECONCILED, apply_problems),
            problem_mark(CONFIG_PORTS, ports.problems),
        ]
        if not targets:
            marks.append((APPS_READY, "False", cond.PENDING, "no DPU cluster is connected"))
        elif prereq_problems or apply_problems or not_ready:
            marks.append((APPS_READY, "False", cond.PENDING,
                          "; ".join(not_ready) or "Application is not yet deployed."))
        else:
            marks.append((APPS_READY, "True", cond.SUCCESS, ""))
        await self._write_conditions(obj, marks, ports)
        if prereq_problems or apply_problems or ports.problems:
            return RETRY
        if not_ready:
            return NOT_READY_RETRY if any(t.name == IN_CLUSTER for t in targets) else WATCHED_RETRY
        return RESYNC

    async def _chart(self, obj: Obj) -> tuple[helm.Chart, str]:
        """The chart to install and "", or the chart as named and why its git source cannot be used."""
        chart = chart_of(obj, self.ctx.settings.services.chart_mirrors)
        if not chart.is_git:
            return chart, ""
        try:
            checkout = await self.git.checkout(chart.repo_url, chart.version)
            local = chart_dir(checkout.directory, chart.path or "")
        except GitError as exc:
            return chart, str(exc)
        if not (local / "Chart.yaml").is_file():
            return chart, (f"git repository {redacted(chart.repo_url)} at {chart.version!r} (commit "
                           f"{checkout.commit[:12]}) has no chart at spec.helmChart.source.path {chart.path!r} "
                           "(no Chart.yaml there)")
        return dataclasses.replace(chart, commit=checkout.commit, local=local), ""

    async def _write_conditions(self, obj: Obj, marks: list[tuple[str, str, str, str]],
                                ports: configports.Outcome | None = None) -> None:
        await write_status(self.ctx.clusters.host.rest, obj, marks, self.ctx.settings.kube.field_manager, ports)

    async def _target(self, key: ObjectKey, target: Target, release: str, chart: helm.Chart,
                      values: Mapping[str, Any], digest: str, text: str | None) -> tuple[str, str]:
        """(what is waited for, the last Helm failure) of one target; starts an upgrade when one is due.

        Upgrades run as tasks, not in reconcile: `--wait` may take minutes and must not hold one of the few
        workers every reconciler shares. A finished task enqueues the DPUService again.
        """
        where = (key.namespace, key.name, target.name)
        rollout = self._rollouts.get(where)
        same = rollout is not None and rollout.digest == digest
        if rollout is not None and not rollout.task.done():
            if same:
                return f"helm upgrade of release {release} in progress", rollout.error
            rollout.task.cancel()  # superseded by a newer spec: the next upgrade replaces it
            await asyncio.wait({rollout.task})  # never raises: a cancellation of this reconcile still does
        if target.name != IN_CLUSTER:
            self._release_owner[(target.name, key.namespace, release)] = key
        known = await self._deployed_at(where, release, digest, text)
        if known is not None:
            return await self._readiness(target, release, key.namespace, known.daemonsets), ""
        error = rollout.error if rollout is not None and same else ""
        if error and rollout is not None and time.monotonic() - rollout.finished < RETRY:
            return "", error  # failed at this spec: tried again after RETRY, the failure shown meanwhile
        task = asyncio.create_task(self._upgrade(key, target, release, chart, values, digest, text),
                                   name=f"helm-upgrade/{key.namespace}/{key.name}/{target.name}")
        self._rollouts[where] = Rollout(digest, task, error)
        return f"helm upgrade of release {release} in progress", error

    async def _upgrade(self, key: ObjectKey, target: Target, release: str, chart: helm.Chart,
                       values: Mapping[str, Any], digest: str, text: str | None) -> None:
        rollout = self._rollouts.get((key.namespace, key.name, target.name))
        try:
            with self._kubeconfig_file(text) as kubeconfig:
                cleared = await self.helm.upgrade_install(
                    release, chart, key.namespace, values, kubeconfig, HELM_TIMEOUT,
                    description=DESCRIPTION_PREFIX + digest,
                    state=self._seen_state.pop((key.namespace, key.name, target.name), None))
            log.info("DPUService %s/%s: release %s in cluster %s at %s", key.namespace, key.name, release,
                     target.name, chart.describe())
            error = ""
            if cleared:
                await self._event(key, events.WARNING, "InterruptedReleaseCleared", f"cluster {target.name}: {cleared}")
            await self._event(key, events.NORMAL, "Deployed",
                              f"release {release} in cluster {target.name}: {chart.describe()}")
        except helm.HelmError as exc:
            error = str(exc)
        except Exception as exc:  # a bug must not leave the rollout "in progress" forever: shown and retried
            log.exception("DPUService %s/%s: helm upgrade crashed", key.namespace, key.name)
            error = f"helm upgrade of release {release} crashed: {exc!r}"
        self.ctx.metrics.dpuservice_releases.labels("failure" if error else "success").inc()
        if error:
            await self._event(key, events.WARNING, "DeployFailed", f"cluster {target.name}: {error}")
        if rollout is not None:
            rollout.error, rollout.finished = error, time.monotonic()
        self.ctx.queue.add(key)  # not reached when cancelled: whoever cancelled owns the next step

    async def _event(self, key: ObjectKey, type_: str, reason: str, note: str) -> None:
        """An Event on the DPUService (deduplicated by the recorder: a retried failure is not repeated)."""
        obj = self.services.get(key.namespace, key.name)
        if obj is not None:
            await self.ctx.events.emit(self.ctx.clusters.host.rest, obj, self.kind, type_, reason, note)

    async def _deployed_at(self, where: tuple[str, str, str], release: str, digest: str,
                           text: str | None) -> Deployed | None:
        """The release if it is deployed at `digest`, else None. Asks Helm at most once per VERIFY per release
        (and for the manifest once per digest): readiness passes driven by DaemonSet events cost no Helm process."""
        known = self._deployed.get(where)
        if known is not None and known.digest == digest and time.monotonic() - known.checked < VERIFY:
            return known
        with self._kubeconfig_file(text) as kubeconfig:
            status = await self.helm.status(release, where[0], kubeconfig)
            info = (status or {}).get("info") or {}
            if info.get("status") != "deployed" or info.get("description") != DESCRIPTION_PREFIX + digest:
                self._deployed.pop(where, None)
                self._seen_state[where] = str(info.get("status") or "")  # the upgrade that follows needs no 2nd ask
                return None
            if known is None or known.digest != digest:
                known = Deployed(digest, daemonsets_in(await self.helm.manifest(release, where[0], kubeconfig)), 0.0)
        known.checked = time.monotonic()
        self._deployed[where] = known
        return known

    async def _readiness(self, target: Target, release: str, namespace: str,
                         daemonsets: Sequence[tuple[str | None, str]]) -> str:
        """'' when every DaemonSet of the release is rolled out, else what is still waited for. In a DPU cluster
        they are read from its DaemonSet cache (whose events enqueue us); in the host cluster from the API."""
        cache = target.cluster.informer(DAEMON_SET) if target.name != IN_CLUSTER else None
        if cache is not None and not cache.synced.is_set():
            return f"the DaemonSets of cluster {target.name} are not cached yet"
        for ds_namespace, ds_name in daemonsets:
            ds = cache.get(ds_namespace or namespace, ds_name) if cache is not None else \
                await target.cluster.rest.get(DAEMON_SET, ds_name, ds_namespace or namespace)
            if ds is None:
                return f"DaemonSet {ds_namespace or namespace}/{ds_name} of release {release} is missing"
            status = ds.get("status") or {}
            desired, ready = status.get("desiredNumberScheduled", 0), status.get("numberReady", 0)
            current = status.get("observedGeneration") == ds["metadata"].get("generation")
            if not current or ready < desired or status.get("updatedNumberScheduled", 0) < desired:
                return f"DaemonSet {ds_namespace or namespace}/{ds_name}: {ready}/{desired} pods ready"
        return ""

    async def _delete(self, key: ObjectKey, obj: Obj) -> float | None:
        if FINALIZER not in (obj["metadata"].get("finalizers") or ()):
            return None
        namespace = obj["metadata"]["namespace"]
        for owned in [r for r, owner in self._release_owner.items() if owner == key]:
            del self._release_owner[owned]
        for where in [w for w in self._deployed if w[:2] == (key.namespace, key.name)]:
            del self._deployed[where]
        for where in [w for w in self._seen_state if w[:2] == (key.namespace, key.name)]:
            del self._seen_state[where]
        for where in [w for w in self._rollouts if w[:2] == (key.namespace, key.name)]:
            task = self._rollouts.pop(where).task
            task.cancel()  # an upgrade racing the uninstall could bring the release back
            await asyncio.wait({task})
        problems: list[str] = []
        # Uninstalled even when paused: a finalizer removed over live releases would orphan them.
        for target in self._targets(obj):
            release = release_name(obj, target.name)
            try:
                text = await self._kubeconfig_text(target)
                with self._kubeconfig_file(text) as kubeconfig:
                    await self.helm.uninstall(release, namespace, kubeconfig, HELM_TIMEOUT)
            except (helm.HelmError, clients.KubeconfigError, KubeError) as exc:
                problems.append(f"cluster {target.name}: {exc}")
        if not problems:
            problems = await self._delete_prereqs(obj)
        if not problems:  # upstream's order: the releases, then the prereqs, then the configPorts Service
            try:
                await configports.remove(self.ctx.clusters.host.rest, obj)
            except KubeError as exc:
                problems.append(f"host cluster: deleting the Service of configPorts: {exc}")
        if problems:
            await self._write_conditions(obj, [(RECONCILED, "False", cond.AWAITING_DELETION, "; ".join(problems))])
            return RETRY
        await objects.remove_finalizer(self.ctx.clusters.host.rest, DPU_SERVICE, obj, FINALIZER)
        log.info("DPUService %s/%s: releases uninstalled", namespace, obj["metadata"]["name"])
        return None

    async def _delete_prereqs(self, obj: Obj) -> list[str]:
        """After the uninstall: release this DPUService's interfaces; when it was the namespace's last live
        DPUService, remove the mirrored pull secrets from every DPU cluster (upstream's order)."""
        namespace = key_of(obj)[0]
        await self.claims.release_all(obj)
        return await self.pull_secrets.release(namespace, prereqs.live_namespaces(self.services.list()))
