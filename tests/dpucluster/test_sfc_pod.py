"""A real pod on a DPU node gets its SFC interface the way DPF's service pods do: kubelet → Multus → our SFC CNI
plugin → the DPU agent's CNI server, which plugs a veth into the DPU's br-sfc and leases the address. The agent
runs in the node's mount namespace, as on a DPU (the pod's netns is a mount made there). What a user sees: the pod
Running with net1 from the pool in Multus' network-status, the port on br-sfc, and both gone with the pod."""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path

from dpf.lab.bed.dpucluster import DPUCluster, NodeNetwork
from dpf.lab.bed.kubelet import Kubelet
from dpf.lab.bed.netns import NetnsBed
from dpf.lab.bed.ovs import OvsSwitch
from dpf.lab.bed.process import Child, wait_until
from dpf.lab.dpus import cni_bin_dir
from tests.cni.cnirun import owned_ports
from tests.cni.conftest import BRIDGE, PLUGIN, POOL
from tests.controlplane.harness import run
from tests.dpucluster.test_join import READY_TIMEOUT, _join
from tests.dpucluster.test_multus import NAD_CRD, pod_naming

POD = "svc"


def _nad(socket: Path) -> str:
    config = {"cniVersion": "1.0.0", "name": "sfc", "type": PLUGIN, "bridge": BRIDGE, "agentSocket": str(socket),
              "ipam": {"type": "dpf-ipam", "poolName": POOL["pool"]}}
    return json.dumps({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                       "metadata": {"name": "sfc", "namespace": "default"}, "spec": {"config": json.dumps(config)}})


def test_a_pod_naming_the_sfc_network_gets_a_port_on_br_sfc_through_multus(
        dpu_cluster: DPUCluster, node_network: NodeNetwork, netns: NetnsBed, busybox_image: Path,
        tmp_path: Path) -> None:
    ns = netns.namespace("sdpu")
    node_network.attach(ns)
    ovs = OvsSwitch(netns=ns, rundir=tmp_path / "ovs").start()
    agent: Child | None = None
    kubelet: Kubelet | None = None
    try:
        ovs.add_bridge(BRIDGE)
        multus_kubeconfig = tmp_path / "multus.kubeconfig"
        multus_kubeconfig.write_bytes(dpu_cluster.admin_conf())
        multus_kubeconfig.chmod(0o600)
        socket = tmp_path / "agent" / "run" / "agent.sock"
        pools = tmp_path / "agent" / "pools.json"
        pools.parent.mkdir(parents=True)
        pools.write_text(json.dumps([POOL]))
        dpu_cluster.install_crds(NAD_CRD.parent)  # waits until Established: a NAD applied before fails
        dpu_cluster.kubectl("apply", "-f", "-", input=_nad(socket))
        plugin = cni_bin_dir(tmp_path / "plugins") / PLUGIN  # the shim run by this Python
        kubelet = Kubelet(ns, "dpu-s", run(_join(dpu_cluster)), tmp_path / "node", image_tar=busybox_image,
                          multus_kubeconfig=multus_kubeconfig, cni_plugins={PLUGIN: plugin, "dpf-ipam": plugin})
        kubelet.start()
        agent = Child("dpf-cni-agent", [
            *kubelet.enter_argv(), sys.executable, "-m", "dpf.agent.cni", "--socket", str(socket),
            "--ovsdb", f"unix:{ovs.db_sock}", "--state-dir", str(tmp_path / "agent" / "state"),
            "--pools", str(pools)], tmp_path / "agent" / "agent.log")
        wait_until(socket.exists, 30, "the agent's CNI socket", while_alive=[agent])
        dpu_cluster.wait_node_ready("dpu-s", READY_TIMEOUT)
        networks = json.dumps([{"name": "sfc", "interface": "net1"}])
        dpu_cluster.kubectl("apply", "-f", "-", input=pod_naming(POD, "dpu-s", networks))

        def net1() -> dict | None:
            pod = json.loads(dpu_cluster.kubectl("get", "pod", POD, "-o", "json").stdout)
            annotation = pod["metadata"].get("annotations", {}).get("k8s.v1.cni.cncf.io/network-status")
            if pod["status"].get("phase") != "Running" or not annotation:
                return None
            return next((n for n in json.loads(annotation) if n.get("interface") == "net1"), None)

        status = wait_until(net1, READY_TIMEOUT, f"pod {POD} Running with net1 in Multus' network-status",
                            interval=0.3, while_alive=[agent])
        assert status["name"] == "default/sfc"
        address = ipaddress.ip_address(status["ips"][0])
        assert ipaddress.ip_address(POOL["start"]) <= address <= ipaddress.ip_address(POOL["end"])
        ports = owned_ports(ovs)
        assert len(ports) == 1, ports
        assert next(iter(ports.values())).get("dpf-cni-ifname") in (None, "net1")

        dpu_cluster.kubectl("delete", "pod", POD, "--wait=true", "--timeout=60s")
        wait_until(lambda: owned_ports(ovs) == {}, 30, "the pod's port to leave br-sfc", while_alive=[agent])
    finally:
        if agent is not None:
            agent.stop()
        if kubelet is not None:
            kubelet.stop()
        ovs.stop()
