"""The NodeState stream: binds a stream to the node in the client certificate, pushes that node's
snapshots, and tracks nonces and ACK/NACK (go-control-plane's server half; the cache is `cache/`).

Per subscribed type the stream pushes only when the snapshot version differs from the agent's last ACK
and from the version it last NACKed (a NACKed version is never re-sent; only a new snapshot is), with at
most one response in flight per type (newer snapshots coalesce while an ACK is pending). Responses are
deltas over what the agent holds: its ACKs on this stream, or the resource versions it presented when it
subscribed, so a reconnect or controller restart with unchanged state sends nothing at all.
Callers: grpc.aio (`Stream`), the manager (`close_all` on losing leadership). Never talks to Kubernetes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from dpf.controller.cache.snapshot import Snapshot
from dpf.controller.cache.snapshot_cache import SnapshotCache, Watch
from dpf.controller.metrics import Metrics
from dpf.controller.server import identity as ident
from dpf.controller.server.node_status import Nack, NodeRegistry
from dpf.controller.settings import ServerSettings
from dpf.proto import versioning
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import nodestate_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

ROLE_NAMES = {pb.ROLE_HOST: "host", pb.ROLE_DPU: "dpu"}


class StreamObserver(Protocol):
    """Stream lifecycle callbacks (keep metrics-free reactions such as enqueueing reconciles out of the loop)."""

    def on_connect(self, node: str, role: str) -> None: ...
    def on_disconnect(self, node: str) -> None: ...
    def on_ack(self, node: str, type_url: str, snapshot: Snapshot) -> None: ...
    def on_nack(self, node: str, type_url: str, nack: Nack) -> None: ...
    def on_status(self, node: str, type_url: str, report: pb.StatusReport) -> None: ...


class ProtocolError(Exception):
    """The agent broke the protocol; the stream ends with INVALID_ARGUMENT."""


@dataclass
class TypeState:
    type_url: str
    known: dict[str, str] | None  # what the agent holds (None: unknown, send full state)
    acked_version: str = ""
    nacked_version: str = ""
    pending_nonce: str = ""
    pending: Snapshot | None = None
    pending_names: dict[str, str] = field(default_factory=dict)


@dataclass
class Session:
    node: str
    role: str
    watch: Watch
    task: asyncio.Task[None] | None
    types: dict[str, TypeState] = field(default_factory=dict)
    close_reason: str = ""
    reader_done: bool = False
    reader_error: BaseException | None = None


class NodeStateServer(pb_grpc.NodeStateServicer):
    def __init__(self, cache: SnapshotCache, registry: NodeRegistry, observer: StreamObserver, metrics: Metrics,
                 settings: ServerSettings, controller_id: str, insecure: bool,
                 is_leader: Callable[[], bool], leader_hint: Callable[[], str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cache = cache
        self.registry = registry
        self.observer = observer
        self.metrics = metrics
        self.settings = settings
        self.controller_id = controller_id
        self.insecure = insecure
        self._is_leader = is_leader
        self._leader_hint = leader_hint
        self._clock = clock
        self._nonce = itertools.count(1)
        self.sessions: dict[str, Session] = {}

    # ---- control -----------------------------------------------------------------------------------------
    def close_all(self, reason: str) -> None:
        """End every stream with UNAVAILABLE (e.g. leadership lost) so agents fail over."""
        for session in list(self.sessions.values()):
            session.close_reason = reason
            session.watch.changed.set()

    # ---- the RPC -----------------------------------------------------------------------------------------
    async def Stream(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:  # grpc's name
        if not self._is_leader():
            self.metrics.rejected_streams.labels("not-leader").inc()
            leader = self._leader_hint()
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"controller {self.controller_id} is not the leader"
                                + (f" (leader: {leader})" if leader else "") + "; try another replica")
        cert_identity = None
        if not self.insecure:
            try:
                cert_identity = ident.from_auth_context(context.auth_context())
            except ident.IdentityError as exc:
                self.metrics.rejected_streams.labels("bad-certificate").inc()
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        hello = await self._read_hello(context)
        node, role = await self._bind(hello, cert_identity, context)
        session = self._open(node, role)
        try:
            await context.write(pb.StreamResponse(welcome=pb.Welcome(
                node=node, role=hello.role, controller=self.controller_id)))
            reader = asyncio.create_task(self._read_loop(session, context), name=f"nodestate/{node}/reader")
            try:
                await self._write_loop(session, context)
            finally:
                reader.cancel()
                await asyncio.wait({reader})
        finally:
            self._close(session)

    async def _read_hello(self, context: grpc.aio.ServicerContext) -> pb.Hello:
        try:
            first = await asyncio.wait_for(context.read(), self.settings.hello_timeout)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"no Hello within {self.settings.hello_timeout:.0f}s of opening the stream")
        if first is grpc.aio.EOF or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message on a stream must be Hello")
        return first.hello

    async def _bind(self, hello: pb.Hello, cert: ident.NodeIdentity | None,
                    context: grpc.aio.ServicerContext) -> tuple[str, str]:
        role = ROLE_NAMES.get(hello.role, "")
        if cert is None:  # --insecure: trust the Hello (lab only)
            if not hello.node or not role:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Hello must name the node and its role")
            return hello.node, role
        if hello.node and hello.node != cert.node:
            self.metrics.rejected_streams.labels("node-mismatch").inc()
            log.warning("refused stream: certificate for node %s asked for node %s", cert.node, hello.node)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"the client certificate is for node {cert.node!r}; it cannot subscribe as "
                                f"node {hello.node!r}")
        if role and role != cert.role:
            self.metrics.rejected_streams.labels("role-mismatch").inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"the client certificate is for a {cert.role} agent, Hello says {role}")
        return cert.node, cert.role

    def _open(self, node: str, role: str) -> Session:
        old = self.sessions.get(node)
        if old is not None:  # the newest stream of a node wins (an agent reconnected before we saw the old die)
            old.close_reason = "replaced by a newer stream of the same node"
            old.watch.changed.set()
        session = Session(node, role, self.cache.watch(node), asyncio.current_task())
        self.sessions[node] = session
        status = self.registry.node(node)
        status.role, status.connected = role, True
        self.metrics.connected_agents.labels(role).inc()
        log.info("node %s (%s) connected", node, role)
        self.observer.on_connect(node, role)
        return session

    def _close(self, session: Session) -> None:
        self.cache.cancel(session.watch)
        self.metrics.connected_agents.labels(session.role).dec()
        if self.sessions.get(session.node) is session:
            del self.sessions[session.node]
            self.registry.node(session.node).connected = False
            log.info("node %s disconnected", session.node)
            self.observer.on_disconnect(session.node)

    # ---- reading -----------------------------------------------------------------------------------------
    async def _read_loop(self, session: Session, context: grpc.aio.ServicerContext) -> None:
        try:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:
                    return
                which = message.WhichOneof("message")
                if which == "request":
                    self._on_request(session, message.request)
                elif which == "status":
                    self._on_status(session, message.status)
                else:
                    raise ProtocolError(f"unexpected {which or 'empty'} message after Hello")
                session.watch.changed.set()
        except Exception as exc:  # noqa: BLE001 - any read failure ends the stream; the writer reports it
            session.reader_error = exc
        finally:
            session.reader_done = True
            session.watch.changed.set()

    def _on_request(self, session: Session, request: pb.DiscoveryRequest) -> None:
        type_url = request.type_url
        if not request.response_nonce:
            self._subscribe(session, request)
            return
        state = session.types.get(type_url)
        if state is None or request.response_nonce != state.pending_nonce or state.pending is None:
            log.debug("node %s: ignoring %s answer with stale nonce %s", session.node, type_url,
                      request.response_nonce)
            return
        snapshot, state.pending, state.pending_nonce = state.pending, None, ""
        self.registry.node(session.node).heard.add(type_url)
        status = self.registry.node(session.node).of(type_url)
        if request.HasField("error_detail"):
            state.nacked_version = snapshot.version
            detail = request.error_detail
            implicated = {n: snapshot.resources[n].version for n in detail.resources if n in snapshot.resources}
            nack = Nack(snapshot.version, detail.message, dict(detail.resources), implicated or state.pending_names)
            status.nack = nack
            self.metrics.nacks.labels(type_url).inc()
            log.warning("node %s rejected %s version %s: %s", session.node, type_url, snapshot.version,
                        detail.message)
            self.observer.on_nack(session.node, type_url, nack)
            return
        if request.version_info != snapshot.version:
            raise ProtocolError(f"ACK of nonce {request.response_nonce} names version {request.version_info}, "
                                f"the response carried {snapshot.version}")
        state.acked_version, state.nacked_version = snapshot.version, ""
        state.known = snapshot.resource_versions()
        status.acked_version, status.acked, status.nack = snapshot.version, dict(state.known), None
        self.metrics.acks.labels(type_url).inc()
        published = self.cache.set_at(session.node, type_url)
        if published is not None and self.cache.get(session.node, type_url).version == snapshot.version:
            self.metrics.stream_lag.labels(type_url).observe(max(0.0, self._clock() - published))
        self.observer.on_ack(session.node, type_url, snapshot)

    def _subscribe(self, session: Session, request: pb.DiscoveryRequest) -> None:
        type_url = request.type_url
        presented = dict(request.resource_versions)
        # Nothing applied, or versions that do not add up: None, so the full state is sent.
        usable = request.version_info != versioning.EMPTY and versioning.set_version(presented) == request.version_info
        known: dict[str, str] | None = presented if usable else None
        state = TypeState(type_url, known, acked_version=request.version_info if known is not None else "")
        session.types[type_url] = state
        status = self.registry.node(session.node).of(type_url)
        if known is not None:
            status.acked_version, status.acked = request.version_info, dict(known)
        if not self.cache.served(type_url):
            log.info("node %s subscribed to %s, which this controller does not serve; nothing will be sent",
                     session.node, type_url)

    def _on_status(self, session: Session, report: pb.StatusReport) -> None:
        self.registry.node(session.node).heard.add(report.type_url)
        status = self.registry.node(session.node).of(report.type_url)
        if report.full:
            status.observed = {}
        for obj in report.objects:
            status.observed[obj.name] = obj
        self.observer.on_status(session.node, report.type_url, report)

    # ---- writing -----------------------------------------------------------------------------------------
    async def _write_loop(self, session: Session, context: grpc.aio.ServicerContext) -> None:
        while True:
            await session.watch.changed.wait()
            session.watch.changed.clear()
            if session.close_reason:
                await context.abort(grpc.StatusCode.UNAVAILABLE, session.close_reason)
            if session.reader_done:
                if isinstance(session.reader_error, ProtocolError):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(session.reader_error))
                return
            if not self.cache.ready.is_set():
                continue
            for state in list(session.types.values()):  # the reader may subscribe a type meanwhile
                response = self._next_response(session, state)
                if response is not None:
                    await context.write(pb.StreamResponse(response=response))

    def _next_response(self, session: Session, state: TypeState) -> pb.DiscoveryResponse | None:
        if state.pending is not None or not self.cache.served(state.type_url):
            return None
        snapshot = self.cache.get(session.node, state.type_url)
        if snapshot.version in (state.acked_version, state.nacked_version):
            return None
        nonce = str(next(self._nonce))
        response = pb.DiscoveryResponse(type_url=state.type_url, version_info=snapshot.version, nonce=nonce)
        if state.known is None:
            response.full_state = True
            send = list(snapshot.resources.values())
        else:
            send, removed = snapshot.delta(state.known)
            response.removed_resources.extend(removed)
        for r in send:
            response.resources.add(name=r.name, version=r.version, body=r.body)
        state.pending, state.pending_nonce = snapshot, nonce
        state.pending_names = {r.name: r.version for r in send}
        self.metrics.responses.labels(state.type_url, str(response.full_state).lower()).inc()
        return response
