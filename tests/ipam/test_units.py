"""Pure parts, table-driven: the agent's checks of a node's blocks, the status a split turns into (round trip
through status, conditions from agent reports), the per-node snapshot builder, and the proto's lint."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dpf.agent.ipam.handler import block_from_message, check_blocks
from dpf.agent.ipam.model import BlockError
from dpf.controller.api.svc_network import DPUServiceIPAMSpec
from dpf.controller.cache.ipamblocks import TYPE_URL, block_version, compute_ipam_blocks, pool_state
from dpf.controller.ipam.split import Node, compute_allocations, from_status
from dpf.controller.ipam.status import compute_status
from dpf.controller.server.node_status import Nack, NodeRegistry
from dpf.proto.v1 import ipam_pb2
from dpf.proto.v1 import nodestate_pb2 as pb
from tests.controlplane.test_proto import _lint

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
IPPOOL, CIDRPOOL = ipam_pb2.IPAM_POOL_TYPE_IPPOOL, ipam_pb2.IPAM_POOL_TYPE_CIDRPOOL


def block(pool: str, start: str, end: str, subnet: str = "10.0.0.0/16", pool_type: int = IPPOOL,
          **extra: object) -> ipam_pb2.IPAMBlock:
    return ipam_pb2.IPAMBlock(pool=pool, pool_type=pool_type, subnet=subnet, start=start, end=end, **extra)


# ---- the agent's checks ------------------------------------------------------------------------------------
def test_a_valid_set_becomes_pool_blocks() -> None:
    blocks, errors = check_blocks({
        "ns/a": block("a", "10.0.0.1", "10.0.0.8", gateway="10.0.0.1",
                      routes=[ipam_pb2.IPAMRoute(dst="10.9.0.0/16")], default_gateway=True),
        "ns/b": block("b", "10.1.0.0", "10.1.0.0", subnet="10.1.0.0/32", pool_type=CIDRPOOL),
        "ns/v6": block("v6", "::1", "::ffff", subnet="::/64")}, changed=set())
    assert errors == {}
    assert sorted(blocks) == ["a", "b", "v6"]
    assert (blocks["a"].gateway, blocks["a"].routes[0].dst, blocks["a"].default_gateway) == ("10.0.0.1",
                                                                                          "10.9.0.0/16", True)
    assert blocks["b"].pool_type == "cidrpool"


@pytest.mark.parametrize(("message", "error"), [
    (block("a", "10.0.0.1", "10.0.0.8", pool_type=0), "poolType 0 is neither ippool nor cidrpool"),
    (block("a", "10.1.0.1", "10.1.0.8"), "range 10.1.0.1-10.1.0.8 is not inside 10.0.0.0/16"),
    (block("a", "10.0.0.1", "10.0.0.8", gateway="10.2.0.1"), "gateway 10.2.0.1 is outside 10.0.0.0/16"),
    (block("", "10.0.0.1", "10.0.0.8"), "pool block without a pool name"),
])
def test_an_unusable_block_names_the_field(message: ipam_pb2.IPAMBlock, error: str) -> None:
    with pytest.raises(BlockError, match=error):
        block_from_message(message)
    blocks, errors = check_blocks({"ns/x": message, "ns/ok": block("ok", "10.0.1.1", "10.0.1.8")}, {"ns/x"})
    assert list(blocks) == ["ok"]
    assert error in errors["ns/x"]


def test_overlapping_ranges_blame_the_changed_pool() -> None:
    desired = {"ns/old": block("old", "10.0.0.1", "10.0.0.16"), "ns/new": block("new", "10.0.0.9", "10.0.0.24"),
               "ns/far": block("far", "10.0.1.1", "10.0.1.8")}
    blocks, errors = check_blocks(desired, changed={"ns/new"})
    assert sorted(blocks) == ["far", "old"]
    assert errors == {"ns/new": "pool 'new': range 10.0.0.9-10.0.0.24 overlaps pool 'old' (10.0.0.1-10.0.0.16) on "
                                "this node; two pools would hand out the same addresses"}
    _, both = check_blocks(desired, changed=set())  # start-up: nobody is "new", both are named
    assert sorted(both) == ["ns/new", "ns/old"]


def test_the_same_pool_name_twice_is_refused() -> None:
    _, errors = check_blocks({"a/pool1": block("pool1", "10.0.0.1", "10.0.0.8"),
                              "b/pool1": block("pool1", "10.0.1.1", "10.0.1.8")}, set())
    assert sorted(errors) == ["a/pool1", "b/pool1"]
    assert "pool 'pool1' is given twice on this node (a/pool1 and b/pool1)" in errors["a/pool1"]


# ---- status round trip and conditions ----------------------------------------------------------------------
SUBNET = DPUServiceIPAMSpec.model_validate({"ipv4Subnet": {"subnet": "10.0.0.0/24", "gateway": "10.0.0.1",
                                                           "perNodeIPCount": 8}})
NETWORK = DPUServiceIPAMSpec.model_validate({"ipv4Network": {"network": "10.1.0.0/24", "prefixSize": 28,
                                                             "gatewayIndex": 1, "exclusions": ["10.1.0.5"]}})


@pytest.mark.parametrize("spec", [SUBNET, NETWORK], ids=["ipv4Subnet", "ipv4Network"])
def test_status_entries_read_back_as_the_same_split(spec: DPUServiceIPAMSpec) -> None:
    first = compute_allocations(spec, [Node("a", {}), Node("b", {})], [], now=1000, grace=60)
    gone = compute_allocations(spec, [Node("b", {})], first.allocations, now=1001, grace=60)
    entries = [a.status_entry() for a in gone.allocations]
    assert entries[0]["departedAt"] == "1970-01-01T00:16:41Z"
    assert tuple(from_status(spec, entries)) == gone.allocations
    assert from_status(spec, [{"nodeName": "x", "startIP": "10.0.0.3"}, {"nodeName": "y", "prefix": "10.9.0.0/28"},
                              {"startIP": "10.0.0.9"}]) == [], "entries the spec does not have are dropped"


def obj(spec: dict, entries: list[dict] | None = None, **meta: object) -> dict:
    return {"metadata": {"name": "pool1", "namespace": "ns", "generation": 2, **meta}, "spec": spec,
            "status": {"allocations": entries or []}}


def conditions_of(status: dict) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def test_conditions_follow_the_agents() -> None:
    spec = SUBNET.to_json()
    split = compute_allocations(SUBNET, [Node("a", {}), Node("b", {})], [], now=0, grace=60)
    a, b = split.allocations
    registry = NodeRegistry()
    # Nobody connected yet.
    st = compute_status(obj(spec), split, registry, now=NOW)
    assert st["allocations"] == [a.status_entry(), b.status_entry()]
    assert conditions_of(st)["DPUIPAMObjectReconciled"] == ("True", "Success", "")
    assert conditions_of(st)["DPUIPAMObjectReady"] == (
        "False", "Pending", "waiting for 2 of 2 node(s) to apply their block: a (agent not connected), "
                            "b (agent not connected)")
    assert conditions_of(st)["Ready"] == ("False", "Pending",
                                          "The following conditions are not ready: DPUIPAMObjectReady")
    # a applies its block; b rejects it.
    registry.node("a").connected = True
    registry.node("a").of(TYPE_URL).acked = {"ns/pool1": block_version("pool1", a)}
    registry.node("b").connected = True
    registry.node("b").of(TYPE_URL).nack = Nack("v", "1 block unusable", {"ns/pool1": "overlaps pool 'x'"},
                                                {"ns/pool1": block_version("pool1", b)})
    st = compute_status(obj(spec, st["allocations"]), split, registry, now=NOW)
    assert conditions_of(st)["DPUIPAMObjectReady"] == ("False", "Failure",
                                                       "node b rejected the block: overlaps pool 'x'")
    # b's agent reports the block FAILED at its version instead.
    registry.node("b").of(TYPE_URL).nack = None
    registry.node("b").of(TYPE_URL).observed["ns/pool1"] = pb.ObjectStatus(
        name="ns/pool1", state=pb.OBJECT_STATE_FAILED, message="disk full", resource_version=block_version("pool1", b))
    st = compute_status(obj(spec), split, registry, now=NOW)
    assert conditions_of(st)["DPUIPAMObjectReady"][2] == "node b failed to apply the block: disk full"
    # Both applied: Ready.
    registry.node("b").of(TYPE_URL).observed.clear()
    registry.node("b").of(TYPE_URL).acked = {"ns/pool1": block_version("pool1", b)}
    st = compute_status(obj(spec), split, registry, now=NOW)
    assert {t: c[0] for t, c in conditions_of(st).items()} == {"Ready": "True", "DPUIPAMObjectReconciled": "True",
                                                             "DPUIPAMObjectReady": "True"}
    assert st["observedGeneration"] == 2


def test_an_exhausted_pool_names_the_nodes_left_out() -> None:
    spec = DPUServiceIPAMSpec.model_validate({"ipv4Network": {"network": "10.1.0.0/27", "prefixSize": 28}})
    split = compute_allocations(spec, [Node(n, {}) for n in ("a", "b", "c")], [], now=0, grace=60)
    st = compute_status(obj(spec.to_json()), split, NodeRegistry(), now=NOW)
    status, reason, message = conditions_of(st)["DPUIPAMObjectReconciled"]
    assert (status, reason) == ("False", "Error")
    assert message == ("the pool has no block left for 1 matching node(s): c; grow the network/subnet or narrow "
                       "nodeSelector")
    none = compute_status(obj(spec.to_json()), compute_allocations(spec, [], [], 0, 60), NodeRegistry(), now=NOW)
    assert conditions_of(none)["DPUIPAMObjectReady"] == ("False", "Pending",
                                                         "no DPU node has a block: none matches nodeSelector")


# ---- the per-node snapshot ---------------------------------------------------------------------------------
def test_a_node_gets_the_blocks_status_records_for_it() -> None:
    entries = [{"nodeName": "a", "prefix": "10.1.0.0/28", "gateway": "10.1.0.1"},
               {"nodeName": "b", "prefix": "10.1.0.16/28", "departedAt": "2026-11-24T12:00:00Z"}]
    state = pool_state(obj(NETWORK.to_json(), entries))
    snapshot = compute_ipam_blocks("a", [state])
    [(name, resource)] = snapshot.resources.items()
    message = ipam_pb2.IPAMBlock()
    resource.body.Unpack(message)
    assert name == "ns/pool1"
    assert (message.pool, message.subnet, message.start, message.end, message.gateway) == (
        "pool1", "10.1.0.0/28", "10.1.0.1", "10.1.0.14", "10.1.0.1")
    assert list(message.exclusions) == ["10.1.0.5"]
    assert compute_ipam_blocks("b", [state]).resources == {}, "a departed node's block is reserved, not served"
    deleting = pool_state(obj(NETWORK.to_json(), entries, deletionTimestamp="2026-11-24T12:00:00Z"))
    assert compute_ipam_blocks("a", [deleting]).resources == {}


def test_ipam_proto_passes_buf_style_lint() -> None:
    assert _lint(ipam_pb2.DESCRIPTOR) == []
