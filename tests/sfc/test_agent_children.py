"""The DPU agent's children die with it, and a new agent ends what an earlier one left behind: a SIGKILLed agent
used to leave its `ovs-ofctl monitor` running under PID 1, one more per kill."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from dpf.agent.sfc.flows import FlowMonitor, monitor_argv
from dpf.agent.sfc.settings import SfcSettings
from dpf.lab.bed.netns import NetnsBed
from dpf.lab.bed.process import wait_until
from dpf.lab.dpus import EmulatedDpu
from tests.sfc.conftest import needs_root

pytestmark = needs_root

NO_CONTROLLER = "127.0.0.1:9"  # the agent keeps retrying; its programmer (and monitor) start before it connects


def monitors(target: str) -> dict[int, int]:
    """pid → parent pid of every live `ovs-ofctl … monitor <target>` process on the machine."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if (args and args[0].endswith(b"ovs-ofctl") and b"monitor" in args and target.encode() in args
                and state != "Z"):
            found[int(proc.name)] = int(ppid)
    return found


def test_a_killed_agent_takes_its_flow_monitor_along_and_a_new_agent_ends_leftovers(netns: NetnsBed,
                                                                                     tmp_path: Path) -> None:
    dpu = EmulatedDpu("dpu-children", netns, tmp_path / "dpu", short="dc")
    ovs = dpu.start_switch()
    settings = SfcSettings(ovs_rundir=ovs.rundir)
    target = settings.of_target()
    try:
        agent = dpu.start_agent(NO_CONTROLLER, None)
        wait_until(lambda: monitors(target), 15, "the agent's flow monitor", while_alive=[agent])
        assert list(monitors(target).values()) == [agent.pid]

        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(10)
        dpu.stop_agent()
        wait_until(lambda: not monitors(target), 5, "the flow monitor to die with its agent")

        # An earlier agent's monitor (as one that died before this fix would have left it) on the same bridge.
        leftover = subprocess.Popen(monitor_argv(settings), env={**os.environ, "OVS_RUNDIR": str(ovs.rundir)},
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: leftover.pid in monitors(target), 5, "the leftover monitor")
            agent = dpu.start_agent(NO_CONTROLLER, None)
            leftover.wait(10)  # ended by the new agent
            wait_until(lambda: list(monitors(target).values()) == [agent.pid], 15, "the new agent's own monitor",
                       while_alive=[agent])
            assert f"pid {leftover.pid}" in agent.log.read_text()  # and it says so
        finally:
            if leftover.poll() is None:
                leftover.kill()
                leftover.wait()
    finally:
        dpu.stop()


def test_a_monitor_stopped_before_it_started_stops_quietly(tmp_path: Path) -> None:
    """A programmer whose start-up failed is stopped in `finally`; raising there skipped the rest of the
    clean-up (a benchmark killed during start-up left its OVS and namespaces behind)."""
    monitor = FlowMonitor(SfcSettings(ovs_rundir=tmp_path), lambda _fresh: None, lambda _ports: None)
    monitor.stop()
