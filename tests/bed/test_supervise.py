"""The lab's supervisor on real processes: a killed child comes back, a crash loop gives up, each step is said.

Short delays keep the cases fast; the policy's arithmetic is the same as the lab's 0.5 s → 30 s.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpf.lab.bed.ovs import OvsSwitch
from dpf.lab.bed.process import Child, wait_until
from dpf.lab.bed.supervise import RestartPolicy, StartLimitHit, Supervisor

FAST = RestartPolicy(first_delay=0.05, max_delay=0.2, stable_after=60.0, burst=3, interval=60.0)


class Said:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture
def said() -> Said:
    return Said()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.stop()


def run(supervisor: Supervisor, until: object, timeout: float, what: str) -> None:
    """Poll the supervisor (as the lab's loop does) until `until()` holds."""
    deadline = time.monotonic() + timeout
    while not until():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        supervisor.poll()
        time.sleep(0.01)


def test_a_sigkilled_child_comes_back_with_a_new_pid_and_a_line_saying_so(tmp_path: Path, said: Said,
                                                                          children: list[Child]) -> None:
    child = Child("sleeper", ["sleep", "600"], tmp_path / "sleeper.log")
    children.append(child)
    supervisor = Supervisor(said, FAST)
    supervisor.watch(child, "sleeper worker1")
    first = child.pid

    os.kill(first, signal.SIGKILL)
    run(supervisor, lambda: child.pid != first, 5, "the restart")

    assert child.alive()
    assert said.lines == ["sleeper worker1 exited (signal 9); restarting in 0.05s (restart 1)",
                          f"sleeper worker1 running again as pid {child.pid}; log: {tmp_path / 'sleeper.log'}"]
    assert "restarted by the supervisor after it exited (signal 9), restart 1" in child.log.read_text()
    supervisor.poll()
    assert len(said.lines) == 2, "a running child is left alone"


def test_a_crash_loop_backs_off_then_hits_the_start_limit_naming_the_log(tmp_path: Path, said: Said,
                                                                         children: list[Child]) -> None:
    log = tmp_path / "crasher.log"
    child = Child("crasher", [sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"], log)
    children.append(child)
    supervisor = Supervisor(said, FAST)
    supervisor.watch(child, "crasher")

    with pytest.raises(StartLimitHit) as failure:
        run(supervisor, lambda: False, 30, "the start limit")

    restarts = [line for line in said.lines if "restarting in" in line]
    assert restarts == ["crasher exited (status 3); restarting in 0.05s (restart 1)",
                        "crasher exited (status 3); restarting in 0.1s (restart 2)",
                        "crasher exited (status 3); restarting in 0.2s (restart 3)"]  # doubling, capped at 0.2
    assert re.fullmatch(r"crasher exited \(status 3\) again, 3 restarts within \d+s; giving up on it "
                        r"\(start limit: 3 restarts per 60s\)", said.lines[-1]), said.lines
    message = str(failure.value)
    assert message.startswith(f"crasher keeps failing (last: status 3); its log: {log}")
    assert "boom: bad config" in message
    assert log.read_text().count("boom: bad config") == 4
    count = len(said.lines)
    time.sleep(0.3)
    supervisor.poll()
    assert len(said.lines) == count, "a child given up on stays down"
    assert not child.alive()


def test_a_stable_run_resets_the_back_off(tmp_path: Path, said: Said, children: list[Child]) -> None:
    child = Child("sleeper", ["sleep", "600"], tmp_path / "sleeper.log")
    children.append(child)
    supervisor = Supervisor(said, RestartPolicy(first_delay=0.05, max_delay=1.0, stable_after=0.5, burst=5))
    supervisor.watch(child, "sleeper")
    for _ in range(2):
        pid = child.pid
        time.sleep(0.6)  # longer than stable_after
        os.kill(pid, signal.SIGKILL)
        run(supervisor, lambda pid=pid: child.pid != pid, 5, "the restart")
    assert [line for line in said.lines if "restarting" in line] == [
        "sleeper exited (signal 9); restarting in 0.05s (restart 1)",
        "sleeper exited (signal 9); restarting in 0.05s (restart 2)"]


def test_a_clean_exit_or_a_stop_is_not_restarted(tmp_path: Path, said: Said, children: list[Child]) -> None:
    clean = Child("oneshot", ["sleep", "600"], tmp_path / "oneshot.log")
    stopped = Child("stopped", ["sleep", "600"], tmp_path / "stopped.log")
    children += [clean, stopped]
    supervisor = Supervisor(said, FAST)
    supervisor.watch(clean, "oneshot")
    supervisor.watch(stopped, "stopped")
    clean.proc.terminate()  # SIGTERM: systemd counts it as a clean stop
    stopped.stop()
    run(supervisor, lambda: said.lines, 5, "the clean exit to be noticed")
    time.sleep(0.2)
    supervisor.poll()
    assert said.lines == ["oneshot exited cleanly (signal 15); not restarting it (Restart=on-failure)"]
    assert not clean.alive()
    assert not stopped.alive()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns and OVS")
def test_a_sigkilled_vswitchd_comes_back_with_its_bridges_and_ports(ovs: OvsSwitch, said: Said) -> None:
    ovs.add_bridge("br0")
    ovs.vsctl("add-port", "br0", "tap0", "--", "set", "interface", "tap0", "type=internal")
    supervisor = Supervisor(said, FAST)
    vswitchd = ovs.children["ovs-vswitchd"]
    supervisor.watch(vswitchd, "ovs-vswitchd", ovs.log("ovs-vswitchd"))
    first = vswitchd.pid

    os.kill(first, signal.SIGKILL)
    run(supervisor, lambda: vswitchd.pid != first, 5, "the restart")

    wait_until(lambda: ovs.ofctl("show", "br0", check=False).returncode == 0, 15, "br0 to answer OpenFlow again",
               while_alive=[vswitchd])
    assert "tap0" in ovs.ofctl("show", "br0").stdout
    ovs.ofctl("add-flow", "br0", "priority=5,actions=drop")
    assert any("priority=5" in flow for flow in ovs.flows("br0"))
    assert said.lines[0] == "ovs-vswitchd exited (signal 9); restarting in 0.05s (restart 1)"
