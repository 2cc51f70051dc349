"""Helpers for the control-plane tests: controller settings on loopback, node certificates from the
controller's CA, a DPUCluster pointing at a test apiserver, a recording test handler, async waits.

Tests run each scenario with `run(coro)`: one event loop holds the controller(s) and agent runtimes, with
real gRPC on 127.0.0.1 and the real apiserver from the bed.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gc
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dpf.agent.runtime.handlers import Desired, Handler, Rejected, Reporter, TransientError
from dpf.agent.runtime.runtime import AgentRuntime
from dpf.agent.runtime.settings import AgentSettings, TLSFiles
from dpf.controller import pki
from dpf.controller.kube import clients
from dpf.controller.kube.rest import SECRET, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.kinds import DPU_CLUSTER, SERVICE_INTERFACE, SERVICE_INTERFACE_SET
from dpf.controller.settings import (
    BFBSettings,
    ControllerSettings,
    HTTPSettings,
    KubeSettings,
    LeaderSettings,
    QueueSettings,
    ServerSettings,
    TLSSettings,
)
from dpf.lab.bed.process import free_port
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import sfc_pb2

TIMEOUT = 30.0
NO_BFB_DIR = Path("/nonexistent/dpf-test-bfb")


def run(coro: Awaitable[Any], timeout: float = 90.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    try:
        return asyncio.run(bounded())
    finally:
        # Collect the gRPC/aiohttp objects of this scenario now: finalising grpc's Cython coroutines later,
        # inside an unrelated compile() (pytest's assertion rewriting), trips CPython 3.11.7's
        # "AST constructor recursion depth mismatch" SystemError.
        gc.collect()


async def eventually(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:  # noqa: ASYNC109
    """Poll `predicate` (sync or async) until truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - the predicate may probe something not there yet
            last = exc
        if time.monotonic() > deadline:
            detail = f" ({last!r})" if last else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        await asyncio.sleep(0.05)


def controller_settings(kubeconfig: Path, namespace: str, port: int | None = None,
                        **leader: Any) -> ControllerSettings:
    return ControllerSettings(
        kube=KubeSettings(kubeconfig=kubeconfig, namespace=namespace, watch_namespace=namespace, relist_backoff=0.2),
        queue=QueueSettings(backoff_base=0.02, backoff_max=1.0),
        leader=LeaderSettings(**{"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.25, **leader}),  # type: ignore[arg-type]
        tls=TLSSettings(),
        server=ServerSettings(listen=f"127.0.0.1:{port or free_port()}", hello_timeout=5.0),
        http=HTTPSettings(listen="127.0.0.1:0"),
        # No BFB volume: a BFB some test creates fails visibly instead of downloading from its example URL.
        bfb=BFBSettings(directory=NO_BFB_DIR),
    )


def insecure(settings: ControllerSettings) -> ControllerSettings:
    return dataclasses.replace(settings, tls=TLSSettings(insecure=True))


async def host_rest(kubeconfig: Path) -> Rest:
    return await clients.from_kubeconfig_file(kubeconfig, "test")


async def started(controller: Controller) -> Controller:
    """Start `controller` and wait until it leads and serves (single-replica tests)."""
    await controller.start()
    await eventually(lambda: controller.is_leader and controller.cache.ready.is_set(), "the controller to serve")
    return controller


async def node_files(rest: Rest, namespace: str, node: str, role: str, directory: Path) -> TLSFiles:
    """Pre-provisioned mTLS files for `node`, issued from the controller's CA Secret (created if absent)."""
    ca = await pki.ensure_ca(rest, namespace, TLSSettings.ca_secret)
    pair = ca.issue_node(node, role)
    return write_files(directory, ca.cert_pem, pair.cert_pem, pair.key_pem)


def write_files(directory: Path, ca: bytes, cert: bytes, key: bytes) -> TLSFiles:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in (("ca.crt", ca), ("tls.crt", cert), ("tls.key", key)):
        (directory / name).write_bytes(data)
    return TLSFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")


async def dpu_cluster(rest: Rest, namespace: str, dpu_kubeconfig: Path, name: str = "dpu") -> None:
    """A static DPUCluster whose kubeconfig Secret points at `dpu_kubeconfig`'s apiserver."""
    await rest.create(SECRET, {"apiVersion": "v1", "kind": "Secret",
                               "metadata": {"name": f"{name}-admin-kubeconfig", "namespace": namespace},
                               "data": {"admin.conf": _b64(dpu_kubeconfig)}},
                      namespace)
    await rest.create(DPU_CLUSTER, {"apiVersion": DPU_CLUSTER.api_version, "kind": "DPUCluster",
                                    "metadata": {"name": name, "namespace": namespace},
                                    "spec": {"type": "static", "version": "v1.37.2",
                                             "kubeconfig": f"{name}-admin-kubeconfig"}}, namespace)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def service_interface(namespace: str, name: str, node: str, interface: str = "p0",
                      owner: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {"svc.dpu.nvidia.com/interface": name}}
    if owner is not None:
        meta["ownerReferences"] = [{"apiVersion": SERVICE_INTERFACE_SET.api_version, "kind": "ServiceInterfaceSet",
                                    "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                                    "controller": True}]
    return {"apiVersion": SERVICE_INTERFACE.api_version, "kind": "ServiceInterface", "metadata": meta,
            "spec": {"node": node, "interfaceType": "physical", "physical": {"interfaceName": interface}}}


def service_interface_set(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": SERVICE_INTERFACE_SET.api_version, "kind": "ServiceInterfaceSet",
            "metadata": {"name": name, "namespace": namespace},
            # Selects no Node: these tests create the set's children themselves.
            "spec": {"nodeSelector": {"matchLabels": {"dpf.test/selects": "nothing"}},
                     "template": {"spec": {"interfaceType": "physical", "physical": {"interfaceName": "p0"}}}}}


class InterfaceHandler(Handler):
    """A real handler for the tests: "programs" interfaces into a dict, rejects names starting with "bad"
    (→ NACK), and fails transiently while `fail_transiently` is set."""

    message_class = sfc_pb2.ServiceInterface

    def __init__(self) -> None:
        self.ports: dict[str, str] = {}
        self.calls: list[tuple[frozenset[str], frozenset[str]]] = []
        self.fail_transiently = ""

    async def apply(self, desired: Desired, changed: set[str], removed: set[str], reporter: Reporter) -> None:
        bad = {n: f"interface name {m.physical.interface_name!r} is not allowed on this DPU"
               for n, (_v, m) in desired.items() if m.physical.interface_name.startswith("bad")}
        if bad:
            raise Rejected("invalid interfaces", bad)
        if self.fail_transiently:
            raise TransientError(self.fail_transiently)
        self.calls.append((frozenset(changed), frozenset(removed)))
        self.ports = {n: m.physical.interface_name for n, (_v, m) in desired.items()}
        for name in changed:
            version, message = desired[name]
            reporter.report(name, version, pb.VERDICT_PROGRAMMED, observed={"port": message.physical.interface_name})


def agent(node: str, endpoints: list[int] | tuple[int, ...], state_dir: Path, tls: TLSFiles | None,
          handler: Handler, role: str = "dpu") -> AgentRuntime:
    settings = AgentSettings(node=node, role=role, endpoints=tuple(f"127.0.0.1:{p}" for p in endpoints),
                             state_dir=state_dir, tls=tls, insecure=tls is None, backoff_base=0.05,
                             backoff_max=0.5, connect_timeout=3.0, resync_period=0)
    return AgentRuntime(settings, [handler])


async def stop_task(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
