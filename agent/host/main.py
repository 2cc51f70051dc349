"""The host agent process: the NodeState runtime with the DPUProvisioning handler, and a HostInfo poller that
reports what the host has (its BlueFields, the OOB bridge, its boot id) at start and on every change.

HostInfo cadence: every poll interval a cheap probe (`detect.probe`: boot id, PCI function and rshim names);
the full detection (sysfs of every BlueField, the bridge over netlink) runs when the probe changed, while its
result is still changing (a host coming up), and otherwise every `host_info_recheck` seconds. So a reboot or a
device coming or going is reported within a poll interval, and a change only the full detection sees (a PF's
netdev renamed, the OOB bridge losing its address) within `host_info_recheck`. While the OOB bridge is not
configured, every poll also asks netlink whether it is now (two requests on the kept socket): every DPU of the
host waits in Initializing for it, and an admin who sets up the bridge after the agent should not wait 30 s.

Detection and the host network are `detect.py` and `hostnet.py` of this package; an agent built without
them still flashes and reboots (it then reports no HostInfo, and a `host_network` request is reported as
not configurable).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpf.agent.host.bfb import BfbFiles, ControllerFetcher
from dpf.agent.host.provisioning import HostContext, HostNetwork, ProvisioningHandler
from dpf.agent.host.records import Records
from dpf.agent.host.rtnl import Rtnl
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
    """HostInfo probe and each DPU worker's re-check period, seconds."""
    host_network_recheck: float = 30.0
    """Once a DPU's host network is ready, the longest time between two full passes over it (netlink drift)."""
    host_info_recheck: float = 30.0
    """Once the host's detection is stable, the longest time between two full detections."""


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


def _host_network(settings: HostAgentSettings, rtnl: Rtnl) -> HostNetwork | None:
    try:
        from dpf.agent.host.hostnet import HostNetworkConfigurator
    except ImportError:
        return None
    return HostNetworkConfigurator(settings.sysroot, recheck_seconds=settings.host_network_recheck, rtnl=rtnl)


class HostAgent:
    def __init__(self, settings: HostAgentSettings, detect: Detect | None = None,
                 hostnet: HostNetwork | None = None, boot_id: Callable[[], str] | None = None,
                 rtnl: Rtnl | None = None) -> None:
        """`detect`, `hostnet`, `boot_id`: defaults from `detect.py` / `hostnet.py` (tests pass their own);
        `rtnl`: the netlink door the defaults use, closed when the agent stops."""
        self.settings = settings
        self.rtnl = rtnl or Rtnl()
        """One socket per namespace, opened on first use, shared by detection and the host network."""
        detection = _detection()
        self._probe: Callable[[Path], tuple[str, ...]] | None = detection.probe if detection else None
        self._bridge_ready: Callable[[], bool] | None = None  # with the default detection only
        if detect is None and detection is not None:
            detect = lambda sysroot, bridge: detection.detect(sysroot, bridge, self.rtnl)  # noqa: E731
            self._bridge_ready = lambda: detection.bridge_has_ipv4(settings.oob_bridge, self.rtnl)
        self.detect: Detect | None = detect
        if boot_id is None:
            reader = detection.read_boot_id if detection else _read_boot_id
            boot_id = lambda: reader(settings.sysroot)  # noqa: E731
        fetcher = None
        if settings.fetch_from_controller:
            fetcher = ControllerFetcher(settings.agent.endpoints, lambda endpoint: self.runtime.channel(endpoint))
        self.context = HostContext(
            sysroot=settings.sysroot, bfb=BfbFiles(settings.bfb_dir, fetcher), records=Records(settings.records),
            boot_id=boot_id, hostnet=hostnet or _host_network(settings, self.rtnl),
            power_command=settings.power_command, install_timeout=settings.install_timeout,
            poll_interval=settings.poll_interval)
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
            self.rtnl.close()
            log.info("host agent stopped (flashes cut, rshims released; host network left as it is)")

    async def _report_host_info(self) -> None:
        assert self.detect is not None
        seen: tuple[str, ...] | None = None
        settled = False  # the last full detection found what the one before did
        detected_at = -float("inf")
        while True:
            try:
                probe = await asyncio.to_thread(self._probe, self.settings.sysroot) if self._probe else None
                bridge_came = (self.host_info is not None and not self.host_info.oob_bridge_configured
                               and self._bridge_ready is not None and await asyncio.to_thread(self._bridge_ready))
                if (probe is None or probe != seen or not settled or bridge_came
                        or time.monotonic() - detected_at >= self.settings.host_info_recheck):
                    detected_at = time.monotonic()
                    settled = False
                    info = await asyncio.to_thread(self.detect, self.settings.sysroot, self.settings.oob_bridge)
                    seen, settled = probe, info == self.host_info
                    if not settled:
                        self._publish_host_info(info)
            except Exception:
                log.exception("host detection failed")
            await asyncio.sleep(self.settings.poll_interval)

    def _publish_host_info(self, info: ppb.HostInfo) -> None:
        self.host_info = info
        status = object_status(HOST_OBJECT, "", pb.VERDICT_PROGRAMMED)
        status.detail.Pack(info)
        self.runtime.statuses.publish_full(HOST_INFO_TYPE, [status])
        log.info("host: boot id %s, %d BlueField(s), OOB bridge %s", info.boot_id, len(info.devices),
                 "configured" if info.oob_bridge_configured else "not configured")
