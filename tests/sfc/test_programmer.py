"""The programmer against a real OVS: exact flows, targeted updates, ownership, drift repair, bad input."""

from __future__ import annotations

import pytest

from dpf.agent.sfc.desired import chain_cookie
from dpf.agent.sfc.model import (
    InterfaceType,
    NodeState,
    Pf,
    Physical,
    ServiceChain,
    ServiceInterface,
    Switch,
    Verdict,
    Vf,
)
from dpf.lab.bed.netns import NetnsBed
from dpf.lab.bed.ovs import OvsSwitch
from dpf.lab.bed.process import wait_until
from tests.sfc import hbn_only
from tests.sfc.conftest import base_flows, cookie_flows, counters, named_pod, needs_root

pytestmark = needs_root

NS = "sfc"


def veth(netns: NetnsBed, ovs: OvsSwitch, name: str) -> None:
    """A netdev called `name` in the switch's namespace (a representor on a DPU)."""
    netns.veth(name, ovs.netns, netns.veth_name(), ovs.netns)


def phys(name: str) -> ServiceInterface:
    return ServiceInterface(NS, name, InterfaceType.PHYSICAL, physical=Physical(name))


def ofport(ovs: OvsSwitch, name: str) -> int:
    return int(ovs.vsctl("get", "interface", name, "ofport").stdout)


def ports_of(ovs: OvsSwitch, bridge: str) -> set[str]:
    return set(ovs.vsctl("list-ports", bridge).stdout.split())


def learn(cookie: int, a: int, *others: int) -> str:
    learns = ",".join(f"learn(table=0,idle_timeout=10,priority=30,cookie={cookie:#x},in_port={q},"
                      "NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[])" for q in others)
    return f"cookie={cookie:#x}, priority=20,in_port={a} actions={learns}," + ",".join(f"output:{q}" for q in others)


def test_br_sfc_is_created_from_configuration(ovs: OvsSwitch, programmers) -> None:
    programmers(NodeState())
    bridge = ovs.vsctl("--columns=fail_mode,datapath_type", "list", "bridge", "br-sfc").stdout
    assert "secure" in bridge
    assert "netdev" in bridge


def test_hbn_only_manifests_give_exactly_upstreams_flows_on_the_bridge(ovs: OvsSwitch, netns: NetnsBed,
                                                                       programmers) -> None:
    # The DPU as the hbn_only guide leaves it: uplinks and host PF representors, HBN's SF ports on
    # br-hbn (plugged by the CNI, tagged with upstream's dpf-id) patched into br-sfc as p<rep>brsfc.
    for name in ("p0", "p1", "pf0hpf", "pf1hpf"):
        veth(netns, ovs, name)
    ovs.add_bridge("br-sfc")
    ovs.add_bridge("br-hbn", fail_mode="standalone")
    sf_of = {"p0_if": "hbnp0", "p1_if": "hbnp1", "pf0hpf_if": "hbnpf0", "pf1hpf_if": "hbnpf1"}
    for container_if, rep in sf_of.items():
        veth(netns, ovs, rep)
        ovs.vsctl("add-port", "br-hbn", rep, "--", "set", "interface", rep,
                  f"external_ids:dpf-id={hbn_only.HBN_POD}/{container_if}",
                  "--", "add-port", "br-hbn", f"p{rep}brhbn", "--", "set", "interface", f"p{rep}brhbn", "type=patch",
                  f"options:peer=p{rep}brsfc",
                  "--", "add-port", "br-sfc", f"p{rep}brsfc", "--", "set", "interface", f"p{rep}brsfc", "type=patch",
                  f"options:peer=p{rep}brhbn")
    sfc = programmers(hbn_only.node_state())
    assert all(s.ready for s in sfc.statuses().values()), sfc.statuses()

    port = {name: ofport(ovs, name) for name in ("p0", "p1", "pf0hpf", "pf1hpf")}
    patch = {container_if: ofport(ovs, f"p{rep}brsfc") for container_if, rep in sf_of.items()}
    fabric = chain_cookie(hbn_only.NS, f"hbn-to-fabric-{hbn_only.NODE}")
    host = chain_cookie(hbn_only.NS, f"host-to-hbn-{hbn_only.NODE}")
    assert fabric == 6272591130894795502  # upstream's documented cookie for this chain
    # Exactly these flows, besides what they learn from the traffic already passing (priority 30).
    assert base_flows(ovs, "br-sfc") == sorted([
        learn(fabric, port["p0"], patch["p0_if"]), learn(fabric, patch["p0_if"], port["p0"]),
        learn(fabric, port["p1"], patch["p1_if"]), learn(fabric, patch["p1_if"], port["p1"]),
        learn(host, port["pf0hpf"], patch["pf0hpf_if"]), learn(host, patch["pf0hpf_if"], port["pf0hpf"]),
        learn(host, port["pf1hpf"], patch["pf1hpf_if"]), learn(host, patch["pf1hpf_if"], port["pf1hpf"]),
    ])
    # Upstream-compatible marks on the ports we created.
    assert ovs.vsctl("get", "interface", "pf0hpf", "external_ids:dpf-id").stdout.strip() == \
        f'"{hbn_only.NS}/host-pf0-rep-{hbn_only.NODE}"'
    assert ovs.vsctl("get", "port", "p0", "external_ids:dpf-type").stdout.strip() == "physical"


def test_removing_a_port_from_a_chain_removes_its_flows_and_leaves_other_chains_alone(
        ovs: OvsSwitch, netns: NetnsBed, programmers) -> None:
    pods = {n: named_pod(netns, ovs, n, f"10.75.0.{i}/24", n) for i, n in enumerate(("p1", "p2", "p3", "p4", "p5"), 1)}
    ifaces = tuple(phys(n) for n in pods)
    three = ServiceChain(NS, "three", (Switch(("p1", "p2", "p3")),))
    other = ServiceChain(NS, "other", (Switch(("p4", "p5")),))
    sfc = programmers(NodeState(ifaces, (three, other)))
    assert pods["p1"].ping(pods["p3"].ip)
    assert pods["p4"].ping(pods["p5"].ip)
    a, c = chain_cookie(NS, "three"), chain_cookie(NS, "other")
    before = wait_until(lambda: {k: v for k, v in counters(ovs, "br-sfc").items()
                                 if k.startswith(f"cookie={c:#x},") and "priority=20" in k and v}, 5,
                        "packets counted on the other chain")
    p3 = ofport(ovs, "p3")

    report = sfc.update(NodeState(ifaces, (ServiceChain(NS, "three", (Switch(("p1", "p2")),)), other))).result(10)
    assert report.chains == (f"{NS}/three",)
    remaining = cookie_flows(ovs, "br-sfc", a)
    assert not [f for f in remaining if f"in_port={p3}" in f or f"output:{p3}" in f], remaining
    assert sorted(f for f in remaining if "priority=20" in f) == sorted([
        learn(a, ofport(ovs, "p1"), ofport(ovs, "p2")), learn(a, ofport(ovs, "p2"), ofport(ovs, "p1"))])
    after = counters(ovs, "br-sfc")
    # The other chain's flows are the same entries, their counters not reset: untouched.
    assert all(after.get(k, -1) >= v for k, v in before.items()), (before, after)
    assert not pods["p1"].ping(pods["p3"].ip, wait=0.5)
    assert pods["p1"].ping(pods["p2"].ip)


def test_chain_naming_an_interface_the_node_lacks_is_rejected_whole(ovs: OvsSwitch, netns: NetnsBed,
                                                                    programmers) -> None:
    for name in ("p1", "p2", "p3"):
        veth(netns, ovs, name)
    good = ServiceChain(NS, "good", (Switch(("p1", "p2")),))
    bad = ServiceChain(NS, "bad", (Switch(("p3", "p1")), Switch(("p3", "ghost"))))
    sfc = programmers(NodeState((phys("p1"), phys("p2"), phys("p3")), (good, bad)))
    assert cookie_flows(ovs, "br-sfc", chain_cookie(NS, "bad"), learned=True) == []
    status = sfc.statuses()[f"ServiceChain/{NS}/bad"]
    assert not status.ready
    assert "ghost name no ServiceInterface on this node" in status.message
    assert len(cookie_flows(ovs, "br-sfc", chain_cookie(NS, "good"))) == 2


def test_port_for_a_missing_netdev_fails_visibly_and_the_chain_waits(ovs: OvsSwitch, netns: NetnsBed,
                                                                     programmers) -> None:
    veth(netns, ovs, "p1")
    vf = ServiceInterface(NS, "vf3", InterfaceType.VF, vf=Vf(0, 3))
    sfc = programmers(NodeState((phys("p1"), vf), (ServiceChain(NS, "c", (Switch(("p1", "vf3")),)),)))
    status = sfc.statuses()
    assert "could not open network device pf0vf3" in status[f"ServiceInterface/{NS}/vf3"].message
    assert not status[f"ServiceChain/{NS}/c"].ready
    assert cookie_flows(ovs, "br-sfc", chain_cookie(NS, "c"), learned=True) == []


def test_ovn_interface_is_a_patch_pair_and_leaves_br_ovn_when_deleted(ovs: OvsSwitch, programmers) -> None:
    ovs.add_bridge("br-ovn", fail_mode="standalone")
    ovn = ServiceInterface(NS, "ovn", InterfaceType.OVN)
    sfc = programmers(NodeState((ovn,), ()))
    assert "puplinkbrsfc" in ports_of(ovs, "br-sfc")
    assert "puplinkbrovn" in ports_of(ovs, "br-ovn")
    assert ovs.vsctl("get", "interface", "puplinkbrovn", "options:peer").stdout.strip() == "puplinkbrsfc"
    assert sfc.statuses()[f"ServiceInterface/{NS}/ovn"].ready
    sfc.update(NodeState()).result(10)
    # Upstream deletes puplinkbrovn from br-sfc, where it never was; both ends must go.
    assert "puplinkbrsfc" not in ports_of(ovs, "br-sfc")
    assert "puplinkbrovn" not in ports_of(ovs, "br-ovn")


def test_hand_made_drift_is_repaired_without_any_call(ovs: OvsSwitch, netns: NetnsBed, programmers) -> None:
    for name in ("p1", "pf0hpf"):
        veth(netns, ovs, name)
    ovs.add_bridge("br-ovn", fail_mode="standalone")
    ovs.add_bridge("br-other", fail_mode="standalone")
    ifaces = (phys("p1"), ServiceInterface(NS, "hpf", InterfaceType.PF, pf=Pf(0)),
              ServiceInterface(NS, "ovn", InterfaceType.OVN))
    chain = ServiceChain(NS, "c", (Switch(("p1", "hpf", "ovn")),))
    programmers(NodeState(ifaces, (chain,)))
    cookie = chain_cookie(NS, "c")
    programmed = lambda: [f for f in base_flows(ovs, "br-sfc") if f.startswith(f"cookie={cookie:#x},")]  # noqa: E731
    assert len(programmed()) == 3

    ovs.vsctl("del-port", "br-sfc", "pf0hpf")  # a port deleted by hand
    wait_until(lambda: "pf0hpf" in ports_of(ovs, "br-sfc"), 5, "pf0hpf re-created")
    wait_until(lambda: len(programmed()) == 3 and f"in_port={ofport(ovs, 'pf0hpf')} " in " ".join(programmed()), 5,
               "flows following the new ofport")

    ovs.ofctl("del-flows", "br-sfc", f"cookie={cookie:#x}/-1,in_port={ofport(ovs, 'p1')}")  # a flow deleted by hand
    wait_until(lambda: len(programmed()) == 3, 5, "the deleted flow re-installed")

    ovs.vsctl("set", "interface", "puplinkbrsfc", "type=system")  # type drift
    wait_until(lambda: ovs.vsctl("get", "interface", "puplinkbrsfc", "type").stdout.strip() == "patch", 5,
               "puplinkbrsfc back to a patch port")

    uuid = ovs.vsctl("get", "port", "p1", "_uuid").stdout.strip()  # bridge drift: our row moved elsewhere
    ovs.vsctl("remove", "bridge", "br-sfc", "ports", uuid, "--", "add", "bridge", "br-other", "ports", uuid)
    wait_until(lambda: "p1" in ports_of(ovs, "br-sfc") and "p1" not in ports_of(ovs, "br-other"), 5,
               "p1 back on br-sfc")
    wait_until(lambda: len(programmed()) == 3 and f"in_port={ofport(ovs, 'p1')} " in " ".join(programmed()), 5,
               "flows for p1's new ofport")


def test_stale_things_of_ours_go_and_nothing_of_anyone_else_is_touched(ovs: OvsSwitch, netns: NetnsBed,
                                                                       programmers) -> None:
    for name in ("p1", "p2", "old", "theirs"):
        veth(netns, ovs, name)
    ovs.add_bridge("br-sfc")
    stale_cookie = chain_cookie(NS, "deleted-while-agent-was-down")
    ovs.vsctl("add-port", "br-sfc", "old", "--", "set", "port", "old", "external_ids:dpf-owner=dpf-sfc",
              "--", "add-port", "br-sfc", "theirs", "--", "set", "port", "theirs", "external_ids:owner=ovs-cni",
              "--", "set", "bridge", "br-sfc", f'external_ids:dpf-sfc-chain-{stale_cookie:016x}="sfc/gone"')
    ovs.ofctl("add-flow", "br-sfc", f"cookie={stale_cookie:#x},priority=20,in_port=1,actions=drop")
    ovs.ofctl("add-flow", "br-sfc", "cookie=0x1234,priority=5,in_port=2,actions=drop")  # somebody else's
    ovs.ofctl("add-flow", "br-sfc", "priority=1,actions=drop")  # cookie 0, somebody else's

    sfc = programmers(NodeState((phys("p1"), phys("p2")), (ServiceChain(NS, "c", (Switch(("p1", "p2")),)),)))
    assert ports_of(ovs, "br-sfc") == {"p1", "p2", "theirs"}
    flows = ovs.flows("br-sfc")
    assert cookie_flows(ovs, "br-sfc", stale_cookie, learned=True) == []
    assert "cookie=0x1234, priority=5,in_port=2 actions=drop" in flows
    assert "priority=1 actions=drop" in flows
    assert "dpf-sfc-chain-" + f"{stale_cookie:016x}" not in ovs.vsctl("get", "bridge", "br-sfc", "external_ids").stdout
    # Foreign flows survive a resync too.
    sfc.resync("check").result(10)
    assert "cookie=0x1234, priority=5,in_port=2 actions=drop" in ovs.flows("br-sfc")


@pytest.mark.parametrize("steps", [
    # (interfaces, chains) per step; each step is applied incrementally, then a resync must find nothing to do.
    [("p1 p2 p3 p4", ["a:p1,p2", "b:p3,p4"]),
     ("p1 p2 p3 p4", ["a:p1,p2,p3", "b:p4"]),  # p3 moves from b to a
     ("p1 p2 p3 p4", ["a:p1|p2,p3", "b:p4,p1"]),  # a splits into two switches; b claims p1 too → rejected
     ("p1 p2 p4", ["a:p1,p2", "b:p4,p2"]),  # p3 goes away entirely; b conflicts on p2
     ("p1 p2 p3 p4", ["b:p3,p4"]),  # a deleted
     ("p1 p2", [])],
])
def test_incremental_updates_end_where_a_resync_would(ovs: OvsSwitch, netns: NetnsBed, programmers,
                                                      steps) -> None:
    for name in ("p1", "p2", "p3", "p4"):
        veth(netns, ovs, name)
    sfc = programmers(NodeState())
    for ifaces, chains in steps:
        state = NodeState(
            tuple(phys(n) for n in ifaces.split()),
            tuple(ServiceChain(NS, spec.split(":")[0], tuple(Switch(tuple(s.split(","))) for s in
                                                              spec.split(":")[1].split("|"))) for spec in chains))
        sfc.update(state).result(10)
        flows = base_flows(ovs, "br-sfc")
        report = sfc.resync("compare").result(10)
        assert (report.ports, report.flow_mods) == ("nothing", 0), (ifaces, chains)
        assert base_flows(ovs, "br-sfc") == flows
        assert ports_of(ovs, "br-sfc") == set(ifaces.split())


def test_a_port_held_by_someone_else_fails_naming_the_port_and_the_fix(ovs: OvsSwitch, netns: NetnsBed,
                                                                       programmers) -> None:
    for name in ("p0", "p1"):
        veth(netns, ovs, name)
    ovs.add_bridge("br-other", fail_mode="standalone")
    ovs.vsctl("add-port", "br-other", "p1")  # not ours: the programmer may not move it
    seen: list[dict] = []
    sfc = programmers(NodeState((phys("p0"), phys("p1")), (ServiceChain(NS, "c", (Switch(("p0", "p1")),)),)),
                      on_statuses=seen.append)
    interface, chain = sfc.statuses()[f"ServiceInterface/{NS}/p1"], sfc.statuses()[f"ServiceChain/{NS}/c"]
    assert interface.verdict is Verdict.FAILED
    assert "port p1 exists on bridge br-other" in interface.message
    assert "move or delete it by hand" in interface.message
    assert chain.verdict is Verdict.FAILED, "waiting cannot fix it: not pending"
    assert "port p1 exists on bridge br-other" in chain.message
    assert any(f"ServiceChain/{NS}/c" in batch for batch in seen), "the callback carried the verdict"
    ovs.vsctl("del-port", "br-other", "p1")
    wait_until(lambda: sfc.statuses()[f"ServiceChain/{NS}/c"].verdict is Verdict.PROGRAMMED, 10,
               "the chain programmed once the port is free")


def test_switch_loss_fails_every_programmed_object_within_2s_and_repair_restores_them(
        ovs: OvsSwitch, netns: NetnsBed, programmers) -> None:
    for name in ("p0", "p1"):
        veth(netns, ovs, name)
    chain = ServiceChain(NS, "c", (Switch(("p0", "p1")),), version="v7")
    sfc = programmers(NodeState((phys("p0"), phys("p1")), (chain,)))
    wait_until(lambda: sfc.monitor.connections >= 1, 10, "the OpenFlow monitor connected")
    assert sfc.statuses()[f"ServiceChain/{NS}/c"].verdict is Verdict.PROGRAMMED
    ovs.stop_vswitchd()
    wait_until(lambda: all(s.verdict is Verdict.FAILED for s in sfc.statuses().values()), 2,
               "every object FAILED after ovs-vswitchd stopped")
    status = sfc.statuses()[f"ServiceChain/{NS}/c"]
    assert "OpenFlow connection to br-sfc is lost" in status.message
    assert status.version == "v7", "the verdict names the version it was planned from"
    ovs.start_vswitchd()
    wait_until(lambda: all(s.verdict is Verdict.PROGRAMMED for s in sfc.statuses().values()), 15,
               "every object PROGRAMMED again once ovs-vswitchd is back")
    assert len(cookie_flows(ovs, "br-sfc", chain_cookie(NS, "c"))) == 2, "and its flows are back"
