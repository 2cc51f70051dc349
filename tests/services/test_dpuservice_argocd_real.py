"""DPUService with the ArgoCD backend against ArgoCD itself (v3.6.2: its application controller, repo server and a
Redis, lab/bed/argocd.py), a host control plane with ArgoCD's own CRDs, a DPU cluster with kube-controller-manager's
DaemonSet controller (real DaemonSet status, so ArgoCD's health is its own reading) and the test chart served over
loopback HTTPS.

What a user sees: ArgoCD renders the chart with the values the controller put in the Application and syncs it into
the DPU cluster (Synced/Healthy written by ArgoCD), the DPUService goes Ready; the same from an OCI registry
(upstream's scheme-less repoURL) and with deployInCluster (Argo's `in-cluster`, the host); a changed value rolls the
DaemonSet and Ready waits for it; deleting a DPUService makes ArgoCD delete what it deployed (its cascading
finalizer) and the DPUService goes.
The DPU cluster has no Nodes: its DaemonSet wants 0 pods, which ArgoCD's health reads as Healthy once the DaemonSet
controller observed it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from dpf.controller import argocd
from dpf.controller.helm import find_helm
from dpf.controller.kube.rest import Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.dpuservice import DAEMON_SET, DPU_SERVICE
from dpf.controller.reconcilers.dpuservice_configports import ENDPOINT_SLICE, HOST_LABEL, SERVICE
from dpf.controller.reconcilers.kinds import NAMESPACE, NODE
from dpf.controller.settings import ServicesSettings
from dpf.lab.bed.argocd import ArgoCD
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.oci_registry import OciRegistry
from tests.controlplane.harness import controller_settings, eventually, host_rest, run, started
from tests.services.conftest import CHART, assert_tiny_daemonset, condition, ready
from tests.services.test_dpuservice_argocd import inline_kubeconfig, register_dpu_cluster
from tests.services.test_dpuservice_configports import CHART as PORTS_CHART
from tests.services.test_dpuservice_configports import ROLE, WEB, ports_reconciled
from tests.services.test_dpuservice_configports import dpuservice as ports_service
from tests.services.test_dpuservice_configports import node as ports_node
from tests.services.test_dpuservice_helm import dpuservice

# ArgoCD's first sync: the repo server fetching the index and the chart and running `helm template`, the
# application controller listing the DPU cluster's every API for its cluster cache, then the DaemonSet controller's
# first status; ~15 s idle, several times that on the shared 2-core machine.
ARGO_SLOW = 150.0
TRACKING = "argocd.argoproj.io/tracking-id"  # what ArgoCD stamps on every object it applies


async def argocd_controller(rest: Rest, host: ControlPlane, operator: str, service_ns: str) -> Controller:
    """The DPUServices' namespace made, and the controller started with the argocd backend, watching every
    namespace (the DPUServices are not in the operator's)."""
    await rest.create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": service_ns}})
    settings = dataclasses.replace(controller_settings(host.kubeconfig, operator),
                                   services=ServicesSettings(backend="argocd"))
    settings = dataclasses.replace(settings, kube=dataclasses.replace(settings.kube, watch_namespace=None))
    return await started(Controller(settings))


async def synced_healthy(rest: Rest, namespace: str, name: str, revision: str = "") -> Obj | None:
    """The Application when ArgoCD itself reports it Synced and Healthy and its last sync operation Succeeded (at
    `revision`, the chart version). Synced+Healthy can come while the operation still reads Running."""
    app = await rest.get(argocd.APPLICATION, name, namespace)
    status = (app or {}).get("status") or {}
    sync, health = status.get("sync") or {}, status.get("health") or {}
    phase = (status.get("operationState") or {}).get("phase")
    if (sync.get("status"), health.get("status"), phase) != ("Synced", "Healthy", "Succeeded"):
        return None
    return app if not revision or sync.get("revision") == revision else None


async def daemonset(rest: Rest, namespace: str, name: str, image: str) -> Obj | None:
    ds = await rest.get(DAEMON_SET, name, namespace)
    return ds if ds and ds["spec"]["template"]["spec"]["containers"][0]["image"] == image else None


async def gone(rest: Rest, kind: Any, name: str, namespace: str) -> bool:
    return await rest.get(kind, name, namespace) is None


def test_argocd_syncs_the_dpuservice_into_the_dpu_cluster_rolls_a_change_and_deletes_it(
        tmp_path: Path, chart_repo: str) -> None:
    timings: dict[str, float] = {}
    rss: dict[str, float] = {}
    operator, service_ns = "dpf-operator-system", "argo-real"
    dpu_controllers = ("garbagecollector", "namespace", "daemonset")  # GC: Argo deletes in the foreground
    # The host too runs the DaemonSet controller: a deployInCluster DPUService's DaemonSet is in the host cluster.
    with ControlPlane(tmp_path / "host", name="argoreal", controllers=dpu_controllers) as host, \
            ControlPlane(tmp_path / "dpu", name="argodpu", controllers=dpu_controllers) as dpu_kube, \
            OciRegistry(tmp_path / "registry") as registry:
        registry.push_chart(find_helm(), CHART, "nvidia/doca")
        # One bundle with both CAs (the chart_repo fixture's and the registry's), as the lab gives its controller.
        bundle = tmp_path / "cas.pem"
        bundle.write_bytes((tmp_path / "chart-repo" / "pki" / "ca.crt").read_bytes() + registry.ca_file.read_bytes())
        begin = time.monotonic()
        with ArgoCD(tmp_path / "argocd", host, operator, env={"SSL_CERT_FILE": str(bundle)}) as argo:
            timings["argocd start"] = time.monotonic() - begin

            async def scenario() -> None:
                rest, dpu = await host_rest(host.kubeconfig), await host_rest(dpu_kube.kubeconfig)
                controller = await argocd_controller(rest, host, operator, service_ns)
                try:
                    await register_dpu_cluster(rest, operator, inline_kubeconfig(dpu_kube.kubeconfig), "one")
                    await eventually(lambda: len(controller.clusters.dpu) == 1, "the DPU cluster connected")

                    begin = time.monotonic()
                    await rest.create(DPU_SERVICE, dpuservice(service_ns, "tiny", chart_repo), service_ns)
                    app = await eventually(lambda: synced_healthy(rest, operator, "one-tiny", "0.1.0"),
                                           "ArgoCD reporting Application one-tiny Synced and Healthy", ARGO_SLOW)
                    assert [(r["kind"], r["name"], r["namespace"]) for r in app["status"]["resources"]] == [
                        ("DaemonSet", "one-tiny", service_ns)]
                    obj = await eventually(lambda: ready(rest, service_ns, "tiny"), "the DPUService Ready", 60)
                    timings["install"] = time.monotonic() - begin
                    for type_ in ("ApplicationPrereqsReconciled", "ApplicationsReconciled", "ApplicationsReady"):
                        assert condition(obj, type_)["status"] == "True", condition(obj, type_)

                    # ArgoCD applied the chart with the values the controller merged in (release = Application name).
                    ds = await dpu.get(DAEMON_SET, "one-tiny", service_ns)
                    assert_tiny_daemonset(ds)
                    assert ds is not None
                    assert TRACKING in ds["metadata"]["annotations"], "ArgoCD applied it"

                    # An OCI source: the Application names the registry without oci:// (upstream's shape), which
                    # ArgoCD takes for an OCI Helm registry and pulls with `helm pull oci://`.
                    begin = time.monotonic()
                    await rest.create(DPU_SERVICE, dpuservice(service_ns, "ocitiny", registry.url("nvidia/doca")),
                                      service_ns)
                    app = await eventually(lambda: synced_healthy(rest, operator, "one-ocitiny", "0.1.0"),
                                           "ArgoCD reporting Application one-ocitiny Synced and Healthy", ARGO_SLOW)
                    assert app["spec"]["source"]["repoURL"] == f"{registry.host}/nvidia/doca"
                    await eventually(lambda: ready(rest, service_ns, "ocitiny"), "the OCI DPUService Ready", 60)
                    assert await daemonset(dpu, service_ns, "one-ocitiny", "tiny:1")
                    timings["install from OCI"] = time.monotonic() - begin

                    # deployInCluster: Argo's `in-cluster` (here the host, through the bed's kubeconfig), project
                    # doca-platform-project-host.
                    begin = time.monotonic()
                    in_host = dpuservice(service_ns, "hosttiny", chart_repo)
                    in_host["spec"]["deployInCluster"] = True
                    await rest.create(DPU_SERVICE, in_host, service_ns)
                    await eventually(lambda: synced_healthy(rest, operator, "in-cluster-hosttiny", "0.1.0"),
                                     "ArgoCD reporting Application in-cluster-hosttiny Synced and Healthy", ARGO_SLOW)
                    await eventually(lambda: ready(rest, service_ns, "hosttiny"), "the in-cluster DPUService Ready",
                                     60)
                    assert await daemonset(rest, service_ns, "in-cluster-hosttiny", "tiny:1")
                    assert await dpu.get(DAEMON_SET, "in-cluster-hosttiny", service_ns) is None
                    timings["install in-cluster"] = time.monotonic() - begin

                    # A changed value: the controller updates the Application, ArgoCD rolls the DaemonSet.
                    begin = time.monotonic()
                    await rest.merge_patch(DPU_SERVICE, "tiny",
                                           {"spec": {"helmChart": {"values": {"image": "tiny:2"}}}}, service_ns)
                    # Ready at the new generation means ArgoCD deployed the change, not that its status of the
                    # previous values still reads Synced and Healthy (the race controller/argocd.py readiness closes).
                    obj = await eventually(lambda: ready(rest, service_ns, "tiny"), "Ready after the change",
                                           ARGO_SLOW)
                    assert await daemonset(dpu, service_ns, "one-tiny", "tiny:2"), \
                        f"the DPUService was Ready before ArgoCD rolled the change: {obj['status']}"
                    app = await rest.get(argocd.APPLICATION, "one-tiny", operator)
                    assert app is not None
                    status = app["status"]
                    assert (status["sync"]["status"], status["health"]["status"]) == ("Synced", "Healthy"), status
                    assert status["sync"]["comparedTo"]["source"]["helm"]["valuesObject"]["image"] == "tiny:2"
                    # ArgoCD's sync operation may still read Running for a moment after it reports Synced.
                    await eventually(lambda: synced_healthy(rest, operator, "one-tiny"),
                                     "ArgoCD's sync of the change Succeeded", ARGO_SLOW)
                    timings["change"] = time.monotonic() - begin
                    rss.update(argo.rss_mb())

                    # Delete: ArgoCD's finalizer deletes the DaemonSet, then the Application and the DPUService go.
                    begin = time.monotonic()
                    await rest.delete(DPU_SERVICE, "tiny", service_ns)
                    await eventually(lambda: gone(dpu, DAEMON_SET, "one-tiny", service_ns),
                                     "ArgoCD deleting the DaemonSet", ARGO_SLOW)
                    assert await dpu.get(DAEMON_SET, "one-ocitiny", service_ns) is not None, "only tiny's went"
                    await eventually(lambda: gone(rest, argocd.APPLICATION, "one-tiny", operator),
                                     "the Application gone", ARGO_SLOW)
                    await eventually(lambda: gone(rest, DPU_SERVICE, "tiny", service_ns), "the DPUService gone",
                                     ARGO_SLOW)
                    timings["delete"] = time.monotonic() - begin
                    await rest.delete(DPU_SERVICE, "hosttiny", service_ns)
                    await eventually(lambda: gone(rest, DAEMON_SET, "in-cluster-hosttiny", service_ns),
                                     "ArgoCD deleting the in-cluster DaemonSet", ARGO_SLOW)
                    await rest.delete(DPU_SERVICE, "ocitiny", service_ns)
                    await eventually(lambda: gone(dpu, DAEMON_SET, "one-ocitiny", service_ns),
                                     "ArgoCD deleting the OCI DPUService's DaemonSet", ARGO_SLOW)
                    await eventually(lambda: gone(rest, DPU_SERVICE, "ocitiny", service_ns),
                                     "the OCI DPUService gone", ARGO_SLOW)
                finally:
                    await controller.stop()
                    for client in (rest, dpu):
                        await client.close()

            run(scenario(), timeout=600)
    print(f"dpuservice argocd (real) timings: {', '.join(f'{k} {v:.1f}s' for k, v in timings.items())}; "
          f"RSS MB: {', '.join(f'{k} {v:.0f}' for k, v in rss.items())}")


def test_config_ports_with_argocd_expose_the_service_and_follow_a_dpu_node_at_once(tmp_path: Path) -> None:
    """configPorts with the argocd backend: ArgoCD syncs the ports chart (its NodePort Service in the DPU cluster,
    from the OCI registry), the host cluster gets the Service and the EndpointSlice of the selected DPU Nodes, and a
    DPU Node that joins is in the slice well before the DPUService's 60 s resync. (Here ArgoCD's own status writes,
    which follow the DPU cluster, re-enqueue the DPUService too; the controller's DPU Node watch is what makes it
    independent of them.)"""
    operator, service_ns = "dpf-operator-system", "argo-ports"
    controllers = ("garbagecollector", "namespace", "daemonset")
    with ControlPlane(tmp_path / "host", name="argoports", controllers=controllers) as host, \
            ControlPlane(tmp_path / "dpu", name="argoportsdpu", controllers=controllers) as dpu_kube, \
            OciRegistry(tmp_path / "registry") as registry:
        registry.push_chart(find_helm(), PORTS_CHART, "nvidia/ports")
        with ArgoCD(tmp_path / "argocd", host, operator, env={"SSL_CERT_FILE": str(registry.ca_file)}):
            async def scenario() -> None:
                rest, dpu = await host_rest(host.kubeconfig), await host_rest(dpu_kube.kubeconfig)
                controller = await argocd_controller(rest, host, operator, service_ns)
                try:
                    await dpu.create(NODE, ports_node("dpu-a", "10.9.0.1", {ROLE: "service", HOST_LABEL: "worker-a"}))
                    await register_dpu_cluster(rest, operator, inline_kubeconfig(dpu_kube.kubeconfig), "one")
                    await eventually(lambda: len(controller.clusters.dpu) == 1, "the DPU cluster connected")
                    await rest.create(DPU_SERVICE, ports_service(service_ns, "web", registry.url("nvidia/ports"), {
                        "serviceType": "NodePort", "ports": [WEB]}), service_ns)
                    await eventually(lambda: synced_healthy(rest, operator, "one-web", "0.1.0"),
                                     "ArgoCD reporting Application one-web Synced and Healthy", ARGO_SLOW)
                    await eventually(lambda: ports_reconciled(rest, service_ns, "web"), "configPorts reconciled",
                                     ARGO_SLOW)
                    chart_service = await dpu.get(SERVICE, "one-web", service_ns)
                    assert chart_service is not None, "ArgoCD applied the chart's Service"
                    node_port = chart_service["spec"]["ports"][0]["nodePort"]
                    service = await rest.get(SERVICE, "web", service_ns)
                    assert service is not None
                    assert service["spec"]["ports"][0]["targetPort"] == node_port
                    await eventually(lambda: slice_addresses(rest, service_ns, "web", ["10.9.0.1"]),
                                     "dpu-a in the EndpointSlice", 30)

                    # Seen at once: a quarter of the resync period is the bound (room for a loaded machine).
                    await dpu.create(NODE, ports_node("dpu-b", "10.9.0.2", {ROLE: "service", HOST_LABEL: "worker-b"}))
                    await eventually(lambda: slice_addresses(rest, service_ns, "web", ["10.9.0.1", "10.9.0.2"]),
                                     "dpu-b in the EndpointSlice before the 60 s resync", 15)

                    await rest.delete(DPU_SERVICE, "web", service_ns)
                    await eventually(lambda: gone(rest, DPU_SERVICE, "web", service_ns), "the DPUService gone",
                                     ARGO_SLOW)
                    await eventually(lambda: gone(rest, SERVICE, "web", service_ns), "the host Service gone", 60)
                    await eventually(lambda: gone(dpu, SERVICE, "one-web", service_ns),
                                     "ArgoCD deleting the chart's Service", ARGO_SLOW)
                finally:
                    await controller.stop()
                    for client in (rest, dpu):
                        await client.close()

            run(scenario(), timeout=600)


async def slice_addresses(rest: Rest, namespace: str, name: str, addresses: list[str]) -> bool:
    found = await rest.get(ENDPOINT_SLICE, name, namespace)
    return found is not None and sorted(a for e in found["endpoints"] or () for a in e["addresses"]) == addresses
