"""Installs across agent restarts: a flash cut by a SIGKILL is flashed again from the start by the next agent;
a DONE install is remembered (with the host's boot id) and never flashed again; reboots run once per id."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from dpf.lab.emulator import EmulatedHost
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import provisioning_pb2 as ppb
from tests.hostagent.harness import (
    SAMPLE_BFCFG,
    EmulatorProcess,
    MiniController,
    RunningAgent,
    agent_process,
    agent_settings,
    eventually,
    image,
    provisioning,
    run,
)

DONE, FAILED, FLASHING = ppb.INSTALL_STATE_DONE, ppb.INSTALL_STATE_FAILED, ppb.INSTALL_STATE_FLASHING


def test_an_agent_killed_mid_flash_flashes_again_after_its_restart_and_reaches_done(host: EmulatedHost,
                                                                                    tmp_path: Path) -> None:
    dpu = host.dpus[0]
    dpu.set_faults(rate=4e6)

    async def scenario() -> None:
        bfb_dir = tmp_path / "bfb"
        _path, bfb = image(bfb_dir, size=16 << 20)
        controller = await MiniController(bfb_dir).start()
        child = agent_process(controller, host.root, tmp_path / "state", bfb_dir, tmp_path / "agent.log")
        try:
            controller.publish({"dpf/dpu-a": provisioning(install="uid-1/1")})
            await eventually(lambda: dpu.rshim.bytes_accepted > 2 << 20, "the device to take 2 MiB", timeout=60)
            child.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(child.proc.wait, 10)
            await eventually(lambda: dpu.rshim.streams[-1].outcome is not None, "the cut stream to end")
            assert not dpu.rshim.streams[0].outcome.ok  # type: ignore[union-attr]
            assert dpu.boots == []
            dpu.set_faults(rate=None)
            child.respawn("restarted after SIGKILL")
            await eventually(lambda: dpu.boots, "the DPU to boot the second stream", timeout=60)
            await eventually(lambda: controller.install_state("dpf/dpu-a") == DONE, "DONE from the new agent")
            assert [s.outcome.ok for s in dpu.rshim.streams] == [False, True]  # type: ignore[union-attr]
            assert dpu.rshim.streams[1].bytes == bfb.total_size + len(SAMPLE_BFCFG)  # a whole stream, from byte 0
            assert controller.latest("dpf/dpu-a").detail.install.bytes_sent == dpu.rshim.streams[1].bytes
        finally:
            child.stop()
            await controller.stop()

    run(scenario(), timeout=150)
    assert dpu.boots[-1].reason == "install"


def test_a_done_install_is_not_flashed_again_after_an_agent_restart(host: EmulatedHost, tmp_path: Path) -> None:
    dpu = host.dpus[0]

    async def scenario() -> None:
        bfb_dir = tmp_path / "bfb"
        image(bfb_dir)
        controller = await MiniController(bfb_dir).start()
        settings = agent_settings(controller, host.root, tmp_path / "state", bfb_dir)
        agent = RunningAgent(settings)
        try:
            controller.publish({"dpf/dpu-a": provisioning(install="uid-1/1")})
            await eventually(lambda: controller.install_state("dpf/dpu-a") == DONE, "the install")
            assert not controller.latest("dpf/dpu-a").detail.install.host_rebooted
            await agent.stop()

            reported = len(controller.history("dpf/dpu-a"))
            agent = RunningAgent(settings)  # same state directory
            await eventually(lambda: len(controller.history("dpf/dpu-a")) > reported, "the new agent's report")
            seen = controller.latest("dpf/dpu-a")
            assert seen.detail.install.state == DONE
            assert seen.verdict == pb.VERDICT_PROGRAMMED
            assert not seen.detail.install.host_rebooted  # same boot of the host
            await asyncio.sleep(1.0)  # a few of the worker's passes
            assert len(dpu.rshim.streams) == 1
        finally:
            await agent.stop()
            await controller.stop()

    run(scenario())
    assert len(dpu.rshim.streams) == 1
    assert len(dpu.boots) == 1


def test_reboots_run_once_per_id_and_the_install_then_says_the_host_rebooted(tmp_path: Path) -> None:
    async def scenario() -> None:
        bfb_dir = tmp_path / "bfb"
        image(bfb_dir)
        emulator = await EmulatorProcess(tmp_path / "host", tmp_path / "emulator.log").started()
        controller = await MiniController(bfb_dir).start()
        settings = agent_settings(controller, emulator.root, tmp_path / "state", bfb_dir)
        agent = RunningAgent(settings)
        try:
            controller.publish({"dpf/dpu-a": provisioning(install="uid-1/1")})
            await eventually(lambda: controller.install_state("dpf/dpu-a") == DONE, "the install")
            booted_at_install = emulator.boot_id

            controller.publish({"dpf/dpu-a": provisioning(install="uid-1/1", reboot="uid-1/r1")})
            await eventually(lambda: controller.latest("dpf/dpu-a").detail.install.host_rebooted,
                             "host_rebooted after the power cycle")
            seen = controller.latest("dpf/dpu-a")
            assert seen.detail.reboot == ppb.RebootStatus(id="uid-1/r1", error="")
            assert seen.verdict == pb.VERDICT_PROGRAMMED
            assert emulator.power_actions() == ["cycle"]
            assert emulator.boot_id != booted_at_install
            await agent.stop()
            agent = RunningAgent(settings)  # restarted after the reboot, as on a real host
            await eventually(lambda: agent.agent.runtime.connected.is_set(), "the agent to reconnect")
            await asyncio.sleep(1.0)
            assert emulator.power_actions() == ["cycle"]
            assert controller.latest("dpf/dpu-a").detail.install.host_rebooted

            # A new id with another method runs once more; a refused one reports ipmitool's error.
            controller.publish({"dpf/dpu-a": provisioning(install="uid-1/1", reboot="uid-1/r2",
                                                          method=ppb.REBOOT_METHOD_POWER_RESET)})
            await eventually(lambda: emulator.power_actions() == ["cycle", "reset"], "the reset")
            for _ in range(100):  # the DPU boots after the reset: install, cycle, reset
                if (await emulator.status())["dpus"][0]["boots"] == 3:
                    break
                await asyncio.sleep(0.1)
            assert (await emulator.status())["dpus"][0]["boots"] == 3
            assert (await emulator.power("off"))["ok"]
            controller.publish({"dpf/dpu-a": provisioning(install="uid-1/1", reboot="uid-1/r3")})
            await eventually(lambda: controller.latest("dpf/dpu-a").detail.reboot.error, "the refused reboot")
            seen = controller.latest("dpf/dpu-a")
            assert "Command not supported in present state" in seen.detail.reboot.error
            assert seen.verdict == pb.VERDICT_FAILED
            assert "reboot uid-1/r3 failed" in seen.message
            assert emulator.power_actions() == ["cycle", "reset", "off"]  # the refused cycle did nothing
        finally:
            await agent.stop()
            await controller.stop()
            emulator.stop()

    run(scenario())
