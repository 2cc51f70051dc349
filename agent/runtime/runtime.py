"""The agent runtime: re-asserts the stored state at start-up (so a restart with the controller down keeps
the data plane), then keeps one NodeState stream open, failing over between controller replicas with
exponential back-off and full jitter. `run_once()` is the debugging mode: one full-state sync, then exit.

Retry policy (go-control-plane's IsConnError split): UNAVAILABLE / CANCELLED / DEADLINE_EXCEEDED / a closed
stream / a desync mean "try the next replica"; PERMISSION_DENIED / UNAUTHENTICATED / INVALID_ARGUMENT
are configuration errors, logged loudly and retried at the maximum back-off (a fixed cert may follow).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from dpf.agent.runtime.applier import Desync, TypeApplier
from dpf.agent.runtime.handlers import Handler
from dpf.agent.runtime.metrics import AgentMetrics
from dpf.agent.runtime.session import Session, StatusBuffer
from dpf.agent.runtime.settings import AgentSettings
from dpf.agent.runtime.store import StateStore
from dpf.shared.health import HealthServer

log = logging.getLogger(__name__)

CONFIG_ERRORS = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                 grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
STABLE_SECONDS = 5.0  # a stream that lived this long resets the back-off


@dataclass
class RuntimeState:
    """What the loop knows, in one place."""

    endpoint_index: int = 0
    failed_rounds: int = 0
    stable_broke_at: float | None = None
    """When (monotonic) the last stream that had been stable ended: the start of a likely failover."""
    connected_to: str = ""
    controller: str = ""
    last_error: str = ""
    reasserted: bool = False
    connects: int = 0
    history: list[str] = field(default_factory=list)


class AgentRuntime:
    def __init__(self, settings: AgentSettings, handlers: Sequence[Handler]) -> None:
        if not settings.endpoints:
            raise ValueError("at least one controller endpoint (host:port) is required")
        if settings.role not in ("host", "dpu"):
            raise ValueError(f"role must be host or dpu, not {settings.role!r}")
        if settings.tls is None and not settings.insecure:
            raise ValueError("TLS files (--ca, --cert, --key) are required unless --insecure is given")
        self.settings = settings
        self.metrics = AgentMetrics()
        self.store = StateStore(settings.state_dir)
        self.appliers = {h.type_url: TypeApplier(h, self.store, self.metrics, settings.apply_retry_base,
                                                 settings.apply_retry_max) for h in handlers}
        self.statuses = StatusBuffer()
        self.state = RuntimeState()
        self.session: Session | None = None
        self.connected = asyncio.Event()
        self._http: HealthServer | None = None

    # ---- credentials -------------------------------------------------------------------------------------
    def channel(self, endpoint: str) -> grpc.aio.Channel:
        """A channel to one controller replica with the agent's credentials (for services beside the stream,
        e.g. the host agent's BFBStore reads)."""
        return self._channel(endpoint)

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        options: list[tuple[str, int | str]] = [("grpc.keepalive_time_ms", 20000), ("grpc.keepalive_timeout_ms", 10000),
                   ("grpc.keepalive_permit_without_calls", 1), ("grpc.enable_retries", 0),
                   ("grpc.use_local_subchannel_pool", 1)]
        if self.settings.insecure:
            return grpc.aio.insecure_channel(endpoint, options=options)
        tls = self.settings.tls
        assert tls is not None
        credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca.read_bytes(),
                                                   private_key=tls.key.read_bytes(),
                                                   certificate_chain=tls.cert.read_bytes())
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        return grpc.aio.secure_channel(endpoint, credentials, options=options)

    def add_handler(self, handler: Handler) -> TypeApplier:
        """Register a handler after construction (e.g. `dpf.agent.cni.wiring.serve_cni`); its stored state is
        loaded at once. A stream that is already open subscribes to the type without reconnecting. The start-up
        re-assert covers it only if it was registered before `run()` got there: callers that register later
        re-assert it themselves (`applier.reassert(runtime.statuses.reporter(type_url))`)."""
        if handler.type_url in self.appliers:
            raise ValueError(f"a handler for {handler.type_url} is already registered")
        applier = TypeApplier(handler, self.store, self.metrics, self.settings.apply_retry_base,
                              self.settings.apply_retry_max)
        self.appliers[handler.type_url] = applier
        if self.session is not None:
            self.session.add_type(handler.type_url)
        return applier

    # ---- start-up ----------------------------------------------------------------------------------------
    async def reassert(self) -> None:
        """Apply the stored state again (no controller needed)."""
        for applier in list(self.appliers.values()):
            await applier.reassert(self.statuses.reporter(applier.type_url))
        self.state.reasserted = True

    async def start_http(self) -> int:
        if not self.settings.http_listen:
            return 0
        self._http = HealthServer(self.settings.http_listen, self.metrics.registry, self._healthy, self._ready)
        return await self._http.start()

    def _healthy(self) -> tuple[bool, str]:
        return True, "ok"

    def _ready(self) -> tuple[bool, str]:
        if not self.state.reasserted:
            return False, "re-asserting stored state"
        return True, f"connected to {self.state.connected_to}" if self.connected.is_set() else "disconnected"

    # ---- the loop ----------------------------------------------------------------------------------------
    async def run(self, max_sessions: int | None = None) -> None:
        """Re-assert, then stay connected forever (or for `max_sessions` streams, for tests)."""
        await self.start_http()
        try:
            await self.reassert()
            await asyncio.gather(self._connect_loop(max_sessions), self._resync_loop())
        finally:
            if self._http is not None:
                await self._http.stop()

    async def _resync_loop(self) -> None:
        if self.settings.resync_period <= 0:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(self.settings.resync_period)
            for applier in list(self.appliers.values()):
                await applier.reassert(self.statuses.reporter(applier.type_url))

    async def _connect_loop(self, max_sessions: int | None) -> None:
        sessions = 0
        while max_sessions is None or sessions < max_sessions:
            sessions += 1
            endpoint = self.settings.endpoints[self.state.endpoint_index % len(self.settings.endpoints)]
            started = time.monotonic()
            code = await self._one_session(endpoint)
            ended = time.monotonic()
            if ended - started >= STABLE_SECONDS:
                self.state.failed_rounds = 0
                self.state.stable_broke_at = ended
            self.state.endpoint_index += 1
            if self.state.endpoint_index % len(self.settings.endpoints) == 0:
                self.state.failed_rounds += 1
            await asyncio.sleep(self._delay(code, time.monotonic()))

    def _delay(self, code: grpc.StatusCode | None, now: float) -> float:
        if code in CONFIG_ERRORS:
            return self.settings.backoff_max * random.uniform(0.5, 1.0)
        if self.state.endpoint_index % len(self.settings.endpoints) != 0:
            return self.settings.backoff_base * random.uniform(0, 0.5)  # next replica: almost at once
        ceiling = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** self.state.failed_rounds)
        broke_at = self.state.stable_broke_at
        if broke_at is not None and now - broke_at < self.settings.failover_window:
            # A working stream just broke: most likely the leader changed, and the next one is ready within a
            # lease. Keep trying often through that window so the agent is back within a second of it.
            ceiling = min(ceiling, self.settings.failover_backoff_max)
        return random.uniform(0, ceiling)  # full jitter: a thousand agents do not reconnect in step

    async def _one_session(self, endpoint: str, full_state: bool = False) -> grpc.StatusCode | None:
        """Run one stream to `endpoint` until it ends; returns the gRPC status code it ended with."""
        channel = self._channel(endpoint)
        session = Session(self.settings, channel, self.appliers, self.statuses, self.metrics, full_state)
        code: grpc.StatusCode | None = None
        try:
            welcome = await session.open()
            self.session = session
            self.state.connected_to, self.state.controller = endpoint, welcome.controller
            self.state.connects += 1
            self.metrics.connects.inc()
            self.metrics.connected.set(1)
            self.connected.set()
            log.info("connected to controller %s at %s as node %s", welcome.controller, endpoint, welcome.node)
            await session.run()
            self.state.last_error = "stream closed by the controller"
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            self.state.last_error = f"{code.name}: {exc.details()}"
            level = logging.ERROR if code in CONFIG_ERRORS else logging.INFO
            log.log(level, "stream to %s ended: %s", endpoint, self.state.last_error)
        except (Desync, ConnectionError, TimeoutError) as exc:
            self.state.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("stream to %s ended: %s", endpoint, self.state.last_error)
        finally:
            self.connected.clear()
            self.metrics.connected.set(0)
            self.metrics.stream_failures.labels(code.name if code else "closed").inc()
            self.state.history.append(self.state.last_error)
            del self.state.history[:-20]
            self.session = None
            await session.close()
            await channel.close()
        return code

    # ---- --once --------------------------------------------------------------------------------------------
    async def run_once(self, timeout: float) -> dict[str, str]:  # noqa: ASYNC109 - one deadline, many streams
        """Fetch the full desired state from the first replica that serves it, apply, ACK, and return
        type_url -> "ACK <version>" / "NACK <version>: <reason>". Raises TimeoutError if none answered."""
        deadline = time.monotonic() + timeout
        await self.reassert()
        while True:
            endpoint = self.settings.endpoints[self.state.endpoint_index % len(self.settings.endpoints)]
            channel = self._channel(endpoint)
            session = Session(self.settings, channel, self.appliers, self.statuses, self.metrics, full_state=True)
            try:
                await asyncio.wait_for(session.open(), max(0.1, deadline - time.monotonic()))
                runner = asyncio.create_task(session.run(), name="agent/once")
                try:
                    while set(session.acked) | set(session.nacked) < set(self.appliers):
                        if runner.done():
                            runner.result()
                            raise ConnectionError("the controller closed the stream before answering")
                        session.answered.clear()
                        await asyncio.wait_for(session.answered.wait(), max(0.1, deadline - time.monotonic()))
                finally:
                    runner.cancel()
                    await asyncio.gather(runner, return_exceptions=True)
                return {t: (f"NACK {session.nacked[t]}" if t in session.nacked else f"ACK {session.acked[t]}")
                        for t in self.appliers}
            except (grpc.aio.AioRpcError, ConnectionError, TimeoutError, Desync) as exc:
                self.state.last_error = str(exc)
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no controller served the desired state within {timeout:.0f}s "
                                       f"(last error: {self.state.last_error})") from None
                self.state.endpoint_index += 1
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            finally:
                await session.close()
                await channel.close()
