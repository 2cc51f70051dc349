"""ADD / CHECK / DEL / GC / STATUS through the shim and the agent, on real OVS and real netns."""

from __future__ import annotations

import ipaddress
import json

import pytest

from dpf.lab.bed.netns import NetnsBed, ns_exec
from tests.cni.cnirun import call, host_veths, netconf, owned_ports
from tests.cni.conftest import PLUGIN, Agent

K8S = "IgnoreUnknown=1;K8S_POD_NAMESPACE=tenant;K8S_POD_NAME=fw-0;K8S_POD_UID=0f6c"


def addresses(netns: str, ifname: str) -> list[str]:
    out = json.loads(ns_exec(netns, "ip", "-j", "addr", "show", "dev", ifname).stdout)
    return [f"{a['local']}/{a['prefixlen']}" for a in out[0]["addr_info"] if a["family"] == "inet"]


def test_add_plugs_pod_into_bridge_with_ip_and_identity(agent: Agent, netns: NetnsBed, script_bin_dir) -> None:
    pod = netns.namespace("pod")
    shim = script_bin_dir / PLUGIN
    res = call(shim, "ADD", netconf(agent.socket), "c1", pod, args=K8S)
    assert res.rc == 0, res.doc
    doc = res.doc
    assert doc["cniVersion"] == "1.0.0"
    host, inner = doc["interfaces"]
    assert inner == {"name": "net1", "mac": inner["mac"], "sandbox": f"/run/netns/{pod}"}
    assert doc["ips"] == [{"address": "10.77.0.10/24", "gateway": "10.77.0.1", "interface": 1}]
    assert doc["routes"] == [{"dst": "10.78.0.0/16", "gw": "10.77.0.1"}]
    assert inner["mac"] == "0a:58:0a:4d:00:0a"  # derived from the IP, as ovs-cni does
    assert addresses(pod, "net1") == ["10.77.0.10/24"]
    ports = owned_ports(agent.ovs)
    assert list(ports) == [host["name"]]
    ids = ports[host["name"]]
    assert ids["dpf-id"] == "tenant/fw-0/net1"  # what ServiceChains resolve ports by
    assert ids["dpf-cni-container"] == "c1"
    assert ids["dpf-cni-ips"] == "10.77.0.10/24"
    ofport = int(agent.ovs.vsctl("get", "Interface", host["name"], "ofport").stdout)
    assert ofport > 0
    assert agent.leases() == {"10.77.0.10": "c1/net1"}

    assert call(shim, "DEL", netconf(agent.socket), "c1", pod, args=K8S).rc == 0
    assert owned_ports(agent.ovs) == {}
    assert host_veths(agent.ovs) == []
    assert agent.leases() == {}
    assert ns_exec(pod, "ip", "link", "show", "net1", check=False).returncode != 0
    # DEL is idempotent: again, and after the netns itself is gone.
    assert call(shim, "DEL", netconf(agent.socket), "c1", pod).rc == 0
    assert call(shim, "DEL", netconf(agent.socket), "c1", "/run/netns/does-not-exist").rc == 0


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_result_shape_follows_the_requested_version(agent: Agent, netns: NetnsBed, script_bin_dir,
                                                    version: str) -> None:
    pod = netns.namespace("pod")
    res = call(script_bin_dir / PLUGIN, "ADD", netconf(agent.socket, version=version, mtu=1400), "c1", pod)
    assert res.rc == 0, res.doc
    assert res.doc["cniVersion"] == version
    ip = res.doc["ips"][0]
    assert ("version" in ip) == (version == "0.4.0")
    assert ("mtu" in res.doc["interfaces"][1]) == (version == "1.1.0")
    link = json.loads(ns_exec(pod, "ip", "-j", "link", "show", "net1").stdout)[0]
    assert link["mtu"] == 1400


def test_check_detects_a_removed_address(agent: Agent, netns: NetnsBed, script_bin_dir) -> None:
    pod = netns.namespace("pod")
    shim = script_bin_dir / PLUGIN
    added = call(shim, "ADD", netconf(agent.socket), "c1", pod).doc
    conf = netconf(agent.socket, prevResult=added)
    assert call(shim, "CHECK", conf, "c1", pod).rc == 0
    ns_exec(pod, "ip", "addr", "flush", "dev", "net1")
    res = call(shim, "CHECK", conf, "c1", pod)
    assert res.rc == 1
    assert res.code == 105
    assert "10.77.0.10/24" in res.doc["msg"]


def test_requested_mac_and_ip_are_honoured(agent: Agent, netns: NetnsBed, script_bin_dir) -> None:
    pod = netns.namespace("pod")
    conf = netconf(agent.socket, runtimeConfig={"mac": "02:00:00:00:00:42", "ips": ["10.77.0.33/24"]})
    res = call(script_bin_dir / PLUGIN, "ADD", conf, "c1", pod)
    assert res.rc == 0, res.doc
    assert res.doc["interfaces"][1]["mac"] == "02:00:00:00:00:42"
    assert res.doc["ips"][0]["address"] == "10.77.0.33/24"
    # The same IP for another pod is refused, naming why.
    other = netns.namespace("pod2")
    res = call(script_bin_dir / PLUGIN, "ADD", conf, "c2", other)
    assert res.rc == 1
    assert res.code == 104
    assert "already leased" in res.doc["msg"]
    assert host_veths(agent.ovs) == [next(iter(owned_ports(agent.ovs)))]  # the failed ADD left nothing


def test_gc_removes_attachments_not_in_the_valid_list(agent: Agent, netns: NetnsBed, script_bin_dir) -> None:
    shim = script_bin_dir / PLUGIN
    pods = [netns.namespace(f"p{i}") for i in range(3)]
    for i, pod in enumerate(pods):
        assert call(shim, "ADD", netconf(agent.socket), f"c{i}", pod).rc == 0
    conf = netconf(agent.socket, version="1.1.0")
    conf["cni.dev/valid-attachments"] = [{"containerID": "c1", "ifname": "net1"}]
    assert call(shim, "GC", conf, ifname="").rc == 0
    assert [ids["dpf-cni-container"] for ids in owned_ports(agent.ovs).values()] == ["c1"]
    assert list(agent.leases().values()) == ["c1/net1"]
    assert len(host_veths(agent.ovs)) == 1


def test_status_reports_missing_bridge_and_pool(agent: Agent, script_bin_dir) -> None:
    shim = script_bin_dir / PLUGIN
    assert call(shim, "STATUS", netconf(agent.socket, version="1.1.0"), ifname="").rc == 0
    res = call(shim, "STATUS", netconf(agent.socket, version="1.1.0", bridge="br-nope"), ifname="")
    assert res.code == 50
    assert "br-nope" in res.doc["msg"]
    conf = netconf(agent.socket, version="1.1.0", ipam={"type": "dpf-ipam", "poolName": "elsewhere"})
    res = call(shim, "STATUS", conf, ifname="")
    assert res.code == 50
    assert "elsewhere" in res.doc["msg"]


def test_invalid_config_names_the_field(agent: Agent, netns: NetnsBed, script_bin_dir) -> None:
    pod = netns.namespace("pod")
    shim = script_bin_dir / PLUGIN
    cases = {"mtu": ({"mtu": 20}, "mtu"), "vlan": ({"vlan": "ten"}, "vlan"),
             "bridge": ({"bridge": ""}, "bridge"),
             "interface_type": ({"interface_type": "dpdk"}, "interface_type"),
             "pool": ({"ipam": {"type": "dpf-ipam"}}, "ipam.poolName")}
    for extra, field in cases.values():
        res = call(shim, "ADD", netconf(agent.socket, **extra), "c1", pod)
        assert (res.rc, res.code) == (1, 7), (extra, res.doc)
        assert field in res.doc["msg"], res.doc
    res = call(shim, "ADD", netconf(agent.socket, version="0.3.1"), "c1", pod)
    assert res.code == 1
    assert "cniVersion" in res.doc["msg"]
    res = call(shim, "ADD", netconf(agent.socket), "", pod)
    assert res.code == 4
    assert "CNI_CONTAINERID" in res.doc["msg"]
    assert owned_ports(agent.ovs) == {}
    assert host_veths(agent.ovs) == []


def test_foreign_ipam_is_delegated(agent: Agent, netns: NetnsBed, script_bin_dir, tmp_path) -> None:
    pod = netns.namespace("pod")
    ipam = {"type": "host-local", "dataDir": str(tmp_path / "hl"), "ranges": [[{"subnet": "10.99.0.0/24"}]]}
    conf = netconf(agent.socket, ipam=ipam)
    res = call(script_bin_dir / PLUGIN, "ADD", conf, "c1", pod)
    assert res.rc == 0, res.doc
    address = res.doc["ips"][0]["address"]
    assert ipaddress.ip_interface(address) in ipaddress.ip_network("10.99.0.0/24")
    assert addresses(pod, "net1") == [address]
    assert call(script_bin_dir / PLUGIN, "DEL", conf, "c1", pod).rc == 0
    assert not list((tmp_path / "hl").rglob("10.99.0.*"))  # host-local released it
