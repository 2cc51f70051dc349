"""Upstream's hbn_ovn 05.2 (`tests/api/examples/hbn_ovn_dpudeployment.yaml`: DPUDeployment `ovn-hbn` with services
ovn, hbn, dts and blueman from templates and configurations, three chains, the interfaces, IPAMs and credential
request it reuses from 05.1) applied unchanged but for the BFB's url, plus the flavor upstream's operator ships
built in (`lab/manifests/hbn_ovn_flavor.yaml`), on DPUs the DPUDeployment's own DPUSet provisions
(`lab/provision.py`: emulated servers, host agents, each DPU's OS with OVS running the flavor's script, containerd
+ kubelet + Multus joined to the DPU cluster, and its DPU agent). The charts come from upstream's repositories as
the manifests name them, through the controller's chart mirrors (`lab/hbn_ovn.py`): the lab's stand-ins from its
http chart repository and, for ovn-kubernetes-chart, from its OCI registry.
Beside them, what upstream's operator installs in the DPU cluster (NADs mybrhbn and iprequest, `lab/hbn_ovn.py`)
and the cables: each DPU's uplinks p0/p1 wired to fabric namespaces, as the lab does.

Asserted: every DPU runs a real pod of each of the four DPUServices; HBN's pod has its three chain interfaces and
the two addresses it requests from the DPUServiceIPAM pools; br-ovn (from the flavor) is patched to br-sfc; the
interfaces and the chain are Ready; the DPUDeployment is Ready with every condition True. Deleting it removes
the chain, interfaces and services (their Helm releases and DaemonSets in the DPU cluster) before the DPUSet is
deleted, then the DPUSet with its DPUs and their Nodes, in upstream's order.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from dpf.controller.helm import find_helm
from dpf.lab import chains, dpuservice_pods, hbn_ovn
from dpf.lab.bed.chart_repo import ChartRepo
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.netns import NetnsBed
from dpf.lab.bed.oci_registry import OciRegistry
from dpf.lab.bed.process import wait_until
from dpf.lab.controller import ControllerProcess
from dpf.lab.dpus import EmulatedDpu
from dpf.lab.provision import BFB_FILE, NAMESPACE, Provisioning
from tests.api.helpers import example_documents

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns, kubelet and OVS"),
              pytest.mark.timeout(1200)]

HOSTS = 1
DEPLOYMENT = "ovn-hbn"
SERVICES = ("ovn", "hbn", "dts", "blueman")
HBN_INTERFACES = ("p0_if", "p1_if", "pf2dpu2_if")
READY_TIMEOUT = 300.0  # four Helm releases and their pods on every DPU, on a loaded 2-core machine
DELETE_TIMEOUT = 300.0
SVC = ("svc.dpu.nvidia.com", "v1alpha1")
PROVISIONING = ("provisioning.dpu.nvidia.com", "v1alpha1")
CHILD_PLURALS = ("dpuservicechains", "dpuserviceinterfaces", "dpuservices")
LEFTOVER_KINDS = ("dpudeployments", "dpuservicechains", "dpuserviceinterfaces", "dpuservices", "dpuserviceipams",
                  "dpuservicecredentialrequests", "dpuservicetemplates", "dpuserviceconfigurations", "dpusets",
                  "dpus", "bfbs", "dpuflavors", "dpuclusters")


def say(message: str) -> None:
    print(f"[hbn_ovn] {message}", flush=True)


def upstream_manifests(bfb_url: str) -> list[dict[str, Any]]:
    """05.2's objects as upstream wrote them, the BFB's url on the lab's file server (the one change)."""
    docs = example_documents("hbn_ovn_dpudeployment.yaml", NAMESPACE)
    for doc in docs:
        if doc["kind"] == "BFB":
            doc["spec"]["url"] = bfb_url
    return docs


def conditions(obj: dict[str, Any] | None) -> dict[str, str]:
    return {c["type"]: c["status"] for c in ((obj or {}).get("status") or {}).get("conditions") or ()}


def fresh_and_ready(obj: dict[str, Any] | None) -> bool:
    status = (obj or {}).get("status") or {}
    return obj is not None and status.get("observedGeneration") == obj["metadata"].get("generation") and \
        conditions(obj).get("Ready") == "True"


def names(items: list[Any]) -> list[str]:
    """The names of listed Kubernetes client objects."""
    return [item.metadata.name for item in items if item.metadata is not None and item.metadata.name]


def owned(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in items if (o["metadata"].get("labels") or {}).get("svc.dpu.nvidia.com/owned-by-dpudeployment")
            == f"{NAMESPACE}_{DEPLOYMENT}"]


class HostView:
    def __init__(self, kube: ControlPlane) -> None:
        self.custom = k8s.CustomObjectsApi(kube.client)

    def list(self, plural: str, group: tuple[str, str] = SVC) -> list[dict[str, Any]]:
        return list(cast(dict, self.custom.list_namespaced_custom_object(*group, NAMESPACE, plural))["items"])

    def get(self, plural: str, name: str, group: tuple[str, str] = SVC) -> dict[str, Any] | None:
        try:
            return cast(dict, self.custom.get_namespaced_custom_object(*group, NAMESPACE, plural, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise


@contextlib.contextmanager
def short_workdir() -> Iterator[Path]:
    """A work directory short enough for the emulated servers' unix sockets (108 bytes with the path), which
    pytest's tmp_path (its name grows with every session's number) can exceed."""
    path = Path(tempfile.mkdtemp(prefix="dpf-hov-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def upstream_namespace(kube: ControlPlane) -> Iterator[None]:
    """dpf-operator-system in the host cluster, as upstream's manifests name it; after the test (the controller
    stopped), finalizers a failure left are dropped so the namespace goes."""
    core = k8s.CoreV1Api(kube.client)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))
    try:
        yield
    finally:
        # `kubectl patch` takes names, not `--all`: each leftover is patched by name.
        listed = kube.kubectl("get", ",".join(LEFTOVER_KINDS), "-n", NAMESPACE, "-o", "name").stdout.split()
        for name in listed:
            kube.kubectl("patch", name, "-n", NAMESPACE, "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
                         check=False)  # gone meanwhile
        kube.delete_namespace(NAMESPACE)


def delete_host_nodes(kube: ControlPlane, provisioning: Provisioning) -> None:
    """The host cluster's Nodes of the emulated servers (the session's cluster outlives the test)."""
    for server in provisioning.servers:
        with contextlib.suppress(ApiException):
            k8s.CoreV1Api(kube.client).delete_node(server.node)


def test_upstream_hbn_ovn_dpudeployment_reaches_ready_on_provisioned_dpus_and_goes_in_order(
        kube: ControlPlane, netns: NetnsBed) -> None:
    host = HostView(kube)
    with short_workdir() as tmp_path, upstream_namespace(kube), contextlib.ExitStack() as stack:
        provisioning = Provisioning(kube, tmp_path, stack, say, hosts=HOSTS, bfb_size=16 << 20, flash_rate=None)
        stack.callback(delete_host_nodes, kube, provisioning)
        cluster = provisioning.start_dpu_cluster()
        charts = ChartRepo(tmp_path / "chart-repo", hbn_ovn.http_charts())
        stack.callback(charts.stop)
        charts.start()
        registry = stack.enter_context(OciRegistry(tmp_path / "registry"))
        hbn_ovn.push_oci_charts(registry, find_helm())
        controller = ControllerProcess(kube.kubeconfig, NAMESPACE, tmp_path / "controller", provisioning.bfb_dir,
                                       chart_mirrors=hbn_ovn.mirrors(charts, registry),
                                       ca_file=hbn_ovn.ca_bundle(tmp_path / "ca.crt", charts, registry))
        provisioning.bfb_dir.mkdir(parents=True, exist_ok=True)
        stack.callback(controller.stop)
        controller.start(log_level=os.environ.get("DPF_TEST_LOG_LEVEL", "info"))

        def apply(objects: list[dict[str, Any]], plane: ControlPlane = kube) -> None:
            plane.kubectl("apply", "--server-side", "-f", "-", input=chains.to_yaml(objects))

        provisioning.register_dpu_cluster(apply)
        cluster.install_crds(chains.MANIFESTS / "crds")
        apply(hbn_ovn.system_nads(NAMESPACE), cluster)  # upstream's operator deploys these into the DPU cluster
        provisioning.start_servers(controller)
        files = provisioning.serve_bfbs()

        started = time.monotonic()
        apply([hbn_ovn.flavor(NAMESPACE), *upstream_manifests(files.url(BFB_FILE))])
        provisioning.watch(started, lambda dpus: len(dpus) == provisioning.expected and
                           all(d.phases and d.phases[-1][0] == "Ready" for d in dpus.values()),
                           f"the {provisioning.expected} DPUs of DPUSet {DEPLOYMENT}-dpuset1 Ready")
        provisioning.wait_agents()
        dpus = list(provisioning.dpus.values())
        nodes = [d.name for d in dpus]
        for i, view in enumerate(dpus):
            # The cables: each DPU's uplinks p0/p1 (the physical interfaces) as veths to fabric namespaces, as the
            # lab wires its provisioned DPUs (`lab/sfc_demo.py`); the flavor's script already put p0 on br-sfc.
            dpu = EmulatedDpu(view.name, netns, view.workdir, short=f"d{i}", ovs=view.ovs())
            for port in ("p0", "p1"):
                dpu.uplink(port, f"10.9{i}.{port[1]}.1/24", f"d{i}f{port[1]}")

        def deployment_ready() -> bool:
            return fresh_and_ready(host.get("dpudeployments", DEPLOYMENT))

        try:
            wait_until(deployment_ready, READY_TIMEOUT, f"DPUDeployment {DEPLOYMENT} Ready", interval=0.5,
                       while_alive=[controller.child, *(s.machine for s in provisioning.servers)])
        except TimeoutError as exc:
            state = {kind: {o["metadata"]["name"]: [f"{c['type']}={c['status']} {c.get('message', '')}"
                                                    for c in (o.get("status") or {}).get("conditions") or ()
                                                    if c["status"] != "True"]
                            for o in host.list(kind)} for kind in ("dpudeployments", *CHILD_PLURALS)}
            raise AssertionError(f"{exc}: {state}\ncontroller log: {controller.workdir / 'controller.log'}") from None
        took = time.monotonic() - started
        deployment = host.get("dpudeployments", DEPLOYMENT)
        assert conditions(deployment), deployment
        assert set(conditions(deployment).values()) == {"True"}, conditions(deployment)

        # Each service: its DPUService Ready, and a real pod of it Running on every DPU (its kubelet's).
        services = {o["metadata"]["name"]: o for o in owned(host.list("dpuservices"))}
        assert sorted(services) == sorted(f"{DEPLOYMENT}-{s}" for s in SERVICES)
        for service in SERVICES:
            obj = services[f"{DEPLOYMENT}-{service}"]
            assert fresh_and_ready(obj), conditions(obj)
            for node in nodes:
                pods = dpuservice_pods.pods_on(cluster, NAMESPACE, obj["spec"]["serviceID"], node)
                assert [p.status.phase for p in pods] == ["Running"], f"{service} on {node}: {names(pods)}"
        source = services[f"{DEPLOYMENT}-ovn"]["spec"]["helmChart"]["source"]
        assert (source["repoURL"], source["chart"], source["version"]) == \
            ("oci://ghcr.io/nvidia", "ovn-kubernetes-chart", "v24.10.0"), "the manifests' source, not the mirror"

        # HBN's pods: the chain interfaces (NAD mybrhbn) and the addresses requested through NAD iprequest, the
        # loopback's a /32 of pool loopback, ip_pf2dpu2's pool1's gateway (allocateDefaultGateway).
        hbn_id = services[f"{DEPLOYMENT}-hbn"]["spec"]["serviceID"]
        loopback, pool1 = ipaddress.ip_network("11.0.0.0/24"), ipaddress.ip_network("10.0.120.0/22")
        for node in nodes:
            pod = dpuservice_pods.pods_on(cluster, NAMESPACE, hbn_id, node)[0]
            status = {n.get("interface"): n for n in dpuservice_pods.network_status(pod) or ()}
            assert set(HBN_INTERFACES) <= set(status), f"{node}: {sorted(status)}"
            lo = ipaddress.ip_address(status["ip_lo"]["ips"][0])
            pf2dpu2 = ipaddress.ip_address(status["ip_pf2dpu2"]["ips"][0])
            assert lo in loopback, (node, lo)
            assert pf2dpu2 in pool1, (node, pf2dpu2)

        # The ovn interface: br-ovn from the flavor's OVS script, patched to br-sfc by the DPU agent.
        for view in dpus:
            ovs = view.ovs()
            assert "br-ovn" in ovs.vsctl("list-br").stdout.split(), view.name
            assert "puplinkbrovn" in ovs.vsctl("list-ports", "br-ovn").stdout.split(), view.name
            peer = ovs.vsctl("get", "Interface", "puplinkbrovn", "options:peer").stdout.strip().strip('"')
            assert peer == "puplinkbrsfc", (view.name, peer)
        interfaces = owned(host.list("dpuserviceinterfaces"))
        assert sorted(o["metadata"]["name"] for o in interfaces) == \
            sorted(f"{DEPLOYMENT}-hbn-{i.replace('_', '-')}" for i in HBN_INTERFACES)
        for name in ("p0", "p1", "ovn", *(o["metadata"]["name"] for o in interfaces)):
            assert fresh_and_ready(host.get("dpuserviceinterfaces", name)), name
        chain = host.get("dpuservicechains", DEPLOYMENT)
        assert fresh_and_ready(chain), conditions(chain)
        say(f"DPUDeployment {DEPLOYMENT} Ready {took:.1f}s after it was applied (DPUs provisioned by its DPUSet)")

        # Delete: chain, interfaces and services go first (their releases uninstalled), only then the DPUSet.
        dpuset = f"{DEPLOYMENT}-dpuset1"
        assert host.get("dpusets", dpuset, PROVISIONING) is not None
        kube.kubectl("delete", "dpudeployment", DEPLOYMENT, "-n", NAMESPACE, "--wait=false")
        apps = k8s.AppsV1Api(cluster.client)
        order: list[str] = []

        def gone() -> bool:
            # The DPUSet is read first: once it is being deleted (or gone), no child may be left.
            found = host.get("dpusets", dpuset, PROVISIONING)
            deleting = found is None or bool(found["metadata"].get("deletionTimestamp"))
            left = {plural: [o["metadata"]["name"] for o in owned(host.list(plural))] for plural in CHILD_PLURALS}
            if deleting and any(left.values()):
                raise AssertionError(f"DPUSet {dpuset} deleted while {left} remained (upstream: services first)")
            for plural, names in left.items():
                if not names and plural not in order:
                    order.append(plural)
            if deleting and "dpusets" not in order:
                order.append("dpusets")
            return found is None and host.get("dpudeployments", DEPLOYMENT) is None

        wait_until(gone, DELETE_TIMEOUT, f"DPUDeployment {DEPLOYMENT} and its DPUSet gone", interval=0.2,
                   while_alive=[controller.child])
        assert order[-1] == "dpusets", order
        assert not names(apps.list_namespaced_daemon_set(NAMESPACE).items), "the releases' DaemonSets"
        dpu_core = k8s.CoreV1Api(cluster.client)
        assert not names(dpu_core.list_namespaced_secret(NAMESPACE, label_selector="owner=helm").items), "releases"
        assert not host.list("dpus", PROVISIONING)
        wait_until(lambda: not set(nodes) & set(names(dpu_core.list_node().items)), 60,
                   "the DPUs' Nodes removed from the DPU cluster")
        # The dependencies it marked are released (upstream's finalizer and consumed-by label gone), not deleted.
        for plural, group in (("dpuservicetemplates", SVC), ("dpuserviceconfigurations", SVC), ("bfbs", PROVISIONING),
                              ("dpuflavors", PROVISIONING)):
            for obj in host.list(plural, group):
                meta = obj["metadata"]
                assert "dpu.nvidia.com/dpudeployment" not in (meta.get("finalizers") or ()), (plural, meta["name"])
                assert "dpu.nvidia.com/consumed-by-dpudeployment-name" not in (meta.get("labels") or {}), meta["name"]
        assert len(host.list("dpuservicetemplates")) == len(SERVICES)
        say(f"deleted in order: {' → '.join(order)}")
