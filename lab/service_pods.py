"""The lab's service pods: on every provisioned DPU, a pod (in the DPU cluster, run by the DPU's kubelet as a
stand-in container) with a network namespace the lab attaches as kubelet would, by the real Multus thin plugin
reading the pod's `k8s.v1.cni.cncf.io/networks` annotation and a NetworkAttachmentDefinition (DPU cluster) for our
CNI plugin. Its `net1` lands on br-sfc with an address the DPU agent
leases from a DPUServiceIPAM pool (`manifests/service_pods.yaml`), and a chain joins it to uplink p2; each
pod's interface, address and a ping through the chain are printed. Teardown runs Multus DEL first, which
releases the lease and unplugs the port, as kubelet does when a pod goes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import string
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml
from kubernetes import client as k8s

from dpf.lab import chains
from dpf.lab.bed.images import BUSYBOX_IMAGE
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.netns import NetnsBed, Pod, ns_exec
from dpf.lab.bed.tools import tool
from dpf.lab.dpus import CNI_PLUGIN, EmulatedDpu

POOL = "lab-pool"
SERVICE = "lab-svc"
NETWORK = "mybrsfc-pool"
POD = "lab-svc-{i}"
FABRIC_CIDR = "10.200.0.254/24"  # the fabric side of p2: inside the pool's subnet, outside every node's block
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
CRDS = chains.MANIFESTS / "crds"


class ServicePodError(RuntimeError):
    pass


def manifests(namespace: str, group: str) -> list[chains.Obj]:
    text = string.Template((chains.MANIFESTS / "service_pods.yaml").read_text()).substitute(
        NAMESPACE=namespace, GROUP=group, POOL=POOL, SERVICE=SERVICE, NETWORK=NETWORK)
    return [doc for doc in yaml.safe_load_all(text) if doc]


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
    def __init__(self, dpu_cluster: ControlPlane, bed: NetnsBed, bin_dir: Path, workdir: Path, namespace: str,
                 group: str, stack: contextlib.ExitStack, say: Callable[[str], None],
                 apply: Callable[[list[chains.Obj]], None], apply_dpu: Callable[[list[chains.Obj]], None],
                 wait_ready: Callable[[str, str], None]) -> None:
        self.cluster, self.bed, self.bin_dir, self.workdir = dpu_cluster, bed, bin_dir, workdir
        self.namespace, self.group, self.stack, self.say = namespace, group, stack, say
        self.apply, self.apply_dpu, self.wait_ready = apply, apply_dpu, wait_ready
        self.fabric: dict[str, Pod] = {}
        self.pods: dict[str, Pod] = {}

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

    def _attach(self, dpu: EmulatedDpu, name: str) -> Pod:
        network = f"{NETWORK}-{dpu.short}"
        self.apply_dpu([nad(self.namespace, network, dpu.cni_socket), pod(self.namespace, name, dpu.name, network)])
        obj = k8s.CoreV1Api(self.cluster.client).read_namespaced_pod(name, self.namespace)
        netns = self.bed.namespace(f"{dpu.short}s")
        workdir = dpu.workdir / "multus"
        conf = {"cniVersion": "1.0.0", "name": "multus-cni-network", "type": "multus",
                "kubeconfig": str(self.cluster.kubeconfig), "cniDir": str(workdir / "cache"),
                "binDir": str(self.bin_dir), "logFile": str(workdir / "multus.log"), "logLevel": "verbose",
                # the cluster network (eth0) is not the lab's subject: loopback stands in for it
                "delegates": [{"cniVersion": "1.0.0", "name": "cluster", "plugins": [{"type": "loopback"}]}]}
        metadata = obj.metadata
        assert metadata is not None, "the API server sets metadata on every pod it returns"
        uid = metadata.uid
        assert uid, "the API server sets metadata.uid on every pod it returns"
        sandbox = f"lab-{uid[:8]}"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_CONTAINERID": sandbox,
               "CNI_NETNS": f"/run/netns/{netns}", "CNI_IFNAME": "eth0", "CNI_PATH": f"{self.bin_dir}:/usr/lib/cni",
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};K8S_POD_NAME={name};"
                           f"K8S_POD_INFRA_CONTAINER_ID={sandbox};K8S_POD_UID={uid}"}

        def multus(command: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([tool("multus")], input=json.dumps(conf), env={**env, "CNI_COMMAND": command},
                                  capture_output=True, text=True, timeout=60)

        workdir.mkdir(parents=True, exist_ok=True)
        added = multus("ADD")
        if added.returncode != 0:
            raise ServicePodError(f"Multus ADD of {self.namespace}/{name} on {dpu.name} failed: "
                                  f"{added.stdout.strip()} {added.stderr.strip()} (log: {workdir / 'multus.log'})")
        self.stack.callback(self._detach, dpu, name, multus)
        link = json.loads(ns_exec(netns, tool("ip"), "-j", "addr", "show", "dev", "net1").stdout)[0]
        cidr = next(f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet")
        if ipaddress.ip_interface(cidr).ip not in pool_subnet():
            raise ServicePodError(f"{name} on {dpu.name} got {cidr}, outside pool {POOL} ({pool_subnet()})")
        self.say(f"DPU {dpu.name}: service pod {self.namespace}/{name} attached by Multus (NAD {network}, "
                 f"{CNI_PLUGIN} + dpf-ipam): interface net1 ip {cidr} from DPUServiceIPAM {POOL}")
        return Pod(netns=netns, ifname="net1", peer="", peer_ns=dpu.netns, cidr=cidr, mac=link["address"])

    def _detach(self, dpu: EmulatedDpu, name: str,
                multus: Callable[[str], subprocess.CompletedProcess[str]]) -> None:
        try:
            deleted = multus("DEL")
        except subprocess.TimeoutExpired:
            self.say(f"Multus DEL of {self.namespace}/{name} on {dpu.name} timed out")
            return
        if deleted.returncode != 0:  # the netns and OVS go next anyway; say so and carry on
            self.say(f"Multus DEL of {self.namespace}/{name} on {dpu.name} failed: {deleted.stdout.strip()}")

    def show_traffic(self) -> None:
        for dpu_name, service in self.pods.items():
            fabric = self.fabric[dpu_name]
            what = f"DPU {dpu_name}: ping {fabric.ip} (fabric p2) -> {service.ip} (service pod net1)"
            if not fabric.ping(service.ip, count=3, wait=0.5):
                raise ServicePodError(f"{what}: no reply through chain {SERVICE}-to-fabric")
            self.say(f"traffic passes: {what}: 3/3 replies")
