"""Parsing one CNI request (pure): the netconf users already have, per-pod args, and refusals."""

from __future__ import annotations

import json

import pytest

from dpf.agent.cni.errors import CniError
from dpf.agent.cni.netconf import parse
from dpf.agent.cni.result import merge, render
from dpf.agent.ipam.model import Route
from dpf.agent.ipam.service import Assignment

ENV = {"CNI_CONTAINERID": "c1", "CNI_IFNAME": "net1", "CNI_NETNS": "/run/netns/p", "CNI_PATH": "/opt/cni/bin"}
# An upstream-style NAD (ovs-cni fields; nv-ipam pool), as DPF users have it.
NAD = {"cniVersion": "0.4.0", "name": "mybrsfc", "type": "dpf-sfc-cni", "bridge": "br-sfc", "mtu": 1500,
       "vlan": 100, "ofport_request": 9, "ipam": {"type": "nv-ipam", "poolName": "pool1,pool2"}}


def req(conf: dict, env: dict | None = None, command: str = "ADD", plugin: str = "dpf-sfc-cni"):
    return parse(command, {**ENV, **(env or {})}, json.dumps(conf), plugin)


def test_upstream_nad_fields() -> None:
    r = req(NAD, {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=hbn-0;K8S_POD_UID=u1"})
    assert (r.bridge, r.mtu, r.vlan, r.ofport_request) == ("br-sfc", 1500, 100, 9)
    assert r.ipam.pools == ("pool1", "pool2")
    assert r.ipam.in_agent
    assert (r.pod.namespace, r.pod.name, r.pod.uid) == ("ns", "hbn-0", "u1")
    assert not r.ipam_only


def test_multus_cni_args_override_the_nad_pool() -> None:
    # What the pod-ipam-injector writes into the pod's network selection (upstream §2.15).
    conf = {**NAD, "args": {"cni": {"poolNames": ["loopback"], "poolType": "cidrpool",
                                    "allocateDefaultGateway": True}}}
    r = req(conf)
    assert r.ipam.pools == ("loopback",)
    assert r.ipam.pool_type == "cidrpool"
    assert r.ipam.allocate_default_gateway


def test_mac_and_ips_precedence() -> None:
    conf = {**NAD, "runtimeConfig": {"mac": "02:00:00:00:00:AA"}, "args": {"cni": {"ips": ["10.0.0.5/24"]}}}
    r = req(conf, {"CNI_ARGS": "MAC=02:00:00:00:00:bb;IP=10.0.0.9"})
    assert r.mac == "02:00:00:00:00:aa"
    assert r.ips == ("10.0.0.5/24",)
    assert req(NAD, {"CNI_ARGS": "IP=10.0.0.9,10.0.0.10"}).ips == ("10.0.0.9", "10.0.0.10")


def test_trunks_and_ipam_only_mode() -> None:
    r = req({**NAD, "trunk": [{"id": 5}, {"minID": 10, "maxID": 12}]})
    assert r.trunks == (5, 10, 11, 12)
    ipam_only = {"cniVersion": "1.0.0", "name": "n", "type": "macvlan", "ipam": {"type": "dpf-ipam", "poolName": "p"}}
    assert req(ipam_only, plugin="dpf-ipam").ipam_only


@pytest.mark.parametrize(("conf", "env", "command", "code", "needle"), [
    ({**NAD, "cniVersion": "0.3.1"}, {}, "ADD", 1, "cniVersion"),
    ({**NAD, "name": ""}, {}, "ADD", 7, "name"),
    ({**NAD, "bridge": "br sfc"}, {}, "ADD", 7, "bridge"),
    ({**NAD, "mtu": 70000}, {}, "ADD", 7, "mtu"),
    ({**NAD, "vlan": True}, {}, "ADD", 7, "vlan"),
    ({**NAD, "ofport_request": 0}, {}, "ADD", 7, "ofport_request"),
    ({**NAD, "trunk": [{"minID": 9, "maxID": 3}]}, {}, "ADD", 7, "trunk[0]"),
    ({**NAD, "ipam": {"type": "nv-ipam"}}, {}, "ADD", 7, "ipam.poolName"),
    ({**NAD, "ipam": {"type": "nv-ipam", "poolName": "p", "poolType": "x"}}, {}, "ADD", 7, "ipam.poolType"),
    ({**NAD, "runtimeConfig": {"mac": "zz"}}, {}, "ADD", 7, "runtimeConfig.mac"),
    ({**NAD, "runtimeConfig": {"ips": ["300.1.1.1"]}}, {}, "ADD", 7, "runtimeConfig.ips"),
    ({**NAD, "cni.dev/valid-attachments": [{"ifname": "x"}]}, {}, "GC", 7, "valid-attachments[0]"),
    (NAD, {"CNI_IFNAME": "a-very-long-interface-name"}, "ADD", 4, "CNI_IFNAME"),
    (NAD, {"CNI_NETNS": ""}, "ADD", 4, "CNI_NETNS"),
    (NAD, {"CNI_ARGS": "novalue"}, "ADD", 4, "CNI_ARGS"),
])
def test_refusals_name_the_field(conf: dict, env: dict, command: str, code: int, needle: str) -> None:
    with pytest.raises(CniError) as info:
        req(conf, env, command)
    assert info.value.code == code
    assert needle in info.value.msg


def test_del_needs_no_netns_and_no_bridge() -> None:
    r = req({"cniVersion": "1.0.0", "name": "n"}, {"CNI_NETNS": ""}, command="DEL")
    assert r.netns == ""
    assert r.bridge == ""


def test_not_json_is_a_decode_failure() -> None:
    with pytest.raises(CniError) as info:
        parse("ADD", ENV, "{nope", "dpf-sfc-cni")
    assert info.value.code == 6


def test_result_rendering_and_chaining() -> None:
    from dpf.agent.cni.result import Interface

    a = Assignment(pool="p", address="10.0.0.5/24", gateway="10.0.0.1", routes=(Route("10.1.0.0/16", "10.0.0.1"),))
    mine = render("0.4.0", [Interface("dpcx", "aa:aa:aa:aa:aa:aa"), Interface("net1", "0a:58:0a:00:00:05", "/p")],
                  [a], pod_index=1)
    assert mine["ips"] == [{"address": "10.0.0.5/24", "version": "4", "gateway": "10.0.0.1", "interface": 1}]
    prev = {"cniVersion": "0.4.0", "interfaces": [{"name": "eth0", "sandbox": "/p"}],
            "ips": [{"address": "192.168.1.2/24", "interface": 0}]}
    chained = merge(prev, mine)
    assert [i["name"] for i in chained["interfaces"]] == ["eth0", "dpcx", "net1"]
    assert [ip["interface"] for ip in chained["ips"]] == [0, 2]
