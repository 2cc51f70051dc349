"""DPUServiceNAD against real apiservers: the host control plane and two DPU clusters (`dpu_kube`, and one started
here without Multus' NetworkAttachmentDefinition CRD, which is reported until it is installed).

The controller runs in-process as an admin. Each NAD written is checked as the SFC CNI plugin would read it
(its netconf parser, with the pool Multus passes per pod), so the kind is proven to produce a network our plugin
serves, not only an object of the right shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dpf.agent.cni import netconf
from dpf.controller.kube.rest import Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.dpuservicenad import DPU_SERVICE_NAD, NAD, RESOURCE_ANNOTATION
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.tools import REPO
from tests.controlplane.harness import controller_settings, dpu_cluster, eventually, host_rest, run, started

NAD_CRD = REPO / "lab" / "manifests" / "crds" / "network-attachment-definition-crd.yaml"


def dpuservicenad(namespace: str, name: str, **spec: Any) -> Obj:
    return {"apiVersion": DPU_SERVICE_NAD.api_version, "kind": DPU_SERVICE_NAD.kind,
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def condition(obj: Obj | None, type_: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or () if c["type"] == type_), {})


def as_the_plugin_reads_it(nad: Obj, pool: str = "pool1") -> netconf.Request:
    """The NAD's config as dpf-sfc-cni parses an ADD, with the pool Multus passes in args.cni."""
    config = json.loads(nad["spec"]["config"])
    config["args"] = {"cni": {"poolNames": [pool]}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "net1", "CNI_NETNS": "/var/run/netns/x",
           "CNI_ARGS": "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=svc-0;K8S_POD_UID=u1", "CNI_PATH": "/opt/cni/bin"}
    return netconf.parse("ADD", env, json.dumps(config), "dpf-sfc-cni")


async def message_of(rest: Rest, namespace: str, name: str, type_: str) -> str:
    return condition(await rest.get(DPU_SERVICE_NAD, name, namespace), type_).get("message", "")


def test_nad_in_every_dpu_cluster_for_the_sfc_cni_updated_refused_when_foreign_and_deleted(
        kube: ControlPlane, dpu_kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    dpu_kube.install_crds(NAD_CRD.parent)
    with ControlPlane(tmp_path / "dpu2", name="dpu2") as dpu2:  # DPF CRDs, not Multus' NAD CRD
        async def scenario() -> None:
            rest, one, two = (await host_rest(kube.kubeconfig), await host_rest(dpu_kube.kubeconfig),
                              await host_rest(dpu2.kubeconfig))
            controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
            try:
                await dpu_cluster(rest, namespace, dpu_kube.kubeconfig, "one")
                await dpu_cluster(rest, namespace, dpu2.kubeconfig, "two")
                await eventually(lambda: len(controller.clusters.dpu) == 2, "both DPU clusters connected")
                await rest.create(DPU_SERVICE_NAD, dpuservicenad(
                    namespace, "mybrsfc", resourceType="sf", bridge="br-sfc", mtu=1500, ipam=True,
                    metadata={"labels": {"team": "net"}, "annotations": {"note": "hbn"}}), namespace)

                # The cluster without the CRD is named; the other one has its NAD already.
                missing = await eventually(
                    lambda: _containing(message_of(rest, namespace, "mybrsfc", "DPUNADObjectReconciled"),
                                        "CRD"), "the missing CRD reported")
                assert f"DPU cluster {namespace}/two" in missing
                assert "network-attachment-definitions.k8s.cni.cncf.io" in missing
                nad = await eventually(lambda: one.get(NAD, "mybrsfc", namespace), "the NAD in DPU cluster one")
                assert nad["metadata"]["labels"]["team"] == "net"
                assert nad["metadata"]["labels"]["dpu.nvidia.com/dpuservicenad-name"] == "mybrsfc"
                assert nad["metadata"]["annotations"]["note"] == "hbn"
                assert nad["metadata"]["annotations"][RESOURCE_ANNOTATION] == "nvidia.com/bf_sf"
                read = as_the_plugin_reads_it(nad)
                assert (read.bridge, read.mtu) == ("br-sfc", 1500)
                assert read.ipam is not None
                assert read.ipam.in_agent
                assert read.ipam.pools == ("pool1",)

                # The CRD installed: the second cluster gets its NAD (and the namespace) without any other change.
                dpu2.install_crds(NAD_CRD.parent)
                await eventually(lambda: two.get(NAD, "mybrsfc", namespace), "the NAD in DPU cluster two")
                await eventually(lambda: _ready(rest, namespace, "mybrsfc"), "Ready")

                # A change reaches both clusters: veth asks for no device resource, no ipam, a default bridge.
                await rest.merge_patch(DPU_SERVICE_NAD, "mybrsfc", {"spec": {
                    "resourceType": "veth", "bridge": None, "mtu": 9000, "ipam": None}}, namespace)
                for client in (one, two):
                    changed = await eventually(lambda c=client: _with_mtu(c, namespace, 9000), "the NAD changed")
                    assert RESOURCE_ANNOTATION not in changed["metadata"]["annotations"]
                    config = json.loads(changed["spec"]["config"])
                    assert "ipam" not in config
                    assert as_the_plugin_reads_it(changed).bridge == "br-sfc"

                # A NAD of that name someone else made is not overwritten; the condition says so.
                await one.create(NAD, {"apiVersion": NAD.api_version, "kind": NAD.kind,
                                       "metadata": {"name": "handmade", "namespace": namespace},
                                       "spec": {"config": "{}"}}, namespace)
                await rest.create(DPU_SERVICE_NAD, dpuservicenad(namespace, "handmade", resourceType="veth"),
                                  namespace)
                refused = await eventually(lambda: _containing(
                    message_of(rest, namespace, "handmade", "DPUNADObjectReconciled"), "not overwritten"),
                    "the foreign NAD reported")
                assert f"DPU cluster {namespace}/one" in refused
                assert (await one.get(NAD, "handmade", namespace))["spec"]["config"] == "{}"  # type: ignore[index]

                # Delete: the NADs go from both clusters (the foreign one stays), then the objects.
                for name in ("mybrsfc", "handmade"):
                    await rest.delete(DPU_SERVICE_NAD, name, namespace)
                for name in ("mybrsfc", "handmade"):
                    await eventually(lambda n=name: _gone(rest, namespace, n), f"{name} gone")
                assert await one.get(NAD, "mybrsfc", namespace) is None
                assert await two.get(NAD, "mybrsfc", namespace) is None
                assert await one.get(NAD, "handmade", namespace) is not None
            finally:
                await controller.stop()
                for client in (rest, one, two):
                    await client.close()

        run(scenario(), timeout=150)


async def _containing(message_coro: Any, text: str) -> str | None:
    message = await message_coro
    return message if text in message else None


async def _ready(rest: Rest, namespace: str, name: str) -> bool:
    obj = await rest.get(DPU_SERVICE_NAD, name, namespace)
    return all(condition(obj, t).get("status") == "True" for t in ("Ready", "DPUNADObjectReconciled",
                                                                   "DPUNADObjectReady"))


async def _with_mtu(rest: Rest, namespace: str, mtu: int) -> Obj | None:
    nad = await rest.get(NAD, "mybrsfc", namespace)
    return nad if nad and json.loads(nad["spec"]["config"]).get("mtu") == mtu else None


async def _gone(rest: Rest, namespace: str, name: str) -> bool:
    return await rest.get(DPU_SERVICE_NAD, name, namespace) is None
