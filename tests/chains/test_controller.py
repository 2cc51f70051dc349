"""The controller's chain reconcilers against a real apiserver, with agents that record what they receive
(no data plane; tests/e2e has one): children follow DPU Node labels, a bad nodeSelector is named, a
service interface carries its pod, deleting a chain never hangs on an agent that is gone, a set left by an
earlier same-name chain is replaced rather than adopted, and deletion does not trust a lagging cache."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from dpf.agent.runtime.handlers import RecordingHandler
from dpf.controller.cache.serviceinterfaces import SERVICE_LABEL
from dpf.controller.kube.informer import Informer
from dpf.controller.kube.rest import Kind, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.keys import ObjectKey
from dpf.controller.reconcilers.kinds import (
    DPU_SERVICE_CHAIN,
    DPU_SERVICE_INTERFACE,
    NODE,
    POD,
    SERVICE_CHAIN,
    SERVICE_CHAIN_SET,
    SERVICE_INTERFACE,
)
from dpf.lab import chains
from dpf.lab.bed.kube import ControlPlane
from dpf.proto.v1 import sfc_pb2
from tests.controlplane.harness import (
    agent,
    controller_settings,
    dpu_cluster,
    eventually,
    host_rest,
    node_files,
    run,
    started,
    stop_task,
)


def manifests(namespace: str, group: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in chains.hbn_only(namespace, group)}


async def condition(rest: Rest, kind: Kind, namespace: str, name: str, type_: str) -> dict | None:
    obj = await rest.get(kind, name, namespace)
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or () if c["type"] == type_), None)


async def node(rest: Rest, name: str, group: str, hbn: bool) -> None:
    await rest.create(NODE, chains.dpu_node(name, group, hbn))


def test_children_follow_node_labels_and_a_bad_selector_is_named(kube: ControlPlane, namespace: str) -> None:
    group = uuid.uuid4().hex[:6]
    a, b = f"dpu-a-{group}", f"dpu-b-{group}"

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
        objs = manifests(namespace, group)
        try:
            await node(rest, a, group, hbn=True)
            await node(rest, b, group, hbn=False)
            await rest.apply(DPU_SERVICE_CHAIN, objs["hbn-to-fabric"], "test")

            async def chain_nodes() -> set[str]:
                listing = await rest.list(SERVICE_CHAIN, namespace)
                return {c["spec"]["node"] for c in listing["items"] if not c["metadata"].get("deletionTimestamp")}

            await eventually(lambda: _equals(chain_nodes(), {a}), "a ServiceChain on dpu-a only")
            chain = await rest.get(SERVICE_CHAIN, f"hbn-to-fabric-{a}", namespace)
            assert chain["metadata"]["ownerReferences"][0]["kind"] == "ServiceChainSet"
            assert chain["metadata"]["labels"]["svc.dpu.nvidia.com/servicechainset-name"] == "hbn-to-fabric"

            await rest.merge_patch(NODE, b, {"metadata": {"labels": {chains.HBN_LABEL: "true"}}})
            await eventually(lambda: _equals(chain_nodes(), {a, b}), "dpu-b to get the chain once labelled")
            await rest.merge_patch(NODE, a, {"metadata": {"labels": {chains.HBN_LABEL: None}}})
            await eventually(lambda: _equals(chain_nodes(), {b}), "dpu-a's chain to go once unlabelled")
            scs = await eventually(lambda: _status(rest, SERVICE_CHAIN_SET, namespace, "hbn-to-fabric", 1),
                                   "numberApplied 1")
            assert scs["status"]["numberReady"] == 0, "no agent has programmed anything"

            bad = objs["hbn-to-fabric"]
            bad["spec"]["template"]["spec"]["nodeSelector"] = {
                "matchExpressions": [{"key": chains.HBN_LABEL, "operator": "Equals", "values": ["true"]}]}
            await rest.apply(DPU_SERVICE_CHAIN, bad, "test")
            found = await eventually(lambda: _message(condition(rest, SERVICE_CHAIN_SET, namespace, "hbn-to-fabric",
                                                                "ServiceChainsReconciled"), "Equals"),
                                     "the bad selector named")
            assert found["reason"] == "Failure"
            assert "spec.nodeSelector.matchExpressions[0].operator 'Equals' is not one of" in found["message"]
            assert await chain_nodes() == {b}, "an invalid selector deletes nothing"
        finally:
            for name in (a, b):
                await rest.delete(NODE, name)
            await controller.stop()
            await rest.close()

    run(scenario())


def test_a_chain_on_no_dpu_is_not_ready_until_a_matching_node_joins(kube: ControlPlane, namespace: str) -> None:
    group = uuid.uuid4().hex[:6]
    a = f"dpu-a-{group}"

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
        try:
            await node(rest, a, group, hbn=False)
            await rest.apply(DPU_SERVICE_CHAIN, manifests(namespace, group)["hbn-to-fabric"], "test")
            found = await eventually(lambda: _message(condition(rest, DPU_SERVICE_CHAIN, namespace, "hbn-to-fabric",
                                                                "ServiceChainSetReady"), "selects no DPU node"),
                                     "the chain to say it is on no DPU")
            assert (found["status"], found["reason"]) == ("False", "Pending")
            assert chains.HBN_LABEL in found["message"], "the message shows the selector"
            ready = await condition(rest, DPU_SERVICE_CHAIN, namespace, "hbn-to-fabric", "Ready")
            assert ready["status"] == "False"

            await rest.merge_patch(NODE, a, {"metadata": {"labels": {chains.HBN_LABEL: "true"}}})
            await eventually(lambda: _status(rest, SERVICE_CHAIN_SET, namespace, "hbn-to-fabric", 1),
                             "a child for the joined node")
            found = await condition(rest, SERVICE_CHAIN_SET, namespace, "hbn-to-fabric", "ServiceChainsReady")
            assert found["status"] == "False", "no agent has programmed it"
            assert a in found["message"]
            assert "selects no DPU node" not in found["message"]
        finally:
            await rest.delete(NODE, a)
            await controller.stop()
            await rest.close()

    run(scenario())


def test_a_service_interface_carries_its_pod_and_deleting_never_waits_for_a_gone_agent(
        kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    group = uuid.uuid4().hex[:6]
    a = f"dpu-a-{group}"

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
        interfaces, chain_types = RecordingHandler(sfc_pb2.ServiceInterface), RecordingHandler(sfc_pb2.ServiceChain)
        runtime = agent(a, [controller.grpc_port], tmp_path / "state",
                        await node_files(rest, namespace, a, "dpu", tmp_path / "certs"), interfaces)
        runtime.add_handler(chain_types)
        task = asyncio.create_task(runtime.run())
        objs = manifests(namespace, group)
        try:
            await node(rest, a, group, hbn=True)
            await rest.apply(DPU_SERVICE_INTERFACE, objs["p0-sf"], "test")
            await rest.apply(DPU_SERVICE_INTERFACE, objs["p0"], "test")
            name = f"{namespace}/p0-sf-{a}"
            received = await eventually(lambda: interfaces.desired.get(name), "the service interface on the agent")
            assert received.pod == "", "no pod yet"
            for obj in chains.hbn_pod(namespace, "hbn-0", a):
                await rest.apply(Kind("", "v1", "serviceaccounts", "ServiceAccount") if obj["kind"] ==
                                 "ServiceAccount" else POD, obj, "test")
            await eventually(lambda: interfaces.desired[name].pod == f"{namespace}/hbn-0", "the pod on the interface")
            bystander = {**chains.hbn_pod(namespace, "bystander", a)[1]}
            bystander["metadata"] = {"name": "bystander", "namespace": namespace}
            await rest.apply(POD, bystander, "test")
            await rest.merge_patch(POD, "hbn-0", {"metadata": {"labels": {SERVICE_LABEL: None}}}, namespace)
            await eventually(lambda: interfaces.desired[name].pod == "", "the pod to leave once unlabelled")
            dpu = next(iter(controller.clusters.dpu.values()))
            cached = dpu.informer(POD).list()
            assert all(SERVICE_LABEL in (p["metadata"].get("labels") or {}) for p in cached), "only labelled pods"
            assert not [p for p in cached if p["metadata"]["namespace"] == namespace]
            await rest.merge_patch(POD, "hbn-0", {"metadata": {"labels": {SERVICE_LABEL: chains.HBN_SERVICE}}},
                                   namespace)
            await eventually(lambda: interfaces.desired[name].pod == f"{namespace}/hbn-0", "the pod back on it")

            chain = objs["hbn-to-fabric"]
            chain["spec"]["template"]["spec"]["template"]["spec"]["switches"].pop()  # p1 is not applied here
            await rest.apply(DPU_SERVICE_CHAIN, chain, "test")
            await eventually(lambda: _ready(rest, DPU_SERVICE_CHAIN, namespace, "hbn-to-fabric"), "the chain Ready")
            resolved = chain_types.desired[f"{namespace}/hbn-to-fabric-{a}"]
            assert [p.service_interface for p in resolved.switches[0].ports] == [f"p0-{a}", f"p0-sf-{a}"]

            await stop_task(task)  # the agent is gone: deletion must not wait for it
            await rest.delete(DPU_SERVICE_CHAIN, "hbn-to-fabric", namespace)
            await eventually(lambda: _gone(rest, DPU_SERVICE_CHAIN, namespace, "hbn-to-fabric"),
                             "the chain deleted without its agent", timeout=10)
            assert await rest.get(SERVICE_CHAIN, f"hbn-to-fabric-{a}", namespace) is None
            assert await rest.get(SERVICE_CHAIN_SET, "hbn-to-fabric", namespace) is None
            assert await rest.get(SERVICE_INTERFACE, f"p0-sf-{a}", namespace) is not None
        finally:
            await stop_task(task)
            await rest.delete(NODE, a)
            await controller.stop()
            await rest.close()

    run(scenario())


def test_a_set_left_by_an_earlier_same_name_chain_is_replaced_not_adopted(kube: ControlPlane, namespace: str) -> None:
    group = uuid.uuid4().hex[:6]
    a = f"dpu-a-{group}"
    owner_label = "svc.dpu.nvidia.com/dpuservicechain-uid"

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
        objs = manifests(namespace, group)
        try:
            await node(rest, a, group, hbn=True)
            # What a chain deleted while its DPU cluster was unreachable leaves: a set (and its per-node chain)
            # claiming an owner uid that no object has any more.
            chain = objs["hbn-to-fabric"]
            leftover = await rest.create(SERVICE_CHAIN_SET, {
                "apiVersion": SERVICE_CHAIN_SET.api_version, "kind": "ServiceChainSet",
                "metadata": {"name": "hbn-to-fabric", "namespace": namespace,
                             "labels": {owner_label: str(uuid.uuid4())}},
                "spec": chain["spec"]["template"]["spec"]}, namespace)
            old_child = await eventually(lambda: rest.get(SERVICE_CHAIN, f"hbn-to-fabric-{a}", namespace),
                                         "the leftover set's per-node chain")

            parent = await rest.create(DPU_SERVICE_CHAIN, chain, namespace)

            async def replaced() -> dict | None:
                found = await rest.get(SERVICE_CHAIN_SET, "hbn-to-fabric", namespace)
                return found if found and found["metadata"]["uid"] != leftover["metadata"]["uid"] else None

            fresh = await eventually(replaced, "a new set in place of the leftover")
            assert fresh["metadata"]["labels"][owner_label] == parent["metadata"]["uid"]
            child = await eventually(lambda: rest.get(SERVICE_CHAIN, f"hbn-to-fabric-{a}", namespace),
                                     "the new set's per-node chain")
            assert child["metadata"]["uid"] != old_child["metadata"]["uid"]
            assert child["metadata"]["ownerReferences"][0]["uid"] == fresh["metadata"]["uid"]

            await rest.delete(DPU_SERVICE_CHAIN, "hbn-to-fabric", namespace)
            await eventually(lambda: _gone(rest, DPU_SERVICE_CHAIN, namespace, "hbn-to-fabric"), "the chain deleted")
            assert await rest.get(SERVICE_CHAIN_SET, "hbn-to-fabric", namespace) is None
            assert await rest.get(SERVICE_CHAIN, f"hbn-to-fabric-{a}", namespace) is None
        finally:
            await rest.delete(NODE, a)
            await controller.stop()
            await rest.close()

    run(scenario())


def test_deleting_a_chain_whose_set_the_cache_has_not_seen_yet_deletes_the_set(
        kube: ControlPlane, namespace: str) -> None:
    """The race behind leaked sets: a reconcile wrote the set from a cached chain already being deleted, and
    the next one (the deletion) ran before the DPU cluster's watch delivered the set (likewise between a set and
    its per-node chain, though the bed's garbage collector may mask that level). Made deterministic by dropping
    the child from the controller's cache when its owner's deletion arrives, as a lagging watch would have it;
    the mirror before this fix leaked the set here every time."""
    group = uuid.uuid4().hex[:6]
    a = f"dpu-a-{group}"

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
        try:
            await node(rest, a, group, hbn=True)
            await rest.create(DPU_SERVICE_CHAIN, manifests(namespace, group)["hbn-to-fabric"], namespace)
            await eventually(lambda: rest.get(SERVICE_CHAIN, f"hbn-to-fabric-{a}", namespace), "the per-node chain")
            sets = next(iter(controller.clusters.dpu.values())).informer(SERVICE_CHAIN_SET)

            lagged: set[str] = set()

            def lag(_type: str, old: dict | None, new: dict | None) -> None:
                if new and new["metadata"].get("deletionTimestamp") and "set" not in lagged:
                    lagged.add("set")  # before the deletion is reconciled, once
                    _forget(sets, (namespace, "hbn-to-fabric"))  # the watch has not delivered it yet

            def child_lag(_type: str, _old: dict | None, new: dict | None) -> None:
                if new and new["metadata"].get("deletionTimestamp") and "child" not in lagged:
                    lagged.add("child")  # the same race one level down
                    _forget(dpu.informer(SERVICE_CHAIN), (namespace, f"hbn-to-fabric-{a}"))

            dpu = next(iter(controller.clusters.dpu.values()))
            controller.clusters.host.informer(DPU_SERVICE_CHAIN).add_handler(lag)
            sets.add_handler(child_lag)
            await rest.delete(DPU_SERVICE_CHAIN, "hbn-to-fabric", namespace)
            await eventually(lambda: _gone(rest, DPU_SERVICE_CHAIN, namespace, "hbn-to-fabric"), "the chain deleted")
            assert await rest.get(SERVICE_CHAIN_SET, "hbn-to-fabric", namespace) is None, "the set outlived its chain"
            assert await rest.get(SERVICE_CHAIN, f"hbn-to-fabric-{a}", namespace) is None
        finally:
            await rest.delete(NODE, a)
            await controller.stop()
            await rest.close()

    run(scenario())


def test_a_cached_parent_already_deleted_gets_no_new_set(kube: ControlPlane, namespace: str) -> None:
    """The other half of churn leaks: under create/delete churn the cache can still show an incarnation that is
    already gone (with our finalizer on it, so nothing is written before the set is made). The mirror confirms
    the parent live before creating a child, so no set is made for it. Made deterministic by putting the
    deleted chain back into the controller's cache, as a lagging watch would show it."""
    group = uuid.uuid4().hex[:6]
    a = f"dpu-a-{group}"

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
        try:
            await node(rest, a, group, hbn=True)
            await rest.create(DPU_SERVICE_CHAIN, manifests(namespace, group)["hbn-to-fabric"], namespace)
            await eventually(lambda: rest.get(SERVICE_CHAIN_SET, "hbn-to-fabric", namespace), "the set")
            chains_cache = controller.clusters.host.informer(DPU_SERVICE_CHAIN)
            stale = chains_cache.get(namespace, "hbn-to-fabric")
            assert stale is not None
            assert "svc.dpu.nvidia.com/dpuservicechain" in (stale["metadata"].get("finalizers") or ())
            await rest.delete(DPU_SERVICE_CHAIN, "hbn-to-fabric", namespace)
            await eventually(lambda: _gone(rest, DPU_SERVICE_CHAIN, namespace, "hbn-to-fabric"), "the chain deleted")
            await eventually(lambda: _gone(rest, SERVICE_CHAIN_SET, namespace, "hbn-to-fabric"), "the set deleted")

            key = (namespace, "hbn-to-fabric")
            chains_cache._store[key] = stale  # the watch "has not delivered" the deletion yet
            chains_cache._index(key, None, stale)
            controller.ctx.queue.add(ObjectKey("dpuservicechain", namespace, "hbn-to-fabric"))
            await asyncio.sleep(3.0)  # several reconciles (retries are 0.2 s apart)
            assert await rest.get(SERVICE_CHAIN_SET, "hbn-to-fabric", namespace) is None, \
                "a set was made for a chain that no longer exists"
            _forget(chains_cache, key)
        finally:
            await rest.delete(NODE, a)
            await controller.stop()
            await rest.close()

    run(scenario())


def _forget(informer: Informer, key: tuple[str, str]) -> None:
    """Drop one object from a watch cache (indexes too), as if its watch event had not arrived yet."""
    old = informer._store.pop(key, None)
    if old is not None:
        informer._index(key, old, None)


async def _equals(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc]


async def _message(found: object, text: str) -> dict | None:
    c = await found  # type: ignore[misc]
    return c if c and text in c.get("message", "") else None


async def _status(rest: Rest, kind: Kind, namespace: str, name: str, applied: int) -> dict | None:
    obj = await rest.get(kind, name, namespace)
    return obj if obj and (obj.get("status") or {}).get("numberApplied") == applied else None


async def _ready(rest: Rest, kind: Kind, namespace: str, name: str) -> bool:
    c = await condition(rest, kind, namespace, name, "Ready")
    return bool(c and c["status"] == "True")


async def _gone(rest: Rest, kind: Kind, namespace: str, name: str) -> bool:
    return await rest.get(kind, name, namespace) is None
