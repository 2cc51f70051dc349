"""DPUService `spec.configPorts` with the Helm backend against real parts: the host control plane, a DPU cluster
started here (its apiserver allocates the chart Service's node ports; the DaemonSet controller writes real status),
the Helm CLI and a chart (tests/services/charts/ports) that implements upstream's `exposedPorts` values.

The DPU cluster's Nodes are made by hand, tainted so no DaemonSet pod is wanted (there is no kubelet): Helm's --wait
then succeeds, and the Nodes' InternalIPs become the host EndpointSlice's endpoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpf.controller.kube.rest import KubeError, Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.dpuservice import DPU_SERVICE
from dpf.controller.reconcilers.dpuservice_configports import (
    CLUSTER_LABEL,
    ENDPOINT_SLICE,
    HOST_LABEL,
    NAME_LABEL,
    NAMESPACE_LABEL,
    SERVICE,
    chart_values,
    endpoints,
    node_selected,
)
from dpf.controller.reconcilers.kinds import NODE
from dpf.lab.bed.chart_repo import ChartRepo
from dpf.lab.bed.kube import ControlPlane
from tests.controlplane.harness import controller_settings, dpu_cluster, eventually, host_rest, run, started
from tests.services.conftest import SLOW, condition

CHART = Path(__file__).parent / "charts" / "ports"  # version 0.1.0
ROLE = "dpu.test/role"
WEB = {"name": "web", "port": 80, "protocol": "TCP"}
DNS = {"name": "dns", "port": 53, "protocol": "UDP"}


@pytest.fixture
def ports_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with ChartRepo(tmp_path / "chart-repo", (CHART,)) as repo:
        monkeypatch.setenv("SSL_CERT_FILE", str(repo.ca_file))
        yield repo.url


def dpuservice(namespace: str, name: str, repo_url: str, config_ports: dict[str, Any] | None) -> Obj:
    spec: dict[str, Any] = {
        "helmChart": {"source": {"repoURL": repo_url, "chart": "ports", "version": "0.1.0"}},
        "serviceDaemonSet": {"nodeSelector": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": ROLE, "operator": "In", "values": ["service"]}]}]}}}
    if config_ports is not None:
        spec["configPorts"] = config_ports
    return {"apiVersion": DPU_SERVICE.api_version, "kind": DPU_SERVICE.kind,
            "metadata": {"name": name, "namespace": namespace, "labels": {"team": "net"}}, "spec": spec}


def node(name: str, address: str, labels: dict[str, str]) -> Obj:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "spec": {"taints": [{"key": "dpu.test/no-kubelet", "effect": "NoSchedule"}]},
            "status": {"addresses": [{"type": "InternalIP", "address": address},
                                     {"type": "Hostname", "address": name}]}}


async def ports_reconciled(rest: Rest, namespace: str, name: str) -> Obj | None:
    """The DPUService once its current generation's ConfigPortsReconciled is True."""
    obj = await rest.get(DPU_SERVICE, name, namespace)
    if obj is None or (obj.get("status") or {}).get("observedGeneration") != obj["metadata"]["generation"]:
        return None
    return obj if condition(obj, "ConfigPortsReconciled").get("status") == "True" else None


async def ports_failed(rest: Rest, namespace: str, name: str, says: str) -> str:
    found = condition(await rest.get(DPU_SERVICE, name, namespace), "ConfigPortsReconciled")
    message = str(found.get("message", ""))
    return message if found.get("status") == "False" and says in message else ""


def by_name(ports: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in ports}


def test_config_ports_expose_the_dpu_service_in_the_host_cluster_follow_changes_and_go_away(
        kube: ControlPlane, namespace: str, ports_repo: str, tmp_path: Path) -> None:
    controllers = ("garbagecollector", "namespace", "daemonset")
    with ControlPlane(tmp_path / "dpu", name="dpuports", controllers=controllers) as dpu:
        async def scenario() -> None:
            rest, one = await host_rest(kube.kubeconfig), await host_rest(dpu.kubeconfig)
            controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
            try:
                # DPU Nodes: a is selected by serviceDaemonSet.nodeSelector, b is not, c has no host Node.
                await one.create(NODE, node("dpu-a", "10.9.0.1", {ROLE: "service", HOST_LABEL: "worker-a"}))
                await one.create(NODE, node("dpu-b", "10.9.0.2", {HOST_LABEL: "worker-b"}))
                await one.create(NODE, node("dpu-c", "10.9.0.3", {ROLE: "service"}))
                await dpu_cluster(rest, namespace, dpu.kubeconfig, "one")
                await eventually(lambda: len(controller.clusters.dpu) == 1, "the DPU cluster connected")

                # Bad input is refused by the apiserver, naming the field.
                with pytest.raises(KubeError, match=r"spec\.configPorts\.ports\[0\]\.port"):
                    await rest.create(DPU_SERVICE, dpuservice(namespace, "bad", ports_repo, {
                        "ports": [{**WEB, "port": 0}]}), namespace)

                await rest.create(DPU_SERVICE, dpuservice(namespace, "web", ports_repo,
                                                          {"serviceType": "NodePort", "ports": [WEB, DNS]}), namespace)
                obj = await eventually(lambda: ports_reconciled(rest, namespace, "web"), "configPorts reconciled", SLOW)

                # The chart's Service in the DPU cluster, found by upstream's labels.
                chart_service = await one.get(SERVICE, "one-web", namespace)
                assert chart_service is not None
                held_labels = chart_service["metadata"]["labels"]
                assert (held_labels[NAME_LABEL], held_labels[NAMESPACE_LABEL]) == ("web", namespace)
                dpu_ports = {p["name"]: p["nodePort"] for p in chart_service["spec"]["ports"]}
                assert set(dpu_ports) == {"web", "dns"}

                # The host cluster's Service: named as the DPUService, no selector, forwarding to the DPU node ports.
                service = await rest.get(SERVICE, "web", namespace)
                assert service is not None
                labels = service["metadata"]["labels"]
                assert (labels[NAME_LABEL], labels[NAMESPACE_LABEL]) == ("web", namespace)
                assert (labels[CLUSTER_LABEL], labels["team"]) == ("one", "net")  # the DPUService's own labels too
                owner = service["metadata"]["ownerReferences"][0]
                assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == \
                    ("DPUService", "web", obj["metadata"]["uid"], True)
                spec = service["spec"]
                assert spec["type"] == "NodePort"
                assert "selector" not in spec
                assert (spec["internalTrafficPolicy"], spec["externalTrafficPolicy"]) == ("Local", "Local")
                ports = by_name(spec["ports"])
                assert (ports["web"]["port"], ports["web"]["protocol"], ports["web"]["targetPort"]) == \
                    (80, "TCP", dpu_ports["web"])
                assert (ports["dns"]["port"], ports["dns"]["protocol"], ports["dns"]["targetPort"]) == \
                    (53, "UDP", dpu_ports["dns"])

                # Its EndpointSlice: the selected DPU Node that has a host Node, on the DPU node ports.
                slice_ = await rest.get(ENDPOINT_SLICE, "web", namespace)
                assert slice_ is not None
                assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == "web"
                assert slice_["addressType"] == "IPv4"
                assert [(e["addresses"], e["nodeName"]) for e in slice_["endpoints"]] == [(["10.9.0.1"], "worker-a")]
                assert {p["name"]: p["port"] for p in slice_["ports"]} == dpu_ports

                # status.configPorts: by DPUCluster name, the host Service's ports with the allocated node ports.
                reported = by_name(obj["status"]["configPorts"]["one"])
                assert reported == {"web": {**WEB, "nodePort": ports["web"]["nodePort"]},
                                    "dns": {**DNS, "nodePort": ports["dns"]["nodePort"]}}
                web_node_port = ports["web"]["nodePort"]

                # A change of ports: dns dropped (here and, through the chart, in the DPU cluster), web moved to 8081;
                # web keeps the node port clients were told.
                await rest.merge_patch(DPU_SERVICE, "web", {"spec": {"configPorts": {"ports": [
                    {**WEB, "port": 8081}]}}}, namespace)

                async def moved() -> Obj | None:
                    found = await ports_reconciled(rest, namespace, "web")
                    held = (await rest.get(SERVICE, "web", namespace) or {}).get("spec", {}).get("ports", [])
                    return found if [(p["name"], p["port"]) for p in held] == [("web", 8081)] else None

                obj = await eventually(moved, "the Service's ports changed", SLOW)
                assert obj["status"]["configPorts"]["one"] == [{**WEB, "port": 8081, "nodePort": web_node_port}]
                await eventually(lambda: _with_ports(one, namespace, "one-web", ["web"]),
                                 "the chart's Service without dns", SLOW)
                slice_ = await rest.get(ENDPOINT_SLICE, "web", namespace)
                assert slice_ is not None
                assert [p["name"] for p in slice_["ports"]] == ["web"]

                # A DPU Node now selected joins the EndpointSlice (a Node event, not a spec change).
                await one.merge_patch(NODE, "dpu-b", {"metadata": {"labels": {ROLE: "service"}}})
                await eventually(lambda: _endpoints(rest, namespace, "web", ["10.9.0.1", "10.9.0.2"]),
                                 "dpu-b's address in the EndpointSlice", SLOW)

                # A node port the host apiserver refuses: the condition names the Service and the apiserver's cause.
                await rest.merge_patch(DPU_SERVICE, "web", {"spec": {"configPorts": {"ports": [
                    {**WEB, "port": 8081, "nodePort": 80}]}}}, namespace)
                message = await eventually(lambda: ports_failed(rest, namespace, "web", f"Service {namespace}/web"),
                                           "the refused node port reported", SLOW)
                assert "range" in message, message
                assert condition(await rest.get(DPU_SERVICE, "web", namespace), "Ready")["status"] == "False"
                await rest.merge_patch(DPU_SERVICE, "web", {"spec": {"configPorts": {"ports": [
                    {**WEB, "port": 8081}]}}}, namespace)
                await eventually(lambda: ports_reconciled(rest, namespace, "web"), "reconciled again", SLOW)

                # A Service of that name that is not ours is not taken over, and gets no endpoints.
                foreign = {"apiVersion": "v1", "kind": "Service",
                           "metadata": {"name": "taken", "namespace": namespace, "labels": {"app": "other"}},
                           "spec": {"ports": [{"name": "x", "port": 9, "protocol": "TCP"}]}}
                await rest.create(SERVICE, foreign, namespace)
                await rest.create(DPU_SERVICE, dpuservice(namespace, "taken", ports_repo, {"ports": [WEB]}),
                                  namespace)
                message = await eventually(
                    lambda: ports_failed(rest, namespace, "taken", f"Service {namespace}/taken"),
                    "the foreign Service named", SLOW)
                assert "not taken over" in message, message
                held = await rest.get(SERVICE, "taken", namespace)
                assert held is not None
                assert held["metadata"]["labels"] == {"app": "other"}
                assert [p["port"] for p in held["spec"]["ports"]] == [9]
                assert await rest.get(ENDPOINT_SLICE, "taken", namespace) is None

                # configPorts removed: the Service and EndpointSlice go, and status.configPorts with them.
                await rest.merge_patch(DPU_SERVICE, "web", {"spec": {"configPorts": None}}, namespace)
                obj = await eventually(lambda: ports_reconciled(rest, namespace, "web"), "configPorts removed", SLOW)
                assert "configPorts" not in obj["status"]
                assert await rest.get(SERVICE, "web", namespace) is None
                assert await rest.get(ENDPOINT_SLICE, "web", namespace) is None
                await eventually(lambda: _none(one.get(SERVICE, "one-web", namespace)), "the chart's Service gone",
                                 SLOW)

                # Back, then the DPUService deleted: its Service is gone by the time the DPUService is.
                await rest.merge_patch(DPU_SERVICE, "web", {"spec": {"configPorts": {"ports": [WEB]}}}, namespace)
                await eventually(lambda: _exists(rest.get(SERVICE, "web", namespace)), "the Service made again", SLOW)
                await rest.delete(DPU_SERVICE, "web", namespace)
                await eventually(lambda: _none(rest.get(DPU_SERVICE, "web", namespace)), "the DPUService gone", SLOW)
                assert await rest.get(SERVICE, "web", namespace) is None
                assert await rest.get(ENDPOINT_SLICE, "web", namespace) is None
                await rest.delete(DPU_SERVICE, "taken", namespace)
                await eventually(lambda: _none(rest.get(DPU_SERVICE, "taken", namespace)), "the other one gone", SLOW)
                assert await rest.get(SERVICE, "taken", namespace) is not None  # the foreign Service stays
            finally:
                await controller.stop()
                for client in (rest, one):
                    await client.close()

        run(scenario(), timeout=600)


async def _with_ports(rest: Rest, namespace: str, name: str, names: list[str]) -> Obj | None:
    found = await rest.get(SERVICE, name, namespace)
    return found if found and [p["name"] for p in found["spec"]["ports"]] == names else None


async def _endpoints(rest: Rest, namespace: str, name: str, addresses: list[str]) -> bool:
    found = await rest.get(ENDPOINT_SLICE, name, namespace)
    return bool(found) and [e["addresses"][0] for e in found.get("endpoints") or ()] == addresses


async def _none(value: Any) -> bool:
    return await value is None


async def _exists(value: Any) -> bool:
    return await value is not None


def test_chart_values_and_the_node_selection_of_the_endpoints() -> None:
    obj = dpuservice("ns", "web", "https://charts.example", {"ports": [WEB, DNS]})
    assert chart_values(obj) == {"exposedPorts": {"labels": {NAME_LABEL: "web", NAMESPACE_LABEL: "ns"},
                                                  "ports": {"web": True, "dns": True}}}
    assert chart_values(dpuservice("ns", "web", "https://charts.example", None)) == {}
    gt = {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["2"]}]},
                                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}
    assert node_selected(node("n3", "10.0.0.3", {"gen": "3"}), gt)
    assert not node_selected(node("n2", "10.0.0.2", {"gen": "2"}), gt)
    assert node_selected(node("n1", "10.0.0.1", {}), gt)  # terms are ORed
    assert not node_selected(node("n1", "10.0.0.1", {}), {"nodeSelectorTerms": [{}]})  # an empty term: nothing
    ipv6 = node("n4", "fd00::4", {HOST_LABEL: "w4"})
    assert endpoints([ipv6, node("n5", "10.0.0.5", {HOST_LABEL: "w5"})], None) == [
        {"addresses": ["10.0.0.5"], "conditions": {"ready": True}, "nodeName": "w5"}]
