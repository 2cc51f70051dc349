"""The frozen CNI binary driven by real runtimes: cnitool (libcni) and the Multus thin plugin.

The pod's interface lands on br-sfc with the identity ServiceChains match (`dpf-id`), and with the
chain's flows (the upstream shape: priority 20, in_port → learn + output to the peer) the pod
pings its chain peer.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from kubernetes import client as k8s

from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.netns import NetnsBed, ns_exec
from dpf.lab.bed.tools import tool
from tests.cni.cnirun import host_veths, netconf, owned_ports
from tests.cni.conftest import BRIDGE, Agent

FIXTURES = Path(__file__).parent / "fixtures"
POD_ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=tenant;K8S_POD_NAME=fw-0;K8S_POD_UID=9d1e"


def chain(agent: Agent, dpf_id: str, peer_port: str) -> None:
    """Two-port chain between the pod's port (found by dpf-id, as the SFC programmer does) and a peer."""
    rows = agent.ovs.vsctl("--format=json", "--columns=ofport", "find", "Interface",
                           f'external_ids:dpf-id="{dpf_id}"').stdout
    pod_ofport = json.loads(rows)["data"][0][0]
    peer_ofport = int(agent.ovs.vsctl("get", "Interface", peer_port, "ofport").stdout)
    for a, b in ((pod_ofport, peer_ofport), (peer_ofport, pod_ofport)):
        agent.ovs.ofctl("add-flow", BRIDGE, f"cookie=0x5fc,table=0,priority=20,in_port={a},actions="
                        f"learn(cookie=0x5fc,idle_timeout=10,table=0,priority=30,in_port={b},dl_dst=dl_src,"
                        f"output:NXM_OF_IN_PORT[]),output:{b}")


def cnitool(bin_dir: Path, netconf_dir: Path, command: str, network: str, netns: str,
            args: str = POD_ARGS) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NETCONFPATH": str(netconf_dir), "CNI_PATH": f"{bin_dir}:/usr/lib/cni",
           "CNI_IFNAME": "net1", "CNI_ARGS": args}
    return subprocess.run([tool("cnitool"), command, network, f"/run/netns/{netns}"], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_cnitool_add_check_del_and_the_pod_reaches_its_chain_peer(agent: Agent, netns: NetnsBed, frozen_bin_dir,
                                                                   tmp_path: Path, version: str) -> None:
    network = f"sfc-{version.replace('.', '')}-{os.getpid()}"
    plugin = {k: v for k, v in netconf(agent.socket, version=version).items() if k not in ("cniVersion", "name")}
    plugins = [plugin]
    if version != "1.1.0":  # Debian's plugins stop at 1.0.0; tuning proves our result chains on
        plugins.append({"type": "tuning", "sysctl": {"net.ipv4.conf.net1.arp_notify": "1"}})
    (tmp_path / f"{network}.conflist").write_text(json.dumps(
        {"cniVersion": version, "name": network, "plugins": plugins}))
    pod = netns.namespace("pod")
    peer = netns.pod("peer", "10.77.0.200/24", peer_ns=agent.ovs.netns)
    agent.ovs.add_port(BRIDGE, peer.peer)

    added = cnitool(frozen_bin_dir, tmp_path, "add", network, pod)
    assert added.returncode == 0, added.stderr + added.stdout
    result = json.loads(added.stdout)
    assert result["cniVersion"] == version
    assert result["ips"][0]["address"] == "10.77.0.10/24"
    if version != "1.1.0":
        assert ns_exec(pod, "sysctl", "-n", "net.ipv4.conf.net1.arp_notify").stdout.strip() == "1"
    chain(agent, "tenant/fw-0/net1", peer.peer)
    assert peer.ping("10.77.0.10", count=2)

    checked = cnitool(frozen_bin_dir, tmp_path, "check", network, pod)
    assert checked.returncode == 0, checked.stderr + checked.stdout
    deleted = cnitool(frozen_bin_dir, tmp_path, "del", network, pod)
    assert deleted.returncode == 0, deleted.stderr + deleted.stdout
    assert owned_ports(agent.ovs) == {}
    assert host_veths(agent.ovs) == []
    assert agent.leases() == {}
    assert not peer.ping("10.77.0.10", wait=0.5)


def test_cnitool_gc_and_status(agent: Agent, netns: NetnsBed, frozen_bin_dir, tmp_path: Path) -> None:
    network = f"sfc-gc-{os.getpid()}"
    plugin = {k: v for k, v in netconf(agent.socket, version="1.1.0").items() if k not in ("cniVersion", "name")}
    (tmp_path / f"{network}.conflist").write_text(json.dumps(
        {"cniVersion": "1.1.0", "name": network, "plugins": [plugin]}))
    pod = netns.namespace("pod")
    assert cnitool(frozen_bin_dir, tmp_path, "status", network, pod).returncode == 0
    assert cnitool(frozen_bin_dir, tmp_path, "add", network, pod).returncode == 0
    assert len(owned_ports(agent.ovs)) == 1
    gc = cnitool(frozen_bin_dir, tmp_path, "gc", network, pod)  # cnitool passes no valid list: all go
    assert gc.returncode == 0, gc.stderr
    assert owned_ports(agent.ovs) == {}
    assert agent.leases() == {}
    agent.stop()
    status = cnitool(frozen_bin_dir, tmp_path, "status", network, pod)
    assert status.returncode != 0
    assert "not running" in status.stderr + status.stdout


# -- Multus -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def nad_crd(kube: ControlPlane) -> ControlPlane:
    kube.install_crds(FIXTURES / "crds")
    return kube


def multus_conf(kube: ControlPlane, bin_dir: Path, workdir: Path) -> dict:
    return {"cniVersion": "1.0.0", "name": "multus-cni-network", "type": "multus",
            "kubeconfig": str(kube.kubeconfig), "cniDir": str(workdir / "multus-cache"), "binDir": str(bin_dir),
            "logFile": str(workdir / "multus.log"), "logLevel": "verbose",
            "delegates": [{"cniVersion": "1.0.0", "name": "cluster", "plugins": [{"type": "loopback"}]}]}


def run_multus(conf: dict, command: str, pod: k8s.V1Pod, netns: str, bin_dir: Path) -> subprocess.CompletedProcess:
    meta = pod.metadata
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": f"sandbox-{meta.uid[:8]}",
           "CNI_NETNS": f"/run/netns/{netns}", "CNI_IFNAME": "eth0", "CNI_PATH": f"{bin_dir}:/usr/lib/cni",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={meta.namespace};K8S_POD_NAME={meta.name};"
                       f"K8S_POD_INFRA_CONTAINER_ID=sandbox-{meta.uid[:8]};K8S_POD_UID={meta.uid}"}
    return subprocess.run([tool("multus")], input=json.dumps(conf), env=env, capture_output=True, text=True,
                          timeout=60)


def test_multus_attaches_net1_from_a_network_attachment_definition(
        nad_crd: ControlPlane, namespace: str, agent: Agent, netns: NetnsBed, frozen_bin_dir, tmp_path: Path) -> None:
    kube = nad_crd
    nad_config = {k: v for k, v in netconf(agent.socket).items() if k != "ipam"}
    nad_config.update(name="sfc-net", ipam={"type": "dpf-ipam"})  # the pool comes from the pod's cni-args
    nad = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
           "metadata": {"name": "sfc-net", "namespace": namespace}, "spec": {"config": json.dumps(nad_config)}}
    k8s.CustomObjectsApi(kube.client).create_namespaced_custom_object(
        "k8s.cni.cncf.io", "v1", namespace, "network-attachment-definitions", nad)
    # No kube-controller-manager service-account controller in the bed: create what admission looks up.
    k8s.CoreV1Api(kube.client).create_namespaced_service_account(
        namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="default")))
    selection = [{"name": "sfc-net", "interface": "net1",
                  "cni-args": {"poolNames": ["pool1"], "poolType": "ippool"}}]
    pod = k8s.CoreV1Api(kube.client).create_namespaced_pod(namespace, k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="fw-0", annotations={"k8s.v1.cni.cncf.io/networks": json.dumps(selection)}),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="fw", image="example.invalid/fw:1")])))
    sandbox = netns.namespace("mpod")
    conf = multus_conf(kube, frozen_bin_dir, tmp_path)

    added = run_multus(conf, "ADD", pod, sandbox, frozen_bin_dir)
    assert added.returncode == 0, added.stdout + added.stderr + (tmp_path / "multus.log").read_text()
    link = json.loads(ns_exec(sandbox, "ip", "-j", "addr", "show", "dev", "net1").stdout)[0]
    assert [a["local"] for a in link["addr_info"] if a["family"] == "inet"] == ["10.77.0.10"]
    ids = next(iter(owned_ports(agent.ovs).values()))
    assert ids["dpf-id"] == f"{namespace}/fw-0/net1"
    status = k8s.CoreV1Api(kube.client).read_namespaced_pod("fw-0", namespace).metadata.annotations
    networks = json.loads(status["k8s.v1.cni.cncf.io/network-status"])
    assert any(n["interface"] == "net1" and n["ips"] == ["10.77.0.10"] for n in networks), networks

    deleted = run_multus(conf, "DEL", pod, sandbox, frozen_bin_dir)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert owned_ports(agent.ovs) == {}
    assert host_veths(agent.ovs) == []
    assert agent.leases() == {}


def test_dpf_ipam_serves_debian_bridge_as_its_ipam_plugin(agent: Agent, netns: NetnsBed, frozen_bin_dir,
                                                          tmp_path: Path) -> None:
    """`dpf-ipam` as a standalone IPAM type with nv-ipam style args, exec'd by another plugin."""
    network = f"br-ipam-{os.getpid()}"
    conf = {"cniVersion": "1.0.0", "name": network, "type": "bridge", "bridge": "cnitest0",
            "agentSocket": str(agent.socket), "args": {"cni": {"poolNames": ["pool1"], "poolType": "ippool"}},
            "ipam": {"type": "dpf-ipam"}}
    (tmp_path / f"{network}.conf").write_text(json.dumps(conf))
    pod = netns.namespace("pod")
    env = {**os.environ, "NETCONFPATH": str(tmp_path), "CNI_PATH": f"{frozen_bin_dir}:/usr/lib/cni",
           "CNI_IFNAME": "eth0"}
    # The bridge plugin creates its Linux bridge in its own netns: run it in the switch's, not the host's.
    argv = [tool("ip"), "netns", "exec", agent.ovs.netns, tool("cnitool")]
    added = subprocess.run([*argv, "add", network, f"/run/netns/{pod}"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert added.returncode == 0, added.stderr + added.stdout
    assert json.loads(added.stdout)["ips"][0]["address"] == "10.77.0.10/24"
    (owner,) = agent.leases().values()
    assert owner.startswith("cnitool-")  # leased to cnitool's container id, interface eth0
    assert owner.endswith("/eth0")
    assert owned_ports(agent.ovs) == {}  # IPAM only: no OVS port
    deleted = subprocess.run([*argv, "del", network, f"/run/netns/{pod}"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert deleted.returncode == 0, deleted.stderr
    assert agent.leases() == {}
