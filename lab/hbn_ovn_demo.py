"""Upstream's hbn_ovn use case run for real (`dpf lab --use-case hbn_ovn`; `tests/e2e/test_dpudeployment_hbn_ovn.py`):
05.2's DPUDeployment `ovn-hbn` (`manifests/upstream/hbn_ovn_dpudeployment.yaml`, services ovn, hbn, dts and blueman
from templates and configurations, three chains, the interfaces, IPAMs and credential request of 05.1) applied
unchanged but for the BFB's url, plus the flavor upstream's operator ships built in, on DPUs the DPUDeployment's own
DPUSet provisions (`provision.py`). The charts come from upstream's repositories as the manifests name them, through
the controller's chart mirrors (`hbn_ovn.py`: the lab's stand-ins from its http chart repository and, for
ovn-kubernetes-chart, from its OCI registry). Beside them, what upstream's operator installs in the DPU cluster (NADs
mybrhbn and iprequest) and the cables: each DPU's uplinks p0/p1 wired to fabric namespaces.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from dpf.controller.helm import find_helm
from dpf.lab import chains, dpuservice_pods, hbn_ovn
from dpf.lab.bed.chart_repo import ChartRepo
from dpf.lab.bed.dpucluster import DPUCluster
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.netns import NetnsBed
from dpf.lab.bed.oci_registry import OciRegistry
from dpf.lab.bed.process import Child, wait_until
from dpf.lab.bed.tools import tool
from dpf.lab.dpus import EmulatedDpu
from dpf.lab.provision import BFB_FILE, NAMESPACE, Provisioning

UPSTREAM = chains.MANIFESTS / "upstream" / "hbn_ovn_dpudeployment.yaml"
DEPLOYMENT = "ovn-hbn"
SERVICES = ("ovn", "hbn", "dts", "blueman")
READY_TIMEOUT = 300.0  # four Helm releases and their pods on every DPU, on a loaded 2-core machine
SVC = ("svc.dpu.nvidia.com", "v1alpha1")
PROVISIONING = ("provisioning.dpu.nvidia.com", "v1alpha1")
CHILD_PLURALS = ("dpuservicechains", "dpuserviceinterfaces", "dpuservices")
OWNER_LABEL = "svc.dpu.nvidia.com/owned-by-dpudeployment"

Apply = Callable[[list[dict[str, Any]]], None]


def upstream_manifests(namespace: str, bfb_url: str) -> list[dict[str, Any]]:
    """05.2's objects as upstream wrote them, in `namespace`, the BFB's url on the lab's file server (the one
    change)."""
    docs = [d for d in yaml.safe_load_all(UPSTREAM.read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "BFB":
            doc["spec"]["url"] = bfb_url
    return docs


def conditions(obj: dict[str, Any] | None) -> dict[str, str]:
    return {c["type"]: c["status"] for c in ((obj or {}).get("status") or {}).get("conditions") or ()}


def fresh_and_ready(obj: dict[str, Any] | None) -> bool:
    status = (obj or {}).get("status") or {}
    return obj is not None and status.get("observedGeneration") == obj["metadata"].get("generation") and \
        conditions(obj).get("Ready") == "True"


def owned(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects the DPUDeployment made (upstream's owner label)."""
    return [o for o in items if (o["metadata"].get("labels") or {}).get(OWNER_LABEL) == f"{NAMESPACE}_{DEPLOYMENT}"]


class HostView:
    """The host cluster's dpf objects in NAMESPACE, as plain dicts."""

    def __init__(self, host: ControlPlane) -> None:
        self.custom = k8s.CustomObjectsApi(host.client)

    def list(self, plural: str, group: tuple[str, str] = SVC) -> list[dict[str, Any]]:
        return list(cast(dict, self.custom.list_namespaced_custom_object(*group, NAMESPACE, plural))["items"])

    def get(self, plural: str, name: str, group: tuple[str, str] = SVC) -> dict[str, Any] | None:
        try:
            return cast(dict, self.custom.get_namespaced_custom_object(*group, NAMESPACE, plural, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise


class ChartSources:
    """The lab's stand-ins for upstream's chart repositories: an http chart repository and an OCI registry on
    loopback HTTPS, and what the controller needs to install from them (`--chart-mirror` pairs, one CA file)."""

    def __init__(self, workdir: Path, stack: contextlib.ExitStack) -> None:
        self.charts = ChartRepo(workdir / "chart-repo", hbn_ovn.http_charts())
        stack.callback(self.charts.stop)
        self.charts.start()
        self.registry = stack.enter_context(OciRegistry(workdir / "registry"))
        hbn_ovn.push_oci_charts(self.registry, find_helm())
        self.mirrors = hbn_ovn.mirrors(self.charts, self.registry)
        self.ca_file = hbn_ovn.ca_bundle(workdir / "charts-ca.crt", self.charts, self.registry)


class HbnOvnDeployment:
    def __init__(self, host: ControlPlane, provisioning: Provisioning, bed: NetnsBed, say: Callable[[str], None],
                 apply: Apply, watched: Callable[[], list[Child]]) -> None:
        self.host = host
        self.provisioning = provisioning
        self.bed = bed
        self.say = say
        self.apply = apply
        self.watched = watched
        self.view = HostView(host)
        self.dpus: list[EmulatedDpu] = []

    @property
    def cluster(self) -> DPUCluster:
        assert self.provisioning.cluster is not None
        return self.provisioning.cluster

    def prepare_dpu_cluster(self) -> None:
        """What upstream's operator installs in the DPU cluster: the NAD kind and the system NADs HBN names."""
        self.cluster.install_crds(chains.MANIFESTS / "crds")
        self.cluster.kubectl("apply", "--server-side", "-f", "-",
                             input=chains.to_yaml(hbn_ovn.system_nads(NAMESPACE)))
        self.say("DPU cluster: NetworkAttachmentDefinitions mybrhbn (HBN's interfaces, our SFC CNI on br-sfc) and "
                 "iprequest (addresses from DPUServiceIPAM pools), as upstream's operator installs them")

    def deploy(self, bfb_url: str, timeout: float = READY_TIMEOUT) -> float:
        """Apply the flavor and 05.2's objects; follow the DPUs its DPUSet provisions until their agents serve, wire
        their uplinks, and wait until the DPUDeployment is Ready. Returns the seconds from apply to Ready."""
        started = time.monotonic()
        self.say(f"applying upstream's built-in DPUFlavor dpf-provisioning-hbn-ovn and 05.2's DPUDeployment "
                 f"{DEPLOYMENT} ({UPSTREAM.name}: services {', '.join(SERVICES)}), unchanged but for the BFB's url")
        self.apply([hbn_ovn.flavor(NAMESPACE), *upstream_manifests(NAMESPACE, bfb_url)])
        provisioning = self.provisioning
        provisioning.watch(started, lambda dpus: len(dpus) == provisioning.expected and
                           all(d.phases and d.phases[-1][0] == "Ready" for d in dpus.values()),
                           f"the {provisioning.expected} DPUs of DPUSet {DEPLOYMENT}-dpuset1 Ready")
        provisioning.wait_agents()
        for i, view in enumerate(provisioning.dpus.values()):
            # The cables: each DPU's uplinks p0/p1 as veths to fabric namespaces (the flavor's script put p0 on br-sfc).
            dpu = EmulatedDpu(view.name, self.bed, view.workdir, short=f"d{i}", ovs=view.ovs())
            self.dpus.append(dpu)
            for port in ("p0", "p1"):
                uplink = dpu.uplink(port, f"10.9{i}.{port[1]}.1/24", f"d{i}f{port[1]}")
                self.say(f"DPU {view.name}: uplink {port} is a veth to fabric namespace {uplink.netns}")
        try:
            wait_until(lambda: fresh_and_ready(self.view.get("dpudeployments", DEPLOYMENT)), timeout,
                       f"DPUDeployment {DEPLOYMENT} Ready", interval=0.5, while_alive=self.watched())
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}: what is not ready: {self.not_ready()}") from None
        took = time.monotonic() - started
        self.say(f"DPUDeployment {DEPLOYMENT} Ready {took:.1f}s after it was applied: every condition True")
        for service in SERVICES:
            obj = self.view.get("dpuservices", f"{DEPLOYMENT}-{service}")
            service_id = ((obj or {}).get("spec") or {}).get("serviceID", "")
            pods = [f"{p.spec.node_name}: {p.metadata.name} {p.status.phase}"
                    for view in provisioning.dpus.values()
                    for p in dpuservice_pods.pods_on(self.cluster, NAMESPACE, service_id, view.name)]
            self.say(f"  DPUService {DEPLOYMENT}-{service}: {'; '.join(pods) or 'no pod'}")
        return took

    def not_ready(self) -> dict[str, dict[str, list[str]]]:
        """Per kind, each object's conditions that are not True (what a time-out reports)."""
        return {kind: {o["metadata"]["name"]: [f"{c['type']}={c['status']} {c.get('message', '')}"
                                               for c in (o.get("status") or {}).get("conditions") or ()
                                               if c["status"] != "True"]
                       for o in self.view.list(kind)} for kind in ("dpudeployments", *CHILD_PLURALS)}

    def usage(self) -> str:
        return "\n".join([
            f"Upstream's hbn_ovn (05.2): DPUDeployment {DEPLOYMENT} on the DPUs its DPUSet provisioned:",
            f"  {tool('kubectl')} get dpudeployments,dpuservices,dpuserviceinterfaces,dpuservicechains -n {NAMESPACE}",
            f"  KUBECONFIG={self.cluster.kubeconfig} {tool('kubectl')} get pods -n {NAMESPACE} -o wide"
            "    # a pod of each service on every DPU",
            f"  {tool('kubectl')} delete dpudeployment {DEPLOYMENT} -n {NAMESPACE}"
            "    # chains, interfaces and services go first, then the DPUSet",
        ])


def serve_and_deploy(deployment: HbnOvnDeployment, provisioning: Provisioning) -> float:
    """The BFB files served, then `deploy` from them (the lab's and the test's one sequence)."""
    files = provisioning.serve_bfbs()
    return deployment.deploy(files.url(BFB_FILE))
