"""In-use protection over the real apiserver: deleting a DPUFlavor or BFB that a DPUSet/DPU references waits
(finalizer kept, `InUse` Warning Event naming the user) until the reference is gone; an unused one goes at once."""

from __future__ import annotations

import asyncio
from typing import Any

from dpf.controller.kube.rest import EVENT, Kind, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.inuse_protection import BFB_FINALIZER, FLAVOR_FINALIZER
from dpf.controller.reconcilers.kinds import BFB, DPU, DPU_FLAVOR, DPU_SET
from dpf.lab.bed.kube import ControlPlane

from .harness import controller_settings, eventually, host_rest, run, started


def _obj(kind: Kind, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": {"name": name, "namespace": namespace},
            "spec": spec}


async def _create(rest: Rest, kind: Kind, namespace: str, name: str, spec: dict[str, Any]) -> None:
    await rest.create(kind, _obj(kind, namespace, name, spec), namespace)


async def _has_finalizer(rest: Rest, kind: Kind, namespace: str, name: str, finalizer: str) -> bool:
    obj = await rest.get(kind, name, namespace)
    return obj is not None and finalizer in (obj["metadata"].get("finalizers") or ())


async def _in_use_notes(rest: Rest, namespace: str, kind: str, name: str) -> list[str]:
    events = (await rest.list(EVENT, namespace))["items"]
    return [e.get("note", "") for e in events
            if e.get("reason") == "InUse" and e.get("type") == "Warning"
            and e["regarding"].get("kind") == kind and e["regarding"].get("name") == name]


async def _kubectl_delete(kube: ControlPlane, resource: str, name: str, namespace: str) -> None:
    # In a thread: the controller runs on this event loop and must keep reconciling meanwhile.
    await asyncio.to_thread(kube.kubectl, "delete", resource, name, "-n", namespace, "--wait=false")


async def _deletion_held(rest: Rest, kube_kind: Kind, namespace: str, name: str, kind: str, user: str) -> None:
    """The object stays (deletionTimestamp set) with an InUse Event naming `user`."""
    await eventually(lambda: _in_use_notes(rest, namespace, kind, name), f"an InUse event on {kind} {name}")
    notes = await _in_use_notes(rest, namespace, kind, name)
    assert any(user in note for note in notes), notes
    await asyncio.sleep(0.5)  # give a wrong controller time to let the deletion through
    obj = await rest.get(kube_kind, name, namespace)
    assert obj is not None, f"{kind} {name} was deleted while {user} references it"
    assert obj["metadata"].get("deletionTimestamp")


def test_flavor_in_use_by_a_dpuset_waits_for_it(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
        try:
            await _create(rest, DPU_FLAVOR, namespace, "hbn", {"bfcfgParameters": ["UPDATE_DPU_OS=yes"]})
            await _create(rest, DPU_SET, namespace, "fleet",
                          {"dpuTemplate": {"spec": {"dpuFlavor": "hbn", "bfb": {"name": "bundle"}}}})
            await eventually(lambda: _has_finalizer(rest, DPU_FLAVOR, namespace, "hbn", FLAVOR_FINALIZER),
                             "the protection finalizer on the flavor")

            await _kubectl_delete(kube, "dpuflavors.provisioning.dpu.nvidia.com", "hbn", namespace)
            await _deletion_held(rest, DPU_FLAVOR, namespace, "hbn", "DPUFlavor", "DPUSet/fleet")

            await rest.delete(DPU_SET, "fleet", namespace)
            await eventually(lambda: _gone(rest, DPU_FLAVOR, namespace, "hbn"), "the flavor to be deleted")
        finally:
            await controller.stop()
            await rest.close()

    run(scenario())


def test_bfb_in_use_by_a_dpu_waits_for_it(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
        try:
            await _create(rest, BFB, namespace, "bundle", {"url": "http://bfb.example/bf-bundle.bfb"})
            await _create(rest, DPU, namespace, "host1-dpu", {"nodeName": "host1", "bfb": "bundle"})
            await eventually(lambda: _has_finalizer(rest, BFB, namespace, "bundle", BFB_FINALIZER),
                             "the protection finalizer on the BFB")

            await _kubectl_delete(kube, "bfbs.provisioning.dpu.nvidia.com", "bundle", namespace)
            await _deletion_held(rest, BFB, namespace, "bundle", "BFB", "DPU/host1-dpu")
            await eventually(lambda: _phase(rest, namespace, "bundle", "Deleting"), "BFB phase Deleting")

            await rest.delete(DPU, "host1-dpu", namespace)
            await eventually(lambda: _gone(rest, BFB, namespace, "bundle"), "the BFB to be deleted")
        finally:
            await controller.stop()
            await rest.close()

    run(scenario())


def test_unused_flavor_is_deleted_promptly(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
        try:
            await _create(rest, DPU_FLAVOR, namespace, "spare", {})
            # A DPU using a different flavor is not a reference to this one.
            await _create(rest, DPU, namespace, "host1-dpu", {"nodeName": "host1", "bfb": "b", "dpuFlavor": "other"})
            await eventually(lambda: _has_finalizer(rest, DPU_FLAVOR, namespace, "spare", FLAVOR_FINALIZER),
                             "the protection finalizer on the flavor")
            await _kubectl_delete(kube, "dpuflavors.provisioning.dpu.nvidia.com", "spare", namespace)
            await eventually(lambda: _gone(rest, DPU_FLAVOR, namespace, "spare"), "the flavor to be deleted",
                             timeout=5.0)
            assert await _in_use_notes(rest, namespace, "DPUFlavor", "spare") == []
        finally:
            await controller.stop()
            await rest.close()

    run(scenario())


async def _gone(rest: Rest, kind: Kind, namespace: str, name: str) -> bool:
    return await rest.get(kind, name, namespace) is None


async def _phase(rest: Rest, namespace: str, name: str, phase: str) -> bool:
    obj = await rest.get(BFB, name, namespace)
    return obj is not None and (obj.get("status") or {}).get("phase") == phase
