"""The DPU node effect (controller/provisioning/node_effect.py) on a real apiserver: taint, customLabel, noEffect
and drain (cordon + Eviction API with PodDisruptionBudgets computed by the real disruption controller), undo,
two DPUs sharing a host, an administrator's taint and cordon left alone, the drain's bound.

No kubelet runs in the bed: pods are created bound to the test's Node, and `Kubelet` below does the two things a
kubelet would for them: report them Running and Ready (so budgets count them healthy), and finish the graceful
deletion an eviction starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from dpf.controller.kube.rest import Kind, Obj, Rest
from dpf.controller.provisioning.node_effect import (
    ANNOTATION,
    PDB,
    EffectState,
    apply_node_effect,
    undo_node_effect,
)
from dpf.controller.reconcilers.kinds import NODE, POD
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.process import Child, free_port
from dpf.lab.bed.tools import tool
from tests.controlplane.harness import eventually, host_rest, run

DAEMONSET = Kind("apps", "v1", "daemonsets", "DaemonSet")
SERVICE_ACCOUNT = Kind("", "v1", "serviceaccounts", "ServiceAccount")
TAINT = {"key": "dpu", "value": "provisioning", "effect": "NoSchedule"}


@pytest.fixture(scope="module")
def disruption_controller(kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """kube-controller-manager's disruption controller, which computes PodDisruptionBudget status (the bed's own
    controller manager runs the garbage collector and namespace controllers only)."""
    workdir = tmp_path_factory.mktemp("kcm-disruption")
    child = Child("kube-controller-manager (disruption)", [
        tool("kube-controller-manager"), f"--kubeconfig={kube.kubeconfig}", "--controllers=disruption",
        "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
        f"--cert-dir={workdir / 'certs'}"], workdir / "kcm.log")
    try:
        yield
    finally:
        child.stop()


def dpu(namespace: str, name: str, node_effect: Obj) -> Obj:
    return {"apiVersion": "provisioning.dpu.nvidia.com/v1alpha1", "kind": "DPU",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": "ignored", "bfb": "bf-bundle", "nodeEffect": node_effect}}


@contextlib.asynccontextmanager
async def host(kube: ControlPlane, namespace: str, **spec: Any) -> AsyncIterator[tuple[Rest, str]]:
    """A host Node named after the test's namespace (with `spec`), removed afterwards."""
    rest = await host_rest(kube.kubeconfig)
    name = f"{namespace}-host"
    try:
        await rest.create(NODE, {"apiVersion": "v1", "kind": "Node",
                                 "metadata": {"name": name, "labels": {"role": "host"}}, "spec": spec})
        yield rest, name
    finally:
        await rest.delete(NODE, name)
        await rest.close()


async def node_of(rest: Rest, name: str) -> Obj:
    node = await rest.get(NODE, name)
    assert node is not None
    return node


def taints(node: Obj) -> list[Obj]:
    """The Node's taints but the apiserver's own (it taints every new Node node.kubernetes.io/not-ready)."""
    return [{k: t[k] for k in ("key", "value", "effect") if k in t} for t in (node.get("spec") or {}).get("taints")
            or () if not t["key"].startswith("node.kubernetes.io/")]


def record(node: Obj) -> Obj | None:
    raw = (node["metadata"].get("annotations") or {}).get(ANNOTATION)
    return json.loads(raw) if raw else None


def test_taint_is_added_once_and_removed_on_undo(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        async with host(kube, namespace) as (rest, node):
            a = dpu(namespace, "a", {"taint": TAINT})
            state = await apply_node_effect(rest, node, a)
            assert state == EffectState(True, f"node {node} tainted dpu=provisioning:NoSchedule")
            tainted = await node_of(rest, node)
            assert taints(tainted) == [TAINT]
            assert record(tainted) == {"holders": {f"{namespace}/a": {"taint": "dpu"}}, "added": {"taints": ["dpu"]}}
            # Idempotent: a second apply writes nothing.
            assert (await apply_node_effect(rest, node, a)).done
            assert (await node_of(rest, node))["metadata"]["resourceVersion"] == tainted["metadata"]["resourceVersion"]

            state = await undo_node_effect(rest, node, a)
            assert state == EffectState(True, f"removed taint dpu from node {node}")
            clean = await node_of(rest, node)
            assert taints(clean) == []
            assert record(clean) is None
            assert (await undo_node_effect(rest, node, a)) == EffectState(True, f"no node effect left on node {node}")

    run(scenario())


def test_two_dpus_on_one_host_share_the_taint_and_the_cordon(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        async with host(kube, namespace) as (rest, node):
            a, b = dpu(namespace, "a", {"taint": TAINT}), dpu(namespace, "b", {"taint": TAINT})
            assert (await apply_node_effect(rest, node, a)).done
            assert (await apply_node_effect(rest, node, b)).done
            assert taints(await node_of(rest, node)) == [TAINT]
            state = await undo_node_effect(rest, node, a)
            assert state == EffectState(True, f"taint dpu kept for {namespace}/b")
            assert taints(await node_of(rest, node)) == [TAINT]
            assert (await undo_node_effect(rest, node, b)).message == f"removed taint dpu from node {node}"
            assert taints(await node_of(rest, node)) == []

            # The same with drains (no pods on the node): the cordon stays until the last drain is undone.
            a, b = dpu(namespace, "a", {"drain": {}}), dpu(namespace, "b", {"drain": {}})
            assert (await apply_node_effect(rest, node, a)) == EffectState(True, f"node {node} drained (cordoned)")
            assert (await apply_node_effect(rest, node, b)).done
            assert (await node_of(rest, node))["spec"]["unschedulable"] is True
            assert (await undo_node_effect(rest, node, b)).message == f"cordon kept for {namespace}/a"
            assert (await node_of(rest, node))["spec"]["unschedulable"] is True
            assert (await undo_node_effect(rest, node, a)).message == f"removed cordon from node {node}"
            uncordoned = await node_of(rest, node)
            assert not uncordoned["spec"].get("unschedulable")
            assert record(uncordoned) is None

    run(scenario())


def test_concurrent_dpus_lose_no_update(kube: ControlPlane, namespace: str) -> None:
    """Six DPUs of one host apply and undo at once: every guarded write that loses a race re-reads, so no
    holder or taint is lost and nothing is left behind."""
    async def scenario() -> None:
        async with host(kube, namespace) as (rest, node):
            many = [dpu(namespace, f"d{i}", {"taint": {"key": f"dpu-{i}", "effect": "NoSchedule"}}) for i in range(6)]
            await _until_all_done(lambda d: apply_node_effect(rest, node, d), many)
            after = await node_of(rest, node)
            assert sorted(t["key"] for t in taints(after)) == [f"dpu-{i}" for i in range(6)]
            assert sorted(record(after)["holders"]) == [f"{namespace}/d{i}" for i in range(6)]
            await _until_all_done(lambda d: undo_node_effect(rest, node, d), many)
            clean = await node_of(rest, node)
            assert taints(clean) == []
            assert record(clean) is None

    run(scenario())


async def _until_all_done(step: Callable[[Obj], Awaitable[EffectState]], dpus: list[Obj]) -> None:
    """Run `step` for all DPUs at once, again for those not done (a caller's requeue), at most 5 rounds."""
    pending = dpus
    for _ in range(5):
        states = await asyncio.gather(*(step(d) for d in pending))
        assert not any(s.failed for s in states), states
        pending = [d for d, s in zip(pending, states, strict=True) if not s.done]
        if not pending:
            return
    raise AssertionError(f"still not done: {[d['metadata']['name'] for d in pending]}")


def test_an_administrators_taint_and_cordon_stay(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        admin_taint = {"key": "dpu", "value": "maintenance", "effect": "NoExecute"}
        async with host(kube, namespace, taints=[admin_taint], unschedulable=True) as (rest, node):
            tainting, draining = dpu(namespace, "a", {"taint": TAINT}), dpu(namespace, "b", {"drain": {}})
            assert (await apply_node_effect(rest, node, tainting)).done
            assert (await apply_node_effect(rest, node, draining)).done
            assert taints(await node_of(rest, node)) == [admin_taint]  # the key is present: nothing appended
            assert (await undo_node_effect(rest, node, tainting)).done
            assert (await undo_node_effect(rest, node, draining)).done
            after = await node_of(rest, node)
            assert taints(after) == [admin_taint]
            assert after["spec"]["unschedulable"] is True
            assert record(after) is None

    run(scenario())


def test_a_changed_mode_releases_what_the_dpu_held(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        async with host(kube, namespace) as (rest, node):
            assert (await apply_node_effect(rest, node, dpu(namespace, "a", {"taint": TAINT}))).done
            other = {"key": "dpu-other", "effect": "NoSchedule"}
            assert (await apply_node_effect(rest, node, dpu(namespace, "a", {"taint": other}))).done
            assert taints(await node_of(rest, node)) == [other]
            assert (await apply_node_effect(rest, node, dpu(namespace, "a", {"noEffect": True}))).done
            clean = await node_of(rest, node)
            assert taints(clean) == []
            assert record(clean) is None

    run(scenario())


def test_custom_labels_merge_and_stay_and_no_effect_touches_nothing(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        async with host(kube, namespace) as (rest, node):
            labelling = dpu(namespace, "a", {"customLabel": {"dpu/provisioning": "true", "team": "net"}})
            state = await apply_node_effect(rest, node, labelling)
            assert state == EffectState(True, f"labels dpu/provisioning=true, team=net set on node {node}")
            assert (await node_of(rest, node))["metadata"]["labels"] == {
                "role": "host", "dpu/provisioning": "true", "team": "net"}
            state = await undo_node_effect(rest, node, labelling)
            assert state == EffectState(True, f"custom labels stay on node {node}")
            labelled = await node_of(rest, node)
            assert labelled["metadata"]["labels"]["team"] == "net"

            assert (await apply_node_effect(rest, node, dpu(namespace, "b", {"noEffect": True}))) == EffectState(
                True, f"no node effect on node {node}")
            assert (await undo_node_effect(rest, node, dpu(namespace, "b", {"noEffect": True}))).done
            assert (await node_of(rest, node))["metadata"]["resourceVersion"] == labelled["metadata"]["resourceVersion"]

    run(scenario())


# ---- drain -----------------------------------------------------------------------------------------------


class Kubelet:
    """The two kubelet duties the drain depends on, for pods bound to one Node: report them Running and Ready,
    and remove a pod once its graceful deletion started (its containers "stopped")."""

    def __init__(self, kube: ControlPlane, rest: Rest, node: str) -> None:
        self.core = k8s.CoreV1Api(kube.client)
        self.rest = rest
        self.node = node
        self.finished: list[str] = []

    async def start(self, namespace: str) -> Kubelet:
        """Pod admission wants the namespace's `default` ServiceAccount (no serviceaccount controller here)."""
        await self.rest.create(SERVICE_ACCOUNT, {"apiVersion": "v1", "kind": "ServiceAccount",
                                                 "metadata": {"name": "default", "namespace": namespace}}, namespace)
        return self

    async def run_pod(self, namespace: str, name: str, labels: dict[str, str] | None = None,
                      owner: Obj | None = None, annotations: dict[str, str] | None = None,
                      empty_dir: bool = False) -> None:
        meta: Obj = {"name": name, "namespace": namespace, "labels": labels or {}, "annotations": annotations or {}}
        if owner is not None:
            meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner["kind"], "controller": True,
                                        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}]
        spec: Obj = {"nodeName": self.node, "automountServiceAccountToken": False,
                     "containers": [{"name": "c", "image": "busybox"}]}
        if empty_dir:
            spec["volumes"] = [{"name": "scratch", "emptyDir": {}}]
            spec["containers"][0]["volumeMounts"] = [{"name": "scratch", "mountPath": "/scratch"}]
        await self.rest.create(POD, {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}, namespace)
        await self.rest.merge_patch(POD, name, {"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"}]}}, namespace, subresource="status")

    async def finish_terminating(self) -> None:
        for pod in (await self.rest.list(POD, field_selector=f"spec.nodeName={self.node}"))["items"]:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                await asyncio.to_thread(self.core.delete_namespaced_pod, meta["name"], meta["namespace"],
                                        grace_period_seconds=0)
                self.finished.append(meta["name"])

    async def pods(self) -> list[str]:
        return sorted(p["metadata"]["name"] for p in
                      (await self.rest.list(POD, field_selector=f"spec.nodeName={self.node}"))["items"])


async def guarded_pod(kubelet: Kubelet, rest: Rest, namespace: str) -> None:
    """A Running, Ready pod whose budget allows no disruption (as the disruption controller computes it)."""
    await rest.create(PDB, {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                            "metadata": {"name": "keep-one", "namespace": namespace},
                            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}}, namespace)
    await kubelet.run_pod(namespace, "guarded", labels={"app": "guarded"})
    await eventually(lambda: _budget_counts(rest, namespace, healthy=1), "the budget to count the guarded pod")


async def _budget_counts(rest: Rest, namespace: str, healthy: int) -> bool:
    budget = await rest.get(PDB, "keep-one", namespace)
    status = (budget or {}).get("status") or {}
    return status.get("currentHealthy") == healthy and status.get("observedGeneration") == budget["metadata"][
        "generation"]


@pytest.mark.usefixtures("disruption_controller")
def test_drain_cordons_evicts_respects_the_budget_and_undo_uncordons(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        async with host(kube, namespace) as (rest, node):
            kubelet = await Kubelet(kube, rest, node).start(namespace)
            daemonset = await rest.create(DAEMONSET, {
                "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": namespace},
                "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {
                    "metadata": {"labels": {"app": "agent"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}, namespace)
            await kubelet.run_pod(namespace, "agent-x", labels={"app": "agent"}, owner=daemonset)
            await kubelet.run_pod(namespace, "static-x", annotations={"kubernetes.io/config.mirror": "abc"})
            await kubelet.run_pod(namespace, "scratch", empty_dir=True)
            await kubelet.run_pod(namespace, "bare")
            await guarded_pod(kubelet, rest, namespace)
            draining = dpu(namespace, "a", {"drain": {"automaticNodeReboot": True}})

            state = await apply_node_effect(rest, node, draining)
            assert (await node_of(rest, node))["spec"]["unschedulable"] is True
            assert not state.done
            assert not state.failed, state
            blocked = (f"{namespace}/guarded blocked by PodDisruptionBudget {namespace}/keep-one "
                       f"(0 disruptions allowed, 1 healthy, 1 needed)")
            assert blocked in state.message
            assert f"{namespace}/bare evicted" in state.message
            assert f"{namespace}/scratch evicted" in state.message
            assert state.message.endswith("; 1 DaemonSet pod, 1 mirror pod left in place"), state

            # The evicted pods finish terminating; the guarded one stays while its budget says so.
            await kubelet.finish_terminating()
            assert sorted(kubelet.finished) == ["bare", "scratch"]
            state = await apply_node_effect(rest, node, draining)
            assert not state.done
            assert f"1 pod left: {blocked}" in state.message
            assert await kubelet.pods() == ["agent-x", "guarded", "static-x"]

            # The budget is relaxed: the next pass evicts the pod, and once it is gone the node is drained.
            await rest.merge_patch(PDB, "keep-one", {"spec": {"minAvailable": 0}}, namespace)
            await eventually(lambda: _allows(rest, namespace), "the budget to allow a disruption")
            state = await apply_node_effect(rest, node, draining)
            assert f"{namespace}/guarded evicted" in state.message, state
            await kubelet.finish_terminating()
            state = await apply_node_effect(rest, node, draining)
            assert state == EffectState(
                True, f"node {node} drained (cordoned; 1 DaemonSet pod, 1 mirror pod left in place)")

            state = await undo_node_effect(rest, node, draining)
            assert state == EffectState(True, f"removed cordon from node {node}")
            assert not (await node_of(rest, node))["spec"].get("unschedulable")
            assert await kubelet.pods() == ["agent-x", "static-x"]
            for name in ("agent-x", "static-x"):
                await asyncio.to_thread(kubelet.core.delete_namespaced_pod, name, namespace, grace_period_seconds=0)

    run(scenario())


async def _allows(rest: Rest, namespace: str) -> bool:
    budget = await rest.get(PDB, "keep-one", namespace)
    return bool(((budget or {}).get("status") or {}).get("disruptionsAllowed"))


@pytest.mark.usefixtures("disruption_controller")
def test_a_drain_a_budget_blocks_fails_after_its_bound(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        async with host(kube, namespace) as (rest, node):
            kubelet = await Kubelet(kube, rest, node).start(namespace)
            await guarded_pod(kubelet, rest, namespace)
            draining = dpu(namespace, "a", {"drain": {}})
            state = await apply_node_effect(rest, node, draining, drain_timeout=1.0)
            assert not state.failed
            assert state.message.startswith(f"draining node {node} (0s of 1s): 1 pod left")
            await asyncio.sleep(2.1)  # past the bound, counted from the start recorded on the Node
            state = await apply_node_effect(rest, node, draining, drain_timeout=1.0)
            assert state == EffectState(False, (
                f"drain of node {node} did not finish within 1s: 1 pod left: {namespace}/guarded blocked by "
                f"PodDisruptionBudget {namespace}/keep-one (0 disruptions allowed, 1 healthy, 1 needed)"),
                failed=True)
            # Giving up undoes: the node is schedulable again, the pod untouched.
            assert (await undo_node_effect(rest, node, draining)).done
            assert not (await node_of(rest, node))["spec"].get("unschedulable")
            assert await kubelet.pods() == ["guarded"]
            await asyncio.to_thread(kubelet.core.delete_namespaced_pod, "guarded", namespace, grace_period_seconds=0)

    run(scenario())
