"""The leader's Pod carries a label that the controller Service selects, so agents behind the Service reach the
leader only (a follower would accept the connection and refuse the stream).

Why a label and not readiness: a readiness only the leader can have stalls every Deployment rollout (a new
replica never becomes available while an old one leads, so the old one is never replaced) and makes the
PodDisruptionBudget refuse to evict the leader for good. Readiness stays "caches warm"; the Service selects
ready pods with this label, so the leader's endpoint appears once it is ready and goes when its container dies.

Level-triggered: the own Pod's label follows `leading`; a leader also removes the label from any other Pod (an
ex-leader that crashed or lost the apiserver could not), at the start of its term and every `resync` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from dpf.controller.kube.rest import Kind, KubeError, Rest

log = logging.getLogger(__name__)

POD = Kind("", "v1", "pods", "Pod")
LEADER_LABEL = "dpu.nvidia.com/controller-leader"
"""Set to "true" on the leading replica's Pod only; packaging/manifests/service.yaml selects it."""


class LeaderLabel:
    def __init__(self, rest: Rest, namespace: str, pod_name: str, retry: float, resync: float = 30.0) -> None:
        self.rest = rest
        self.namespace = namespace
        self.pod_name = pod_name
        self.leading = False
        self.written = False
        """The own Pod's label has matched `leading` at least once (a restarted ex-leader dropped its label)."""
        self._retry, self._resync = retry, resync
        self._wake = asyncio.Event()

    def set_leading(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.sync(self.leading)
                self.written, wait = True, self._resync
            except KubeError as exc:
                log.warning("leader label on pod %s/%s: %s", self.namespace, self.pod_name, exc)
                wait = self._retry
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def sync(self, leading: bool) -> None:
        await self._label(self.pod_name, leading)
        if leading:
            others = await self.rest.list(POD, self.namespace, label_selector=f"{LEADER_LABEL}=true")
            for pod in others["items"]:
                if pod["metadata"]["name"] != self.pod_name:
                    log.info("leader label: removing it from %s (not the leader)", pod["metadata"]["name"])
                    await self._label(pod["metadata"]["name"], False)

    async def _label(self, pod: str, leading: bool) -> None:
        try:
            await self.rest.merge_patch(POD, pod, {"metadata": {"labels": {LEADER_LABEL: "true" if leading else None}}},
                                        self.namespace)
        except KubeError as exc:
            if not (exc.not_found and pod != self.pod_name):  # another Pod gone meanwhile: nothing to remove
                raise
