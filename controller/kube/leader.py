"""Leader election with a coordination.k8s.io/v1 Lease (client-go's algorithm, without its clock trust).

Candidates try every retry_period. A lease is free when its holder is empty or when this replica has
seen no change of its record for lease_duration (measured on our own monotonic clock, so clock skew
between replicas does not matter). Writes carry the read resourceVersion, so two candidates cannot both
win. A leader that could not renew for renew_deadline steps down. `release()` on clean shutdown empties
the holder so a follower takes over at its next try instead of waiting out the lease.

With `settings.pod_name` (in a Deployment: the Pod's own name), the leader's Pod is labelled so that the
controller Service sends agents to the leader only (leader_label.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dpf.controller.kube.leader_label import LeaderLabel
from dpf.controller.kube.rest import LEASE, KubeError, Rest
from dpf.controller.settings import LeaderSettings

log = logging.getLogger(__name__)


def _micro_time(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, rest: Rest, namespace: str, settings: LeaderSettings, identity: str,
                 on_started: Callable[[], Awaitable[None]], on_stopped: Callable[[], Awaitable[None]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        if settings.renew_deadline >= settings.lease_duration:
            raise ValueError("leader settings: renew_deadline must be shorter than lease_duration")
        self.rest = rest
        self.namespace = namespace
        self.settings = settings
        self.identity = identity
        self.is_leader = False
        self.holder = ""
        self._on_started = on_started
        self._on_stopped = on_stopped
        self._clock = clock
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self.label = (LeaderLabel(rest, namespace, settings.pod_name, settings.retry_period)
                      if settings.pod_name else None)

    @property
    def pod_labelled(self) -> bool:
        """False until this replica's Pod label first matched its leadership (True without a Pod name): a
        restarted ex-leader must not be selected by the Service as a ready endpoint while it still carries it."""
        return self.label is None or self.label.written

    async def run(self) -> None:
        if self.label is None:
            await self._elect()
            return
        async with asyncio.TaskGroup() as group:
            group.create_task(self.label.run(), name="leader-label")
            group.create_task(self._elect(), name="leader-election")

    def _set_leading(self, leading: bool) -> None:
        self.is_leader = leading
        if self.label is not None:
            self.label.set_leading(leading)

    async def _elect(self) -> None:
        while True:
            try:
                ok = await self._try_acquire_or_renew()
            except KubeError as exc:
                log.warning("leader election: lease %s/%s: %s", self.namespace, self.settings.lease_name, exc)
                ok = False
            now = self._clock()
            if ok:
                self._renewed_at = now
                if not self.is_leader:
                    self._set_leading(True)
                    log.info("leader election: %s became leader", self.identity)
                    await self._on_started()
            elif self.is_leader and (now - self._renewed_at >= self.settings.renew_deadline
                                     or self.holder not in ("", self.identity)):
                self._set_leading(False)
                log.warning("leader election: %s lost the lease (holder %r, last renewed %.1fs ago); stepping down",
                            self.identity, self.holder, now - self._renewed_at)
                await self._on_stopped()
            period = self.settings.retry_period
            await asyncio.sleep(period if self.is_leader else period * random.uniform(1.0, 1.2))

    async def _try_acquire_or_renew(self) -> bool:
        lease = await self.rest.get(LEASE, self.settings.lease_name, self.namespace)
        now = self._clock()
        duration = max(1, math.ceil(self.settings.lease_duration))
        if lease is None:
            body = {"apiVersion": LEASE.api_version, "kind": "Lease",
                    "metadata": {"name": self.settings.lease_name, "namespace": self.namespace},
                    "spec": self._spec(duration, transitions=0, acquired=True)}
            try:
                await self.rest.create(LEASE, body, self.namespace)
            except KubeError as exc:
                if exc.conflict:
                    return False
                raise
            self.holder = self.identity
            return True
        spec: dict[str, Any] = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime") or "")
        if record != self._observed:
            self._observed, self._observed_at = record, now
        self.holder = holder
        if holder and holder != self.identity and now - self._observed_at < self.settings.lease_duration:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        acquired = holder != self.identity
        new_spec = self._spec(duration, transitions + 1 if acquired else transitions, acquired)
        if not acquired:
            new_spec["acquireTime"] = spec.get("acquireTime") or new_spec["renewTime"]
        lease["spec"] = new_spec
        try:
            await self.rest.replace(LEASE, lease)
        except KubeError as exc:
            if exc.conflict:
                return False
            raise
        self.holder = self.identity
        return True

    def _spec(self, duration: int, transitions: int, acquired: bool) -> dict[str, Any]:
        now = _micro_time()
        spec: dict[str, Any] = {"holderIdentity": self.identity, "leaseDurationSeconds": duration,
                                "renewTime": now, "leaseTransitions": transitions}
        if acquired:
            spec["acquireTime"] = now
        return spec

    async def release(self) -> None:
        """Give the lease up (clean shutdown): followers may take it at their next try. Call it once `run()` has
        been stopped, or a renewal racing the release takes the lease back."""
        if not self.is_leader:
            return
        self._set_leading(False)
        try:
            lease = await self.rest.get(LEASE, self.settings.lease_name, self.namespace)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["renewTime"] = _micro_time()
                await self.rest.replace(LEASE, lease)
        except KubeError as exc:
            log.warning("leader election: could not release the lease: %s", exc)
        if self.label is not None:
            try:
                await self.label.sync(False)
            except KubeError as exc:
                log.warning("leader election: could not remove the leader label: %s", exc)
        await self._on_stopped()
