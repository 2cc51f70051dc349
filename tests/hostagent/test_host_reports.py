"""HostInfo goes to the controller as an unsolicited full StatusReport at start and on every change (here: the
host's boot id after a power cycle), and is re-announced on a new stream; the host network is ensured while
asked for and released when the DPU goes. Detection and the host network configurator are stand-ins here
(their own tests exercise the real ones against the emulator); what is tested is how the agent drives them."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from dpf.agent.host.main import HOST_INFO_TYPE
from dpf.lab.emulator import EmulatedHost
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import provisioning_pb2 as ppb
from tests.hostagent.harness import (
    EmulatorProcess,
    MiniController,
    RunningAgent,
    agent_settings,
    eventually,
    image,
    provisioning,
    run,
)


def detect_boot_id_only(sysroot: Path, oob_bridge: str = "br-dpu") -> ppb.HostInfo:
    """Stand-in for `detect.detect`: the boot id read from the host, one fixed device."""
    boot_id = (sysroot / "proc/sys/kernel/random/boot_id").read_text().strip()
    return ppb.HostInfo(boot_id=boot_id, devices=[ppb.HostDevice(pci_address="0000:08:00.0", rshim="/dev/rshim0")])


class RecordingHostNetwork:
    """Stand-in for `hostnet.HostNetworkConfigurator`: records calls, ready from the second ensure on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()

    def ensure(self, pci_address: str, spec: ppb.HostNetwork) -> ppb.HostNetworkStatus:
        with self.lock:
            self.calls.append(("ensure", pci_address, spec.num_vfs))
            ready = sum(1 for c in self.calls if c[0] == "ensure") > 1
        if not ready:
            return ppb.HostNetworkStatus(ready=False, message="waiting for br-dpu to have an IPv4 address")
        return ppb.HostNetworkStatus(ready=True, num_vfs=spec.num_vfs, vf0="ens1f0v0")

    def release(self, pci_address: str, spec: ppb.HostNetwork) -> None:
        with self.lock:
            self.calls.append(("release", pci_address, spec.num_vfs))


def test_host_info_is_reported_at_start_on_change_and_on_each_new_stream(tmp_path: Path) -> None:
    async def scenario() -> None:
        emulator = await EmulatorProcess(tmp_path / "host", tmp_path / "emulator.log").started()
        controller = await MiniController(tmp_path / "bfb").start()
        agent = RunningAgent(agent_settings(controller, emulator.root, tmp_path / "state", tmp_path / "bfb"),
                             detect=detect_boot_id_only)
        try:
            first = await eventually(lambda: controller.latest("host", HOST_INFO_TYPE), "HostInfo")
            assert first.detail.boot_id == emulator.boot_id
            assert first.verdict == pb.VERDICT_PROGRAMMED
            assert first.full  # HostInfo is never desired: every report is the whole of it
            assert first.detail.devices[0].pci_address == "0000:08:00.0"
            assert (await emulator.power("cycle"))["ok"]
            changed = await eventually(lambda: (s := controller.latest("host", HOST_INFO_TYPE)) and
                                       s.detail.boot_id != first.detail.boot_id and s, "the new boot id")
            assert changed.detail.boot_id == emulator.boot_id
            count = len(controller.history("host", HOST_INFO_TYPE))
            await asyncio.sleep(1.0)  # several polls, nothing changed: nothing sent
            assert len(controller.history("host", HOST_INFO_TYPE)) == count

            # A new controller (restart) hears it again, as a full report, without any change on the host.
            port = controller.port
            await controller.stop()
            controller = MiniController(tmp_path / "bfb", port=port)
            await controller.start()
            again = await eventually(lambda: controller.latest("host", HOST_INFO_TYPE), "HostInfo re-announced")
            assert again.detail.boot_id == emulator.boot_id
            assert again.full
        finally:
            await agent.stop()
            await controller.stop()
            emulator.stop()

    run(scenario())


def test_the_host_network_is_ensured_while_asked_for_and_released_with_the_dpu(host: EmulatedHost,
                                                                               tmp_path: Path) -> None:
    hostnet = RecordingHostNetwork()

    async def scenario() -> None:
        bfb_dir = tmp_path / "bfb"
        image(bfb_dir, size=1 << 20)
        controller = await MiniController(bfb_dir).start()
        agent = RunningAgent(agent_settings(controller, host.root, tmp_path / "state", bfb_dir), hostnet=hostnet)
        try:
            network = ppb.HostNetwork(num_vfs=8, vf_mtu=1500, bridge="br-dpu")
            controller.publish({"dpf/dpu-a": provisioning(host_network=network)})
            pending = await eventually(lambda: (s := controller.latest("dpf/dpu-a")) and
                                       s.detail.HasField("host_network") and s, "a host network status")
            assert pending.verdict == pb.VERDICT_PENDING
            assert "br-dpu to have an IPv4 address" in pending.message
            ready = await eventually(lambda: (s := controller.latest("dpf/dpu-a")) and
                                     s.detail.host_network.ready and s, "the host network ready")
            assert ready.detail.host_network == ppb.HostNetworkStatus(ready=True, num_vfs=8, vf0="ens1f0v0")
            assert ready.verdict == pb.VERDICT_PROGRAMMED
            assert hostnet.calls[0] == ("ensure", "0000-08-00", 8)
            controller.publish({})
            await eventually(lambda: ("release", "0000-08-00", 8) in hostnet.calls, "the release")
            assert hostnet.calls[-1][0] == "release"
        finally:
            await agent.stop()
            await controller.stop()

    run(scenario())
    assert [c for c in hostnet.calls if c[0] == "release"] == [("release", "0000-08-00", 8)]
