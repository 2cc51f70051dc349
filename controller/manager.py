"""The controller process: wires clusters, watch caches, reconcilers, the work queue, leader election, the
NodeState gRPC server and the health/metrics endpoint, and runs them in order.

Every replica keeps its caches warm; only the leader runs reconcile workers and serves streams (followers
refuse streams with UNAVAILABLE). On becoming leader: a fresh work queue, every key enqueued, and the
snapshot cache marked ready once each initial key was processed, so agents never see a partial view.
On losing leadership: the workers stop, then streams are closed with UNAVAILABLE (agents fail over),
so no status is written from a view of agents disconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Hashable

import grpc

from dpf.controller import pki
from dpf.controller.cache.snapshot import Snapshot
from dpf.controller.cache.snapshot_cache import SnapshotCache
from dpf.controller.clusters import Cluster, ClusterSet
from dpf.controller.errors import PermanentError, TemporaryError
from dpf.controller.kube import clients
from dpf.controller.kube.events import NORMAL, EventRecorder
from dpf.controller.kube.leader import LeaderElector
from dpf.controller.kube.rest import LEASE, KubeError, Rest
from dpf.controller.kube.workqueue import WorkQueue
from dpf.controller.metrics import Metrics
from dpf.controller.reconcilers.base import Context, Reconciler, default_reconcilers
from dpf.controller.reconcilers.keys import reconciler_of
from dpf.controller.server import bfb_store
from dpf.controller.server.node_status import Nack, NodeRegistry
from dpf.controller.server.stream_server import NodeStateServer
from dpf.controller.settings import ControllerSettings
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import nodestate_pb2_grpc as pb_grpc
from dpf.shared.health import HealthServer
from dpf.shared.tasks import TaskGroup

log = logging.getLogger(__name__)

INITIAL_SYNC_TIMEOUT = 20.0  # caches that have not synced by then: their reconcilers retry on their own


class Controller:
    def __init__(self, settings: ControllerSettings, reconcilers: list[type[Reconciler]] | None = None,
                 host: Rest | None = None) -> None:
        self.settings = settings
        self.identity = settings.leader.identity or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.metrics = Metrics()
        self.cache = SnapshotCache()
        self.nodes = NodeRegistry()
        self.failed = asyncio.Event()
        self.failure = ""
        self.grpc_port = 0
        self.http_port = 0
        self._reconciler_classes = reconcilers if reconcilers is not None else default_reconcilers(settings)
        self._host = host
        self._tasks = TaskGroup("controller", self._task_failed)
        self._lead_tasks = TaskGroup("leader", self._task_failed)
        self._initial: set[Hashable] = set()
        self._initial_done = asyncio.Event()
        self._leading = False
        self._server: grpc.aio.Server | None = None
        self._http: HealthServer | None = None
        self._elector: LeaderElector | None = None
        self.reconcilers: list[Reconciler] = []

    # ---- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        host = self._host or await clients.from_kubeconfig_file(s.kube.kubeconfig, "host", s.kube.request_timeout)
        self.clusters = ClusterSet(Cluster("host", host, s.kube, self._task_failed, namespace=s.kube.watch_namespace),
                                   s.kube, self._task_failed)
        self.ctx = Context(s, self.clusters, WorkQueue(s.queue), self.cache, self.nodes,
                           EventRecorder("dpf-controller", self.identity), self.metrics)
        self.reconcilers = [cls(self.ctx) for cls in self._reconciler_classes]
        self._by_name = {r.name: r for r in self.reconcilers}
        self._routes: dict[str, list[Reconciler]] = {}  # type URL → the reconcilers its stream events concern
        for reconciler in self.reconcilers:
            reconciler.setup()
        self.stream_server = NodeStateServer(
            self.cache, self.nodes, self, self.metrics, s.server, self.identity, s.tls.insecure,
            is_leader=lambda: self._leading, leader_hint=lambda: self.known_leader)
        await self._start_grpc(host)
        self._http = HealthServer(s.http.listen, self.metrics.registry, self._healthy, self._ready,
                                  default_host="0.0.0.0")  # kubelet probes reach the pod IP
        self.http_port = await self._http.start()
        if s.leader.enabled:
            self._elector = LeaderElector(host, s.kube.namespace, s.leader, self.identity,
                                          self._started_leading, self._stopped_leading)
            self._tasks.start("leader-election", self._elector.run())
        else:
            await self._started_leading()
        log.info("controller %s started: NodeState on port %d (%s), health on port %d", self.identity,
                 self.grpc_port, "INSECURE plain text" if s.tls.insecure else "mTLS", self.http_port)

    async def _start_grpc(self, host: Rest) -> None:
        s = self.settings
        options = [("grpc.keepalive_time_ms", int(s.server.keepalive_time * 1000)),
                   ("grpc.keepalive_timeout_ms", int(s.server.keepalive_timeout * 1000)),
                   ("grpc.keepalive_permit_without_calls", 1),
                   ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                   ("grpc.max_receive_message_length", s.server.max_message_bytes),
                   ("grpc.max_send_message_length", s.server.max_message_bytes),
                   ("grpc.so_reuseport", 0)]
        self._server = grpc.aio.server(options=options)
        pb_grpc.add_NodeStateServicer_to_server(self.stream_server, self._server)
        bfb_store.register(self._server, s.bfb.directory, s.tls.insecure)  # host agents without the shared dir
        if s.tls.insecure:
            self.grpc_port = self._server.add_insecure_port(s.server.listen)
        else:
            ca = await pki.ensure_ca(host, s.kube.namespace, s.tls.ca_secret)
            pair = ca.issue_server(s.tls.server_names, validity_days=s.tls.cert_validity_days)
            credentials = grpc.ssl_server_credentials([(pair.key_pem, pair.cert_pem)], root_certificates=ca.cert_pem,
                                                      require_client_auth=True)
            self.grpc_port = self._server.add_secure_port(s.server.listen, credentials)
        if not self.grpc_port:
            raise OSError(f"cannot listen on {s.server.listen} for NodeState")
        await self._server.start()

    async def stop(self, release: bool = True) -> None:
        """Stop in order. release=False leaves the lease held, as a crash would (used by failover tests)."""
        async with contextlib.AsyncExitStack() as stack:  # each later step runs even if an earlier one fails
            stack.push_async_callback(self.clusters.close)  # last: the API clients go whatever failed before
            stack.push_async_callback(self._stop_serving)
            # The election loop goes first: left running, a renewal racing the release takes the lease back and
            # starts a new term (workers) while the old one is being stopped.
            await self._tasks.stop()
            if self._elector is not None and release:
                await self._elector.release()

    async def _stop_serving(self) -> None:
        await self._tasks.stop()
        if self._leading:
            await self._stopped_leading()
        await self._lead_tasks.stop()  # also when a step-down was cut short: no worker outlives the controller
        if self._server is not None:
            await self._server.stop(grace=1.0)
        if self._http is not None:
            await self._http.stop()

    def _task_failed(self, name: str, exc: BaseException | None) -> None:
        self.failure = f"task {name} {'crashed: ' + repr(exc) if exc else 'exited'}"
        self.failed.set()

    # ---- leadership --------------------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def known_leader(self) -> str:
        """The Lease holder as this replica last saw it ("" before its first look or without election)."""
        return self._elector.holder if self._elector else ""

    async def _started_leading(self) -> None:
        self.nodes.new_term()
        self._leading = True
        self.metrics.is_leader.set(1)
        self.ctx.queue = WorkQueue(self.settings.queue)  # keys of an earlier term may be stuck "processing"
        for i in range(self.settings.queue.workers):
            self._lead_tasks.start(f"worker-{i}", self._worker(self.ctx.queue))
        self._lead_tasks.start("initial-sync", self._initial_sync(self.ctx.queue))
        if self._elector is not None:
            self._lead_tasks.start_once("leader-event", self._record_leadership())

    async def _record_leadership(self) -> None:
        """A Normal Event on the Lease: who leads now is the first question when agents reconnect."""
        assert self._elector is not None
        lease = await self._elector.rest.get(LEASE, self.settings.leader.lease_name, self.settings.kube.namespace)
        if lease:
            await self.ctx.events.emit(self._elector.rest, lease, "Lease", NORMAL, "LeaderElected",
                                       f"{self.identity} became the leader; agents reconnect to it", action="Elect")

    async def _stopped_leading(self) -> None:
        self._leading = False
        self.metrics.is_leader.set(0)
        self.cache.ready.clear()
        # Workers first: a reconcile running while the streams close would judge the nodes from a half-stopped
        # view (agents disconnecting) and write it to status just before this replica lets go.
        await self._lead_tasks.stop()
        self.stream_server.close_all(
            f"controller {self.identity} is no longer the leader; reconnect to another replica")
        for reconciler in self.reconcilers:
            await reconciler.close()

    async def _initial_sync(self, queue: WorkQueue) -> None:
        deadline = time.monotonic() + INITIAL_SYNC_TIMEOUT
        # Keys seen while we were not leading went to a discarded queue: enqueue everything known now (this is
        # also what connects DPU clusters), then again once every cache has synced.
        # The predicate spans many caches (and DPU clusters appearing meanwhile): poll it.
        while time.monotonic() < deadline and not all(r.synced() for r in self.reconcilers):
            for r in self.reconcilers:
                if r.synced():
                    for key in r.all_keys():
                        queue.add(key)
            await asyncio.sleep(0.05)
        self._initial = {key for r in self.reconcilers for key in r.all_keys()}
        for key in self._initial:
            queue.add(key)
        self._initial_done.clear()
        if self._initial:
            with contextlib.suppress(TimeoutError):
                remaining = max(0.0, deadline + INITIAL_SYNC_TIMEOUT - time.monotonic())
                await asyncio.wait_for(self._initial_done.wait(), remaining)
        if self._initial:
            log.warning("initial reconcile incomplete after %.0fs (%d keys left, e.g. %s); serving anyway",
                        2 * INITIAL_SYNC_TIMEOUT, len(self._initial), next(iter(self._initial)))
        self.cache.mark_ready()
        log.info("controller %s is leader and serving (%d nodes known)", self.identity, len(self.nodes.connected()))
        while True:  # the periodic level-triggered resync
            await asyncio.sleep(self.settings.resync_period)
            for r in self.reconcilers:
                for key in r.all_keys():
                    queue.add(key)

    async def _worker(self, queue: WorkQueue) -> None:
        while True:
            key = await queue.get()
            self.metrics.queue_depth.set(len(queue))
            self.metrics.queue_waiting.set(queue.waiting)
            name = reconciler_of(key)
            reconciler = self._by_name.get(name) if name else None
            started = time.monotonic()
            try:
                if reconciler is None:
                    raise PermanentError(f"no reconciler for key {key!r}")
                requeue = await reconciler.reconcile(key)
                queue.forget(key)
                if requeue is not None:  # 0 is "look again now", None "nothing to wait for"
                    queue.add_after(key, requeue)
            except TemporaryError as exc:
                delay = queue.retry(key, exc.delay)
                log.debug("%s: %s; retry in %.2fs", key, exc, delay)
            except PermanentError as exc:
                queue.forget(key)
                self._count_error(reconciler)
                log.warning("%s: %s (not retried until it changes)", key, exc)
            except KubeError as exc:
                delay = queue.retry(key)
                self._count_error(reconciler)
                log.warning("%s: %s; retry in %.2fs", key, exc, delay)
            except Exception:
                delay = queue.retry(key)
                self._count_error(reconciler)
                log.exception("%s: reconcile failed; retry in %.2fs", key, delay)
            finally:
                queue.done(key)
                if key in self._initial:
                    self._initial.discard(key)
                    if not self._initial:
                        self._initial_done.set()
                if reconciler is not None:
                    self.metrics.reconcile_seconds.labels(reconciler.name).observe(time.monotonic() - started)

    def _count_error(self, reconciler: Reconciler | None) -> None:
        if reconciler is not None:
            self.metrics.reconcile_errors.labels(reconciler.name, reconciler.kind).inc()

    # ---- health ------------------------------------------------------------------------------------------
    def _healthy(self) -> tuple[bool, str]:
        return (False, self.failure) if self.failed.is_set() else (True, "ok")

    def _ready(self) -> tuple[bool, str]:
        if self.failed.is_set():
            return False, self.failure
        if not self.clusters.host.synced():
            return False, "host cluster caches not synced"
        if self._elector is not None and not self._elector.pod_labelled:
            return False, "leader label of this pod not yet written"
        if self._leading and not self.cache.ready.is_set():
            return False, "leader: initial reconcile in progress"
        return True, "leader" if self._leading else "follower (caches warm)"

    # ---- StreamObserver: route stream events to the reconcilers they concern ---------------------------
    # Connects and disconnects concern every reconciler of a node; ACKs, NACKs and status reports only those
    # whose `type_urls` name the type.
    def on_connect(self, node: str, role: str) -> None:
        for r in self.reconcilers:
            r.on_connect(node, role)

    def on_disconnect(self, node: str) -> None:
        for r in self.reconcilers:
            r.on_disconnect(node)

    def _concerned(self, type_url: str) -> list[Reconciler]:
        routes = self._routes.get(type_url)
        if routes is None:
            routes = self._routes[type_url] = [r for r in self.reconcilers if type_url in r.type_urls]
        return routes

    def on_ack(self, node: str, type_url: str, snapshot: Snapshot) -> None:
        for r in self._concerned(type_url):
            r.on_ack(node, type_url, snapshot)

    def on_nack(self, node: str, type_url: str, nack: Nack) -> None:
        for r in self._concerned(type_url):
            r.on_nack(node, type_url, nack)

    def on_status(self, node: str, type_url: str, report: pb.StatusReport) -> None:
        for r in self._concerned(type_url):
            r.on_status(node, type_url, report)
