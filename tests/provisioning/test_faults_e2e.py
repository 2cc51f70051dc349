"""Faults, end to end: the DPU reconciler against the real apiserver, the real host agent process, and the
emulated BlueField with its fault dials (stall, corrupt image, never boots, slow device).

What a user sees: a failing install is tried again a bounded number of times, then the DPU is in phase Error with
a reason and a message naming the phase and the cause; the documented retry annotation
(`provisioning.dpu.nvidia.com/retry`, any new value) starts it again once the cause is gone. A host agent killed
mid-flash flashes the same install again from the start when it comes back (never a half stream reported as
success). A BFB that is not Ready and a DPUCluster that is full make the DPU wait with a condition that says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from dpf.controller.provisioning import dpu_phases as ph
from dpf.lab.bed.kube import ControlPlane
from tests.controlplane.harness import run
from tests.provisioning.bed import FAST, ProvisioningBed, condition, phase_of, record

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for the emulated host's netns")

# The agent gives one install attempt this long (stream and boot); two attempts, then Error.
FAULTY = dataclasses.replace(FAST, install_timeout=6.0, retry_base=3.0, retry_max=3.0)
IMAGE_BYTES = 8 << 20


async def _error(bed: ProvisioningBed, name: str) -> dict:
    dpu = await bed.wait_phase(name, ph.ERROR, timeout=120)
    return dpu


async def _retry_and_finish(bed: ProvisioningBed, name: str) -> None:
    await bed.annotate_dpu(name, {ph.RETRY_ANNOTATION: "1"})
    await bed.wait_phase(name, ph.CLUSTER_CONFIG)


@pytest.mark.parametrize(("dial", "cause"), [
    pytest.param({"corrupt": True}, "the DPU refused the install: ERR[MISC]", id="corrupt-image"),
    pytest.param({"stall": True}, "install timed out after 6s", id="stalled-device"),
    pytest.param({"never_boots": True}, "the DPU did not report 'DPU is ready' within 6s", id="never-boots"),
])
def test_a_failing_install_is_retried_then_errors_naming_phase_and_cause_and_the_retry_annotation_restarts_it(
        kube: ControlPlane, namespace: str, tmp_path: Path, dial: dict, cause: str) -> None:
    async def scenario() -> None:
        async with ProvisioningBed(kube, namespace, tmp_path, settings=FAULTY) as bed:
            await bed.emulator.faults(**dial)
            boots = (await bed.emulator.status())["boots"]
            name = await bed.create_dpu()
            # The first attempt fails; the second is announced with its cause while it backs off.
            retrying = await bed.wait_condition(name, "OSInstalled", "InstallationFailed", timeout=60)
            assert "attempt 1 of 2 failed, attempt 2 in " in retrying["message"], retrying
            assert cause in retrying["message"], retrying

            dpu = await _error(bed, name)
            ready = condition(dpu, "Ready")
            assert ready is not None
            assert ready["status"] == "False"
            assert ready["reason"] == "InstallationFailed"
            message = ready["message"]
            assert message.startswith("OS Installing failed after 2 attempts: install "), message
            assert cause in message, message
            assert ph.RETRY_ANNOTATION in message, message  # says how to try again
            installed = condition(dpu, "OSInstalled")
            assert installed is not None
            assert installed["status"] == "False"
            assert record(dpu)["installs"] == 2  # each attempt its own install id
            await bed.until(_event(bed, name, "Retrying", "OS Installing attempt 1 of 2 failed"), "a Retrying Event")
            await bed.until(_event(bed, name, "ProvisioningFailed", cause),
                            "a ProvisioningFailed Event naming the cause")
            # In Error the host agent lets the DPU go: its rshim is free for whoever fixes it.
            await bed.until(lambda: not bed.emulator.rshim_held(), "the rshim released in phase Error")
            status = await bed.emulator.status()
            assert status["boots"] == boots  # nothing booted from a failed install
            # Error stays Error: no third attempt of its own.
            await bed.holds(_still(bed, name, ph.ERROR), "in phase Error", 2.0)

            await bed.emulator.faults(**{key: False for key in dial})  # the cause is fixed ...
            await _retry_and_finish(bed, name)  # ... and the user asks for another try
            dpu = await bed.dpu(name)
            assert dpu is not None
            assert record(dpu)["installs"] == 3
            status = await bed.emulator.status()
            assert status["version"] == "doca-2.9"
            await bed.until(_event(bed, name, "RetryRequested", "starting phase OS Installing again"),
                            "a RetryRequested Event")

    run(scenario(), timeout=300)


def _event(bed: ProvisioningBed, name: str, reason: str, text: str):
    async def seen() -> bool:
        return any(e.get("reason") == reason and text in e.get("note", "") for e in await bed.events(name))
    return seen


def _still(bed: ProvisioningBed, name: str, phase: str):
    async def check() -> bool:
        dpu = await bed.dpu(name)
        return dpu is not None and phase_of(dpu) == phase
    return check


def test_a_host_agent_killed_mid_flash_flashes_again_from_the_start_when_it_is_back(
        kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisioningBed(kube, namespace, tmp_path) as bed:
            await bed.emulator.faults(rate=2_000_000)  # a slow device: 8 MiB take 4 s
            boots = (await bed.emulator.status())["boots"]
            name = await bed.create_dpu()

            async def flashing() -> bool:
                dpu = await bed.dpu(name)
                c = condition(dpu, "OSInstalled") if dpu else None
                return c is not None and c["message"].startswith("flashing ") and " of 8.0 MiB" in c["message"]

            await bed.until(flashing, "the flash under way")
            install = record(await bed.dpu(name) or {})["install"]
            bed.kill_agent()
            await bed.until(lambda: not bed.emulator.rshim_held(), "the dead agent's rshim lock gone")
            cut = await bed.emulator.status()
            assert 0 < cut["bytes"] < IMAGE_BYTES, cut  # the device saw half a stream ...

            async def refused() -> bool:
                return (await bed.emulator.status())["state"] == "error"

            await bed.until(refused, "the DPU refusing the truncated stream")
            waiting = await bed.wait_condition(name, "OSInstalled", "HostAgentNotConnected")
            assert waiting["status"] == "False"
            dpu = await bed.dpu(name)
            assert dpu is not None
            assert phase_of(dpu) == ph.OS_INSTALLING  # ... and nobody calls it installed
            assert (await bed.emulator.status())["boots"] == boots

            await bed.emulator.faults(rate=None)
            bed.start_agent()
            dpu = await bed.wait_phase(name, ph.CLUSTER_CONFIG)
            assert record(dpu)["install"] == install  # the same install attempt, flashed again from the start
            status = await bed.emulator.status()
            assert status["boots"] == boots + 2  # the install's boot, and the host reboot's
            assert status["version"] == "doca-2.9"
            records = json.loads((tmp_path / "state" / "provisioning.json").read_text())
            assert list(records["installs"]) == [install]

    run(scenario(), timeout=240)


def test_a_bfb_that_is_not_ready_holds_the_dpu_in_pending_until_it_is(kube: ControlPlane, namespace: str,
                                                                       tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisioningBed(kube, namespace, tmp_path, bfb_ready=False) as bed:
            await bed.bfb_ready("bf-bundle", "Downloading")
            name = await bed.create_dpu()
            waiting = await bed.wait_condition(name, "BFBReady", "BFBNotReady")
            assert waiting["status"] == "False"
            assert waiting["message"] == f"BFB {namespace}/bf-bundle is Downloading, waiting for Ready"
            ready = condition(await bed.dpu(name) or {}, "Ready")
            assert ready is not None
            assert ready["message"].startswith("Pending: BFB"), ready
            await bed.holds(_still(bed, name, ph.PENDING), "waiting in Pending", 2.0)
            assert not bed.emulator.rshim_held()  # the host agent was not asked for anything yet

            await bed.bfb_ready("bf-bundle")
            await bed.wait_phase(name, ph.CLUSTER_CONFIG)

    run(scenario(), timeout=180)


def test_a_full_dpu_cluster_makes_the_next_dpu_wait_until_a_place_frees(kube: ControlPlane, namespace: str,
                                                                         tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisioningBed(kube, namespace, tmp_path, dpus=2, max_nodes=1) as bed:
            first = await bed.create_dpu(pci="0000-08-00")
            await bed.until(lambda: _cluster_of(bed, first), "the first DPU assigned to the DPU cluster")
            second = await bed.create_dpu(pci="0000-09-00")
            waiting = await bed.wait_condition(second, "Initialized", "DPUClusterNotReady")
            assert waiting["status"] == "False"
            assert f"{namespace}/dpu is full (1/1 DPUs)" in waiting["message"], waiting
            await bed.holds(_still(bed, second, ph.INITIALIZING), "the second DPU waiting for room", 2.0)
            dpu = await bed.dpu(second)
            assert not ((dpu or {}).get("spec") or {}).get("cluster", {}).get("name")

            await bed.delete_dpu(first)
            await bed.wait_gone(first)
            assert await _cluster_of(bed, second) or await bed.until(lambda: _cluster_of(bed, second),
                                                                      "the second DPU assigned once room was made")
            await bed.wait_phase(second, ph.CLUSTER_CONFIG)

    run(scenario(), timeout=180)


async def _cluster_of(bed: ProvisioningBed, name: str) -> str:
    dpu = await bed.dpu(name)
    return (((dpu or {}).get("spec") or {}).get("cluster") or {}).get("name", "")
