"""The lab's service pods: on every provisioned DPU, a real pod (in the DPU cluster, run by the DPU's kubelet) whose
`k8s.v1.cni.cncf.io/networks` annotation names a NetworkAttachmentDefinition (DPU cluster) for our CNI plugin:
the kubelet's CNI is Multus, which adds that network through our plugin and the DPU agent, as on a DPU. Its
`net1` lands on br-sfc with an address the DPU agent leases from a DPUServiceIPAM pool
(`manifests/service_pods.yaml`), and a chain joins it to uplink p2; each pod's address (from Multus'
network-status annotation) and a ping through the chain are printed. When a DPU reboots its kubelet starts the
pod again, with a new sandbox and possibly a new address: `current()` reads it again.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from dpf.lab import chains
from dpf.lab.bed.images import BUSYBOX_IMAGE
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.netns import Pod
from dpf.lab.bed.process import wait_until
from dpf.lab.dpus import CNI_PLUGIN, EmulatedDpu

POOL = "lab-pool"
SERVICE = "lab-svc"
NETWORK = "mybrsfc-pool"
POD = "lab-svc-{i}"
FABRIC_CIDR = "10.200.0.254/24"  # the fabric side of p2: inside the pool's subnet, outside every node's block
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
CRDS = chains.MANIFESTS / "crds"


ATTACH_TIMEOUT = 120.0
NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"


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


def manifests(namespace: str, group: str) -> list[chains.Obj]:
    text = string.Template((chains.MANIFESTS / "service_pods.yaml").read_text()).substitute(
        NAMESPACE=namespace, GROUP=group, POOL=POOL, SERVICE=SERVICE, NETWORK=NETWORK)
    return [doc for doc in yaml.safe_load_all(text) if doc]


@functools.cache
def pool_subnet() -> ipaddress.IPv4Network:
    pool = next(o for o in manifests("x", "x") if o["kind"] == "DPUServiceIPAM")
    return ipaddress.IPv4Network(pool["spec"]["ipv4Subnet"]["subnet"])


def nad(namespace: str, name: str, agent_socket: Path) -> chains.Obj:
    """Our plugin as a NAD. One per emulated DPU only because each DPU agent's socket path differs; on real
    DPUs the agent serves the default path and one NAD serves every node."""
    config = {"cniVersion": "1.0.0", "name": NETWORK, "type": CNI_PLUGIN, "bridge": "br-sfc",
              "agentSocket": str(agent_socket), "ipam": {"type": "dpf-ipam", "poolNames": [POOL]}}
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"config": json.dumps(config)}}


def pod(namespace: str, name: str, node: str, network: str) -> chains.Obj:
    selection = [{"name": network, "interface": "net1"}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {chains.SERVICE_LABEL: SERVICE},
                         "annotations": {NETWORKS_ANNOTATION: json.dumps(selection)}},
            "spec": {"nodeName": node, "automountServiceAccountToken": False,
                     # the lab's busybox (no registry here): the DPU's kubelet runs it, sleeping
                     "containers": [{"name": "svc", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never"}]}}


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
        pool = [o for o in objects if o["kind"] == "DPUServiceIPAM"]
        self.say(f"applying DPUServiceIPAM {POOL}: ipv4Subnet {pool_subnet()}, "
                 f"{pool[0]['spec']['ipv4Subnet']['perNodeIPCount']} addresses per DPU")
        self.apply(pool)
        self.wait_ready("dpuserviceipams", POOL)
        for i, dpu in enumerate(dpus, start=1):
            self.fabric[dpu.name] = dpu.uplink("p2", FABRIC_CIDR, f"{dpu.short}f2")
            self.say(f"DPU {dpu.name}: uplink p2 is a veth to fabric namespace {self.fabric[dpu.name].netns} "
                     f"({FABRIC_CIDR})")
            self.pods[dpu.name] = self._attach(dpu, POD.format(i=i))
        interfaces = [o for o in objects if o["kind"] == "DPUServiceInterface"]
        self.apply(interfaces)
        for obj in interfaces:
            self.wait_ready("dpuserviceinterfaces", obj["metadata"]["name"])
        self.say(f"applying DPUServiceChain {SERVICE}-to-fabric: p2 <-> service pod net1")
        self.apply([o for o in objects if o["kind"] == "DPUServiceChain"])
        self.wait_ready("dpuservicechains", f"{SERVICE}-to-fabric")
        self.show_traffic()

    def _attach(self, dpu: EmulatedDpu, name: str) -> ServicePod:
        network = f"{NETWORK}-{dpu.short}"
        self.apply_dpu([nad(self.namespace, network, dpu.cni_socket), pod(self.namespace, name, dpu.name, network)])
        try:
            cidr = wait_until(lambda: self._net1(name), ATTACH_TIMEOUT, f"service pod {self.namespace}/{name} "
                              "Running with net1 in Multus' network-status", interval=0.3)
        except TimeoutError as exc:
            raise ServicePodError(f"{exc}; the DPU's kubelet log and multus.log are in its kubelet directory, the "
                                  f"CNI calls in its DPU agent's log") from None
        if ipaddress.ip_interface(cidr).ip not in pool_subnet():
            raise ServicePodError(f"{name} on {dpu.name} got {cidr}, outside pool {POOL} ({pool_subnet()})")
        self.say(f"DPU {dpu.name}: service pod {self.namespace}/{name} Running; its kubelet's CNI (Multus) added NAD "
                 f"{network} ({CNI_PLUGIN} + dpf-ipam): net1 ip {cidr} from DPUServiceIPAM {POOL}")
        return ServicePod(name, dpu.name, cidr)

    def _net1(self, name: str) -> str | None:
        """net1's address (CIDR) from the pod's network-status while it is Running, else None."""
        try:
            obj = k8s.CoreV1Api(self.cluster.client).read_namespaced_pod(name, self.namespace)
        except ApiException:
            return None
        annotations = (obj.metadata.annotations if obj.metadata else None) or {}
        if obj.status is None or obj.status.phase != "Running" or NETWORK_STATUS not in annotations:
            return None
        for network in json.loads(annotations[NETWORK_STATUS]):
            if network.get("interface") == "net1" and network.get("ips"):
                return f"{network['ips'][0]}/{pool_subnet().prefixlen}"
        return None

    def current(self) -> dict[str, ServicePod]:
        """The pods as they are now (a DPU's reboot starts its pod again, with a new sandbox and address)."""
        for dpu_name, known in list(self.pods.items()):
            cidr = self._net1(known.name)
            if cidr is not None:
                self.pods[dpu_name] = ServicePod(known.name, dpu_name, cidr)
        return self.pods

    def show_traffic(self) -> None:
        for dpu_name, service in self.current().items():
            fabric = self.fabric[dpu_name]
            what = f"DPU {dpu_name}: ping {fabric.ip} (fabric p2) -> {service.ip} (service pod net1)"
            if not fabric.ping(service.ip, count=3, wait=0.5):
                raise ServicePodError(f"{what}: no reply through chain {SERVICE}-to-fabric")
            self.say(f"traffic passes: {what}: 3/3 replies")
