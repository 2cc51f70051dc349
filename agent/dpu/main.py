"""The DPU agent process: the NodeState runtime with the SFC handlers, the SFC programmer (which reports its
verdicts through a callback after every pass) and (with a CNI socket) the CNI server, started and stopped
in order.

Start: seed the programmer from the state the runtime stored last time (an agent restart keeps every
flow, even with the controller down) → start the programmer (first full resync of br-sfc) → run the
runtime (re-assert, then stream) next to the CNI server. Stop (SIGTERM/SIGINT, or
any of those tasks ending, which is a crash): cancel newest first, then stop the programmer. The data
plane is left as it is: flows and ports survive an agent stop, as they must across an upgrade.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from dpf.agent.cni.settings import CniSettings
from dpf.agent.dpu.sfc_handlers import ServiceChainHandler, ServiceInterfaceHandler, SfcState
from dpf.agent.runtime.runtime import AgentRuntime
from dpf.agent.runtime.settings import AgentSettings
from dpf.agent.sfc.ovsdb import Ovsdb, OvsdbSettings
from dpf.agent.sfc.programmer import SfcProgrammer
from dpf.agent.sfc.settings import SfcSettings
from dpf.shared.tasks import TaskGroup

log = logging.getLogger("dpf.agent.dpu")


@dataclass(frozen=True)
class DpuAgentSettings:
    agent: AgentSettings
    sfc: SfcSettings
    cni: CniSettings | None = None
    """None: no CNI server in this process."""
    apply_timeout: float = 30.0
    """Bound for one programmer pass triggered by a response, seconds (then: TransientError, retried)."""
    start_timeout: float = 30.0
    """Bound for the programmer's first full resync at start-up, seconds (it keeps retrying after)."""


class DpuAgent:
    def __init__(self, settings: DpuAgentSettings) -> None:
        self.settings = settings
        self.sfc = SfcState(settings.apply_timeout, frozenset({settings.sfc.bridge, settings.sfc.ovn_bridge}))
        self.runtime = AgentRuntime(settings.agent, [ServiceInterfaceHandler(self.sfc), ServiceChainHandler(self.sfc)])
        self.sfc.reporter_for = self.runtime.statuses.reporter
        self.programmer: SfcProgrammer | None = None
        self._failed = asyncio.Event()
        self._tasks = TaskGroup("dpu-agent", self._task_failed)

    def _task_failed(self, name: str, exc: BaseException | None) -> None:
        # The task group logged the crash; a DPU agent without its stream or CNI server stops (systemd restarts it).
        self._failed.set()

    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` is set (0) or a task ends on its own (1)."""
        initial = self.sfc.load_stored({t: a.state.resources for t, a in self.runtime.appliers.items()})
        self.sfc.loop = asyncio.get_running_loop()
        # One OVSDB connection for the process: the programmer and the CNI server share this client.
        ovsdb = Ovsdb(OvsdbSettings.of_sfc(self.settings.sfc))
        self.programmer = SfcProgrammer(self.settings.sfc, initial, ovsdb, self.sfc.on_statuses)
        self.sfc.programmer = self.programmer
        log.info("starting the SFC programmer on %s (%d interfaces, %d chains stored)", self.settings.sfc.bridge,
                 len(initial.interfaces), len(initial.chains))
        report = await asyncio.to_thread(self.programmer.start, self.settings.start_timeout)
        if report is not None:
            log.info("br-sfc in sync at start-up: %s", report.ports)
        try:
            if self.settings.cni is not None:
                from dpf.agent.cni.wiring import serve_cni  # the CNI server pulls in pyroute2: only when asked

                self._tasks.start("cni", serve_cni(self.runtime, self.settings.cni, ovsdb))
            self._tasks.start("runtime", self.runtime.run())
            waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._failed.wait())}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if self._failed.is_set():
                log.error("a task of the DPU agent ended; stopping the agent")
                return 1
            return 0
        finally:
            await self._tasks.stop(timeout=10.0)
            await asyncio.to_thread(self.programmer.stop)
            log.info("DPU agent stopped (the data plane is left as it is)")
