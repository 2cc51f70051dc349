"""The whole host agent, as it runs on a host: `dpf agent host` in the emulated host's network namespace
with the real detection and host network configurator, over a unix-socket NodeState stream (the namespace
has its own loopback). It reports the host's BlueField, flashes it, wires VF0 into br-dpu, and undoes the
host network when the DPU goes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dpf.agent.host.main import HOST_INFO_TYPE
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import provisioning_pb2 as ppb
from tests.hostagent.harness import (
    BRIDGE_ADDRESS,
    agent_on_emulated_host,
    eventually,
    image,
    ip,
    provisioning,
    run,
)


def test_the_agent_in_the_hosts_namespace_reports_flashes_and_wires_the_host_network(tmp_path: Path) -> None:
    async def scenario() -> None:
        bfb_dir = tmp_path / "bfb"
        image(bfb_dir)
        async with agent_on_emulated_host(tmp_path, bfb_dir, "--poll-interval", "0.5") as (emulator, controller, agent):
            netns = emulator.netns
            info = (await eventually(lambda: controller.latest("host", HOST_INFO_TYPE), "HostInfo")).detail
            assert info.oob_bridge_configured
            assert info.boot_id == emulator.boot_id
            (device,) = info.devices
            assert (device.pci_address, device.model, device.pf0_name) == ("0000:08:00.0", "BlueField-3", "ens1f0np0")
            assert device.rshim.endswith("rshim0")

            network = ppb.HostNetwork(num_vfs=4, vf_mtu=1400, bridge="br-dpu")
            controller.publish({"dpf/dpu-a": provisioning(install="uid-1/1", host_network=network)})
            seen = await eventually(lambda: (s := controller.latest("dpf/dpu-a")) and s.verdict ==
                                    pb.VERDICT_PROGRAMMED and s, "the DPU provisioned and wired", timeout=60,
                                    detail=lambda: f"last status {controller.latest('dpf/dpu-a')}; agent log:\n"
                                                   f"{agent.log_tail()}")
            assert seen.detail.install.state == ppb.INSTALL_STATE_DONE
            assert seen.detail.host_network == ppb.HostNetworkStatus(ready=True, num_vfs=4, vf0="ens1f0v0")
            vf0 = ip(netns, "-d", "link", "show", "ens1f0v0")
            assert "master br-dpu" in vf0
            assert "mtu 1400" in vf0
            assert (emulator.root / "sys/bus/pci/devices/0000:08:00.0/sriov_numvfs").read_text().strip() == "4"

            controller.publish({})
            await eventually(lambda: "ens1f0v0" not in ip(netns, "link", "show"), "the VFs to go", timeout=30)
            assert (emulator.root / "sys/bus/pci/devices/0000:08:00.0/sriov_numvfs").read_text().strip() == "0"
            await eventually(lambda: not (emulator.root / "dev/rshim0/.holder").exists(), "the rshim released")
            agent.check_alive()

    run(scenario())


def test_an_oob_bridge_configured_after_the_agent_started_is_reported_within_a_poll(tmp_path: Path) -> None:
    # Every DPU of the host waits in Initializing for this report: it must not wait for the 30 s full re-detection
    # (set to an hour here, so only the per-poll bridge check can see it).
    async def scenario() -> None:
        async with agent_on_emulated_host(tmp_path, tmp_path / "bfb", "--poll-interval", "0.5", "--host-info-recheck",
                                          "3600", bridge_address=False) as (emulator, controller, agent):
            first = await eventually(lambda: controller.latest("host", HOST_INFO_TYPE), "HostInfo")
            assert not first.detail.oob_bridge_configured  # br-dpu exists, without an address
            await asyncio.sleep(2.0)  # four polls: the detection has settled (a result still changing is re-run)
            ip(emulator.netns, *BRIDGE_ADDRESS)  # the admin finishes the bridge
            await eventually(lambda: (seen := controller.latest("host", HOST_INFO_TYPE)) is not None
                             and seen.detail.oob_bridge_configured, "HostInfo with the OOB bridge configured",
                             timeout=10, detail=agent.log_tail)
            agent.check_alive()

    run(scenario())
