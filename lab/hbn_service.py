"""The lab's HBN, deployed as upstream's hbn_only deploys it: DPUService doca-hbn (`manifests/hbn_dpuservice.yaml`),
whose chart (the lab's stand-in `charts/doca-hbn`, from the controller's chart mirror) runs a DaemonSet: every DPU
labelled for HBN gets one pod from its own kubelet. The DPUService lists the hbn_only service interfaces p0-sf and
p1-sf, so the controller adds their Multus network (NAD mybrsfc, our plugin on br-sfc, no IPAM as upstream's) to the
pods' annotation and Multus attaches p0_if and p1_if through our plugin and the DPU's agent. The pod's container
addresses them at start, as HBN's startup configuration does on a DPU: the same addresses on every DPU (each DPU's
fabric is its own). The chain hbn-to-fabric then joins the uplinks to these ports.

The fabric side reaches the pod by address. For iperf3's server, which busybox lacks, the host's iperf3 runs in the
pod's network namespace, entered through one of the pod's processes (found by the pod's UID in its cgroup path).
"""

from __future__ import annotations

import ipaddress
import json
import string
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dpf.lab import chains, dpuservice_pods
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.process import wait_until
from dpf.lab.bed.tools import tool
from dpf.lab.dpus import CNI_PLUGIN, EmulatedDpu

SERVICE = chains.HBN_SERVICE
NETWORK = "mybrsfc"
PORTS = ("p0", "p1")
ATTACH_TIMEOUT = 180.0  # helm upgrade --install, the DaemonSet's pods scheduled, their sandboxes and ports on 2 cores


class HbnError(RuntimeError):
    pass


def manifests(namespace: str, group: str) -> list[chains.Obj]:
    """DPUService doca-hbn (`hbn_dpuservice.yaml`)."""
    text = string.Template((chains.MANIFESTS / "hbn_dpuservice.yaml").read_text()).substitute(
        NAMESPACE=namespace, GROUP=group)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def addresses() -> dict[str, str]:
    """The address (CIDR) the HBN pod puts on each port's interface, by uplink: {"p0": <p0_if's>, ...}."""
    values = manifests("x", "x")[0]["spec"]["helmChart"]["values"]["configuration"]["interfaces"]
    return {port: str(values[f"{port}_if"]) for port in PORTS}


def fabric_cidr(port: str) -> str:
    """The fabric side of uplink `port`: the first address of the HBN interface's subnet."""
    iface = ipaddress.ip_interface(addresses()[port])
    return f"{next(iface.network.hosts())}/{iface.network.prefixlen}"


def nad(namespace: str) -> chains.Obj:
    """NAD mybrsfc, which the hbn_only service interfaces name: our plugin on br-sfc, no IPAM (HBN addresses its
    own interfaces); the plugin asks the DPU's own agent (its containerd hands it DPF_CNI_SOCKET)."""
    config = {"cniVersion": "1.0.0", "name": NETWORK, "type": CNI_PLUGIN, "bridge": "br-sfc"}
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": NETWORK, "namespace": namespace}, "spec": {"config": json.dumps(config)}}


@dataclass(frozen=True)
class HbnPod:
    name: str
    node: str
    uid: str

    def netns(self) -> Path:
        """The pod's network namespace, through a process of the pod (the namespace's mount lives only in the DPU's
        mount namespace). The kubelet (cgroupfs driver) puts the pod's containers under `.../pod<uid>/`."""
        needle = f"/pod{self.uid}/"
        for cgroup in Path("/proc").glob("[0-9]*/cgroup"):
            try:
                if needle in cgroup.read_text():
                    return cgroup.parent / "ns" / "net"
            except OSError:
                continue  # the process went away
        raise HbnError(f"no process of pod {self.name} (uid {self.uid}) on {self.node}")

    def enter(self) -> list[str]:
        """The prefix that runs a host command in the pod's network namespace."""
        return [tool("nsenter"), f"--net={self.netns()}"]

    def addresses(self) -> dict[str, str]:
        """IPv4 addresses (CIDR) on the pod's interfaces, by interface name."""
        out = subprocess.run([*self.enter(), tool("ip"), "-o", "-4", "addr", "show"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
        return {fields[1]: fields[3] for fields in (line.split() for line in out.splitlines()) if len(fields) > 3}


def attached(pod: Any) -> bool:
    """A pod Running (not being deleted) whose Multus network-status shows p0_if and p1_if."""
    status = dpuservice_pods.network_status(pod)
    return status is not None and {f"{port}_if" for port in PORTS} <= {n.get("interface") for n in status}


class HbnService:
    def __init__(self, dpu_cluster: ControlPlane, namespace: str, group: str, say: Callable[[str], None],
                 apply: Callable[[list[chains.Obj]], None], apply_dpu: Callable[[list[chains.Obj]], None],
                 wait_ready: Callable[[str, str], None]) -> None:
        self.cluster, self.namespace, self.group, self.say = dpu_cluster, namespace, group, say
        self.apply, self.apply_dpu, self.wait_ready = apply, apply_dpu, wait_ready
        self.pods: dict[str, HbnPod] = {}

    def start(self, dpus: list[EmulatedDpu], interfaces: list[chains.Obj]) -> None:
        """The NAD, the hbn_only DPUServiceInterfaces `interfaces`, DPUService doca-hbn; until its pod on every DPU
        is attached and has addressed p0_if and p1_if."""
        crds = self.cluster.install_crds(chains.MANIFESTS / "crds")
        self.say(f"installed the NetworkAttachmentDefinition CRD ({', '.join(crds)}) in the DPU cluster for Multus")
        self.apply_dpu([nad(self.namespace)])
        self.say(f"applying the hbn_only DPUServiceInterfaces: {', '.join(o['metadata']['name'] for o in interfaces)}")
        self.apply(interfaces)
        service = manifests(self.namespace, self.group)[0]
        source = service["spec"]["helmChart"]["source"]
        self.say(f"applying DPUService {SERVICE}: chart {source['chart']} {source['version']} from {source['repoURL']} "
                 f"(the controller's mirror: the lab's chart repository), interfaces "
                 f"{', '.join(service['spec']['interfaces'])} (Multus network {NETWORK}: p0_if, p1_if)")
        self.apply([service])
        for dpu in dpus:
            self.pods[dpu.name] = self._attached(dpu.name)
        self.wait_ready("dpuservices", SERVICE)
        for obj in interfaces:
            self.wait_ready("dpuserviceinterfaces", obj["metadata"]["name"])

    def _attached(self, node: str) -> HbnPod:
        try:
            pod = wait_until(lambda: self.pod_on(node), ATTACH_TIMEOUT, f"DPUService {SERVICE}'s pod on {node} "
                             "Running with p0_if and p1_if in Multus' network-status", interval=0.3)
        except TimeoutError as exc:
            raise HbnError(f"{exc}; the DPUService's conditions, the controller's log (Helm), the DPU's kubelet log "
                           f"and multus.log in its kubelet directory, the CNI calls in its DPU agent's log") from None
        wanted = {f"{port}_if": cidr for port, cidr in addresses().items()}
        try:
            wait_until(lambda: wanted.items() <= pod.addresses().items(), 30, f"pod {pod.name} on {node} to address "
                       f"{', '.join(wanted)}", interval=0.3)
        except TimeoutError as exc:
            raise HbnError(f"{exc}: its container sets them at start; see its log on the DPU") from None
        self.say(f"DPU {node}: pod {self.namespace}/{pod.name} of DPUService {SERVICE} Running; its kubelet's CNI "
                 f"(Multus) added p0_if and p1_if (NAD {NETWORK}, {CNI_PLUGIN}: ports on br-sfc); its container "
                 f"set p0_if {wanted['p0_if']} and p1_if {wanted['p1_if']}")
        return pod

    def pod_on(self, node: str) -> HbnPod | None:
        """The DPUService's pod on `node` (by the service label the controller puts on its pods) once attached."""
        for pod in dpuservice_pods.pods_on(self.cluster, self.namespace, SERVICE, node):
            if attached(pod) and pod.metadata is not None and pod.metadata.name and pod.metadata.uid:
                return HbnPod(pod.metadata.name, node, pod.metadata.uid)
        return None

    def current(self, node: str) -> HbnPod:
        """The pod on `node` as it is now (a DPU's reboot starts it again in a new sandbox, or the DaemonSet makes
        a new one)."""
        found = self.pod_on(node)
        if found is None:
            raise HbnError(f"no pod of DPUService {SERVICE} Running on {node}")
        if found != self.pods.get(node):
            self.say(f"DPU {node}: pod {self.namespace}/{found.name} of DPUService {SERVICE} Running")
            self.pods[node] = found
        return found

    def stop(self, host: ControlPlane) -> None:
        dpuservice_pods.delete(host, self.namespace, SERVICE, self.say)
