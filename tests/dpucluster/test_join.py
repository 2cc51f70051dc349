"""Emulated DPUs join a DPU cluster of their own as real Nodes: a real kubelet + containerd per DPU network
namespace, started from the `kubeadm join` command `join_command` makes, as a booted DPU would.

What a user sees: the Node registers and turns Ready; a join whose CA pin or token does not fit the cluster is
refused with the reason; the controller approves the serving certificate of a node that is a DPU it knows (so
`kubectl logs` works there) and leaves the CSR of any other node pending; a pod runs from the local image; stopping
the node leaves no process, cgroup or host sysctl change behind.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpf.controller.kube import clients
from dpf.controller.kube.rest import Rest
from dpf.controller.manager import Controller
from dpf.controller.provisioning.join import ca_cert_hash, join_command
from dpf.controller.reconcilers.csr import CSRReconciler
from dpf.controller.reconcilers.dpucluster import DPUClusterReconciler
from dpf.controller.reconcilers.kinds import DPU
from dpf.lab.bed.dpucluster import DPUCluster, NodeNetwork
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.kubelet import HOST_SYSCTLS, JoinRefused, Kubelet, cgroup_hierarchies, reap_stale
from dpf.lab.bed.netns import NetnsBed
from dpf.lab.bed.pki import Authority
from dpf.lab.bed.process import wait_until
from tests.controlplane.harness import controller_settings, eventually, host_rest, run, started
from tests.controlplane.harness import dpu_cluster as create_dpu_cluster

READY_TIMEOUT = 90.0


async def _join(cluster: DPUCluster, ca_pem: bytes | None = None) -> str:
    rest = await clients.from_kubeconfig_file(cluster.kubeconfig, "dpu-test")
    try:
        return await join_command(rest, cluster.server, ca_pem or cluster.ca_pem, ttl_seconds=600)
    finally:
        await rest.close()


def _sysctls() -> dict[str, str]:
    return {k: Path("/proc/sys", k).read_text().strip() for k in HOST_SYSCTLS}


def _in_netns(netns: str) -> list[int]:
    """Processes whose network namespace is `netns` (a kubelet, containerd or shim left behind)."""
    target = Path(f"/run/netns/{netns}").stat().st_ino
    found = []
    for ns in Path("/proc").glob("[0-9]*/ns/net"):
        try:
            if ns.stat().st_ino == target:
                found.append(int(ns.parent.parent.name))
        except OSError:
            continue
    return found


def test_join_command_creates_a_bootstrap_token(dpu_cluster: DPUCluster) -> None:
    command = run(_join(dpu_cluster))
    words = command.split()
    assert words[:3] == ["kubeadm", "join", dpu_cluster.server.removeprefix("https://")]
    token_id, secret = words[words.index("--token") + 1].split(".")
    assert words[words.index("--discovery-token-ca-cert-hash") + 1] == ca_cert_hash(dpu_cluster.ca_pem)
    stored = json.loads(dpu_cluster.kubectl("get", "secret", "-n", "kube-system", f"bootstrap-token-{token_id}",
                                            "-o", "json").stdout)
    assert stored["type"] == "bootstrap.kubernetes.io/token"
    data = {k: base64.b64decode(v).decode() for k, v in stored["data"].items()}
    assert data["token-secret"] == secret
    assert data["auth-extra-groups"] == "system:bootstrappers:kubeadm:default-node-token"
    assert data["usage-bootstrap-authentication"] == data["usage-bootstrap-signing"] == "true"
    assert "expiration" in data


def test_join_refused_on_wrong_ca_hash_or_token(dpu_cluster: DPUCluster, node_network: NodeNetwork,
                                                netns: NetnsBed, tmp_path: Path) -> None:
    ns = netns.namespace("dpux")
    node_network.attach(ns)
    other_ca = Authority(tmp_path / "other-ca").cert_pem
    with pytest.raises(JoinRefused, match=r"public key hash is sha256:[0-9a-f]{64}, not the pinned"):
        Kubelet(ns, "dpu-x", run(_join(dpu_cluster, other_ca)), tmp_path / "x").start()
    good = run(_join(dpu_cluster))
    token = good.split()[good.split().index("--token") + 1]
    forged = good.replace(token, token.split(".")[0] + ".0123456789abcdef")
    with pytest.raises(JoinRefused, match="not signed with token"):
        Kubelet(ns, "dpu-x", forged, tmp_path / "y").start()
    assert _in_netns(ns) == []
    nodes = dpu_cluster.kubectl("get", "nodes", "-o", "name").stdout.split()
    assert "node/dpu-x" not in nodes


def _dpu(namespace: str, name: str) -> dict[str, object]:
    return {"apiVersion": DPU.api_version, "kind": "DPU", "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": f"host-{name}", "bfb": "bf-bundle",
                     "cluster": {"name": "dpu", "namespace": namespace}}}


def _pod(name: str, node: str) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                       "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                                "terminationGracePeriodSeconds": 0,
                                "containers": [{"name": "main", "image": "dpf.local/busybox:1",
                                                "imagePullPolicy": "Never",
                                                "command": ["sh", "-c", f"echo hello from {node}; exec sleep 3600"]}]}})


def _serving_csrs(cluster: DPUCluster, node: str) -> list[dict]:
    items = json.loads(cluster.kubectl("get", "csr", "-o", "json").stdout)["items"]
    return [c for c in items if c["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
            and c["spec"]["username"] == f"system:node:{node}"]


def test_dpus_join_and_only_a_known_dpu_gets_its_serving_certificate(
        dpu_cluster: DPUCluster, node_network: NodeNetwork, kube: ControlPlane, namespace: str, netns: NetnsBed,
        busybox_image: Path, tmp_path: Path) -> None:
    before = _sysctls()
    kubelets: dict[str, Kubelet] = {}
    namespaces = {}
    try:
        for name in ("dpu-a", "dpu-b"):
            namespaces[name] = ns = netns.namespace(name[-1] + "dpu")
            node_network.attach(ns)
            started_at = time.monotonic()
            kubelets[name] = Kubelet(ns, name, run(_join(dpu_cluster)), tmp_path / name,
                                     image_tar=busybox_image).start()
            dpu_cluster.wait_node_ready(name, READY_TIMEOUT)
            print(f"{name}: kubelet start -> Node Ready in {time.monotonic() - started_at:.1f} s")
        addresses = json.loads(dpu_cluster.kubectl("get", "node", "dpu-a", "-o", "json").stdout)["status"]["addresses"]
        assert {"type": "InternalIP", "address": kubelets["dpu-a"].node_ip} in addresses
        # Both kubelets asked for serving certificates; nothing in Kubernetes approves those.
        for name in kubelets:
            # The kubelet asks once it has registered its Node, which on a loaded machine can be after Ready.
            csrs = wait_until(lambda name=name: _serving_csrs(dpu_cluster, name), 60,
                              f"{name}'s kubelet to ask for a serving certificate")
            assert not csrs[0].get("status", {}).get("conditions"), csrs

        for name in kubelets:
            dpu_cluster.kubectl("apply", "-f", "-", input=_pod(f"hello-{name}", name))
        run(_controller_approves(dpu_cluster, kube, namespace, tmp_path), timeout=150)

        # The approved node serves: its pod's logs come through the apiserver -> kubelet TLS connection.
        logs = dpu_cluster.kubectl("logs", "hello-dpu-a").stdout
        assert logs.strip() == "hello from dpu-a"
        # The other node's pod runs too (its kubelet works), but nobody can read its logs: no serving cert.
        pods = json.loads(dpu_cluster.kubectl("get", "pod", "hello-dpu-b", "-o", "json").stdout)
        assert pods["status"]["phase"] == "Running"
        failed = dpu_cluster.kubectl("logs", "hello-dpu-b", check=False)
        assert failed.returncode != 0
        assert "tls" in failed.stderr.lower(), failed.stderr
        assert not _serving_csrs(dpu_cluster, "dpu-b")[0].get("status", {}).get("conditions")
        # Shims outlive containerd; in the node's cgroup they are found even after a crash (reap_stale).
        comms = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in kubelets["dpu-a"].cgroup_pids()}
        assert "containerd-shim" in comms, comms
    finally:
        for kubelet in kubelets.values():
            kubelet.stop()
    for name, kubelet in kubelets.items():
        assert _in_netns(namespaces[name]) == [], f"{name}: processes left in its network namespace"
        assert kubelet.cgroup_pids() == set()
        assert not any((h / kubelet.cgroup.lstrip("/")).exists() for h in cgroup_hierarchies())
    assert _sysctls() == before


async def _controller_approves(cluster: DPUCluster, kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    rest: Rest = await host_rest(kube.kubeconfig)
    admin_conf = tmp_path / "admin.conf"
    admin_conf.write_bytes(cluster.admin_conf())
    controller = None
    try:
        await create_dpu_cluster(rest, namespace, admin_conf)
        await rest.create(DPU, _dpu(namespace, "dpu-a"), namespace)  # dpu-b is no DPU of ours
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace),
                                              reconcilers=[DPUClusterReconciler, CSRReconciler]))

        def approved() -> bool:
            csrs = _serving_csrs(cluster, "dpu-a")
            return bool(csrs and csrs[0].get("status", {}).get("certificate"))
        await eventually(lambda: asyncio.to_thread(approved), "dpu-a's serving CSR approved and issued", 60)

        def running() -> bool:
            out = cluster.kubectl("get", "pod", "hello-dpu-a", "hello-dpu-b", "-o",
                                  "jsonpath={.items[*].status.phase}").stdout
            return out.split() == ["Running", "Running"]
        await eventually(lambda: asyncio.to_thread(running), "both pods Running", 60)
        # The kubelet picks the new certificate up from its cert dir; the log call waits until it serves it.
        await eventually(lambda: asyncio.to_thread(
            lambda: cluster.kubectl("logs", "hello-dpu-a", check=False).returncode == 0), "dpu-a serving TLS", 30)
    finally:
        if controller is not None:
            await controller.stop()
        await rest.close()


# A run that starts a node and is then SIGKILLed, as a crashed test or lab would be.
NODE_PROCESS = """
import sys, time
from pathlib import Path
from dpf.lab.bed.kubelet import Kubelet
netns, name, command, workdir, image = sys.argv[1:]
Kubelet(netns, name, command, Path(workdir), image_tar=Path(image)).start()
print("started", flush=True)
time.sleep(3600)
"""


def test_a_killed_run_leaves_nothing_once_reaped(dpu_cluster: DPUCluster, node_network: NodeNetwork,
                                                 netns: NetnsBed, busybox_image: Path, tmp_path: Path) -> None:
    before = _sysctls()
    ns = netns.namespace("cdpu")
    node_network.attach(ns)
    node = subprocess.Popen([sys.executable, "-c", NODE_PROCESS, ns, "dpu-c", run(_join(dpu_cluster)),
                             str(tmp_path / "c"), str(busybox_image)], stdout=subprocess.PIPE, text=True)
    cgroup = f"/dpf-{node.pid}-dpu-c"
    try:
        assert node.stdout is not None
        assert node.stdout.readline().strip() == "started"
        dpu_cluster.wait_node_ready("dpu-c", READY_TIMEOUT)
        dpu_cluster.kubectl("apply", "-f", "-", input=_pod("hello-dpu-c", "dpu-c"))
        dpu_cluster.kubectl("wait", "--for=jsonpath={.status.phase}=Running", "pod/hello-dpu-c", "--timeout=60s",
                            timeout=70)
    finally:
        node.kill()
        node.wait()
        if node.stdout is not None:
            node.stdout.close()

    def daemons_gone() -> bool:
        comms = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in _in_netns(ns)
                 if Path(f"/proc/{pid}/comm").exists()}
        return not comms & {"kubelet", "containerd", "sleep"}
    wait_until(daemons_gone, 10, "kubelet, containerd and the mount-namespace holder to die with their parent")
    stale = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in _cgroup_pids_of(cgroup)}
    assert "containerd-shim" in stale, stale  # what only reap_stale() takes down
    assert cgroup in reap_stale()
    assert _in_netns(ns) == []
    assert not any((h / cgroup.lstrip("/")).exists() for h in cgroup_hierarchies())
    assert _sysctls() == before


def _cgroup_pids_of(cgroup: str) -> set[int]:
    procs = Path("/sys/fs/cgroup/pids") / cgroup.lstrip("/")
    return {int(p) for f in procs.rglob("cgroup.procs") for p in f.read_text().split()}
