"""One NodeState stream to one controller replica: Hello, Welcome, subscribe with the stored versions, then
dispatch responses to the per-type appliers and send their ACK/NACKs and status reports.

Ends by returning (the controller closed the stream) or raising grpc.aio.AioRpcError / Desync; the
runtime decides about reconnecting. All writes go through one lock (grpc streams allow one writer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence

import grpc
from google.protobuf.message import Message

from dpf.agent.runtime.applier import Desync, TypeApplier
from dpf.agent.runtime.metrics import AgentMetrics
from dpf.agent.runtime.settings import AgentSettings
from dpf.proto.status import object_status
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import nodestate_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

ROLES = {"host": pb.ROLE_HOST, "dpu": pb.ROLE_DPU}
STATUS_FLUSH_SECONDS = 0.05


class StatusBuffer:
    """Collects object statuses per type; flushed as StatusReports (the latest per object wins). Keeps the
    latest of every live object too, re-announced as a full report on each new stream.

    Besides the statuses of subscribed types, an agent may publish reports of its own (`publish_full`, e.g.
    the host agent's dpf.v1.HostInfo): always sent whole (`full`), at once and again on each new stream."""

    def __init__(self) -> None:
        self.pending: dict[str, dict[str, pb.ObjectStatus]] = {}
        self.latest: dict[str, dict[str, pb.ObjectStatus]] = {}
        self.full_types: set[str] = set()
        self.wake = asyncio.Event()

    def reporter(self, type_url: str) -> TypeReporter:
        return TypeReporter(self, type_url)

    def add(self, type_url: str, status: pb.ObjectStatus) -> None:
        self.latest.setdefault(type_url, {})[status.name] = status
        self.pending.setdefault(type_url, {})[status.name] = status
        self.wake.set()

    def publish_full(self, type_url: str, objects: Sequence[pb.ObjectStatus]) -> None:
        """Replace everything reported of `type_url` (a type nobody subscribes to) with `objects`."""
        self.full_types.add(type_url)
        self.latest[type_url] = {o.name: o for o in objects}
        self.pending[type_url] = dict(self.latest[type_url])
        self.wake.set()

    def forget(self, type_url: str, names: Iterable[str]) -> None:
        """Objects no longer in the desired set: their statuses are not re-announced."""
        latest = self.latest.get(type_url, {})
        for name in names:
            latest.pop(name, None)


class TypeReporter:
    """A handler's `Reporter` for one type."""

    def __init__(self, buffer: StatusBuffer, type_url: str) -> None:
        self._buffer, self._type_url = buffer, type_url

    def report(self, name: str, version: str, verdict: pb.Verdict, message: str = "",
               observed: Mapping[str, str] | None = None, detail: Message | None = None) -> None:
        status = object_status(name, version, verdict, message, observed)
        if detail is not None:
            status.detail.Pack(detail)
        self._buffer.add(self._type_url, status)


class Session:
    def __init__(self, settings: AgentSettings, channel: grpc.aio.Channel, appliers: Mapping[str, TypeApplier],
                 statuses: StatusBuffer, metrics: AgentMetrics, full_state: bool = False) -> None:
        self.settings = settings
        self.channel = channel
        self.appliers = appliers
        self.statuses = statuses
        self.metrics = metrics
        self.full_state = full_state  # --once: ask for everything regardless of what is stored
        self.welcome: pb.Welcome | None = None
        self.acked: dict[str, str] = {}
        self.nacked: dict[str, str] = {}
        self.answered = asyncio.Event()  # set after each ACK/NACK
        self._lock = asyncio.Lock()
        self._call: grpc.aio.StreamStreamCall | None = None
        self._queues: dict[str, asyncio.Queue[pb.DiscoveryResponse]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}

    async def _send(self, message: pb.StreamRequest) -> None:
        async with self._lock:
            assert self._call is not None
            await self._call.write(message)

    async def open(self) -> pb.Welcome:
        """Open the stream and wait for Welcome (connect_timeout)."""
        stub = pb_grpc.NodeStateStub(self.channel)
        self._call = stub.Stream(wait_for_ready=False)
        hello = pb.Hello(node=self.settings.node, role=ROLES[self.settings.role],
                         agent_version=self.settings.agent_version)
        await asyncio.wait_for(self._send(pb.StreamRequest(hello=hello)), self.settings.connect_timeout)
        first = await asyncio.wait_for(self._call.read(), self.settings.connect_timeout)
        if first is grpc.aio.EOF or not first.HasField("welcome"):
            await self._call.done_writing()
            raise ConnectionError("controller did not answer Hello with Welcome")
        self.welcome = first.welcome
        return first.welcome

    def add_type(self, type_url: str) -> None:
        """Subscribe to one handled type: its worker sends the subscription, then applies its responses.
        Called for every type when the stream starts, and by the runtime for a handler registered later."""
        if type_url in self._queues or type_url not in self.appliers:
            return
        queue = self._queues[type_url] = asyncio.Queue()
        self._workers[type_url] = asyncio.create_task(self._type_worker(type_url, queue), name=f"agent/type/{type_url}")

    async def _subscribe(self, applier: TypeApplier) -> None:
        state = applier.state
        request = pb.DiscoveryRequest(type_url=applier.type_url)
        if not self.full_state:
            request.version_info = state.version
            request.resource_versions.update(state.resource_versions())
        await self._send(pb.StreamRequest(request=request))
        observed = self.statuses.latest.get(applier.type_url)
        if observed:  # re-announce what we observed, the controller may be new
            await self._send(pb.StreamRequest(status=pb.StatusReport(
                type_url=applier.type_url, objects=list(observed.values()), full=True)))

    async def run(self) -> None:
        """Subscribe to every handled type, then serve responses until the stream ends."""
        assert self._call is not None
        for type_url in list(self.appliers):
            self.add_type(type_url)
        for type_url in sorted(self.statuses.full_types - set(self.appliers)):  # the controller may be new
            objects = list(self.statuses.latest.get(type_url, {}).values())
            await self._send(pb.StreamRequest(status=pb.StatusReport(type_url=type_url, objects=objects, full=True)))
        flusher = asyncio.create_task(self._status_flusher(), name="agent/status-flusher")
        try:
            while True:
                reading = asyncio.ensure_future(self._call.read())
                workers = {flusher, *self._workers.values()}
                done, _ = await asyncio.wait({reading, *workers}, return_when=asyncio.FIRST_COMPLETED)
                if reading not in done:
                    reading.cancel()
                    for worker in done:
                        worker.result()  # re-raise Desync or a crash
                    continue
                message = reading.result()
                if message is grpc.aio.EOF:
                    return
                if not message.HasField("response"):
                    continue
                response = message.response
                self.metrics.responses.labels(response.type_url).inc()
                queue = self._queues.get(response.type_url)
                if queue is None:
                    log.warning("ignoring a response for unhandled type %s", response.type_url)
                    continue
                queue.put_nowait(response)
        finally:
            pending = [flusher, *self._workers.values()]
            for worker in pending:
                worker.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _type_worker(self, type_url: str, queue: asyncio.Queue[pb.DiscoveryResponse]) -> None:
        applier = self.appliers[type_url]
        reporter = self.statuses.reporter(type_url)
        await self._subscribe(applier)
        while True:
            response = await queue.get()
            outcome = await applier.on_response(response, reporter)  # Desync propagates: reconnect
            self.statuses.forget(type_url, outcome.removed)
            request = pb.DiscoveryRequest(type_url=type_url, version_info=outcome.version,
                                          response_nonce=response.nonce)
            if outcome.error is not None:
                request.error_detail.CopyFrom(outcome.error)
                self.metrics.nacks.labels(type_url).inc()
                self.nacked[type_url] = response.version_info
            else:
                self.acked[type_url] = outcome.version
            await self._send(pb.StreamRequest(request=request))
            self.answered.set()

    async def _status_flusher(self) -> None:
        while True:
            await self.statuses.wake.wait()
            await asyncio.sleep(STATUS_FLUSH_SECONDS)  # batch bursts of reports into one message per type
            self.statuses.wake.clear()
            pending, self.statuses.pending = self.statuses.pending, {}
            for type_url, objects in pending.items():
                full = type_url in self.statuses.full_types
                if full:
                    objects = self.statuses.latest.get(type_url, {})
                await self._send(pb.StreamRequest(status=pb.StatusReport(type_url=type_url, full=full,
                                                                         objects=list(objects.values()))))

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()


__all__ = ["Desync", "Session", "StatusBuffer"]
