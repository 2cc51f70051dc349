"""A DPU cluster: a Kubernetes control plane of its own that real kubelets in DPU network namespaces join.

What `kubeadm init` would set up, on the bed's `ControlPlane`: kube-apiserver with Node,RBAC authorization,
NodeRestriction, bootstrap-token authentication and a kubelet client certificate (it verifies kubelets' serving
certificates with the cluster CA); kube-controller-manager with the controllers a real node needs (bootstrap
signer, token cleaner, CSR approving/signing/cleaning, node lifecycle, DaemonSet, ...) signing with the cluster
CA; kube-scheduler; the RBAC of bootstrap tokens and the anonymous-readable `kube-public/cluster-info`.

The apiserver listens on the address of a bridge in the root network namespace (`NodeNetwork`): a DPU's network
namespace reaches it through a veth in that bridge (127.0.0.1 of the root namespace is not reachable from there).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pyroute2 import IPRoute

from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.netns import ns_ipr
from dpf.lab.bed.process import Child, free_port, wait_until
from dpf.lab.bed.tools import tool

BOOTSTRAP_GROUP = "system:bootstrappers:kubeadm:default-node-token"
# kube-controller-manager v1.37 names. bootstrap-signer and token-cleaner are off unless named.
CONTROLLERS = (
    "bootstrap-signer-controller", "token-cleaner-controller",
    "certificatesigningrequest-approving-controller", "certificatesigningrequest-signing-controller",
    "certificatesigningrequest-cleaner-controller",
    "node-lifecycle-controller", "taint-eviction-controller", "daemonset-controller", "replicaset-controller",
    "deployment-controller",
    "garbage-collector-controller", "namespace-controller", "pod-garbage-collector-controller", "ttl-controller",
    "serviceaccount-controller", "serviceaccount-token-controller", "root-ca-certificate-publisher-controller",
)


class NodeNetwork:
    """A bridge in the root network namespace with a /24 of its own; DPU namespaces join it by veth.

    The subnet is picked from 172.16.0.0/12 by our pid, skipping any already on this machine, so parallel test
    runs do not collide.
    """

    def __init__(self) -> None:
        self.bridge = f"dpfk{os.getpid() % 100000}"
        self.network = _free_subnet()
        self.address = str(self.network.network_address + 1)
        self._attached: dict[str, tuple[str, str]] = {}  # netns -> (host-side veth, address)
        with IPRoute() as ipr:
            ipr.link("add", ifname=self.bridge, kind="bridge")
            index = ipr.link_lookup(ifname=self.bridge)[0]
            ipr.addr("add", index=index, address=self.address, prefixlen=self.network.prefixlen)
            ipr.link("set", index=index, state="up")

    def attach(self, netns: str, ifname: str = "k8s0") -> str:
        """Wire `netns` into the bridge (its end named `ifname`) and return the address it got there."""
        if netns in self._attached:
            return self._attached[netns][1]
        number = len(self._attached) + 1
        host_end = f"{self.bridge}x{number}"[:15]
        address = str(self.network.network_address + 10 + number)
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_end, kind="veth", peer={"ifname": ifname, "net_ns_fd": netns})
            index = ipr.link_lookup(ifname=host_end)[0]
            ipr.link("set", index=index, master=ipr.link_lookup(ifname=self.bridge)[0], state="up")
        with ns_ipr(netns) as ipr:
            index = ipr.link_lookup(ifname=ifname)[0]
            ipr.addr("add", index=index, address=address, prefixlen=self.network.prefixlen)
            ipr.link("set", index=index, state="up")
        self._attached[netns] = (host_end, address)
        return address

    def remove(self) -> None:
        with IPRoute() as ipr:
            for host_end, _ in self._attached.values():
                for index in ipr.link_lookup(ifname=host_end):  # gone already if its namespace was removed
                    with contextlib.suppress(Exception):
                        ipr.link("del", index=index)
            for index in ipr.link_lookup(ifname=self.bridge):
                ipr.link("del", index=index)
        self._attached.clear()


def _free_subnet() -> ipaddress.IPv4Network:
    with IPRoute() as ipr:
        used = [ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}").network
                for a in ipr.get_addr(family=2)]
    pool = ipaddress.IPv4Network("172.16.0.0/12")
    subnets = 2 ** (24 - pool.prefixlen)
    start = os.getpid() % subnets
    for i in range(subnets):
        candidate = ipaddress.IPv4Network(f"{pool.network_address + ((start + i) % subnets) * 256}/24")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise RuntimeError("no free /24 in 172.16.0.0/12 for a DPU cluster's node network")


@dataclass
class DPUCluster(ControlPlane):
    """A control plane that kubelets can join; `address` must be reachable from the nodes (a NodeNetwork's)."""

    name: str = "dpu"
    scheduler: bool = True
    pki: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.authorization_mode = "Node,RBAC"
        self.controllers = CONTROLLERS

    def start(self) -> DPUCluster:
        super().start()
        try:
            self.kubectl("apply", "--server-side", "-f", "-", input=self._bootstrap_manifest())
            if self.scheduler:
                self._start_scheduler()
        except BaseException:
            self.stop()
            raise
        return self

    # -- pieces ----------------------------------------------------------------------------------

    def _write_pki(self) -> dict[str, Path]:
        pki = super()._write_pki()
        kubelet_client = self.authority.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                              organizations=("system:masters",), client=True)
        self.pki = {**pki, "kubelet_client_cert": kubelet_client.cert, "kubelet_client_key": kubelet_client.key,
                    "ca_key": self.authority.key_path}
        self.extra_apiserver_args = [
            *self.extra_apiserver_args,
            "--enable-admission-plugins=NodeRestriction",
            "--enable-bootstrap-token-auth",
            f"--kubelet-client-certificate={kubelet_client.cert}", f"--kubelet-client-key={kubelet_client.key}",
            # Node names (DPU names) resolve nowhere: reach kubelets by address, and trust only serving
            # certificates the cluster CA signed (after our CSR approval).
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-certificate-authority={pki['ca']}",
            "--allow-privileged=true",
        ]
        self.extra_controller_manager_args = [
            *self.extra_controller_manager_args,
            f"--cluster-signing-cert-file={pki['ca']}", f"--cluster-signing-key-file={self.authority.key_path}",
            f"--root-ca-file={pki['ca']}", f"--service-account-private-key-file={pki['sa_key']}",
            "--node-monitor-grace-period=20s",
        ]
        return pki

    def _start_scheduler(self) -> None:
        kubeconfig = str(self.kubeconfig)
        scheduler = Child(f"kube-scheduler ({self.name})", [
            tool("kube-scheduler"), f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
        ], self.workdir / "kube-scheduler.log")
        self.children.append(scheduler)

    def _bootstrap_manifest(self) -> str:
        """What kubeadm init creates for joins: cluster-info for anonymous discovery and the bootstrap RBAC."""
        def binding(name: str, role: str, group: str) -> dict[str, object]:
            return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": name},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]}

        rbac = "rbac.authorization.k8s.io/v1"
        docs: list[dict[str, object]] = [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cluster-info", "namespace": "kube-public"},
             "data": {"kubeconfig": yaml.safe_dump(self.cluster_info_kubeconfig())}},
            {"apiVersion": rbac, "kind": "Role",
             "metadata": {"name": "kubeadm:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
             "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cluster-info"],
                        "verbs": ["get"]}]},
            {"apiVersion": rbac, "kind": "RoleBinding",
             "metadata": {"name": "kubeadm:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                         "name": "kubeadm:bootstrap-signer-clusterinfo"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}]},
            binding("kubeadm:kubelet-bootstrap", "system:node-bootstrapper", BOOTSTRAP_GROUP),
            binding("kubeadm:node-autoapprove-bootstrap",
                    "system:certificates.k8s.io:certificatesigningrequests:nodeclient", BOOTSTRAP_GROUP),
            binding("kubeadm:node-autoapprove-certificate-rotation",
                    "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", "system:nodes"),
        ]
        return yaml.safe_dump_all(docs)

    # -- use -------------------------------------------------------------------------------------

    @property
    def ca_pem(self) -> bytes:
        return self.authority.cert_pem

    def cluster_info_kubeconfig(self) -> dict[str, object]:
        return {"apiVersion": "v1", "kind": "Config", "current-context": "", "contexts": [], "users": [],
                "clusters": [{"name": "", "cluster": {
                    "server": self.server, "certificate-authority-data": base64.b64encode(self.ca_pem).decode()}}]}

    def admin_conf(self) -> bytes:
        """A self-contained admin kubeconfig (certificates inline), as a static DPUCluster's Secret `admin.conf`."""
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        return yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": self.name,
            "clusters": [{"name": self.name, "cluster": {"server": self.server,
                                                         "certificate-authority-data": b64(self.pki["ca"])}}],
            "users": [{"name": "admin", "user": {"client-certificate-data": b64(self.pki["admin_cert"]),
                                                 "client-key-data": b64(self.pki["admin_key"])}}],
            "contexts": [{"name": self.name, "context": {"cluster": self.name, "user": "admin"}}],
        }).encode()

    def wait_node_ready(self, node: str, timeout: float = 60) -> None:
        def ready() -> bool:
            result = self.kubectl("get", "node", node, "-o",
                                  "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
            return result.stdout.strip() == "True"
        wait_until(ready, timeout, f"Node {node} Ready in DPU cluster {self.name}", interval=0.3)
