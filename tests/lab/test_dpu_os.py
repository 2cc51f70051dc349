"""The emulated DPU's software after boot (lab/dpu_os.py): a real emulated DPU flashed with upstream's hbn
flavor rendered to bf.cfg boots; its files land under its root, its own Open vSwitch runs the flavor's OVS script
(br-sfc with p0, fail_mode secure), the join hook gets the bf.cfg's join command; a power cycle stops the
first boot's software and starts it again from the persisted OVS database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpf.controller.provisioning.bfcfg import render_bfcfg
from dpf.lab.dpu_os import DpuOs
from dpf.lab.emulator import DpuSpec, EmulatedHost
from dpf.lab.emulator.bfb import EmulatedBfb
from dpf.lab.emulator.dpu import BootEvent
from tests.emulator.conftest import Writer, host_name
from tests.provisioning.test_bfcfg import JOIN, hbn_flavor


class FakeNode:
    """Stands for the kubelet the lab starts: records the join it was given and whether it was stopped."""

    def __init__(self, command: str, netns: str) -> None:
        self.command, self.netns, self.stopped = command, netns, False

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def host(tmp_path: Path) -> Iterator[EmulatedHost]:
    with EmulatedHost(host_name(), tmp_path / "host", [DpuSpec("BlueField-3")]) as h:
        yield h


def test_a_flashed_dpu_runs_its_flavor_and_restarts_it_on_a_power_cycle(host: EmulatedHost, tmp_path: Path) -> None:
    dpu = host.dpus[0]
    nodes: list[FakeNode] = []

    def join(event: BootEvent, netns: str) -> FakeNode:
        assert event.bfcfg is not None
        assert event.bfcfg.join_command
        nodes.append(FakeNode(event.bfcfg.join_command, netns))
        return nodes[-1]

    os_ = DpuOs(dpu, tmp_path / "dpu-os", join=join).start()
    try:
        bfcfg = render_bfcfg(hbn_flavor(), "worker1-0000-08-00", JOIN)
        writer = Writer(dpu.rshim.boot, iter([*EmulatedBfb("bf-bundle-2.9.1", 2 << 20).chunks(), bfcfg.encode()]))
        writer.join(30)
        first = os_.wait_booted(1, timeout=60)
        assert not os_.failures, os_.failures
        assert first.event.hostname == "worker1-0000-08-00"
        assert (os_.root / "etc/mellanox/mlnx-ovs.conf").exists()
        assert first.ovs is not None
        assert first.ovs.vsctl("get", "bridge", "br-sfc", "fail_mode").stdout.strip() == "secure"
        assert "p0" in first.ovs.vsctl("list-ports", "br-sfc").stdout.split()
        assert nodes
        assert nodes[0].command.startswith("kubeadm join")
        assert nodes[0].netns == dpu.netns

        host.power_action("cycle")
        second = os_.wait_booted(2, timeout=60)
        assert nodes[0].stopped, "a reboot stops what the previous boot started"
        assert second.event.reason == "power-cycle"
        assert second.ovs is not None
        assert second.ovs is not first.ovs
        assert "br-sfc" in second.ovs.vsctl("list-br").stdout.split()
        assert len(nodes) == 2
        assert not nodes[1].stopped
    finally:
        os_.close()
    assert nodes[-1].stopped


def test_a_boot_the_dpu_left_while_it_was_starting_stops_before_its_agent(host: EmulatedHost, tmp_path: Path) -> None:
    """The lab's case: the controller resets the host right after the flash, while the DPU's OS is still joining
    from the install boot. That boot must not start an agent only for the next boot to tear it down."""
    dpu = host.dpus[0]
    nodes: list[FakeNode] = []
    agents: list[FakeNode] = []
    reset_seen = threading.Event()

    def join(event: BootEvent, netns: str) -> FakeNode:
        assert event.bfcfg is not None
        nodes.append(FakeNode(event.bfcfg.join_command or "", netns))
        if len(nodes) == 1:
            host.power_action("reset")
            assert reset_seen.wait(30), "the reset's boot event never came"
        return nodes[-1]

    def agent(hostname: str, _ovs: object, _node: object) -> FakeNode:
        agents.append(FakeNode(hostname, dpu.netns))
        return agents[-1]

    os_ = DpuOs(dpu, tmp_path / "dpu-os", join=join, agent=agent).start()
    # Called after DpuOs's own callback: once this fires, the reset's event is queued for the OS.
    dpu.on_ready.append(lambda event: reset_seen.set() if event.reason == "reset" else None)
    try:
        bfcfg = render_bfcfg(hbn_flavor(), "worker1-0000-08-00", JOIN)
        writer = Writer(dpu.rshim.boot, iter([*EmulatedBfb("bf-bundle-2.9.1", 2 << 20).chunks(), bfcfg.encode()]))
        writer.join(30)
        first = os_.wait_booted(1, timeout=60)
        second = os_.wait_booted(2, timeout=60)
        assert first.event.reason == "install"
        assert first.agent is None, "the install boot, already left, started no agent"
        assert nodes[0].stopped, "the next boot stopped what the left one had joined with"
        assert second.event.reason == "reset"
        assert [a.command for a in agents] == ["worker1-0000-08-00"], "one agent, from the boot the DPU is in"
        assert second.agent is agents[0]
        assert not agents[0].stopped
    finally:
        os_.close()
    assert agents[0].stopped
