"""Real parts for the host agent's tests: an emulated host (`EmulatedHost`), a controller's real NodeState
stream server and BFBStore on loopback gRPC (snapshots published straight into its SnapshotCache, statuses
recorded as the controller receives them), and the agent itself, in-process or as a `dpf agent host` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from dpf.agent.host.main import HOST_INFO_TYPE, HostAgent, HostAgentSettings
from dpf.agent.runtime.settings import AgentSettings
from dpf.controller.cache.snapshot import Snapshot
from dpf.controller.cache.snapshot_cache import SnapshotCache
from dpf.controller.metrics import Metrics
from dpf.controller.server.bfb_store import BFBStoreServer
from dpf.controller.server.node_status import Nack, NodeRegistry
from dpf.controller.server.stream_server import NodeStateServer
from dpf.controller.settings import ServerSettings
from dpf.lab.bed.process import Child
from dpf.lab.emulator import EmulatedBfb
from dpf.proto import versioning
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import nodestate_pb2_grpc as pb_grpc
from dpf.proto.v1 import provisioning_pb2 as ppb
from dpf.proto.v1 import provisioning_pb2_grpc as ppb_grpc

PROVISIONING = versioning.type_url(ppb.DPUProvisioning)
NODE = "host-1"
TIMEOUT = 30.0
SAMPLE_BFCFG = (Path(__file__).parent.parent / "emulator" / "sample_bf.cfg").read_bytes()
_names = itertools.count()


def host_name() -> str:
    return f"ha{next(_names)}"


def run(coro: Awaitable[Any], timeout: float = 120.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    try:
        return asyncio.run(bounded())
    finally:
        gc.collect()  # grpc's objects of this scenario, now (see tests/controlplane/harness.py)


async def eventually(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT,  # noqa: ASYNC109
                     detail: Callable[[], str] | None = None) -> Any:
    """Poll `predicate` until truthy; fail naming `what` (and `detail()`, the state worth seeing)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                                 + (f": {detail()}" if detail else ""))
        await asyncio.sleep(0.05)


@dataclass
class Seen:
    """One ObjectStatus as the controller received it, with its detail unpacked."""

    at: float
    verdict: int
    message: str
    version: str
    detail: Any
    full: bool


@dataclass
class MiniController:
    """The controller's NodeState server and BFBStore, without Kubernetes: tests publish snapshots themselves."""

    bfb_dir: Path
    cache: SnapshotCache = field(default_factory=SnapshotCache)
    registry: NodeRegistry = field(default_factory=NodeRegistry)
    seen: dict[tuple[str, str], list[Seen]] = field(default_factory=dict)
    bfb_store: BFBStoreServer | None = None
    port: int = 0
    listen: str = ""
    """Where to listen instead of 127.0.0.1:<port> (e.g. "unix:/path", reachable from any namespace)."""
    _server: grpc.aio.Server | None = None

    async def start(self, bfb_store: BFBStoreServer | None = None) -> MiniController:
        self.cache.serve(PROVISIONING)
        self.cache.mark_ready()
        streams = NodeStateServer(self.cache, self.registry, self, Metrics(), ServerSettings(hello_timeout=5.0),
                                  "test-controller", insecure=True, is_leader=lambda: True,
                                  leader_hint=lambda: "test-controller")
        self._server = grpc.aio.server()
        pb_grpc.add_NodeStateServicer_to_server(streams, self._server)
        self.bfb_store = bfb_store or BFBStoreServer(self.bfb_dir, insecure=True)
        ppb_grpc.add_BFBStoreServicer_to_server(self.bfb_store, self._server)
        self.port = self._server.add_insecure_port(self.listen or f"127.0.0.1:{self.port}")
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)

    @property
    def endpoint(self) -> str:
        return self.listen or f"127.0.0.1:{self.port}"

    def publish(self, dpus: Mapping[str, ppb.DPUProvisioning], node: str = NODE) -> None:
        self.cache.set(node, Snapshot.build(PROVISIONING, dpus.items()))

    # ---- StreamObserver ------------------------------------------------------------------------------------
    def on_connect(self, node: str, role: str) -> None: ...
    def on_disconnect(self, node: str) -> None: ...
    def on_ack(self, node: str, type_url: str, snapshot: Snapshot) -> None: ...
    def on_nack(self, node: str, type_url: str, nack: Nack) -> None: ...

    def on_status(self, node: str, type_url: str, report: pb.StatusReport) -> None:
        for obj in report.objects:
            detail: Any = None
            if obj.HasField("detail"):
                detail = ppb.HostInfo() if type_url == HOST_INFO_TYPE else ppb.DPUProvisioningStatus()
                obj.detail.Unpack(detail)
            self.seen.setdefault((type_url, obj.name), []).append(
                Seen(time.monotonic(), obj.verdict, obj.message, obj.resource_version, detail, report.full))

    def history(self, name: str, type_url: str = PROVISIONING) -> list[Seen]:
        return self.seen.get((type_url, name), [])

    def latest(self, name: str, type_url: str = PROVISIONING) -> Seen | None:
        history = self.history(name, type_url)
        return history[-1] if history else None

    def install_state(self, name: str) -> int:
        seen = self.latest(name)
        return seen.detail.install.state if seen and seen.detail else ppb.INSTALL_STATE_UNSPECIFIED


def image(bfb_dir: Path, name: str = "os.bfb", size: int = 8 << 20, seed: int = 1, version: str = "doca-2.9") \
        -> tuple[Path, EmulatedBfb]:
    """An emulated BFB file in `bfb_dir`."""
    bfb = EmulatedBfb(version, size, seed=seed)
    bfb_dir.mkdir(parents=True, exist_ok=True)
    return bfb.write(bfb_dir / name), bfb


def provisioning(dpu: str = "dpu-a", pci: str = "0000-08-00", bfb: str = "os.bfb", install: str = "",
                 timeout: int = 60, reboot: str = "", method: int = ppb.REBOOT_METHOD_POWER_CYCLE,
                 host_network: ppb.HostNetwork | None = None, size: int = 0, sha256: str = "") \
        -> ppb.DPUProvisioning:
    spec = ppb.DPUProvisioning(dpu_name=dpu, pci_address=pci,
                               bfb=ppb.BFBSource(file_name=bfb, size=size, sha256=sha256, version="doca-2.9"))
    if install:
        spec.install.CopyFrom(ppb.Install(id=install, bf_cfg=SAMPLE_BFCFG, timeout_seconds=timeout))
    if reboot:
        spec.reboot.CopyFrom(ppb.Reboot(id=reboot, method=method))  # type: ignore[arg-type]
    if host_network is not None:
        spec.host_network.CopyFrom(host_network)
    return spec


def agent_settings(controller: MiniController, sysroot: Path, state: Path, bfb_dir: Path,
                   power_command: str = "", poll: float = 0.3) -> HostAgentSettings:
    agent = AgentSettings(node=NODE, role="host", endpoints=(controller.endpoint,), state_dir=state / "runtime",
                          insecure=True, backoff_base=0.05, backoff_max=0.5, connect_timeout=3.0, resync_period=0)
    return HostAgentSettings(agent=agent, sysroot=sysroot, bfb_dir=bfb_dir, records=state / "provisioning.json",
                             power_command=power_command or str(sysroot / "usr/bin/ipmitool"), poll_interval=poll)


class RunningAgent:
    """A HostAgent in this event loop."""

    def __init__(self, settings: HostAgentSettings, **kwargs: Any) -> None:
        self.agent = HostAgent(settings, **kwargs)
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(self.agent.run(self.stop_event))

    async def stop(self) -> int:
        self.stop_event.set()
        return await asyncio.wait_for(self.task, 20)


def agent_process(controller: MiniController, sysroot: Path, state: Path, bfb_dir: Path, log: Path) -> Child:
    """`dpf agent host` as its own process."""
    argv = [sys.executable, "-m", "dpf.cli", "agent", "host", "--node", NODE, "--controller", controller.endpoint,
            "--insecure", "--state-dir", str(state), "--sysroot", str(sysroot), "--bfb-dir", str(bfb_dir),
            "--power-command", str(sysroot / "usr/bin/ipmitool"), "--poll-interval", "0.3", "--log-level", "info"]
    return Child("host-agent", argv, log)


def ip(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=True).stdout


BRIDGE_ADDRESS = ("addr", "add", "192.0.2.1/24", "dev", "br-dpu")


def agent_in_host_namespace(emulator: EmulatorProcess, socket: Path, state: Path, bfb_dir: Path, log: Path,
                            *extra: str, bridge_address: bool = True) -> Child:
    """`dpf agent host` as a site runs it: in the emulated host's network namespace, whose `br-dpu` (made here,
    as the host's admin would) holds an address (`BRIDGE_ADDRESS`, unless `bridge_address` is False). `ip netns
    exec` execs the agent in place: the child's pid is the agent's."""
    for args in (("link", "add", "br-dpu", "type", "bridge"), *((BRIDGE_ADDRESS,) if bridge_address else ()),
                 ("link", "set", "br-dpu", "up")):
        ip(emulator.netns, *args)
    return Child("host-agent", ["ip", "netns", "exec", emulator.netns, sys.executable, "-m", "dpf.cli", "agent",
                                "host", "--node", NODE, "--controller", f"unix:{socket}", "--insecure",
                                "--state-dir", str(state), "--sysroot", str(emulator.root), "--bfb-dir", str(bfb_dir),
                                "--power-command", str(emulator.ipmitool), *extra], log)


@contextlib.asynccontextmanager
async def agent_on_emulated_host(tmp_path: Path, bfb_dir: Path, *flags: str, bridge_address: bool = True) \
        -> AsyncIterator[tuple[EmulatorProcess, MiniController, Child]]:
    """An emulated host in its own process, a MiniController on a unix socket under `tmp_path`, and `dpf agent
    host` in the host's namespace (`agent_in_host_namespace`, with `flags`); all three stopped on the way out."""
    emulator = await EmulatorProcess(tmp_path / "host", tmp_path / "emulator.log").started()
    try:
        socket = tmp_path / "controller.sock"
        controller = await MiniController(bfb_dir, listen=f"unix:{socket}").start()
        try:
            agent = agent_in_host_namespace(emulator, socket, tmp_path / "state", bfb_dir, tmp_path / "agent.log",
                                            *flags, bridge_address=bridge_address)
            try:
                yield emulator, controller, agent
            finally:
                agent.stop()
        finally:
            await controller.stop()
    finally:
        emulator.stop()


class EmulatorProcess:
    """An emulated host in a process of its own (`python -m dpf.lab.emulator`), for tests that power-cycle it:
    a power action rebuilds netdevs through pyroute2, which forks, and a fork is unsafe in a process running
    gRPC threads (the controller and agent of these tests)."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.name = host_name()
        self.child = Child("emulator", [sys.executable, "-m", "dpf.lab.emulator", str(root), "--name", self.name,
                                        "--dpus", "1", "--owner", "t"], log)

    @property
    def netns(self) -> str:
        """The host's network namespace (`dpf-<owner><pid>-<name>`, as EmulatedHost names it)."""
        return f"dpf-t{self.child.pid}-{self.name}"

    async def started(self) -> EmulatorProcess:
        await eventually(lambda: self.control.exists() and self.boot_id_file.exists(), "the emulated host",
                         timeout=60)
        return self

    @property
    def control(self) -> Path:
        return self.root / "run/emulator/control.sock"

    @property
    def boot_id_file(self) -> Path:
        return self.root / "proc/sys/kernel/random/boot_id"

    @property
    def boot_id(self) -> str:
        return self.boot_id_file.read_text().strip()

    @property
    def ipmitool(self) -> Path:
        return self.root / "usr/bin/ipmitool"

    def power_actions(self) -> list[str]:
        try:
            return [line.split()[1] for line in (self.root / "run/emulator/power.log").read_text().splitlines()]
        except FileNotFoundError:
            return []

    async def status(self) -> dict[str, Any]:
        from dpf.lab.emulator.control import request

        return await asyncio.to_thread(request, self.control, {"op": "status"})

    async def power(self, action: str) -> dict[str, Any]:
        from dpf.lab.emulator.control import request

        return await asyncio.to_thread(request, self.control, {"op": "power", "action": action})

    def stop(self) -> None:
        self.child.stop()
