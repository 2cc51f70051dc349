"""The host agent flashes an emulated BlueField over its rshim, as the controller's stream asks, and reports
what the DPU's boot log says: DONE only after "DPU is ready" following a complete stream."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dpf.lab.emulator import EmulatedHost, claim, holder
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import provisioning_pb2 as ppb
from tests.hostagent.harness import (
    SAMPLE_BFCFG,
    MiniController,
    RunningAgent,
    agent_settings,
    eventually,
    image,
    provisioning,
    run,
)

DONE, FAILED, FLASHING = ppb.INSTALL_STATE_DONE, ppb.INSTALL_STATE_FAILED, ppb.INSTALL_STATE_FLASHING


def test_a_full_flash_reaches_done_with_progress_and_the_dpu_boots_with_the_bf_cfg(host: EmulatedHost,
                                                                                    tmp_path: Path) -> None:
    dpu = host.dpus[0]
    dpu.set_faults(rate=8e6)  # 16 MiB at 8 MB/s: about 2 s of streaming, enough to see progress

    async def scenario() -> None:
        bfb_dir = tmp_path / "bfb"
        _path, bfb = image(bfb_dir, size=16 << 20)
        controller = await MiniController(bfb_dir).start()
        agent = RunningAgent(agent_settings(controller, host.root, tmp_path / "state", bfb_dir))
        try:
            controller.publish({"dpf/dpu-a": provisioning(install="uid-1/1")})
            await eventually(lambda: controller.install_state("dpf/dpu-a") in (DONE, FAILED), "the install to end")
            final = controller.latest("dpf/dpu-a")
            assert final is not None
            assert final.detail.install.state == DONE, final.detail.install
            assert (final.verdict, final.message) == (pb.VERDICT_PROGRAMMED, "")
            assert final.detail.install.bytes_sent == final.detail.install.bytes_total == \
                bfb.total_size + len(SAMPLE_BFCFG)
            assert " INFO[MISC]: DPU is ready" in final.detail.install.log
            assert final.detail.bfb_ready
            assert final.detail.rshim_holder == ""
            flashing = [s for s in controller.history("dpf/dpu-a") if s.detail.install.state == FLASHING]
            sent = [s.detail.install.bytes_sent for s in flashing]
            assert len(flashing) >= 3, sent
            assert sent == sorted(sent), sent
            assert 0 < sent[-2] < sent[-1], sent
            assert all(s.detail.install.rate > 0 for s in flashing if s.detail.install.bytes_sent)
            assert {s.detail.install.bytes_total for s in flashing} == {bfb.total_size + len(SAMPLE_BFCFG)}
            assert any(s.detail.install.eta_seconds > 0 for s in flashing)
            assert "flashing" in flashing[-1].message
            assert "MB/s" in flashing[-1].message
            span = flashing[-1].at - flashing[0].at
            assert len(flashing) <= 2 * span + 3, f"{len(flashing)} progress reports in {span:.1f}s"
        finally:
            await agent.stop()
            await controller.stop()

    run(scenario())
    event = dpu.boots[-1]
    assert (event.reason, event.version) == ("install", "doca-2.9")
    assert event.bfcfg is not None
    assert event.bfcfg.text == SAMPLE_BFCFG.decode()
    assert len(dpu.rshim.streams) == 1
    assert dpu.rshim.streams[0].outcome.ok
    assert holder(dpu.rshim_dir) is None  # the stopped agent let the rshim go


def test_a_corrupt_image_fails_naming_the_dpus_err_line(host: EmulatedHost, tmp_path: Path) -> None:
    dpu = host.dpus[0]
    dpu.set_faults(corrupt=True)

    async def scenario() -> None:
        bfb_dir = tmp_path / "bfb"
        image(bfb_dir)
        controller = await MiniController(bfb_dir).start()
        agent = RunningAgent(agent_settings(controller, host.root, tmp_path / "state", bfb_dir))
        try:
            controller.publish({"dpf/dpu-a": provisioning(install="uid-1/1")})
            await eventually(lambda: controller.install_state("dpf/dpu-a") in (DONE, FAILED), "the install to end")
            final = controller.latest("dpf/dpu-a")
            assert final is not None
            assert final.detail.install.state == FAILED
            assert "ERR[MISC]: BFB checksum mismatch" in final.detail.install.error, final.detail.install.error
            assert final.verdict == pb.VERDICT_FAILED
            assert "checksum mismatch" in final.message
            await_more = len(dpu.rshim.streams)
            controller.publish({"dpf/dpu-a": provisioning(install="uid-1/1", timeout=61)})  # same id, new version
            await eventually(lambda: controller.latest("dpf/dpu-a").version != final.version, "the new version")
            assert len(dpu.rshim.streams) == await_more  # a failed id is not flashed again while the agent runs
        finally:
            await agent.stop()
            await controller.stop()

    run(scenario())
    assert dpu.boots == []


def test_a_stalled_device_fails_at_the_install_timeout(host: EmulatedHost, tmp_path: Path) -> None:
    dpu = host.dpus[0]
    dpu.set_faults(stall=True)

    async def scenario() -> None:
        bfb_dir = tmp_path / "bfb"
        image(bfb_dir)
        controller = await MiniController(bfb_dir).start()
        agent = RunningAgent(agent_settings(controller, host.root, tmp_path / "state", bfb_dir))
        try:
            controller.publish({"dpf/dpu-a": provisioning(install="uid-1/1", timeout=3)})
            await eventually(lambda: controller.install_state("dpf/dpu-a") == FLASHING, "the stream to start")
            started = time.monotonic()
            await eventually(lambda: controller.install_state("dpf/dpu-a") in (DONE, FAILED), "the install to end")
            final = controller.latest("dpf/dpu-a")
            assert final is not None
            assert final.detail.install.state == FAILED
            assert "timed out after 3s" in final.detail.install.error, final.detail.install.error
            assert final.detail.install.bytes_sent < final.detail.install.bytes_total
            assert 2.0 < time.monotonic() - started < 6.0
        finally:
            await agent.stop()
            await controller.stop()

    run(scenario())
    assert dpu.boots == []


def test_removing_the_resource_mid_flash_stops_the_stream_and_releases_the_rshim(host: EmulatedHost,
                                                                                  tmp_path: Path) -> None:
    dpu = host.dpus[0]
    dpu.set_faults(rate=4e6)

    async def scenario() -> None:
        bfb_dir = tmp_path / "bfb"
        image(bfb_dir, size=32 << 20)
        controller = await MiniController(bfb_dir).start()
        agent = RunningAgent(agent_settings(controller, host.root, tmp_path / "state", bfb_dir))
        try:
            controller.publish({"dpf/dpu-a": provisioning(install="uid-1/1")})
            await eventually(lambda: dpu.rshim.bytes_accepted > 1 << 20, "the device to take a MiB")
            assert holder(dpu.rshim_dir) is not None
            removed_at = time.monotonic()
            controller.publish({})
            await eventually(lambda: dpu.rshim.streams[-1].outcome is not None, "the stream to end")
            # 32 MiB at 4 MB/s would take 8 s more: the stream was cut, not finished.
            assert time.monotonic() - removed_at < 3.0
            assert dpu.rshim.streams[-1].bytes < 24 << 20
            await eventually(lambda: holder(dpu.rshim_dir) is None, "the rshim to be released")
            outcome = dpu.rshim.streams[-1].outcome
            assert outcome is not None
            assert not outcome.ok
            assert "truncated" in (outcome.error or "")
            assert not (dpu.rshim_dir / ".holder").exists()
            assert not agent.agent.handler.workers
            assert all(s.detail.install.state != DONE for s in controller.history("dpf/dpu-a"))
        finally:
            await agent.stop()
            await controller.stop()

    run(scenario())
    assert dpu.boots == []
    assert dpu.state == "error"


def test_another_holder_of_the_rshim_is_named_until_it_lets_go(host: EmulatedHost, tmp_path: Path) -> None:
    dpu = host.dpus[0]
    foreign = claim(dpu.rshim_dir, "rshim")

    async def scenario() -> None:
        bfb_dir = tmp_path / "bfb"
        image(bfb_dir)
        controller = await MiniController(bfb_dir).start()
        agent = RunningAgent(agent_settings(controller, host.root, tmp_path / "state", bfb_dir))
        try:
            controller.publish({"dpf/dpu-a": provisioning(install="uid-1/1")})
            seen = await eventually(lambda: controller.latest("dpf/dpu-a"), "a status")
            assert seen.detail.rshim_holder == f"pid {os.getpid()} (rshim)"
            assert seen.verdict == pb.VERDICT_PENDING
            assert "rshim held by" in seen.message
            assert seen.detail.install.state == ppb.INSTALL_STATE_WAITING
            assert dpu.rshim.streams == []
            foreign.release()
            await eventually(lambda: controller.install_state("dpf/dpu-a") == DONE, "the install after the release")
            assert controller.latest("dpf/dpu-a").detail.rshim_holder == ""
        finally:
            foreign.release()
            await agent.stop()
            await controller.stop()

    run(scenario())
