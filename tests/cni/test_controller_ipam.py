"""DPUServiceIPAM → per-node blocks (pure, table-driven): upstream's examples, stability, grace, selectors."""

from __future__ import annotations

import pytest

from dpf.controller.api.svc_network import DPUServiceIPAMSpec
from dpf.controller.ipam.split import Node, NodeAllocation, compute_allocations

HOUR = 3600.0


def spec(**raw: object) -> DPUServiceIPAMSpec:
    return DPUServiceIPAMSpec.model_validate(raw)


def nodes(*names: str, **labels: str) -> list[Node]:
    return [Node(n, dict(labels)) for n in names]


SUBNET = spec(ipv4Subnet={"subnet": "192.168.0.0/16", "gateway": "192.168.0.1", "perNodeIPCount": 4,
                          "routes": [{"dst": "10.10.0.0/16"}]})
HBN = spec(ipv4Network={"network": "10.0.120.0/24", "prefixSize": 29, "gatewayIndex": 2})
LOOPBACK = spec(ipv4Network={"network": "11.0.0.0/24", "prefixSize": 32})


@pytest.mark.parametrize(("ipam", "expected"), [
    # nv-ipam's README example: node1 .1-.4 (gateway .1 shared, skipped for pods), node2 .5-.8
    (SUBNET, [("dpu-a", "192.168.0.0/16", "192.168.0.1", "192.168.0.4", "192.168.0.1"),
              ("dpu-b", "192.168.0.0/16", "192.168.0.5", "192.168.0.8", "192.168.0.1")]),
    # upstream hbn-ipam.yaml: /24 into /29 per node, gateway at index 2
    (HBN, [("dpu-a", "10.0.120.0/29", "10.0.120.1", "10.0.120.6", "10.0.120.2"),
           ("dpu-b", "10.0.120.8/29", "10.0.120.9", "10.0.120.14", "10.0.120.10")]),
    # upstream hbn-loopback-ipam.yaml: one /32 per node, no gateway
    (LOOPBACK, [("dpu-a", "11.0.0.0/32", "11.0.0.0", "11.0.0.0", None),
                ("dpu-b", "11.0.0.1/32", "11.0.0.1", "11.0.0.1", None)]),
])
def test_upstream_examples(ipam: DPUServiceIPAMSpec, expected: list[tuple]) -> None:
    split = compute_allocations(ipam, nodes("dpu-b", "dpu-a"), [], now=0, grace=HOUR)
    assert [(a.node, a.subnet, a.start, a.end, a.gateway) for a in split.allocations] == expected


def test_status_entries_and_agent_blocks() -> None:
    a = compute_allocations(SUBNET, nodes("dpu-a"), [], 0, HOUR).allocations[0]
    assert a.status_entry() == {"nodeName": "dpu-a", "startIP": "192.168.0.1", "endIP": "192.168.0.4"}
    assert a.block("pool1")["routes"] == [{"dst": "10.10.0.0/16"}]
    h = compute_allocations(HBN, nodes("dpu-a"), [], 0, HOUR).allocations[0]
    assert h.status_entry() == {"nodeName": "dpu-a", "prefix": "10.0.120.0/29", "gateway": "10.0.120.2"}


def test_blocks_are_stable_as_nodes_come_and_go() -> None:
    first = compute_allocations(HBN, nodes("dpu-a", "dpu-b", "dpu-c"), [], 0, HOUR).allocations
    by_node = {a.node: a.subnet for a in first}
    # dpu-a leaves, dpu-0 (sorting first) joins: nobody moves, and dpu-a's block is held for the grace period.
    second = compute_allocations(HBN, nodes("dpu-0", "dpu-b", "dpu-c"), first, now=10, grace=HOUR)
    got = {a.node: a for a in second.allocations}
    assert {n: got[n].subnet for n in ("dpu-b", "dpu-c")} == {n: by_node[n] for n in ("dpu-b", "dpu-c")}
    assert got["dpu-a"].departed_at == 10
    assert got["dpu-a"].subnet == by_node["dpu-a"]
    assert got["dpu-0"].subnet == "10.0.120.24/29"
    # Back within the grace period: the same block again.
    back = compute_allocations(HBN, nodes("dpu-0", "dpu-a", "dpu-b", "dpu-c"), second.allocations, 20, HOUR)
    assert {a.node: (a.subnet, a.departed_at) for a in back.allocations}["dpu-a"] == (by_node["dpu-a"], None)
    # Gone past the grace period: the block is free and the next new node gets it.
    later = compute_allocations(HBN, nodes("dpu-0", "dpu-b", "dpu-c"), second.allocations, 10 + HOUR, HOUR)
    assert "dpu-a" not in {a.node for a in later.allocations}
    reused = compute_allocations(HBN, nodes("dpu-0", "dpu-b", "dpu-c", "dpu-d"), later.allocations, 10 + HOUR, HOUR)
    assert {a.node: a.subnet for a in reused.allocations}["dpu-d"] == by_node["dpu-a"]


def test_static_allocations_exclusions_and_exhaustion() -> None:
    ipam = spec(ipv4Network={"network": "10.0.0.0/28", "prefixSize": 30, "gatewayIndex": 1,
                             "exclusions": ["10.0.0.6"], "allocations": {"dpu-z": "10.0.0.0/30"}})
    split = compute_allocations(ipam, nodes("dpu-a", "dpu-b", "dpu-c", "dpu-d", "dpu-z"), [], 0, HOUR)
    got = {a.node: a for a in split.allocations}
    assert got["dpu-z"].subnet == "10.0.0.0/30"  # static wins, and nobody else gets it
    assert got["dpu-a"].subnet == "10.0.0.4/30"
    assert got["dpu-a"].exclusions == ("10.0.0.6",)
    assert got["dpu-a"].gateway == "10.0.0.5"
    assert split.unallocated == ("dpu-d",)  # 4 prefixes for 5 nodes


def test_previous_blocks_the_spec_no_longer_has_are_dropped() -> None:
    stale = NodeAllocation(node="dpu-a", pool_type="ippool", subnet="192.168.0.0/16", start="192.168.0.3",
                           end="192.168.0.6")
    split = compute_allocations(SUBNET, nodes("dpu-a"), [stale], 0, HOUR)
    assert [(a.start, a.end) for a in split.allocations] == [("192.168.0.1", "192.168.0.4")]


def test_node_selector() -> None:
    ipam = spec(ipv4Subnet={"subnet": "10.1.0.0/24", "gateway": "10.1.0.1", "perNodeIPCount": 8},
                nodeSelector={"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "dpu", "operator": "In", "values": ["bf3"]},
                                          {"key": "cordoned", "operator": "DoesNotExist"}]},
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["special"]}]}]})
    candidates = [Node("a", {"dpu": "bf3"}), Node("b", {"dpu": "bf2"}), Node("c", {"dpu": "bf3", "cordoned": ""}),
                  Node("special", {})]
    assert [a.node for a in compute_allocations(ipam, candidates, [], 0, HOUR).allocations] == ["a", "special"]


def test_a_large_subnet_is_not_enumerated() -> None:
    big = spec(ipv4Subnet={"subnet": "10.0.0.0/8", "gateway": "10.0.0.1", "perNodeIPCount": 2})
    split = compute_allocations(big, nodes(*(f"n{i:03}" for i in range(300))), [], 0, HOUR)
    assert split.allocations[-1].end == "10.0.2.88"
