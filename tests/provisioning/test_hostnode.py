"""Host Node detection labels (controller/reconcilers/hostnode.py): a host agent's HostInfo report, sent over a
real NodeState stream to the real controller, labels the host Node as upstream's dpudetector + NFD do; a DPUSet
then creates the DPU from those labels; devices and the OOB bridge that go away take their labels with them,
and labels the reconciler does not own are never touched.

The stream client below sends what the host agent's runtime sends (Hello as a host, then full HostInfo status
reports); it stands in for `dpf agent host`, whose detection is tested on its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from dpf.controller.kube.rest import Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.dpuset import DPUSetReconciler
from dpf.controller.reconcilers.hostnode import HOST_INFO, HostNodeReconciler, desired_labels, label_patch
from dpf.controller.reconcilers.kinds import DPU, DPU_SET, NODE
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.process import free_port
from dpf.proto import versioning
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import nodestate_pb2_grpc as pb_grpc
from dpf.proto.v1 import provisioning_pb2 as ppb
from tests.controlplane.harness import controller_settings, eventually, host_rest, insecure, run, started
from tests.provisioning.test_dpuset import ISOLATE, example_dpuset

NFD = "feature.node.kubernetes.io/"
BF3 = ppb.HostDevice(pci_address="0000:08:00.0", device_id="0xa2dc", model="BlueField-3", pf0_name="ens1f0np0",
                     rshim="/dev/rshim0", psid="MT_0000000884")
BF2 = ppb.HostDevice(pci_address="0000:0b:00.0", device_id="0xa2d6", model="BlueField-2", pf0_name="ens2f0np0",
                     rshim="/dev/rshim1")


class HostAgentStream:
    """One host agent's NodeState stream, as its runtime opens it: Hello, Welcome, then status reports."""

    def __init__(self, port: int, node: str) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.call = pb_grpc.NodeStateStub(self.channel).Stream()
        self.node = node

    async def open(self) -> None:
        await self.call.write(pb.StreamRequest(hello=pb.Hello(node=self.node, role=pb.ROLE_HOST)))
        first = await self.call.read()
        assert first.HasField("welcome"), first

    async def report(self, info: ppb.HostInfo) -> None:
        await self.call.write(pb.StreamRequest(status=pb.StatusReport(type_url=HOST_INFO, full=True, objects=[
            pb.ObjectStatus(name="host", verdict=pb.VERDICT_PROGRAMMED, detail=versioning.pack(info))])))

    async def close(self) -> None:
        await self.call.done_writing()
        await self.channel.close()


@contextlib.asynccontextmanager
async def host_and_controller(kube: ControlPlane, namespace: str, labels: dict[str, str],
                              ) -> AsyncIterator[tuple[Rest, str, HostAgentStream]]:
    rest = await host_rest(kube.kubeconfig)
    node = f"{namespace}-host"
    port = free_port()
    controller = stream = None
    try:
        await rest.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": labels}})
        controller = await started(Controller(insecure(controller_settings(kube.kubeconfig, namespace, port)),
                                              reconcilers=[HostNodeReconciler, DPUSetReconciler]))
        stream = HostAgentStream(port, node)
        await stream.open()
        yield rest, node, stream
    finally:
        if stream is not None:
            await stream.close()
        if controller is not None:
            await controller.stop()
        await rest.delete(NODE, node)
        await rest.close()


async def labels_of(rest: Rest, node: str) -> dict[str, str]:
    found = await rest.get(NODE, node)
    return dict((found or {}).get("metadata", {}).get("labels") or {})


async def detection_labels(rest: Rest, node: str) -> dict[str, str]:
    return {k: v for k, v in (await labels_of(rest, node)).items() if k.startswith(NFD)}


async def dpu_names(rest: Rest, namespace: str) -> list[str]:
    return sorted(d["metadata"]["name"] for d in (await rest.list(DPU, namespace))["items"])


def test_detection_labels_come_and_go_and_a_dpuset_makes_the_dpu(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        foreign = {ISOLATE: namespace, NFD + "cpu-model.vendor_id": "Intel", NFD + "dpu-7-firmware": "x"}
        async with host_and_controller(kube, namespace, foreign) as (rest, node, agent):
            await rest.create(DPU_SET, example_dpuset(namespace), namespace)
            await agent.report(ppb.HostInfo(boot_id="b1", devices=[BF3, BF2], oob_bridge_configured=True))
            want = {NFD + "cpu-model.vendor_id": "Intel", NFD + "dpu-7-firmware": "x",
                    NFD + "dpu-enabled": "true", NFD + "dpu-oob-bridge-configured": "true",
                    NFD + "dpu-0-pci-address": "0000-08-00", NFD + "dpu-0-pf0-name": "ens1f0np0",
                    NFD + "dpu-0-ps-id": "MT_0000000884",
                    NFD + "dpu-1-pci-address": "0000-0b-00", NFD + "dpu-1-pf0-name": "ens2f0np0"}
            await eventually(lambda: _labels_are(rest, node, want), "the detection labels")
            # The user-visible proof: the upstream example DPUSet makes DPU 0 of this host from the labels.
            assert await eventually(lambda: dpu_names(rest, namespace), "the DPUSet's DPU") == [f"{node}-0000-08-00"]

            # The bridge loses its address and the BlueField-2 goes: their labels go, the rest stays.
            await agent.report(ppb.HostInfo(boot_id="b1", devices=[BF3]))
            want = {k: v for k, v in want.items() if "dpu-1-" not in k and "oob" not in k}
            await eventually(lambda: _labels_are(rest, node, want), "the BlueField-2 and OOB labels to go")

            # Someone removes a detection label by hand: it is put back.
            await rest.merge_patch(NODE, node, {"metadata": {"labels": {NFD + "dpu-0-pf0-name": None}}})
            await eventually(lambda: _labels_are(rest, node, want), "the removed label to come back")

            # No BlueField left: the node is no DPU host any more, and the DPUSet deletes its DPU.
            await agent.report(ppb.HostInfo(boot_id="b2"))
            await eventually(lambda: _labels_are(rest, node, {NFD + "cpu-model.vendor_id": "Intel",
                                                              NFD + "dpu-7-firmware": "x"}), "no DPU labels")
            await eventually(lambda: _no_dpus(rest, namespace), "the DPU to be deleted")
            assert (await labels_of(rest, node))[ISOLATE] == namespace

    run(scenario())


async def _labels_are(rest: Rest, node: str, want: dict[str, str]) -> bool:
    return await detection_labels(rest, node) == want


async def _no_dpus(rest: Rest, namespace: str) -> bool:
    return not await dpu_names(rest, namespace)


def test_a_label_value_kubernetes_refuses_is_left_out() -> None:
    odd = ppb.HostDevice(pci_address="0000:08:00.0", pf0_name="ens1f0np0@weird")
    assert desired_labels(ppb.HostInfo(devices=[odd])) == {NFD + "dpu-enabled": "true",
                                                           NFD + "dpu-0-pci-address": "0000-08-00"}


def test_only_owned_labels_are_removed() -> None:
    current: Obj = {NFD + "dpu-0-pci-address": "0000-08-00", NFD + "dpu-0-firmware": "x", NFD + "dpu-enabled": "true",
                    "dpu-0-pci-address": "mine", NFD + "dpu-oob-bridge-configured": "true"}
    assert label_patch(current, {}) == {NFD + "dpu-0-pci-address": None, NFD + "dpu-enabled": None,
                                        NFD + "dpu-oob-bridge-configured": None}
