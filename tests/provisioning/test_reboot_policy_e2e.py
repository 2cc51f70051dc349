"""Every reboot policy, end to end: the DPU reconciler against the real apiserver, the real host agent against
the emulated host, and what the host's power interface was asked to do (the emulator's power.log).

Upstream's policy: after the install the host is warm-rebooted (`reboot-command`, default reset) unless the DPU
carries `provisioning.dpu.nvidia.com/host-power-cycle-required: "true"`, then power-cycled (`powercycle-command`,
default cycle); either command may be `skip` (nothing is run, firmware changes apply at the next boot). With
`automaticNodeReboot: false` nothing is run either: the DPU waits in Rebooting with Rebooted=False
WaitingForManualPowerCycleOrReboot until the host agent sees the host booted again.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dpf.controller.provisioning import dpu_phases as ph
from dpf.lab.bed.kube import ControlPlane
from tests.controlplane.harness import eventually, run
from tests.provisioning.bed import ProvisioningBed, condition, phase_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for the emulated host's netns")

CYCLE_REQUIRED = {ph.POWER_CYCLE_ANNOTATION: "true"}


async def _rebooted(bed: ProvisioningBed, name: str) -> dict:
    """The DPU once its Rebooted condition is True (it went on to Host Network Configuration)."""
    async def done() -> dict | None:
        dpu = await bed.dpu(name)
        c = condition(dpu, "Rebooted") if dpu else None
        return dpu if c is not None and c["status"] == "True" else None

    try:
        return await bed.until(done, f"DPU {name} past Rebooting")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {await bed.describe(name)}") from None


@pytest.mark.parametrize(("host_annotations", "dpu_annotations", "expected"), [
    pytest.param({}, {}, ["reset"], id="default-warm-reboot-is-reset"),
    pytest.param({ph.REBOOT_COMMAND_ANNOTATION: "cycle"}, {}, ["cycle"], id="reboot-command-cycle"),
    pytest.param({ph.REBOOT_COMMAND_ANNOTATION: "skip"}, {}, [], id="reboot-command-skip"),
    pytest.param({}, CYCLE_REQUIRED, ["cycle"], id="power-cycle-required-default-cycle"),
    pytest.param({ph.POWERCYCLE_COMMAND_ANNOTATION: "reset", ph.REBOOT_COMMAND_ANNOTATION: "skip"}, CYCLE_REQUIRED,
                 ["reset"], id="power-cycle-required-powercycle-command-reset"),
    pytest.param({ph.POWERCYCLE_COMMAND_ANNOTATION: "skip", ph.REBOOT_COMMAND_ANNOTATION: "cycle"}, CYCLE_REQUIRED,
                 [], id="power-cycle-required-powercycle-command-skip"),
])
def test_the_reboot_policy_decides_what_the_power_interface_is_asked(
        kube: ControlPlane, namespace: str, tmp_path: Path, host_annotations: dict[str, str],
        dpu_annotations: dict[str, str], expected: list[str]) -> None:
    async def scenario() -> None:
        async with ProvisioningBed(kube, namespace, tmp_path, host_annotations=host_annotations) as bed:
            boot_id = bed.emulator.root.joinpath("proc/sys/kernel/random/boot_id").read_text()
            name = await bed.create_dpu(annotations=dpu_annotations)
            dpu = await _rebooted(bed, name)
            assert bed.emulator.power_actions() == expected
            rebooted = condition(dpu, "Rebooted")
            assert rebooted is not None
            if not expected:
                assert bed.emulator.root.joinpath("proc/sys/kernel/random/boot_id").read_text() == boot_id
                async def skip_said() -> str | None:  # Events are written after the status: wait for it
                    notes = " ".join(e.get("note", "") for e in await bed.events(name))
                    return notes if "command is skip" in notes else None

                await eventually(skip_said, "a PhaseChanged Event saying the reboot command is skip")
            # It goes on: the host network, then the DPU's Node.
            await bed.wait_phase(name, ph.CLUSTER_CONFIG)
            await bed.join(name)
            await bed.wait_phase(name, ph.READY)
            assert bed.emulator.power_actions() == expected  # nothing more was asked of the power interface

    run(scenario(), timeout=240)


def test_manual_reboot_waits_until_the_host_booted_again(kube: ControlPlane, namespace: str,
                                                         tmp_path: Path) -> None:
    """automaticNodeReboot false: Rebooted=False WaitingForManualPowerCycleOrReboot, the power interface is not
    touched, and the DPU stays there (however often the controller looks) until someone power-cycles the host;
    then the host agent reports the new boot and provisioning goes on. The reconciler's own reboot (a DPU
    annotation asking for a power cycle) changes nothing in manual mode."""
    async def scenario() -> None:
        async with ProvisioningBed(kube, namespace, tmp_path) as bed:
            name = await bed.create_dpu(annotations=CYCLE_REQUIRED, automaticNodeReboot=False)
            waiting = await bed.wait_condition(name, "Rebooted", "WaitingForManualPowerCycleOrReboot")
            assert waiting["status"] == "False"
            assert "power cycle host" in waiting["message"], waiting
            status = await bed.emulator.status()
            assert status["state"] == "ready"  # installed, and booted its image
            assert status["version"] == "doca-2.9"
            # Still waiting a while later (the agent re-reports every 0.5 s): nothing reboots on its own.
            async def still_waiting() -> bool:
                dpu = await bed.dpu(name)
                return dpu is not None and phase_of(dpu) == ph.REBOOTING and not bed.emulator.power_actions()

            await bed.holds(still_waiting, "the DPU waiting in Rebooting, the power interface untouched", 3.0)

            await bed.emulator.power("cycle")  # the administrator, by hand
            await _rebooted(bed, name)
            assert bed.emulator.power_actions() == ["cycle"]
            await bed.wait_phase(name, ph.CLUSTER_CONFIG)

    run(scenario(), timeout=240)
