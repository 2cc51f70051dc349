"""Image pull secrets for DPUServices (part of upstream's Step 2, `ApplicationPrereqsReconciled`).

Secrets labelled `dpu.nvidia.com/image-pull-secret` in a DPUService's namespace (host cluster) are copied into
the same namespace of every DPU cluster (name, type, data, labels) and pruned there once their source is gone;
when the last live DPUService of a namespace goes, the copies go too. Copies carry `MIRROR_LABEL`, so only
Secrets we made are ever pruned (upstream prunes by the image-pull-secret label alone).

The sources are listed per DPUService namespace, by label, and watched the same way (`PullSecretWatches`):
the controller is never granted a cluster-wide list or watch of Secrets (docs/deploy.md). Where it may not
list Secrets in a namespace, `sources` answers None: mirroring is off there (bind the pull-secret reader role).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from dpf.controller.clusters import Cluster
from dpf.controller.kube.informer import Informer
from dpf.controller.kube.rest import SECRET, Kind, KubeError, Obj, Rest
from dpf.controller.reconcilers import objects
from dpf.controller.settings import KubeSettings

log = logging.getLogger(__name__)

PULL_SECRET_LABEL = "dpu.nvidia.com/image-pull-secret"
MIRROR_LABEL = "svc.dpu.nvidia.com/mirrored-image-pull-secret"  # value "true": a copy made by the controller
FIELDS = ("type", "data", "immutable")
ACCESS_TTL = 60.0  # seconds a namespace's answer to "may the controller watch Secrets here" is kept
SELF_SUBJECT_ACCESS_REVIEW = Kind("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview",
                                  namespaced=False)


def mirror_of(source: Obj) -> Obj:
    """The DPU-cluster copy of a host pull Secret (a server-side apply body). Pure."""
    meta = source["metadata"]
    body: Obj = {"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                              "labels": {**(meta.get("labels") or {}), MIRROR_LABEL: "true"}}}
    body.update({k: source[k] for k in FIELDS if source.get(k) is not None})
    return body


def differs(current: Obj | None, desired: Obj) -> bool:
    """True when applying `desired` would change the copy `current`. Pure."""
    if current is None:
        return True
    labels = current["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in desired["metadata"]["labels"].items()):
        return True
    return any((current.get(k) or None) != (desired.get(k) or None) for k in FIELDS)  # {} and False: unset


def plan(sources: Sequence[Obj], copies: Sequence[Obj]) -> tuple[list[Obj], list[str]]:
    """(bodies to apply, names of copies to delete) for one namespace of one DPU cluster. Pure."""
    have = {c["metadata"]["name"]: c for c in copies}
    apply = [m for m in (mirror_of(s) for s in sources) if differs(have.get(m["metadata"]["name"]), m)]
    wanted = {s["metadata"]["name"] for s in sources}
    return apply, sorted(n for n in have if n not in wanted)


async def sources(host: Rest, namespace: str) -> list[Obj] | None:
    """The namespace's pull Secrets in the host cluster; None when the controller may not list them."""
    try:
        return (await host.list(SECRET, namespace, PULL_SECRET_LABEL))["items"]
    except KubeError as exc:
        if exc.status == 403:
            return None
        raise


async def may_watch_secrets(host: Rest, namespace: str) -> bool:
    """Asked of the apiserver (a SelfSubjectAccessReview, which every authenticated identity may make)."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": {"namespace": namespace, "verb": "watch", "resource": "secrets"}}}
    answer = await host.create(SELF_SUBJECT_ACCESS_REVIEW, review)
    return bool((answer.get("status") or {}).get("allowed"))


async def copies(rest: Rest, namespace: str) -> list[Obj]:
    return (await rest.list(SECRET, namespace, f"{MIRROR_LABEL}=true"))["items"]


async def mirror(rest: Rest, namespace: str, pull_secrets: Sequence[Obj], field_manager: str) -> list[str]:
    """Bring the copies in one DPU cluster's namespace in line; returns problems, each naming the Secret."""
    have = {c["metadata"]["name"]: c for c in await copies(rest, namespace)}
    apply, stale = plan(pull_secrets, list(have.values()))
    problems: list[str] = []
    if apply:
        try:
            await objects.ensure_namespace(rest, namespace)
        except KubeError as exc:
            return [f"namespace {namespace}: {exc}"]
    for body in apply:
        name = body["metadata"]["name"]
        try:
            if (have.get(name) or {}).get("immutable"):
                await rest.delete(SECRET, name, namespace)  # an immutable copy cannot change: replaced
            await rest.apply(SECRET, body, field_manager)
        except KubeError as exc:
            problems.append(f"image pull secret {namespace}/{name}: {exc}")
    for name in stale:
        try:
            await rest.delete(SECRET, name, namespace)
        except KubeError as exc:
            problems.append(f"image pull secret {namespace}/{name} (pruning): {exc}")
    return problems


async def remove_all(rest: Rest, namespace: str) -> None:
    for copy in await copies(rest, namespace):
        await rest.delete(SECRET, copy["metadata"]["name"], namespace)


class PullSecretWatches:
    """A label-selected Secret watch per namespace that holds DPUServices; `on_change(namespace)` on any event.

    Started from reconcile (so only while leading) and stopped by `close` or when a namespace's last DPUService
    goes. A namespace whose Secrets the controller may not list gets no watch (see `sources`)."""

    def __init__(self, rest: Rest, settings: KubeSettings, on_change: Callable[[str], None]) -> None:
        self.rest = rest
        self.settings = settings
        self.on_change = on_change
        self._watches: dict[str, tuple[Informer, asyncio.Task[None]]] = {}

    def ensure(self, namespace: str) -> None:
        if namespace in self._watches:
            return
        informer = Informer(self.rest, SECRET, self.settings, namespace=namespace, label_selector=PULL_SECRET_LABEL)
        informer.add_handler(lambda _t, _old, _new: self.on_change(namespace))
        task = asyncio.create_task(informer.run(), name=f"pull-secrets/{namespace}")
        self._watches[namespace] = (informer, task)

    async def stop(self, namespaces: Iterable[str]) -> None:
        tasks = [self._watches.pop(n)[1] for n in list(namespaces) if n in self._watches]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def close(self) -> None:
        await self.stop(list(self._watches))


def live_namespaces(services: Iterable[Mapping[str, Any]]) -> set[str]:
    """Namespaces with at least one DPUService not being deleted. Pure."""
    return {s["metadata"]["namespace"] for s in services if not s["metadata"].get("deletionTimestamp")}


class PullSecretMirror:
    """Step 2's image pull secrets, for both DPUService backends: `sync(namespace)` mirrors the namespace's
    sources into every DPU cluster (whatever a DPUService's targets, as upstream) and keeps a watch on them;
    `release(namespace, live)` removes the copies once the namespace holds no live DPUService; `close()` when
    leadership ends. Problems come back as strings; one starting with "cluster <name>: " concerns that cluster."""

    def __init__(self, host: Rest, clusters: Callable[[], Iterable[Cluster]], settings: KubeSettings,
                 on_change: Callable[[str], None]) -> None:
        self.host = host
        self.clusters = clusters  # the connected DPU clusters
        self.field_manager = settings.field_manager
        self.watches = PullSecretWatches(host, settings, on_change)
        self._unreadable: set[str] = set()  # namespaces not opted in (logged once)
        self._watchable: dict[str, tuple[bool, float]] = {}  # namespace -> (may watch Secrets, when asked)

    def _sorted_clusters(self) -> list[Cluster]:
        return sorted(self.clusters(), key=lambda c: c.name)

    async def _opted_in(self, namespace: str) -> bool:
        """The controller may watch Secrets in `namespace`, as the opt-in (`clusterrole-pull-secret-reader.yaml`)
        allows: a namespace where another role grants only a list (the argocd backend's Role in the controller's
        own namespace) is not opted in. Asked again after ACCESS_TTL, so a binding added later is seen."""
        known = self._watchable.get(namespace)
        if known is None or time.monotonic() - known[1] > ACCESS_TTL:
            known = (await may_watch_secrets(self.host, namespace), time.monotonic())
            self._watchable[namespace] = known
        return known[0]

    async def sync(self, namespace: str) -> list[str]:
        try:
            found = await sources(self.host, namespace) if await self._opted_in(namespace) else None
        except KubeError as exc:
            return [f"host cluster: listing image pull secrets in namespace {namespace}: {exc}"]  # blocks no target
        if found is None:
            if namespace not in self._unreadable:
                self._unreadable.add(namespace)
                log.warning("namespace %s: may not list and watch Secrets, so image pull secrets are not mirrored into "
                            "DPU clusters there (bind dpf-controller-pull-secret-reader)", namespace)
            return []
        self.watches.ensure(namespace)
        problems: list[str] = []
        for cluster in self._sorted_clusters():
            try:
                failed = await mirror(cluster.rest, namespace, found, self.field_manager)
            except KubeError as exc:
                failed = [f"image pull secrets in namespace {namespace}: {exc}"]
            problems.extend(f"cluster {cluster.name}: {p}" for p in failed)
        return problems

    async def release(self, namespace: str, live: set[str]) -> list[str]:
        """Remove the copies from every DPU cluster unless `namespace` is in `live` (see `live_namespaces`), or is not
        opted in (nothing was mirrored from there; copies left by an opt-in since withdrawn stay)."""
        if namespace in live:
            return []
        if not await self._opted_in(namespace):
            await self.watches.stop([namespace])
            return []
        problems: list[str] = []
        for cluster in self._sorted_clusters():
            try:
                await remove_all(cluster.rest, namespace)
            except KubeError as exc:
                problems.append(f"cluster {cluster.name}: image pull secrets in namespace {namespace}: {exc}")
        if not problems:
            await self.watches.stop([namespace])
        return problems

    async def close(self) -> None:
        await self.watches.close()
        self._unreadable.clear()
        self._watchable.clear()
