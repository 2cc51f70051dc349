"""DPUCluster → a DPU-cluster client (upstream's static cluster manager, read side).

For each DPUCluster with `spec.kubeconfig` set, read the Secret it names (key `admin.conf`, exactly one
cluster and one user) and connect to that cluster; reconnect when the kubeconfig changes; disconnect when
the DPUCluster goes away. A bad Secret is reported as a Warning Event on the DPUCluster. The lab may point
the Secret at the host apiserver itself (one apiserver for both clusters).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Hashable, Iterable

from dpf.controller.errors import PermanentError, TemporaryError
from dpf.controller.kube import clients
from dpf.controller.kube.events import WARNING
from dpf.controller.kube.informer import Informer, key_of
from dpf.controller.kube.rest import SECRET, KubeError, Obj
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.keys import ObjectKey
from dpf.controller.reconcilers.kinds import DPU_CLUSTER

log = logging.getLogger(__name__)


class DPUClusterReconciler(Reconciler):
    name = "dpucluster"
    kind = "DPUCluster"

    def setup(self) -> None:
        self.informer: Informer = self.ctx.clusters.host.informer(DPU_CLUSTER)
        self.informer.add_handler(self._on_event)

    def _on_event(self, _type: str, old: Obj | None, new: Obj | None) -> None:
        namespace, name = key_of(new or old)  # type: ignore[arg-type]
        self.ctx.queue.add(ObjectKey(self.name, namespace, name))

    def all_keys(self) -> Iterable[Hashable]:
        return [ObjectKey(self.name, *key_of(o)) for o in self.informer.list()]

    def synced(self) -> bool:
        return self.informer.synced.is_set()

    async def reconcile(self, key: ObjectKey) -> float | None:
        namespace, name = key.namespace, key.name
        cluster_name = f"{namespace}/{name}"
        obj = self.informer.get(namespace, name)
        secret_name = ((obj or {}).get("spec") or {}).get("kubeconfig") or ""
        if obj is None or obj["metadata"].get("deletionTimestamp") or not secret_name:
            await self.ctx.clusters.remove_dpu(cluster_name)
            return None
        host = self.ctx.clusters.host.rest
        try:
            secret = await host.get(SECRET, secret_name, namespace)
        except KubeError as exc:
            raise TemporaryError(f"reading Secret {namespace}/{secret_name}: {exc}") from None
        if secret is None:
            await self._warn(obj, "KubeconfigMissing",
                             f"Secret {namespace}/{secret_name} named by spec.kubeconfig does not exist")
            raise TemporaryError(f"Secret {namespace}/{secret_name} not found", delay=10.0)
        try:
            document = clients.parse_admin_conf(secret)
        except clients.KubeconfigError as exc:
            await self._warn(obj, "KubeconfigInvalid", str(exc))
            raise PermanentError(str(exc)) from None
        digest = hashlib.sha256((secret.get("data") or {})["admin.conf"].encode()).hexdigest()
        current = self.ctx.clusters.dpu.get(cluster_name)
        if current is not None and current.config_hash == digest:
            return None
        rest = await clients.from_kubeconfig_dict(document, f"dpu/{cluster_name}",
                                                  self.ctx.settings.kube.request_timeout)
        try:
            await self.ctx.clusters.remove_dpu(cluster_name)
        except BaseException:
            await rest.close()  # cancelled (controller stopping) before the new client was handed over
            raise
        self.ctx.clusters.add_dpu(cluster_name, rest, digest)
        return None

    async def _warn(self, obj: Obj, reason: str, note: str) -> None:
        await self.ctx.events.emit(self.ctx.clusters.host.rest, obj, "DPUCluster", WARNING, reason, note)
