"""The emulated DPU's software after boot (lab/dpu_os.py): a real emulated DPU flashed with upstream's hbn
flavor rendered to bf.cfg boots; its files land under its root, its own Open vSwitch runs the flavor's OVS script
(br-sfc with p0, fail_mode secure), the join hook gets the bf.cfg's join command; a power cycle stops the
first boot's software and starts it again from the persisted OVS database."""

from __future__ import annotations

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
