"""Deleting a DPU in every phase, end to end (the DPU reconciler against the real apiserver, the real host agent
against the emulated host). Whatever the phase, the DPU goes (its finalizer is removed), its node effect (a
taint here) is undone, the host agent lets its rshim go and undoes the host network, and its Node leaves the
DPU cluster. Mid-flash the stream is cut: the DPU refuses the half image, nothing reports it installed, and the
next DPU on that rshim flashes normally. (Deletion in Node Effect, mid-drain, is in test_node_effect_e2e.py.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dpf.controller.provisioning import dpu_phases as ph
from dpf.controller.reconcilers.kinds import DPU_FLAVOR, NODE
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.emulator.rshim import claim
from tests.controlplane.harness import run
from tests.provisioning.bed import ProvisioningBed, condition, ip

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for the emulated host's netns")

TAINT = {"taint": {"key": "dpu", "value": "provisioning", "effect": "NoSchedule"}}
VF0 = "ens1f0v0"


async def _tainted(bed: ProvisioningBed) -> bool:
    return any(t.get("key") == "dpu" for t in (await bed.host_node())["spec"].get("taints") or ())


async def _delete_and_check(bed: ProvisioningBed, name: str, phase: str) -> None:
    """Delete DPU `name` (in `phase`) and check that everything it held is let go."""
    dpu = await bed.dpu(name)
    assert dpu is not None
    assert (dpu.get("status") or {}).get("phase") == phase, await bed.describe(name)
    assert await _tainted(bed), f"{phase}: the node effect is in place before the delete"
    await bed.delete_dpu(name)
    await bed.wait_gone(name)
    assert not await _tainted(bed), f"{phase}: the taint is undone"
    await bed.until(lambda: not bed.emulator.rshim_held(), f"{phase}: the rshim released")
    await bed.until(lambda: VF0 not in ip(bed.emulator.netns, "link", "show"), f"{phase}: no host network left")


def test_deleted_before_the_host_agent_has_it(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    """Initializing (its host Node does not exist), Pending (its BFB is not Ready), DMS Deployment (another
    process holds the rshim: the agent must not take it, and deleting the DPU must not either)."""
    async def scenario() -> None:
        async with ProvisioningBed(kube, namespace, tmp_path) as bed:
            orphan = await bed.create_dpu("orphan", nodeName="no-such-host", nodeEffect=TAINT)
            await bed.wait_condition(orphan, "Initialized", "HostNodeNotFound")
            await bed.delete_dpu(orphan)
            await bed.wait_gone(orphan)

            await bed.create_bfb("later", "later.bfb", ready=False)
            name = await bed.create_dpu(bfb="later", nodeEffect=TAINT)
            await bed.wait_condition(name, "BFBReady", "BFBNotReady")
            await _delete_and_check(bed, name, ph.PENDING)

            with claim(bed.emulator.root / "dev/rshim0", "rshim"):
                name = await bed.create_dpu(nodeEffect=TAINT)
                held = await bed.wait_condition(name, "DMSRunning", "ExistingRshimInstallDetected")
                assert f"pid {os.getpid()} (rshim)" in held["message"], held
                await bed.delete_dpu(name)
                await bed.wait_gone(name)
                assert not await _tainted(bed)
                holder = (bed.emulator.root / "dev/rshim0/.holder").read_text()
                assert f"pid {os.getpid()}" in holder  # still the other process's
            assert (await bed.emulator.status())["boots"] == 0  # nothing was flashed

    run(scenario(), timeout=240)


def test_deleted_mid_flash_the_stream_is_cut_and_nothing_reports_it_installed(
        kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisioningBed(kube, namespace, tmp_path) as bed:
            await bed.emulator.faults(rate=1_000_000)  # 8 MiB take 8 s

            name = await bed.create_dpu(nodeEffect=TAINT)

            async def flashing() -> bool:
                c = condition(await bed.dpu(name) or {}, "OSInstalled")
                return c is not None and c["message"].startswith("flashing ") and " at " in c["message"]

            await bed.until(flashing, "the flash under way", dpu=name)
            await _delete_and_check(bed, name, ph.OS_INSTALLING)

            async def refused() -> dict | None:
                status = await bed.emulator.status()
                return status if status["state"] == "error" else None

            status = await bed.until(refused, "the device refusing the cut stream")
            assert 0 < status["bytes"] < 8 << 20, status
            assert "truncated" in (status["error"] or "") or "mismatch" in (status["error"] or ""), status
            assert status["boots"] == 0
            assert status["version"] == "factory"
            records = tmp_path / "state" / "provisioning.json"
            assert not records.exists() or not json.loads(records.read_text()).get("installs")
            assert "DONE" not in bed.agent_log()

            # The rshim is free and the device takes the next DPU's image as usual.
            await bed.emulator.faults(rate=None)
            name = await bed.create_dpu(nodeEffect=TAINT)
            await bed.wait_phase(name, ph.CLUSTER_CONFIG)
            status = await bed.emulator.status()
            assert status["version"] == "doca-2.9"

    run(scenario(), timeout=240)


def test_deleted_after_the_install(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    """Rebooting (a manual reboot nobody does), Host Network Configuration (more VFs than the PF has), DPU Cluster
    Config (its Node never joins), Ready (its Node leaves the DPU cluster), Error (a corrupt image)."""
    async def scenario() -> None:
        async with ProvisioningBed(kube, namespace, tmp_path) as bed:
            name = await bed.create_dpu(nodeEffect=TAINT, automaticNodeReboot=False)
            await bed.wait_condition(name, "Rebooted", "WaitingForManualPowerCycleOrReboot")
            await _delete_and_check(bed, name, ph.REBOOTING)

            await bed.rest.create(DPU_FLAVOR, {"apiVersion": DPU_FLAVOR.api_version, "kind": "DPUFlavor",
                                               "metadata": {"name": "too-many-vfs", "namespace": namespace},
                                               "spec": {"nvconfig": [{"device": "*",
                                                                      "parameters": ["NUM_OF_VFS=64"]}]}}, namespace)
            name = await bed.create_dpu(nodeEffect=TAINT, dpuFlavor="too-many-vfs")
            await bed.wait_condition(name, "HostNetworkReady", "HostNetworkConfiguring")
            await _delete_and_check(bed, name, ph.HOST_NETWORK)

            name = await bed.create_dpu(nodeEffect=TAINT)
            await bed.wait_phase(name, ph.CLUSTER_CONFIG)
            assert VF0 in ip(bed.emulator.netns, "link", "show")
            await _delete_and_check(bed, name, ph.CLUSTER_CONFIG)

            name = await bed.create_dpu(nodeEffect={"noEffect": True})
            await bed.wait_phase(name, ph.CLUSTER_CONFIG)
            await bed.join(name)
            await bed.wait_phase(name, ph.READY)
            await bed.delete_dpu(name)
            await bed.wait_gone(name)
            await bed.until(lambda: _node_gone(bed, name), "the DPU's Node removed from the DPU cluster")
            await bed.until(lambda: VF0 not in ip(bed.emulator.netns, "link", "show"), "Ready: host network undone")
            await bed.until(lambda: not bed.emulator.rshim_held(), "Ready: the rshim released")

            await bed.emulator.faults(corrupt=True)
            name = await bed.create_dpu(nodeEffect=TAINT)
            await bed.wait_phase(name, ph.ERROR, timeout=120)
            await bed.delete_dpu(name)
            await bed.wait_gone(name)
            assert not await _tainted(bed)
            assert not bed.emulator.rshim_held()

    run(scenario(), timeout=300)


async def _node_gone(bed: ProvisioningBed, name: str) -> bool:
    return await bed.rest.get(NODE, name) is None
