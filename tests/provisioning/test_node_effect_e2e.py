"""Every node effect on the host Node, end to end (the DPU reconciler against the real apiserver, the real host
agent against the emulated host): put in place before the DPU is flashed, kept while it provisions, and undone
when the DPU reaches Ready, when it fails for good (Error), and when it is deleted mid-way. Custom labels stay
(as upstream); the drain cordons, evicts through the Eviction API and respects PodDisruptionBudgets.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from dpf.controller.kube.rest import Kind
from dpf.controller.provisioning import dpu_phases as ph
from dpf.controller.provisioning.node_effect import ANNOTATION
from dpf.controller.reconcilers.kinds import POD
from dpf.lab.bed.kube import ControlPlane
from tests.controlplane.harness import run
from tests.provisioning.bed import ProvisioningBed, condition, phase_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for the emulated host's netns")

PDB = Kind("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget")
SERVICE_ACCOUNT = Kind("", "v1", "serviceaccounts", "ServiceAccount")
TAINT = {"key": "dpu", "value": "provisioning", "effect": "NoSchedule"}
LABELS = {"example.com/dpu-provisioning": "yes"}
EFFECTS = {
    "taint": {"taint": TAINT},
    "customLabel": {"customLabel": LABELS},
    "noEffect": {"noEffect": True},
}


def _placed(mode: str, node: dict) -> bool:
    """The effect of `mode` is on the host Node."""
    meta, spec = node["metadata"], node.get("spec") or {}
    if mode == "taint":
        return any(t.get("key") == "dpu" and t.get("effect") == "NoSchedule" for t in spec.get("taints") or ())
    if mode == "customLabel":
        return all((meta.get("labels") or {}).get(k) == v for k, v in LABELS.items())
    return True


def _undone(mode: str, node: dict) -> bool:
    meta, spec = node["metadata"], node.get("spec") or {}
    if ANNOTATION in (meta.get("annotations") or {}) or spec.get("unschedulable"):
        return False
    if any(t.get("key") == "dpu" for t in spec.get("taints") or ()):
        return False
    if mode == "customLabel":  # custom labels stay, as upstream
        return all((meta.get("labels") or {}).get(k) == v for k, v in LABELS.items())
    return True


def _untouched(node: dict) -> bool:
    meta, spec = node["metadata"], node.get("spec") or {}
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    return (not any(t.get("key") == "dpu" for t in spec.get("taints") or ()) and not spec.get("unschedulable")
            and ANNOTATION not in annotations and not any(k in labels for k in LABELS))


@pytest.mark.parametrize("mode", list(EFFECTS))
def test_the_node_effect_is_in_place_while_provisioning_and_undone_at_ready_error_and_delete(
        kube: ControlPlane, namespace: str, tmp_path: Path, mode: str) -> None:
    async def scenario() -> None:
        async with ProvisioningBed(kube, namespace, tmp_path) as bed:
            check = _placed if mode != "noEffect" else (lambda _m, node: _untouched(node))

            async def placed() -> bool:
                return check(mode, await bed.host_node())

            async def undone() -> bool:
                node = await bed.host_node()
                return _untouched(node) if mode == "noEffect" else _undone(mode, node)

            # 1. Ready: held in Rebooting (a manual reboot) to look at the host, then let go.
            name = await bed.create_dpu(nodeEffect=EFFECTS[mode], automaticNodeReboot=False)
            await bed.wait_condition(name, "Rebooted", "WaitingForManualPowerCycleOrReboot")
            effect = condition(await bed.dpu(name) or {}, "NodeEffectReady")
            assert effect is not None
            assert effect["status"] == "True"
            assert await placed(), await bed.host_node()
            await bed.emulator.power("cycle")
            await bed.wait_phase(name, ph.CLUSTER_CONFIG)
            assert await placed(), "the node effect stays until Ready"
            await bed.join(name)
            await bed.wait_phase(name, ph.READY)
            await bed.until(undone, f"the {mode} node effect undone at Ready")
            await bed.delete_dpu(name)
            await bed.wait_gone(name)

            # 2. Error: a corrupt image, twice; the effect is in place while it flashes, undone once it failed.
            await bed.emulator.faults(corrupt=True, rate=2_000_000)
            name = await bed.create_dpu(nodeEffect=EFFECTS[mode])
            await bed.wait_phase(name, ph.OS_INSTALLING)
            assert await placed(), await bed.host_node()
            await bed.wait_phase(name, ph.ERROR, timeout=120)
            await bed.until(undone, f"the {mode} node effect undone at Error")
            await bed.delete_dpu(name)
            await bed.wait_gone(name)
            await bed.emulator.faults(corrupt=False, rate=None)

            # 3. Deleted mid-way (in Rebooting): undone, then the DPU is gone.
            name = await bed.create_dpu(nodeEffect=EFFECTS[mode], automaticNodeReboot=False)
            await bed.wait_phase(name, ph.REBOOTING)
            assert await placed(), await bed.host_node()
            await bed.delete_dpu(name)
            await bed.wait_gone(name)
            assert await undone(), await bed.host_node()

    run(scenario(), timeout=300)


def _pod(namespace: str, name: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}


def test_drain_cordons_respects_the_pod_disruption_budget_and_uncordons(kube: ControlPlane, namespace: str,
                                                                        tmp_path: Path) -> None:
    """Two pods on the host, a PodDisruptionBudget that allows no disruption: the DPU waits in Node Effect with
    the host cordoned and a condition naming the budget, and evicts nothing. Deleted there, it uncordons the
    host. A second DPU, after the budget is removed, evicts both pods (this apiserver has no kubelet: the test
    finishes the pods' termination as the kubelet would), goes on, and at Ready the host is schedulable again."""
    async def scenario() -> None:
        async with ProvisioningBed(kube, namespace, tmp_path) as bed:
            rest = bed.rest
            await rest.create(SERVICE_ACCOUNT, {"apiVersion": "v1", "kind": "ServiceAccount",
                                                "metadata": {"name": "default", "namespace": namespace}}, namespace)
            for pod in ("web-1", "web-2"):
                await rest.create(POD, _pod(namespace, pod, bed.host), namespace)
                await rest.merge_patch(POD, pod, {"status": {"phase": "Running", "conditions": [
                    {"type": "Ready", "status": "True"}]}}, namespace, subresource="status")
            await rest.create(PDB, {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                                    "metadata": {"name": "web", "namespace": namespace},
                                    "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}},
                              namespace)
            drain = {"drain": {"automaticNodeReboot": True}}

            name = await bed.create_dpu(nodeEffect=drain)
            await bed.wait_condition(name, "NodeEffectReady", "NodeEffectInProgress")

            async def names_the_budget() -> dict | None:
                c = condition(await bed.dpu(name) or {}, "NodeEffectReady")
                return c if c and f"blocked by PodDisruptionBudget {namespace}/web" in c["message"] else None

            blocked = await bed.until(names_the_budget, "NodeEffectReady naming the PodDisruptionBudget", dpu=name)
            assert f"{namespace}/web-1" in blocked["message"], blocked
            assert (await bed.host_node())["spec"].get("unschedulable") is True

            async def pods_untouched_in_node_effect() -> bool:
                dpu = await bed.dpu(name)
                pods = (await rest.list(POD, namespace))["items"]
                return (dpu is not None and phase_of(dpu) == ph.NODE_EFFECT and len(pods) == 2
                        and not any(p["metadata"].get("deletionTimestamp") for p in pods))

            await bed.holds(pods_untouched_in_node_effect, "waiting in Node Effect with both pods untouched", 3.0)
            await bed.delete_dpu(name)  # deleted while draining
            await bed.wait_gone(name)
            node = await bed.host_node()
            assert not node["spec"].get("unschedulable"), node
            assert ANNOTATION not in (node["metadata"].get("annotations") or {})

            name = await bed.create_dpu(nodeEffect=drain)
            await bed.until(names_the_budget, "the second DPU blocked by the budget too", dpu=name)
            await rest.delete(PDB, "web", namespace)  # the owner of the pods allows the disruption

            async def kubelet() -> bool:
                """Finish terminating pods (grace 0), as the absent kubelet would; done when none are left."""
                pods = (await rest.list(POD, namespace))["items"]
                for pod in pods:
                    if pod["metadata"].get("deletionTimestamp"):
                        await asyncio.to_thread(kube.kubectl, "delete", "pod", pod["metadata"]["name"], "-n",
                                                namespace, "--grace-period=0", "--force", "--ignore-not-found")
                return not pods

            await bed.until(kubelet, "both pods evicted")
            await bed.wait_phase(name, ph.CLUSTER_CONFIG)
            assert (await bed.host_node())["spec"].get("unschedulable") is True  # cordoned until Ready
            drained = condition(await bed.dpu(name) or {}, "NodeEffectReady")
            assert drained is not None
            assert drained["status"] == "True"
            await bed.join(name)
            await bed.wait_phase(name, ph.READY)

            async def uncordoned() -> bool:
                node = await bed.host_node()
                return not node["spec"].get("unschedulable") and ANNOTATION not in (
                    node["metadata"].get("annotations") or {})

            await bed.until(uncordoned, "the host uncordoned at Ready")

    run(scenario(), timeout=300)
