"""The lab's service, deployed as upstream's users deploy one: a DPUService (`manifests/service.yaml`) naming
upstream's hbn chart in its public repository, which the lab's controller installs with Helm from a loopback mirror
(`bed/chart_repo.py`, `--chart-mirror`) serving the lab's stand-in chart (`charts/doca-hbn`: a DaemonSet of the
lab's busybox). Its `interfaces` names a service-type DPUServiceInterface, so the controller adds that interface's
Multus network to the pods' `k8s.v1.cni.cncf.io/networks` annotation; every DPU's kubelet then runs one pod, whose
CNI (Multus) adds `net1` through our plugin and the DPU agent: on br-sfc, with an address the agent leases from a
DPUServiceIPAM pool (`manifests/service_pods.yaml`). A chain joins uplink p2 to each pod's net1; each pod's address
(from Multus' network-status annotation) and a ping through the chain are printed. When a DPU reboots, its pod
starts again with a new sandbox and possibly a new address (or the DaemonSet makes a new one): `current()` finds it
again by the service label and its node.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dpf.lab import chains, dpuservice_pods, hbn_ovn
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.netns import Pod
from dpf.lab.bed.process import wait_until
from dpf.lab.dpus import CNI_PLUGIN, EmulatedDpu

POOL = "lab-pool"
SERVICE = "lab-svc"
NETWORK = "mybrsfc-pool"
FABRIC_CIDR = "10.200.0.254/24"  # the fabric side of p2: inside the pool's subnet, outside every node's block
CRDS = chains.MANIFESTS / "crds"
PUBLIC_REPO = "https://helm.ngc.nvidia.com/nvidia/doca"  # upstream's hbn_only hbn-dpuservice.yaml; unreachable here
"""The repository `manifests/service.yaml` names; the lab's controller mirrors it onto the lab's chart repository."""

ATTACH_TIMEOUT = 180.0  # helm upgrade --install, the DaemonSet's pods scheduled, their sandboxes and net1 on 2 cores


class ServicePodError(RuntimeError):
    pass


@dataclass(frozen=True)
class ServicePod:
    name: str
    node: str
    cidr: str

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.cidr).ip)


def charts() -> list[Path]:
    """The charts the lab's chart repository serves (not those of its OCI registry)."""
    return hbn_ovn.http_charts()


def manifests(namespace: str, group: str) -> list[chains.Obj]:
    """The pool, p2 and the chain (`service_pods.yaml`), then the service interface and the DPUService
    (`service.yaml`)."""
    found = []
    for name in ("service_pods.yaml", "service.yaml"):
        text = string.Template((chains.MANIFESTS / name).read_text()).substitute(
            NAMESPACE=namespace, GROUP=group, POOL=POOL, SERVICE=SERVICE, NETWORK=NETWORK)
        found += [doc for doc in yaml.safe_load_all(text) if doc]
    return found


@functools.cache
def pool_subnet() -> ipaddress.IPv4Network:
    pool = next(o for o in manifests("x", "x") if o["kind"] == "DPUServiceIPAM")
    return ipaddress.IPv4Network(pool["spec"]["ipv4Subnet"]["subnet"])


def nad(namespace: str) -> chains.Obj:
    """Our plugin as a NAD, as on real DPUs: no agent socket named, so the plugin asks the DPU's own agent (each
    emulated DPU's containerd hands its plugins the path in DPF_CNI_SOCKET; on a DPU it is the default path)."""
    config = {"cniVersion": "1.0.0", "name": NETWORK, "type": CNI_PLUGIN, "bridge": "br-sfc",
              "ipam": {"type": "dpf-ipam", "poolNames": [POOL]}}
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": NETWORK, "namespace": namespace}, "spec": {"config": json.dumps(config)}}


def net1(pod: Any) -> str | None:
    """net1's address (CIDR) from a pod's Multus network-status while it is Running, else None."""
    for network in dpuservice_pods.network_status(pod) or ():
        if network.get("interface") == "net1" and network.get("ips"):
            return f"{network['ips'][0]}/{pool_subnet().prefixlen}"
    return None


class ServicePods:
    def __init__(self, dpu_cluster: ControlPlane, namespace: str, group: str, say: Callable[[str], None],
                 apply: Callable[[list[chains.Obj]], None], apply_dpu: Callable[[list[chains.Obj]], None],
                 wait_ready: Callable[[str, str], None]) -> None:
        self.cluster, self.namespace, self.group, self.say = dpu_cluster, namespace, group, say
        self.apply, self.apply_dpu, self.wait_ready = apply, apply_dpu, wait_ready
        self.fabric: dict[str, Pod] = {}
        self.pods: dict[str, ServicePod] = {}

    def start(self, dpus: list[EmulatedDpu]) -> None:
        crds = self.cluster.install_crds(CRDS)
        self.say(f"installed the NetworkAttachmentDefinition CRD ({', '.join(crds)}) in the DPU cluster for Multus")
        objects = manifests(self.namespace, self.group)

        def kind(name: str) -> list[chains.Obj]:
            return [o for o in objects if o["kind"] == name]

        pool = kind("DPUServiceIPAM")
        self.say(f"applying DPUServiceIPAM {POOL}: ipv4Subnet {pool_subnet()}, "
                 f"{pool[0]['spec']['ipv4Subnet']['perNodeIPCount']} addresses per DPU")
        self.apply(pool)
        self.wait_ready("dpuserviceipams", POOL)
        for dpu in dpus:
            self.fabric[dpu.name] = dpu.uplink("p2", FABRIC_CIDR, f"{dpu.short}f2")
            self.say(f"DPU {dpu.name}: uplink p2 is a veth to fabric namespace {self.fabric[dpu.name].netns} "
                     f"({FABRIC_CIDR})")
        self.apply_dpu([nad(self.namespace)])
        interfaces = kind("DPUServiceInterface")
        self.apply(interfaces)
        service = kind("DPUService")[0]
        source = service["spec"]["helmChart"]["source"]
        self.say(f"applying DPUService {SERVICE}: chart {source['chart']} {source['version']} from "
                 f"{source['repoURL']} (the controller's mirror: the lab's chart repository), interfaces "
                 f"{', '.join(service['spec']['interfaces'])} (Multus network {NETWORK}, net1)")
        self.apply([service])
        for dpu in dpus:
            self.pods[dpu.name] = self._attached(dpu)
        self.wait_ready("dpuservices", SERVICE)
        for obj in interfaces:
            self.wait_ready("dpuserviceinterfaces", obj["metadata"]["name"])
        self.say(f"applying DPUServiceChain {SERVICE}-to-fabric: p2 <-> service pod net1")
        self.apply(kind("DPUServiceChain"))
        self.wait_ready("dpuservicechains", f"{SERVICE}-to-fabric")
        self.show_traffic()

    def _attached(self, dpu: EmulatedDpu) -> ServicePod:
        try:
            found = wait_until(lambda: self._pod_on(dpu.name), ATTACH_TIMEOUT, f"DPUService {SERVICE}'s pod on "
                               f"{dpu.name} Running with net1 in Multus' network-status", interval=0.3)
        except TimeoutError as exc:
            raise ServicePodError(f"{exc}; the DPUService's conditions, the controller's log (Helm), the DPU's "
                                  f"kubelet log and multus.log in its kubelet directory, the CNI calls in its DPU "
                                  f"agent's log") from None
        if ipaddress.ip_interface(found.cidr).ip not in pool_subnet():
            raise ServicePodError(f"{found.name} on {dpu.name} got {found.cidr}, outside pool {POOL} "
                                  f"({pool_subnet()})")
        self.say(f"DPU {dpu.name}: pod {self.namespace}/{found.name} of DPUService {SERVICE} Running; its kubelet's "
                 f"CNI (Multus) added NAD {NETWORK} ({CNI_PLUGIN} + dpf-ipam): net1 ip {found.cidr} from "
                 f"DPUServiceIPAM {POOL}")
        return found

    def _pod_on(self, node: str) -> ServicePod | None:
        """The DPUService's pod on `node` (by the service label the controller puts on its pods) once Running with
        net1, else None."""
        for pod in dpuservice_pods.pods_on(self.cluster, self.namespace, SERVICE, node):
            cidr = net1(pod)
            if cidr is not None and pod.metadata is not None and pod.metadata.name:
                return ServicePod(pod.metadata.name, node, cidr)
        return None

    def current(self) -> dict[str, ServicePod]:
        """The pods as they are now (a DPU's reboot starts its pod again, with a new sandbox and address)."""
        for node, known in list(self.pods.items()):
            found = self._pod_on(node)
            if found is not None and found != known:
                self.pods[node] = found
                self.say(f"DPU {node}: pod {self.namespace}/{found.name} of DPUService {SERVICE} Running (was "
                         f"{known.name} at {known.cidr}): net1 ip {found.cidr}")
        return self.pods

    def show_traffic(self) -> None:
        for dpu_name, service in self.current().items():
            fabric = self.fabric[dpu_name]
            what = f"DPU {dpu_name}: ping {fabric.ip} (fabric p2) -> {service.ip} (service pod net1)"
            if not fabric.ping(service.ip, count=3, wait=0.5):
                raise ServicePodError(f"{what}: no reply through chain {SERVICE}-to-fabric")
            self.say(f"traffic passes: {what}: 3/3 replies")

    def stop(self, host: ControlPlane) -> None:
        dpuservice_pods.delete(host, self.namespace, SERVICE, self.say)
