"""Multus as a DPU node's CNI: a real kubelet's pods keep the pod network as eth0, and a pod that names a
NetworkAttachmentDefinition in its `k8s.v1.cni.cncf.io/networks` annotation gets that network too (net1), as
DPF's service pods get their SFC interfaces. What a user sees: the pod Running, Multus' `network-status`
annotation listing both networks with their addresses, and the secondary address released when the pod goes.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from dpf.lab.bed.dpucluster import DPUCluster, NodeNetwork
from dpf.lab.bed.kubelet import Kubelet
from dpf.lab.bed.netns import NetnsBed
from dpf.lab.bed.process import wait_until
from tests.controlplane.harness import run
from tests.dpucluster.test_join import READY_TIMEOUT, _join

REPO = Path(__file__).resolve().parents[2]
NAD_CRD = REPO / "lab" / "manifests" / "crds" / "network-attachment-definition-crd.yaml"
SIDE_SUBNET = ipaddress.ip_network("10.200.0.0/24")
POD_SUBNET = ipaddress.ip_network("10.244.7.0/24")


def _nad(ipam_dir: Path) -> str:
    config = {"cniVersion": "0.4.0", "name": "side", "type": "bridge", "bridge": "side0",
              "ipam": {"type": "host-local", "subnet": str(SIDE_SUBNET), "dataDir": str(ipam_dir)}}
    return json.dumps({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                       "metadata": {"name": "side", "namespace": "default"}, "spec": {"config": json.dumps(config)}})


def pod_naming(name: str, node: str, networks: str) -> str:
    """A sleeping busybox pod on `node` whose networks annotation is `networks`."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default",
                     "annotations": {"k8s.v1.cni.cncf.io/networks": networks}},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "main", "image": "dpf.local/busybox:1", "imagePullPolicy": "Never",
                                 "command": ["sleep", "3600"]}]}})


def _leases(ipam_dir: Path) -> list[str]:
    """The addresses host-local holds for the side network (one file per leased address)."""
    network = ipam_dir / "side"
    return [p.name for p in network.iterdir() if p.name[0].isdigit()] if network.is_dir() else []


def test_multus_adds_the_network_a_pod_names_beside_the_pod_network(
        dpu_cluster: DPUCluster, node_network: NodeNetwork, netns: NetnsBed, busybox_image: Path,
        tmp_path: Path) -> None:
    ns = netns.namespace("mdpu")
    node_network.attach(ns)
    multus_kubeconfig = tmp_path / "multus.kubeconfig"
    multus_kubeconfig.write_bytes(dpu_cluster.admin_conf())  # reachable from the node: the cluster's own address
    multus_kubeconfig.chmod(0o600)
    ipam_dir = tmp_path / "side-ipam"
    dpu_cluster.install_crds(NAD_CRD.parent)  # waits until Established: a NAD applied before fails
    dpu_cluster.kubectl("apply", "-f", "-", input=_nad(ipam_dir))
    kubelet = Kubelet(ns, "dpu-m", run(_join(dpu_cluster)), tmp_path / "node", pod_subnet=str(POD_SUBNET),
                      image_tar=busybox_image, multus_kubeconfig=multus_kubeconfig)
    try:
        kubelet.start()
        dpu_cluster.wait_node_ready("dpu-m", READY_TIMEOUT)
        dpu_cluster.kubectl("apply", "-f", "-", input=pod_naming("two-nets", "dpu-m", "side"))

        def status() -> list[dict] | None:
            pod = json.loads(dpu_cluster.kubectl("get", "pod", "two-nets", "-o", "json").stdout)
            annotation = pod["metadata"].get("annotations", {}).get("k8s.v1.cni.cncf.io/network-status")
            return json.loads(annotation) if pod["status"].get("phase") == "Running" and annotation else None

        networks = wait_until(status, READY_TIMEOUT, "pod two-nets Running with Multus' network-status",
                              interval=0.3)
        by_interface = {n.get("interface"): n for n in networks}
        assert set(by_interface) == {"eth0", "net1"}, networks
        assert by_interface["net1"]["name"] == "default/side"
        assert ipaddress.ip_address(by_interface["net1"]["ips"][0]) in SIDE_SUBNET
        assert ipaddress.ip_address(by_interface["eth0"]["ips"][0]) in POD_SUBNET
        assert _leases(ipam_dir) == [by_interface["net1"]["ips"][0]]

        # Deleting the pod runs Multus DEL through every network: the secondary address is released.
        dpu_cluster.kubectl("delete", "pod", "two-nets", "--wait=true", "--timeout=60s")
        wait_until(lambda: _leases(ipam_dir) == [], 30, "the side network's address to be released")
    finally:
        kubelet.stop()
