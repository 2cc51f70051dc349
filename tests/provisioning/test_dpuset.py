"""The DPUSet reconciler against the real apiserver (and its garbage collector): one DPU per labelled host Node
with upstream names, labels, owner and spec; DPUs follow node labels and go with the set; RollingUpdate replaces
at most maxUnavailable DPUs at a time, Recreate leaves them alone; nodeLabels merge in place.

There is no DPU state machine yet: where a test needs Ready DPUs it writes their status itself, through the
status subresource, as an agent report would. Nodes are cluster-scoped: each test names its own after its
namespace, selects only them (an extra matchLabels entry on the upstream example), and deletes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from dpf.controller.kube.informer import Informer
from dpf.controller.kube.rest import EVENT, KubeError, Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.provisioning.dpuset_plan import (
    HOST_IP_LABEL,
    PCI_ADDRESS_LABEL,
    PF_NAME_LABEL,
    SET_NAME_LABEL,
    SET_NAMESPACE_LABEL,
)
from dpf.controller.reconcilers.dpuset import DPUSetReconciler
from dpf.controller.reconcilers.kinds import DPU, DPU_SET, NODE
from dpf.controller.settings import KubeSettings
from dpf.lab.bed.kube import ControlPlane
from tests.api.helpers import example_documents
from tests.controlplane.harness import controller_settings, eventually, host_rest, run, started

ENABLED = "feature.node.kubernetes.io/dpu-enabled"
PCI0 = "feature.node.kubernetes.io/dpu-0-pci-address"
PF0 = "feature.node.kubernetes.io/dpu-0-pf0-name"
ISOLATE = "dpf.test/fleet"
PCI = "0000-04-00"
SLOW = 60.0  # the garbage collector and a loaded machine


def dpu_labels(namespace: str, pci: str | None = PCI) -> dict[str, str]:
    return {ENABLED: "true", ISOLATE: namespace, PF0: "ens1f0np0", **({PCI0: pci} if pci else {})}


def example_dpuset(namespace: str, **changes: Any) -> Obj:
    """The hbn_only guide's DPUSet (04-dpuservice-installation/dpuset.yaml), selecting this test's nodes only."""
    (doc,) = [d for d in example_documents("hbn_only.yaml", namespace) if d["kind"] == "DPUSet"]
    doc["spec"]["nodeSelector"]["matchLabels"][ISOLATE] = namespace
    doc["spec"].update(copy.deepcopy(changes))
    return doc


@contextlib.asynccontextmanager
async def fleet(kube: ControlPlane, namespace: str, nodes: dict[str, dict[str, str]],
                ) -> AsyncIterator[tuple[Rest, dict[str, str]]]:
    """Nodes `<namespace>-<short>` with the given labels (InternalIP 10.0.0.<n>), the DPUSet controller, and a
    client; everything removed afterwards. Yields (rest, {short: node name})."""
    rest = await host_rest(kube.kubeconfig)
    names = {short: f"{namespace}-{short}" for short in nodes}
    controller = None
    try:
        for i, (short, labels) in enumerate(nodes.items(), 1):
            await rest.create(NODE, {"apiVersion": "v1", "kind": "Node",
                                     "metadata": {"name": names[short], "labels": labels}})
            await rest.merge_patch(NODE, names[short], {"status": {"addresses": [
                {"type": "InternalIP", "address": f"10.0.0.{i}"}, {"type": "Hostname", "address": names[short]}]}},
                                   subresource="status")
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace),
                                              reconcilers=[DPUSetReconciler]))
        yield rest, names
    finally:
        if controller is not None:
            await controller.stop()
        for name in names.values():
            await rest.delete(NODE, name)
        await rest.close()


async def dpus(rest: Rest, namespace: str) -> dict[str, Obj]:
    return {d["metadata"]["name"]: d for d in (await rest.list(DPU, namespace))["items"]}


async def dpuset_status(rest: Rest, namespace: str, name: str = "dpuset") -> Obj:
    return (await rest.get(DPU_SET, name, namespace) or {}).get("status") or {}


def condition(status: Obj, type_: str) -> Obj:
    return next((c for c in status.get("conditions") or () if c["type"] == type_), {})


async def event_notes(rest: Rest, namespace: str, reason: str) -> list[str]:
    return [e.get("note", "") for e in (await rest.list(EVENT, namespace))["items"]
            if e.get("reason") == reason and e["regarding"].get("kind") == "DPUSet"]


async def mark_ready(rest: Rest, namespace: str, name: str) -> None:
    """What a DPU agent's report would write once the DPU is provisioned."""
    await rest.merge_patch(DPU, name, {"status": {"phase": "Ready", "conditions": [
        {"type": "Ready", "status": "True", "reason": "DPUNodeReady", "message": "",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}, namespace, subresource="status")


async def set_template(rest: Rest, namespace: str, spec: Obj) -> None:
    await rest.merge_patch(DPU_SET, "dpuset", {"spec": {"dpuTemplate": {"spec": spec}}}, namespace)


async def all_ready(rest: Rest, namespace: str, count: int) -> dict[str, Obj]:
    """Wait for `count` DPUs, mark them Ready; returns them."""
    found = await eventually(lambda: _exactly(rest, namespace, count), f"{count} DPUs")
    for name in found:
        await mark_ready(rest, namespace, name)
    return found


async def _exactly(rest: Rest, namespace: str, count: int) -> dict[str, Obj] | None:
    found = await dpus(rest, namespace)
    return found if len(found) == count else None


async def _none_left(rest: Rest, namespace: str) -> bool:
    return not await dpus(rest, namespace)


def test_a_dpuset_makes_one_dpu_per_labelled_node(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        nodes = {f"w{i}": dpu_labels(namespace) for i in (1, 2, 3)}
        async with fleet(kube, namespace, nodes) as (rest, names):
            body = example_dpuset(namespace)
            body["metadata"]["labels"] = {"team": "net"}
            body["spec"]["dpuTemplate"]["annotations"] = {"provisioning.dpu.nvidia.com/host-power-cycle-required":
                                                          "false"}
            body["spec"]["dpuTemplate"]["spec"]["cluster"] = {"nodeLabels": {"role": "dpu"}}
            created = await rest.create(DPU_SET, body, namespace)
            found = await eventually(lambda: _exactly(rest, namespace, 3), "3 DPUs")
            assert sorted(found) == sorted(f"{names[s]}-{PCI}" for s in ("w1", "w2", "w3"))
            for i, short in enumerate(("w1", "w2", "w3"), 1):
                dpu = found[f"{names[short]}-{PCI}"]
                meta = dpu["metadata"]
                assert {k: meta["labels"].get(k) for k in ("team", SET_NAME_LABEL, SET_NAMESPACE_LABEL,
                                                           PCI_ADDRESS_LABEL, PF_NAME_LABEL, HOST_IP_LABEL)} == {
                    "team": "net", SET_NAME_LABEL: "dpuset", SET_NAMESPACE_LABEL: namespace,
                    PCI_ADDRESS_LABEL: PCI, PF_NAME_LABEL: "ens1f0np0", HOST_IP_LABEL: f"10.0.0.{i}"}
                assert meta["annotations"] == {"provisioning.dpu.nvidia.com/host-power-cycle-required": "false"}
                assert [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in meta["ownerReferences"]] == [
                    ("DPUSet", "dpuset", created["metadata"]["uid"], True)]
                assert dpu["spec"] == {
                    "nodeName": names[short], "bfb": "bf-bundle", "dpuFlavor": "dpf-provisioning-hbn",
                    "nodeEffect": {"taint": {"key": "dpu", "value": "provisioning", "effect": "NoSchedule"}},
                    "automaticNodeReboot": True, "cluster": {"nodeLabels": {"role": "dpu"}}}
            notes = await eventually(lambda: _at_least(event_notes(rest, namespace, "SuccessfulCreate"), 3),
                                     "3 SuccessfulCreate events")
            assert sorted(notes) == sorted(f"Created DPU {namespace}/{names[s]}-{PCI} on node {names[s]} with bfb "
                                           f"bf-bundle, dpuFlavor dpf-provisioning-hbn" for s in ("w1", "w2", "w3"))
            status = await eventually(lambda: _status_where(rest, namespace, lambda s: s.get("dpuStatistics") == {
                "Initializing": 3}), "dpuStatistics {Initializing: 3}")
            assert condition(status, "DPUsReconciled")["status"] == "True"
            assert condition(status, "DPUsReady")["message"].startswith("0 of 3 DPUs are Ready")
            for name in found:
                await mark_ready(rest, namespace, name)
            status = await eventually(lambda: _status_where(rest, namespace, lambda s: condition(s, "Ready").get(
                "status") == "True"), "the DPUSet Ready")
            assert status["dpuStatistics"] == {"Ready": 3}

    run(scenario())


async def _at_least(notes_coro: Any, count: int) -> list[str] | None:
    notes = await notes_coro
    return notes if len(notes) >= count else None


async def _status_where(rest: Rest, namespace: str, predicate: Callable[[Obj], bool]) -> Obj | None:
    status = await dpuset_status(rest, namespace)
    return status if predicate(status) else None


def test_dpus_follow_node_labels_and_go_with_the_set(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        nodes = {"w1": dpu_labels(namespace), "w2": dpu_labels(namespace), "bare": dpu_labels(namespace, pci=None)}
        async with fleet(kube, namespace, nodes) as (rest, names):
            await rest.create(DPU_SET, example_dpuset(namespace), namespace)
            found = await eventually(lambda: _exactly(rest, namespace, 2), "2 DPUs")
            assert sorted(found) == [f"{names['w1']}-{PCI}", f"{names['w2']}-{PCI}"]
            # The node without a PCI address label gets no DPU, and the set says why.
            status = await eventually(lambda: _status_where(rest, namespace, lambda s: names["bare"] in condition(
                s, "DPUsReconciled").get("message", "")), "the DPUSet naming the node without a DPU")
            assert f"node {names['bare']} has no {PCI0} label" in condition(status, "DPUsReconciled")["message"]

            # w2 loses the selected label: its DPU goes, with an Event saying why.
            await rest.merge_patch(NODE, names["w2"], {"metadata": {"labels": {ENABLED: None}}})
            await eventually(lambda: _exactly(rest, namespace, 1), "w2's DPU to be deleted")
            notes = await eventually(lambda: event_notes(rest, namespace, "SuccessfulDelete"), "a SuccessfulDelete")
            assert notes == [f"Deleted DPU {namespace}/{names['w2']}-{PCI} on node {names['w2']}: "
                             f"node {names['w2']} no longer matches spec.nodeSelector"]
            # The bare node is discovered later: its DPU appears.
            await rest.merge_patch(NODE, names["bare"], {"metadata": {"labels": {PCI0: "0000-05-00"}}})
            await eventually(lambda: _exactly(rest, namespace, 2), "the bare node's DPU")

            # Deleting the DPUSet: the garbage collector deletes its DPUs.
            await rest.delete(DPU_SET, "dpuset", namespace)
            await eventually(lambda: _none_left(rest, namespace), "the garbage collector to delete the DPUs",
                             timeout=SLOW)

    run(scenario())


def test_a_set_left_without_dpus_drops_its_statistics(kube: ControlPlane, namespace: str) -> None:
    """The last DPU gone: dpuStatistics disappears (an empty map is not applied: it would be null, a 422 that kept
    the old counts and the old conditions forever)."""
    async def scenario() -> None:
        async with fleet(kube, namespace, {"w1": dpu_labels(namespace)}) as (rest, names):
            await rest.create(DPU_SET, example_dpuset(namespace), namespace)
            await eventually(lambda: _status_where(rest, namespace, lambda s: s.get("dpuStatistics") == {
                "Initializing": 1}), "dpuStatistics {Initializing: 1}")
            await rest.merge_patch(NODE, names["w1"], {"metadata": {"labels": {ENABLED: None}}})
            await eventually(lambda: _none_left(rest, namespace), "w1's DPU to be deleted")
            status = await eventually(lambda: _status_where(rest, namespace, lambda s: "dpuStatistics" not in s),
                                      "dpuStatistics gone with the last DPU")
            assert "selects no host Node" in condition(status, "DPUsReady")["message"], status

    run(scenario())


def test_an_invalid_selector_is_reported_and_changes_nothing(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        async with fleet(kube, namespace, {"w1": dpu_labels(namespace)}) as (rest, _):
            await rest.create(DPU_SET, example_dpuset(namespace), namespace)
            await eventually(lambda: _exactly(rest, namespace, 1), "1 DPU")
            await rest.merge_patch(DPU_SET, "dpuset", {"spec": {"nodeSelector": {"matchExpressions": [
                {"key": ENABLED, "operator": "Equals", "values": ["true"]}]}}}, namespace)
            status = await eventually(lambda: _status_where(rest, namespace, lambda s: condition(
                s, "DPUsReconciled").get("reason") == "Failure"), "DPUsReconciled Failure")
            assert condition(status, "DPUsReconciled")["message"] == (
                "spec.nodeSelector.matchExpressions[0].operator 'Equals' is not one of In, NotIn, Exists, "
                "DoesNotExist; fix the selector")
            assert condition(status, "Ready")["status"] == "False"
            assert len(await dpus(rest, namespace)) == 1  # a selector we cannot read deletes nothing

    run(scenario())


class Availability:
    """Watches the namespace's DPUs (every event, in order) and records the most that were unavailable at once:
    missing, being deleted, or not Ready."""

    def __init__(self, rest: Rest, namespace: str, total: int) -> None:
        self.informer = Informer(rest, DPU, KubeSettings(relist_backoff=0.2), namespace=namespace)
        self.informer.add_handler(lambda *_: self._observe())
        self.total = total
        self.recording = False
        self.worst = 0

    def unavailable(self) -> int:
        available = sum(1 for d in self.informer.list() if not d["metadata"].get("deletionTimestamp") and any(
            c["type"] == "Ready" and c["status"] == "True" for c in (d.get("status") or {}).get("conditions") or ()))
        return self.total - available

    def _observe(self) -> None:
        if self.recording:
            self.worst = max(self.worst, self.unavailable())


def test_rolling_update_replaces_one_dpu_at_a_time(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        nodes = {f"w{i}": dpu_labels(namespace) for i in (1, 2, 3)}
        async with fleet(kube, namespace, nodes) as (rest, _):
            await rest.create(DPU_SET, example_dpuset(
                namespace, strategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}), namespace)
            before = await all_ready(rest, namespace, 3)
            watch = Availability(rest, namespace, 3)
            task = asyncio.create_task(watch.informer.run())
            try:
                await eventually(lambda: watch.informer.synced.is_set() and watch.unavailable() == 0,
                                 "3 Ready DPUs seen by the watch")
                watch.recording = True
                await set_template(rest, namespace, {"bfb": {"name": "bf-bundle-2"}})

                async def step() -> bool:
                    """Mark recreated DPUs Ready (the agent's job); done when all three run the new BFB."""
                    current = await dpus(rest, namespace)
                    for name, dpu in current.items():
                        if dpu["spec"]["bfb"] == "bf-bundle-2" and not (dpu.get("status") or {}).get("conditions"):
                            await mark_ready(rest, namespace, name)
                    return len(current) == 3 and all(d["spec"]["bfb"] == "bf-bundle-2" and d.get("status", {}).get(
                        "conditions") for d in current.values())

                await eventually(step, "all DPUs replaced with bfb bf-bundle-2", timeout=SLOW)
                await eventually(lambda: watch.unavailable() == 0, "the watch to catch up")
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert watch.worst == 1, f"at most 1 DPU may be unavailable at once, saw {watch.worst}"
            after = await dpus(rest, namespace)
            assert sorted(after) == sorted(before)  # same names (same nodes and PCI addresses) ...
            assert all(after[n]["metadata"]["uid"] != before[n]["metadata"]["uid"] for n in after)  # ... new DPUs
            notes = await event_notes(rest, namespace, "SuccessfulDelete")
            assert len(notes) == 3, notes
            assert all("rolling update to bfb 'bf-bundle-2'" in n for n in notes), notes
            created = await event_notes(rest, namespace, "SuccessfulCreate")
            assert sum("with bfb bf-bundle-2" in n for n in created) == 3, created
            status = await eventually(lambda: _status_where(rest, namespace, lambda s: condition(s, "Ready").get(
                "status") == "True"), "the DPUSet Ready again")
            assert status["dpuStatistics"] == {"Ready": 3}

    run(scenario())


def test_recreate_strategy_leaves_outdated_dpus_alone(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        nodes = {"w1": dpu_labels(namespace), "w2": dpu_labels(namespace)}
        async with fleet(kube, namespace, nodes) as (rest, _):
            await rest.create(DPU_SET, example_dpuset(namespace, strategy={"type": "Recreate"}), namespace)
            before = await all_ready(rest, namespace, 2)
            await set_template(rest, namespace, {"bfb": {"name": "bf-bundle-2"}, "dpuFlavor": "other"})
            generation = (await rest.get(DPU_SET, "dpuset", namespace))["metadata"]["generation"]
            status = await eventually(lambda: _status_where(rest, namespace, lambda s: s.get(
                "observedGeneration") == generation and condition(s, "DPUsReconciled").get("reason") == "Pending"),
                "the DPUSet to report outdated DPUs")
            assert "strategy Recreate replaces a DPU only when you delete it" in condition(
                status, "DPUsReconciled")["message"]
            after = await dpus(rest, namespace)
            assert {n: (d["metadata"]["uid"], d["spec"]["bfb"]) for n, d in after.items()} == {
                n: (d["metadata"]["uid"], "bf-bundle") for n, d in before.items()}
            assert await event_notes(rest, namespace, "SuccessfulDelete") == []
            # The user deletes one: it comes back from the new template.
            name = sorted(before)[0]
            await rest.delete(DPU, name, namespace)
            await eventually(lambda: _with_bfb(rest, namespace, name, "bf-bundle-2"), "the DPU recreated")

    run(scenario())


async def _with_bfb(rest: Rest, namespace: str, name: str, bfb: str) -> bool:
    dpu = await rest.get(DPU, name, namespace)
    return dpu is not None and dpu["spec"]["bfb"] == bfb


def test_node_labels_merge_into_dpus_in_place(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        async with fleet(kube, namespace, {"w1": dpu_labels(namespace)}) as (rest, names):
            await rest.create(DPU_SET, example_dpuset(namespace), namespace)  # RollingUpdate, as in the guide
            (name, dpu), = (await all_ready(rest, namespace, 1)).items()
            # The DPU controller adds labels of its own there; they stay.
            await rest.merge_patch(DPU, name, {"spec": {"cluster": {"nodeLabels": {
                "provisioning.dpu.nvidia.com/host": names["w1"]}}}}, namespace)
            await set_template(rest, namespace, {"cluster": {"nodeLabels": {"rack": "r1", "role": "dpu"}}})

            async def merged() -> Obj | None:
                current = await rest.get(DPU, name, namespace)
                labels = ((current or {}).get("spec") or {}).get("cluster", {}).get("nodeLabels") or {}
                return current if labels.get("rack") == "r1" and labels.get("role") == "dpu" else None

            current = await eventually(merged, "the template nodeLabels on the DPU")
            assert current["metadata"]["uid"] == dpu["metadata"]["uid"]
            assert current["spec"]["cluster"]["nodeLabels"] == {
                "rack": "r1", "role": "dpu", "provisioning.dpu.nvidia.com/host": names["w1"]}
            assert await event_notes(rest, namespace, "SuccessfulDelete") == []

    run(scenario())



def test_a_deletion_guarded_by_uid_spares_a_newer_dpu_of_the_same_name(kube: ControlPlane, namespace: str) -> None:
    """What keeps a pass working from a stale cache from deleting a DPU that was re-created meanwhile."""
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        try:
            body = {"apiVersion": DPU.api_version, "kind": "DPU", "metadata": {"name": "w1-0000-04-00"},
                    "spec": {"nodeName": "w1", "bfb": "bf-bundle"}}
            old = await rest.create(DPU, body, namespace)
            await rest.delete(DPU, "w1-0000-04-00", namespace, uid=old["metadata"]["uid"])
            new = await rest.create(DPU, body, namespace)
            with pytest.raises(KubeError) as refused:
                await rest.delete(DPU, "w1-0000-04-00", namespace, uid=old["metadata"]["uid"])
            assert refused.value.conflict
            assert (await rest.get(DPU, "w1-0000-04-00", namespace))["metadata"]["uid"] == new["metadata"]["uid"]
        finally:
            await rest.close()

    run(scenario())
