"""Two controller replicas (real leader election on the apiserver's Lease), the real host agent that knows both,
the emulated host. The leader crashes (its Lease left held) mid-flash: the other replica takes over, the agent
follows it, and the flash in progress simply goes on: one stream, one install id, nothing flashed twice. It
crashes again after the install (a fresh replica takes over): the completed install is not flashed again and
the DPU resumes where it was (waiting for a manual reboot).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dpf.controller.provisioning import dpu_phases as ph
from dpf.lab.bed.kube import ControlPlane
from tests.controlplane.harness import eventually, run
from tests.provisioning.bed import ProvisioningBed, condition, phase_of, record

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for the emulated host's netns")


def test_a_leader_crash_mid_flash_and_after_the_install_never_flashes_twice(
        kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisioningBed(kube, namespace, tmp_path, replicas=2) as bed:
            await bed.emulator.faults(rate=1_000_000)  # 8 MiB take 8 s
            name = await bed.create_dpu(automaticNodeReboot=False)

            async def flashing() -> bool:
                c = condition(await bed.dpu(name) or {}, "OSInstalled")
                return c is not None and c["message"].startswith("flashing ") and " at " in c["message"]

            await bed.until(flashing, "the flash under way", dpu=name)
            install = record(await bed.dpu(name) or {})["install"]
            first = bed.leader()
            assert first is not None
            await bed.crash(first)
            await eventually(lambda: bed.leader() is not None, "the other replica leading", timeout=30)
            second = bed.leader()
            assert second is not None
            assert second is not first

            await bed.emulator.faults(rate=None)
            dpu = await bed.wait_condition(name, "Rebooted", "WaitingForManualPowerCycleOrReboot")
            dpu = await bed.dpu(name) or {}
            assert record(dpu)["install"] == install
            assert record(dpu)["installs"] == 1
            status = await bed.emulator.status()
            assert status["streams"] == 1, status  # the flash went on through the failover: one stream
            assert status["version"] == "doca-2.9"

            # A new replica beside the leader, on the socket the first crash freed (whichever replica won the first
            # election) ...
            await bed.start_replica(bed.free_socket())
            await bed.crash(second)  # ... which crashes after the install
            await eventually(lambda: bed.leader() is not None, "the new replica leading", timeout=30)

            async def still_waiting() -> bool:
                dpu = await bed.dpu(name)
                return dpu is not None and phase_of(dpu) == ph.REBOOTING
            await bed.holds(still_waiting, "resumed in Rebooting", 3.0)
            await bed.emulator.power("cycle")
            try:
                dpu = await bed.wait_phase(name, ph.CLUSTER_CONFIG)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nhost agent:\n{bed.agent_log()}") from None
            assert record(dpu)["installs"] == 1
            assert (await bed.emulator.status())["streams"] == 1  # the completed install was not flashed again

    run(scenario(), timeout=240)
