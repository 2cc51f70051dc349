"""The clusters the controller talks to: the host cluster, and one DPU cluster per DPUCluster whose Secret
holds a usable kubeconfig (added and removed at run time by the dpucluster reconciler).

Each cluster owns its informers (one per kind, created on first request and started at once). Reconcilers
declare the DPU-cluster kinds they need and get `on_dpu_added` callbacks to attach handlers and indexes;
removing a cluster first reports all its cached objects as deleted, so per-node state recomputes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from dpf.controller.kube.informer import Informer
from dpf.controller.kube.rest import Kind, Rest
from dpf.controller.settings import KubeSettings
from dpf.shared.tasks import TaskGroup

log = logging.getLogger(__name__)


class Cluster:
    def __init__(self, name: str, rest: Rest, settings: KubeSettings,
                 on_failure: Callable[[str, BaseException | None], None], config_hash: str = "",
                 namespace: str | None = None, label_selectors: dict[Kind, str | None] | None = None) -> None:
        self.name = name
        self.namespace = namespace
        self.rest = rest
        self.settings = settings
        self.config_hash = config_hash
        self._informers: dict[Kind, Informer] = {}
        self._label_selectors = label_selectors or {}
        self._tasks = TaskGroup(f"cluster/{name}", on_failure)

    def informer(self, kind: Kind) -> Informer:
        found = self._informers.get(kind)
        if found is None:
            found = self._informers[kind] = Informer(self.rest, kind, self.settings, namespace=self.namespace,
                                                     label_selector=self._label_selectors.get(kind))
            self._tasks.start(f"informer/{kind}", found.run())
        return found

    def has(self, kind: Kind) -> bool:
        return kind in self._informers

    def synced(self, kinds: Collection[Kind] | None = None) -> bool:
        """The caches of `kinds` (None: every cache of this cluster) have synced."""
        if kinds is None:
            return all(i.synced.is_set() for i in self._informers.values())
        return all((i := self._informers.get(k)) is not None and i.synced.is_set() for k in kinds)

    async def close(self, report_deletions: bool = True) -> None:
        try:
            await self._tasks.stop()
            if report_deletions:
                for informer in self._informers.values():
                    informer.forget_all()
        finally:
            await self.rest.close()  # even when cancelled half-way: an open client leaks its sockets


class ClusterSet:
    def __init__(self, host: Cluster, settings: KubeSettings,
                 on_failure: Callable[[str, BaseException | None], None]) -> None:
        self.host = host
        self.settings = settings
        self.dpu: dict[str, Cluster] = {}
        self.dpu_kinds: dict[Kind, str | None] = {}  # kind -> label selector of its watch (None: all objects)
        self._on_dpu_added: list[Callable[[Cluster], None]] = []
        self._on_failure = on_failure
        self.closed = False

    def need_dpu_kind(self, kind: Kind, label_selector: str | None = None) -> None:
        """Watch `kind` in every DPU cluster; with `label_selector`, only the objects it selects (so a
        controller that needs a few labelled Pods does not cache every Pod of a big cluster)."""
        if self.dpu_kinds.setdefault(kind, label_selector) != label_selector:
            raise ValueError(f"{kind.kind} is already watched with label selector {self.dpu_kinds[kind]!r}, "
                             f"not {label_selector!r}")

    def on_dpu_added(self, callback: Callable[[Cluster], None]) -> None:
        self._on_dpu_added.append(callback)

    def add_dpu(self, name: str, rest: Rest, config_hash: str) -> Cluster:
        """Take `rest` over; on a closed set this raises, and closing `rest` stays the caller's job."""
        if self.closed:
            raise RuntimeError(f"DPU cluster {name} not added: the controller is stopping")
        cluster = Cluster(name, rest, self.settings, self._on_failure, config_hash,
                          label_selectors=self.dpu_kinds)
        for kind in self.dpu_kinds:
            cluster.informer(kind)
        self.dpu[name] = cluster
        for callback in self._on_dpu_added:
            callback(cluster)
        log.info("DPU cluster %s added", name)
        return cluster

    async def remove_dpu(self, name: str) -> None:
        cluster = self.dpu.pop(name, None)
        if cluster is not None:
            await cluster.close()
            log.info("DPU cluster %s removed", name)

    def dpu_informers(self, kind: Kind) -> list[tuple[Cluster, Informer]]:
        return [(c, c.informer(kind)) for c in self.dpu.values()]

    async def close(self) -> None:
        self.closed = True
        try:
            for name in list(self.dpu):
                cluster = self.dpu.pop(name)
                await cluster.close(report_deletions=False)
        finally:
            await self.host.close(report_deletions=False)
