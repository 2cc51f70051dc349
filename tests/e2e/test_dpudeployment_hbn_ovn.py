"""Upstream's hbn_ovn 05.2 end to end, as `dpf lab --use-case hbn_ovn` runs it (`lab/hbn_ovn_demo.py`): the
DPUDeployment `ovn-hbn` (`lab/manifests/upstream/hbn_ovn_dpudeployment.yaml`, services ovn, hbn, dts and blueman)
applied unchanged but for the BFB's url, plus upstream's built-in flavor, on DPUs the DPUDeployment's own DPUSet
provisions (emulated servers, host agents, each DPU's OS with OVS running the flavor's script, containerd + kubelet
+ Multus joined to the DPU cluster, and its DPU agent), the charts through the controller's chart mirrors.

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from dpf.lab import chains, dpuservice_pods
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.netns import NetnsBed
from dpf.lab.bed.process import wait_until
from dpf.lab.controller import ControllerProcess
from dpf.lab.hbn_ovn_demo import (
    CHILD_PLURALS,
    DEPLOYMENT,
    PROVISIONING,
    SERVICES,
    SVC,
    ChartSources,
    HbnOvnDeployment,
    HostView,
    conditions,
    fresh_and_ready,
    owned,
    serve_and_deploy,
)
from dpf.lab.provision import NAMESPACE, Provisioning

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns, kubelet and OVS"),
              pytest.mark.timeout(1200)]

HOSTS = 1
HBN_INTERFACES = ("p0_if", "p1_if", "pf2dpu2_if")
DELETE_TIMEOUT = 300.0
LEFTOVER_KINDS = ("dpudeployments", "dpuservicechains", "dpuserviceinterfaces", "dpuservices", "dpuserviceipams",
                  "dpuservicecredentialrequests", "dpuservicetemplates", "dpuserviceconfigurations", "dpusets",
                  "dpus", "bfbs", "dpuflavors", "dpuclusters")


def say(message: str) -> None:
    print(f"[hbn_ovn] {message}", flush=True)


def names(items: list[Any]) -> list[str]:
    """The names of listed Kubernetes client objects."""
    return [item.metadata.name for item in items if item.metadata is not None and item.metadata.name]


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
        sources = ChartSources(tmp_path, stack)
        controller = ControllerProcess(kube.kubeconfig, NAMESPACE, tmp_path / "controller", provisioning.bfb_dir,
                                       chart_mirrors=sources.mirrors, ca_file=sources.ca_file)
        provisioning.bfb_dir.mkdir(parents=True, exist_ok=True)
        stack.callback(controller.stop)
        controller.start(log_level=os.environ.get("DPF_TEST_LOG_LEVEL", "info"))

        def apply(objects: list[dict[str, Any]]) -> None:
            kube.kubectl("apply", "--server-side", "-f", "-", input=chains.to_yaml(objects))

        provisioning.register_dpu_cluster(apply)
        deployment_run = HbnOvnDeployment(kube, provisioning, netns, say, apply,
                                          watched=lambda: [c for c in (controller.child, *(s.machine for s in
                                                                                          provisioning.servers)) if c])
        deployment_run.prepare_dpu_cluster()
        provisioning.start_servers(controller)
        serve_and_deploy(deployment_run, provisioning)
        dpus = list(provisioning.dpus.values())
        nodes = [d.name for d in dpus]
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
