"""A watch cache over objects far larger than aiohttp's default line limit (128 KiB): a DPUFlavor's configFiles
or a DPUService's values can be that large, and each watch event is one line. It works because the API client
reads with a 2 MiB buffer (a 4 MiB line limit, over etcd's 1.5 MiB object limit); this holds that in place, since
a lower limit would end the watch on every such event and leave the cache frozen."""

from __future__ import annotations

import asyncio
import contextlib

from dpf.controller.kube.informer import Informer
from dpf.controller.kube.rest import Kind
from dpf.controller.settings import KubeSettings
from dpf.lab.bed.kube import ControlPlane

from .harness import eventually, host_rest, run

CONFIG_MAP = Kind("", "v1", "configmaps", "ConfigMap")
LARGE = 700 * 1024  # under ConfigMap's 1 MiB, far over 128 KiB


def test_watch_events_of_large_objects_reach_the_cache(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        informer = Informer(rest, CONFIG_MAP, KubeSettings(relist_backoff=0.2), namespace=namespace)
        task = asyncio.create_task(informer.run())
        try:
            await eventually(informer.synced.is_set, "the ConfigMap cache to sync")
            body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big", "namespace": namespace},
                    "data": {"raw": "a" * LARGE}}
            await rest.create(CONFIG_MAP, body, namespace)
            await eventually(lambda: informer.get(namespace, "big"), "the large ConfigMap's ADDED event")
            await rest.merge_patch(CONFIG_MAP, "big", {"data": {"raw": "b" * LARGE}}, namespace)
            await eventually(lambda: (informer.get(namespace, "big") or {}).get("data", {}).get("raw", "")[:1] == "b",
                             "the large ConfigMap's MODIFIED event")
            await rest.delete(CONFIG_MAP, "big", namespace)
            await eventually(lambda: informer.get(namespace, "big") is None, "the large ConfigMap's DELETED event")
            assert not task.done(), "the informer's task ended"
            assert informer.relists == 1, "the events came by watch, not by re-listing after a broken watch"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await rest.close()

    run(scenario())
