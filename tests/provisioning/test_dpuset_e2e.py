"""DPUSets end to end: the DPUSet and DPU reconcilers against the real apiserver, the real host agent on an
emulated host with two BlueFields (0000:08:00 and 0000:09:00), whose report labels the host Node
(`feature.node.kubernetes.io/dpu-<i>-pci-address`), from which the DPUSet makes its DPUs.

- `dpuSelector` picks DPUs of a host by index: only the selected BlueField is flashed; selecting the other
  too provisions both, each through its own rshim.
- A BFB change rolls out: RollingUpdate replaces the DPUs with at most maxUnavailable not Ready at any time;
  Recreate replaces them all at once. Each replacement is really flashed with the new image.

The DPUs' Nodes in the DPU cluster are registered by the test (`join`), as their kubelets would.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from dpf.controller.kube.rest import Obj
from dpf.controller.provisioning import dpu_phases as ph
from dpf.controller.reconcilers.kinds import DPU, DPU_SET
from dpf.lab.bed.kube import ControlPlane
from tests.controlplane.harness import run
from tests.hostagent.harness import image
from tests.provisioning.bed import BFB_NAME, ProvisioningBed, phase_of, record

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for the emulated host's netns")

NFD = "feature.node.kubernetes.io/"


def _dpuset(bed: ProvisioningBed, name: str, bfb: str = BFB_NAME, selector: dict[str, str] | None = None,
            strategy: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeSelector": {"matchLabels": {"dpf.test/fleet": bed.namespace}},
                            "dpuTemplate": {"spec": {"bfb": {"name": bfb}, "nodeEffect": {"noEffect": True}}},
                            "strategy": strategy or {"type": "RollingUpdate"}}
    if selector:
        spec["dpuSelector"] = selector
    return {"apiVersion": DPU_SET.api_version, "kind": "DPUSet",
            "metadata": {"name": name, "namespace": bed.namespace}, "spec": spec}


async def _dpus(bed: ProvisioningBed) -> list[Obj]:
    return (await bed.rest.list(DPU, bed.namespace))["items"]


class Kubelets:
    """Stands in for the DPUs' kubelets: registers a Ready Node for every DPU that reached DPU Cluster Config."""

    def __init__(self, bed: ProvisioningBed) -> None:
        self.bed = bed
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            for dpu in await _dpus(self.bed):
                if phase_of(dpu) == ph.CLUSTER_CONFIG:
                    await self.bed.join(dpu["metadata"]["name"])
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def test_dpu_selector_picks_dpus_of_one_host_and_each_is_flashed_through_its_own_rshim(
        kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisioningBed(kube, namespace, tmp_path, dpus=2, dpuset=True,
                                   host_labels={"dpf.test/fleet": namespace}) as bed:
            second = bed.dpu_name("0000-09-00")
            first = bed.dpu_name("0000-08-00")
            await bed.rest.create(DPU_SET, _dpuset(bed, "second", selector={
                NFD + "dpu-1-pci-address": "0000-09-00"}), namespace)
            await bed.wait_phase(second, ph.CLUSTER_CONFIG)
            assert [d["metadata"]["name"] for d in await _dpus(bed)] == [second]
            assert (await bed.emulator.status(1))["version"] == "doca-2.9"
            assert (await bed.emulator.status(0))["version"] == "factory"  # not selected: never flashed

            # The other DPU instead: it is made and provisioned, the first selected one goes.
            await bed.rest.merge_patch(DPU_SET, "second", {"spec": {"dpuSelector": {
                NFD + "dpu-0-pci-address": "0000-08-00", NFD + "dpu-1-pci-address": None}}}, namespace)
            await bed.wait_phase(first, ph.CLUSTER_CONFIG)
            assert (await bed.emulator.status(0))["version"] == "doca-2.9"
            kubelets = Kubelets(bed)
            try:
                await bed.wait_phase(first, ph.READY)
                await bed.wait_gone(second)  # no longer selected
            finally:
                await kubelets.stop()
            assert [d["metadata"]["name"] for d in await _dpus(bed)] == [first]

    run(scenario(), timeout=240)


def test_two_dpus_of_one_host_provisioned_at_once(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    """A dpuSelector naming both DPUs of a host: both are provisioned at the same time, and each ends up
    running the image it was given (one DPU's host reboot must not pass off the other's interrupted install
    as done)."""
    async def scenario() -> None:
        async with ProvisioningBed(kube, namespace, tmp_path, dpus=2, dpuset=True,
                                   host_labels={"dpf.test/fleet": namespace}) as bed:
            for index in (0, 1):
                await bed.emulator.faults(index, timings={"install": 1.0 + index})
            await bed.rest.create(DPU_SET, _dpuset(bed, "both", selector={
                NFD + "dpu-0-pci-address": "0000-08-00", NFD + "dpu-1-pci-address": "0000-09-00"}), namespace)
            kubelets = Kubelets(bed)
            try:
                for pci in ("0000-08-00", "0000-09-00"):
                    await bed.wait_phase(bed.dpu_name(pci), ph.READY, timeout=150)
            finally:
                await kubelets.stop()
            for index, pci in enumerate(("0000-08-00", "0000-09-00")):
                status = await bed.emulator.status(index)
                assert status["version"] == "doca-2.9", (index, status)
                # Flashed once each: the host was not rebooted under the slower one's install.
                assert record(await bed.dpu(bed.dpu_name(pci)) or {})["installs"] == 1

    run(scenario(), timeout=300)


async def _rollout(bed: ProvisioningBed, strategy: dict[str, Any],
                   after_change: Callable[[list[str]], Awaitable[None]] | None = None) -> list[int]:
    """Two DPUs Ready on BFB 1; the set's BFB changed to 2 (then `after_change`, e.g. the user's deletes); waits
    until both are Ready on 2. Returns the number of DPUs that were not Ready at each look during the rollout."""
    image(bed.bfb_dir, "os-2.bfb", seed=2, version="doca-3.0")
    await bed.create_bfb("bf-bundle-2", "os-2.bfb", url="https://example.com/doca-3.0.bfb")
    await bed.rest.create(DPU_SET, _dpuset(bed, "fleet", strategy=strategy, selector={
        NFD + "dpu-0-pci-address": "0000-08-00", NFD + "dpu-1-pci-address": "0000-09-00"}), bed.namespace)
    names = [bed.dpu_name("0000-08-00"), bed.dpu_name("0000-09-00")]
    kubelets = Kubelets(bed)
    unavailable: list[int] = []
    try:
        for name in names:
            await bed.wait_phase(name, ph.READY, timeout=150)
        await bed.rest.merge_patch(DPU_SET, "fleet", {"spec": {"dpuTemplate": {"spec": {"bfb": {
            "name": "bf-bundle-2"}}}}}, bed.namespace)
        if after_change is not None:
            await after_change(names)

        async def rolled() -> bool:
            dpus = {d["metadata"]["name"]: d for d in await _dpus(bed)}
            unavailable.append(sum(1 for n in names if n not in dpus or phase_of(dpus[n]) != ph.READY))
            return all(n in dpus and phase_of(dpus[n]) == ph.READY and dpus[n]["spec"]["bfb"] == "bf-bundle-2"
                       for n in names)

        try:
            await bed.until(rolled, "both DPUs Ready on the new BFB", timeout=200)
        except AssertionError as exc:
            states = [f"{n}: {await bed.describe(n)}" for n in names]
            raise AssertionError(f"{exc}; {states}; looks: {unavailable[-20:]}") from None
    finally:
        await kubelets.stop()
    for index in (0, 1):
        assert (await bed.emulator.status(index))["version"] == "doca-3.0"  # really flashed with the new image
    return unavailable


def test_a_rolling_update_replaces_one_dpu_at_a_time(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisioningBed(kube, namespace, tmp_path, dpus=2, dpuset=True,
                                   host_labels={"dpf.test/fleet": namespace}) as bed:
            unavailable = await _rollout(bed, {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}})
            assert max(unavailable) == 1, unavailable  # never both at once ...
            assert unavailable.count(1) > 1, unavailable  # ... but each in turn

    run(scenario(), timeout=360)


def test_recreate_leaves_dpus_alone_until_the_user_deletes_them(kube: ControlPlane, namespace: str,
                                                                 tmp_path: Path) -> None:
    """Upstream's Recreate: a template change does nothing by itself; the DPUs the user deletes come back with
    the new template, and are flashed with the new image."""
    async def scenario() -> None:
        async with ProvisioningBed(kube, namespace, tmp_path, dpus=2, dpuset=True,
                                   host_labels={"dpf.test/fleet": namespace}) as bed:
            async def untouched_then_deleted(names: list[str]) -> None:
                async def on_the_old_bfb() -> bool:
                    dpus = {d["metadata"]["name"]: d for d in await _dpus(bed)}
                    return all(n in dpus and phase_of(dpus[n]) == ph.READY and dpus[n]["spec"]["bfb"] == BFB_NAME
                               for n in names)

                await bed.holds(on_the_old_bfb, "both DPUs Ready on the old BFB", 3.0)
                for name in names:
                    await bed.delete_dpu(name)

            unavailable = await _rollout(bed, {"type": "Recreate"}, untouched_then_deleted)
            assert max(unavailable) == 2, unavailable  # both replaced at once

    run(scenario(), timeout=360)
