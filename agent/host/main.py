"""The host agent process: the NodeState runtime with the DPUProvisioning handler, and a HostInfo poller that
reports what the host has (its BlueFields, the OOB bridge, its boot id) at start and on every change.

Detection and the host network are `detect.py` and `hostnet.py` of this package; an agent built without
them still flashes and reboots (it then reports no HostInfo, and a `host_network` request is reported as
not configurable).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpf.agent.host.bfb import BfbFiles, ControllerFetcher
from dpf.agent.host.provisioning import HostContext, HostNetwork, ProvisioningHandler
from dpf.agent.host.records import Records
from dpf.agent.runtime.runtime import AgentRuntime
from dpf.agent.runtime.settings import AgentSettings
from dpf.proto import versioning
from dpf.proto.status import object_status
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import provisioning_pb2 as ppb
from dpf.shared.tasks import TaskGroup

log = logging.getLogger("dpf.agent.host")

HOST_INFO_TYPE = versioning.type_url(ppb.HostInfo)
HOST_OBJECT = "host"

Detect = Callable[[Path, str], ppb.HostInfo]


@dataclass(frozen=True)
class HostAgentSettings:
    agent: AgentSettings
    sysroot: Path = Path("/")
    """Prefix of /sys, /dev and /proc (an emulated host's root in the lab; / on a real host)."""
    bfb_dir: Path = Path("/bfb")
    """Where BFB files are looked for, and where files streamed from the controller are kept."""
    records: Path = Path("/var/lib/dpf/host-agent/provisioning.json")
    """Installs that reached DONE and reboots issued (survive agent restarts)."""
    oob_bridge: str = "br-dpu"
    power_command: str = "ipmitool"
    fetch_from_controller: bool = True
    install_timeout: float = 1800.0
    poll_interval: float = 3.0
    """HostInfo detection and each DPU worker's re-check period, seconds."""


def _read_boot_id(sysroot: Path) -> str:
    try:
        return (sysroot / "proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _detection() -> Any:
    try:
        from dpf.agent.host import detect
    except ImportError:
        return None
    return detect


def _host_network(sysroot: Path) -> HostNetwork | None:
    try:
        from dpf.agent.host.hostnet import HostNetworkConfigurator
    except ImportError:
        return None
    return HostNetworkConfigurator(sysroot)


class HostAgent:
    def __init__(self, settings: HostAgentSettings, detect: Detect | None = None,
                 hostnet: HostNetwork | None = None, boot_id: Callable[[], str] | None = None) -> None:
        """`detect`, `hostnet`, `boot_id`: defaults from `detect.py` / `hostnet.py` (tests pass their own)."""
        self.settings = settings
        detection = _detection()
        self.detect: Detect | None = detect or (detection.detect if detection else None)
        if boot_id is None:
            reader = detection.read_boot_id if detection else _read_boot_id
            boot_id = lambda: reader(settings.sysroot)  # noqa: E731
        fetcher = None
        if settings.fetch_from_controller:
            fetcher = ControllerFetcher(settings.agent.endpoints, lambda endpoint: self.runtime.channel(endpoint))
        self.context = HostContext(
            sysroot=settings.sysroot, bfb=BfbFiles(settings.bfb_dir, fetcher), records=Records(settings.records),
            boot_id=boot_id, hostnet=hostnet or _host_network(settings.sysroot), power_command=settings.power_command,
            install_timeout=settings.install_timeout, poll_interval=settings.poll_interval)
        self.handler = ProvisioningHandler(self.context)
        self.runtime = AgentRuntime(settings.agent, [self.handler])
        self.host_info: ppb.HostInfo | None = None
        self._failed = asyncio.Event()

    def _task_failed(self, name: str, exc: BaseException | None) -> None:
        self._failed.set()

    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` is set (0) or a task ends on its own (1)."""
        tasks = TaskGroup("host-agent", self._task_failed)
        try:
            if self.detect is not None:
                tasks.start("host-info", self._report_host_info())
            else:
                log.warning("no host detection in this build: HostInfo is not reported")
            tasks.start("runtime", self.runtime.run())
            waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._failed.wait())}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if self._failed.is_set():
                log.error("a task of the host agent ended; stopping the agent")
                return 1
            return 0
        finally:
            await tasks.stop(timeout=10.0)
            await self.handler.close()
            log.info("host agent stopped (flashes cut, rshims released; host network left as it is)")

    async def _report_host_info(self) -> None:
        assert self.detect is not None
        while True:
            try:
                info = await asyncio.to_thread(self.detect, self.settings.sysroot, self.settings.oob_bridge)
            except Exception:
                log.exception("host detection failed")
            else:
                if info != self.host_info:
                    self.host_info = info
                    status = object_status(HOST_OBJECT, "", pb.VERDICT_PROGRAMMED)
                    status.detail.Pack(info)
                    self.runtime.statuses.publish_full(HOST_INFO_TYPE, [status])
                    log.info("host: boot id %s, %d BlueField(s), OOB bridge %s", info.boot_id, len(info.devices),
                             "configured" if info.oob_bridge_configured else "not configured")
            await asyncio.sleep(self.settings.poll_interval)
