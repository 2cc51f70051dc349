"""Applies one resource type: merges a response into the stored set, checks its version, decodes payloads,
calls the handler (retrying transient failures with back-off), persists, and decides ACK or NACK.

A payload that does not decode is that object's problem only: it is reported REJECTED and the handler
gets the rest; the set is still ACKed (and stored whole, so the versions keep adding up). Only a handler's
`Rejected` (the set as a whole cannot be applied) NACKs.

Lives as long as the agent (state survives reconnects). Callers: the session (responses) and the runtime
(start-up re-assert, periodic resync). Never touches the network.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from dpf.agent.runtime.handlers import Desired, Handler, Rejected, Reporter, TransientError
from dpf.agent.runtime.metrics import AgentMetrics
from dpf.agent.runtime.store import StateStore, StoredResource, TypeState
from dpf.proto import versioning
from dpf.proto.v1 import nodestate_pb2 as pb

log = logging.getLogger(__name__)


class Desync(Exception):
    """A delta that does not add up to the announced version: the stream must be re-established."""


@dataclass
class Outcome:
    version: str
    error: pb.ErrorDetail | None = None  # set: NACK
    removed: frozenset[str] = frozenset()  # names the applied response removed (their statuses are forgotten)


class TypeApplier:
    def __init__(self, handler: Handler, store: StateStore, metrics: AgentMetrics, retry_base: float,
                 retry_max: float) -> None:
        self.handler = handler
        self.type_url = handler.type_url
        self.store = store
        self.metrics = metrics
        self.retry_base, self.retry_max = retry_base, retry_max
        self.state: TypeState = store.load(self.type_url)
        self.lock = asyncio.Lock()  # one apply at a time per type (response vs periodic resync)

    # ---- responses ---------------------------------------------------------------------------------------
    def merge(self, response: pb.DiscoveryResponse) -> dict[str, StoredResource]:
        """The complete set after `response`; raises Desync if it does not hash to response.version_info."""
        merged = {} if response.full_state else dict(self.state.resources)
        for name in response.removed_resources:
            merged.pop(name, None)
        for r in response.resources:
            merged[r.name] = StoredResource(r.version, r.body)
        if versioning.set_version({n: r.version for n, r in merged.items()}) != response.version_info:
            raise Desync(f"{self.type_url}: response {response.nonce} does not add up to version "
                         f"{response.version_info}")
        return merged

    async def on_response(self, response: pb.DiscoveryResponse, reporter: Reporter) -> Outcome:
        merged = self.merge(response)
        async with self.lock:
            changed = {n for n, r in merged.items() if (old := self.state.resources.get(n)) is None
                       or old.version != r.version}
            removed = set(self.state.resources) - set(merged)
            if changed or removed:
                desired = self._decode(merged, changed, reporter)
                try:
                    await self._apply_with_retries(desired, changed & set(desired), removed, reporter)
                except Rejected as exc:
                    return self._nack(exc)
            self.state = TypeState(self.type_url, response.version_info, merged)
            await asyncio.to_thread(self.store.save, self.state)  # fsync must not stall the other types' streams
            return Outcome(response.version_info, removed=frozenset(removed))

    def _nack(self, exc: Rejected) -> Outcome:
        self.metrics.applies.labels(self.type_url, "rejected").inc()
        log.warning("%s: rejecting desired state: %s", self.type_url, exc)
        return Outcome(self.state.version, pb.ErrorDetail(message=str(exc), resources=exc.resources))

    def _decode(self, resources: Mapping[str, StoredResource], report: set[str], reporter: Reporter) -> Desired:
        """The decodable resources as name → (version, message); those in `report` that do not decode are
        reported REJECTED (the others were reported when they arrived)."""
        desired: dict[str, tuple[str, Any]] = {}
        for name, r in resources.items():
            message = self.handler.message_class()
            try:
                why = "" if r.body.Unpack(message) else f"payload is a {r.body.type_url}, expected {self.type_url}"
            except DecodeError as exc:
                why = f"payload does not decode: {exc}"
            if not why:
                desired[name] = (r.version, message)
            elif name in report:
                self.metrics.applies.labels(self.type_url, "rejected").inc()
                log.warning("%s: rejecting %s: %s", self.type_url, name, why)
                reporter.report(name, r.version, pb.VERDICT_REJECTED, why)
        return desired

    async def _apply_with_retries(self, desired: Desired, changed: set[str], removed: set[str],
                                  reporter: Reporter) -> None:
        delay = self.retry_base
        while True:
            started = time.monotonic()
            try:
                await self.handler.apply(desired, changed, removed, reporter)
                self.metrics.applies.labels(self.type_url, "ok").inc()
                self.metrics.apply_seconds.labels(self.type_url).observe(time.monotonic() - started)
                return
            except TransientError as exc:
                self.metrics.applies.labels(self.type_url, "transient").inc()
                names = exc.resources or dict.fromkeys(changed or desired, str(exc))
                for name, why in names.items():
                    if name in desired:
                        reporter.report(name, desired[name][0], pb.VERDICT_FAILED, why or str(exc))
                log.warning("%s: apply failed (%s); retrying in %.1fs", self.type_url, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)

    # ---- re-assert (start-up, periodic resync) ---------------------------------------------------------
    async def reassert(self, reporter: Reporter, give_up: Callable[[], Awaitable[None]] | None = None) -> bool:
        """Apply the stored state again through the handler (all names changed). False if it was rejected."""
        async with self.lock:
            if not self.state.resources and self.state.version == versioning.EMPTY:
                return True
            try:
                desired = self._decode(self.state.resources, set(self.state.resources), reporter)
                await self._apply_with_retries(desired, set(desired), set(), reporter)
            except Rejected as exc:
                log.error("%s: stored state no longer applies: %s", self.type_url, exc)
                return False
            return True
