"""Pure SFC planning: names, cookies, flow shape, chain validation and flow diffs (no OVS, no mocks)."""

from __future__ import annotations

import pytest

from dpf.agent.sfc.desired import (
    ChainState,
    Resolution,
    chain_cookie,
    chain_mods,
    compute_ports,
    diff_ports,
    plan_chain,
    port_claims,
    resolve,
    resync_mods,
)
from dpf.agent.sfc.flows import parse_dump
from dpf.agent.sfc.flowspec import AddFlow, DeleteFlow, DeleteFlows, LearnReturnPath, Match, Output
from dpf.agent.sfc.model import (
    InterfaceType,
    ModelError,
    NodeState,
    Pf,
    Physical,
    Service,
    ServiceChain,
    ServiceInterface,
    Switch,
    Vf,
)
from dpf.agent.sfc.settings import SfcSettings
from dpf.agent.sfc.view import ObservedBridge, ObservedFlow, ObservedPort, SwitchView
from tests.sfc import hbn_only

SETTINGS = SfcSettings(port_type="system")


def si(name: str, kind: InterfaceType, ns: str = "ns", **sub: object) -> ServiceInterface:
    return ServiceInterface(ns, name, kind, **sub)


def port(name: str, bridge: str | None, ofport: int | None, owner: str | None = "dpf-sfc", dpf_id: str = "",
         iface_type: str = "system", **extra: object) -> ObservedPort:
    ids = {"dpf-owner": owner} if owner else {}
    return ObservedPort(name, bridge, ids, iface_type, extra.get("options", {}),
                        {"dpf-id": dpf_id} if dpf_id else {}, ofport, extra.get("error"))


def view_of(*ports: ObservedPort, bridges: tuple[str, ...] = ("br-sfc",)) -> SwitchView:
    by_id: dict[str, tuple[str, ...]] = {}
    for p in ports:
        if "dpf-id" in p.iface_external_ids:
            by_id[p.iface_external_ids["dpf-id"]] = (*by_id.get(p.iface_external_ids["dpf-id"], ()), p.name)
    return SwitchView(bridges={b: ObservedBridge(b, "secure", "netdev", {}) for b in bridges},
                      ports={p.name: p for p in ports}, by_dpf_id=by_id)


# -- names and cookies -------------------------------------------------------------------------------


def test_cookie_is_upstreams_fnv1a64_of_namespace_and_name() -> None:
    # The value upstream documents for this chain (upstream DPF v24.10), so both agents agree on ownership.
    assert chain_cookie("dpf-operator-system", "hbn-to-fabric-worker1-0000-08-00") == 6272591130894795502


@pytest.mark.parametrize(("iface", "name", "iface_type", "options"), [
    (si("up", InterfaceType.PHYSICAL, physical=Physical("p0")), "p0", "system", {}),
    (si("hpf", InterfaceType.PF, pf=Pf(1)), "pf1hpf", "system", {}),
    (si("vf", InterfaceType.VF, vf=Vf(0, 7)), "pf0vf7", "system", {}),
    (si("ovn", InterfaceType.OVN), "puplinkbrsfc", "patch", {"peer": "puplinkbrovn"}),
])
def test_port_per_interface_type(iface: ServiceInterface, name: str, iface_type: str, options: dict) -> None:
    ports, problems = compute_ports([iface], SETTINGS, ["br-sfc", "br-ovn"])
    assert problems == {}
    assert ports[name].bridge == "br-sfc"
    assert ports[name].iface_type == iface_type
    assert dict(ports[name].options) == options
    assert dict(ports[name].iface_external_ids) == {"dpf-id": f"ns/{iface.name}", "dpf-owner": "dpf-sfc"}


def test_physical_port_carries_upstreams_dpf_type_and_dpdk_on_hardware() -> None:
    ports, _ = compute_ports([si("up", InterfaceType.PHYSICAL, physical=Physical("p0"))], SfcSettings(), ["br-sfc"])
    assert ports["p0"].iface_type == "dpdk"
    assert dict(ports["p0"].port_external_ids)["dpf-type"] == "physical"


def test_ovn_interface_is_a_patch_pair_across_both_bridges() -> None:
    ports, _ = compute_ports([si("ovn", InterfaceType.OVN)], SETTINGS, ["br-sfc", "br-ovn"])
    assert (ports["puplinkbrovn"].bridge, dict(ports["puplinkbrovn"].options)) == ("br-ovn", {"peer": "puplinkbrsfc"})


def test_ovn_interface_waits_for_the_ovn_bridge() -> None:
    ports, problems = compute_ports([si("ovn", InterfaceType.OVN)], SETTINGS, ["br-sfc"])
    assert ports == {}
    assert "bridge br-ovn" in problems["ns/ovn"]


def test_service_and_vlan_interfaces_get_no_port_from_us() -> None:
    svc = si("s", InterfaceType.SERVICE, service=Service("fw", "mybrsfc", "eth1", pod="ns/fw-0"))
    vlan = si("v", InterfaceType.VLAN)
    ports, problems = compute_ports([svc, vlan], SETTINGS, ["br-sfc"])
    assert ports == {}
    assert list(problems) == ["ns/v"]
    assert "vlan is not supported" in problems["ns/v"]


def test_two_interfaces_cannot_share_a_port() -> None:
    a = si("a", InterfaceType.PHYSICAL, physical=Physical("p0"))
    b = si("b", InterfaceType.PHYSICAL, physical=Physical("p0"))
    ports, problems = compute_ports([b, a], SETTINGS, ["br-sfc"])
    assert ports["p0"].interface_key == "ns/a"
    assert "already realised for ServiceInterface ns/a" in problems["ns/b"]


# -- model validation names the field -------------------------------------------------------------------


@pytest.mark.parametrize(("build", "message"), [
    (lambda: si("a", InterfaceType.PHYSICAL), "spec.physical is required when spec.interfaceType is physical"),
    (lambda: si("a", InterfaceType.PF, pf=Pf(0), vf=Vf(0, 1)), "spec.vf must be empty when spec.interfaceType is pf"),
    (lambda: si("a", "tunnel"), "spec.interfaceType 'tunnel' is not one of"),
    (lambda: Physical("a-very-long-netdev-name"), "physical.interfaceName"),
    (lambda: Vf(0, -1), "vf.vfID"),
    (lambda: Service("fw", "", "eth1"), "service.network is required"),
    (lambda: si("Bad_Name", InterfaceType.OVN), "metadata.name"),
    (lambda: ServiceChain("ns", "c", ()), "spec.switches has 0 entries"),
    (lambda: NodeState((si("a", InterfaceType.OVN), si("a", InterfaceType.OVN))), "ns/a appears twice"),
])
def test_bad_input_is_refused_naming_the_field(build, message: str) -> None:
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()


# -- ports: diff and ownership -----------------------------------------------------------------------


def test_port_diff_creates_fixes_moves_and_deletes_only_our_ports() -> None:
    want, _ = compute_ports([si("a", InterfaceType.PHYSICAL, physical=Physical("p0")),
                             si("b", InterfaceType.PF, pf=Pf(0)),
                             si("c", InterfaceType.VF, vf=Vf(0, 1)),
                             si("d", InterfaceType.VF, vf=Vf(0, 2))], SETTINGS, ["br-sfc"])
    view = view_of(
        port("pf0hpf", "br-sfc", 1, iface_type="dpdk"),  # ours, wrong type → fix
        port("pf0vf1", "br-hbn", 2),  # ours, wrong bridge → delete + create
        port("pf0vf2", "br-sfc", 3, owner=None),  # somebody's, right bridge → used as is
        port("old", "br-sfc", 4),  # ours, not desired → delete
        port("theirs", "br-sfc", 5, owner="ovs-cni"),  # somebody's → never touched
        bridges=("br-sfc", "br-hbn"))
    change, conflicts = diff_ports(want, view, "dpf-sfc")
    assert [p.name for p in change.create] == ["p0", "pf0vf1"]
    assert [p.name for p in change.fix] == ["pf0hpf"]
    assert change.delete == ("pf0vf1", "old")
    assert conflicts == {}


def test_foreign_port_on_the_wrong_bridge_is_a_conflict_not_a_takeover() -> None:
    want, _ = compute_ports([si("a", InterfaceType.PHYSICAL, physical=Physical("p0"))], SETTINGS, ["br-sfc"])
    change, conflicts = diff_ports(want, view_of(port("p0", "br-ex", 1, owner=None)), "dpf-sfc")
    assert not change
    assert "exists on bridge br-ex and was not created by dpf" in conflicts["p0"]


# -- interface → OpenFlow port --------------------------------------------------------------------------


def test_service_interface_is_found_by_upstreams_dpf_id_directly_or_through_the_hbn_patch() -> None:
    direct = si("fw", InterfaceType.SERVICE, service=Service("fw", "mybrsfc", "eth1", pod="ns/fw-0"))
    hbn = si("hbn", InterfaceType.SERVICE, service=Service("hbn", "mybrhbn", "p0_if", pod="ns/hbn-0"))
    view = view_of(port("fwrep", "br-sfc", 7, owner="ovs-cni", dpf_id="ns/fw-0/eth1"),
                   port("hbnrep", "br-hbn", 3, owner="ovs-cni", dpf_id="ns/hbn-0/p0_if"),
                   port("phbnrepbrsfc", "br-sfc", 9, owner="ovs-cni"), bridges=("br-sfc", "br-hbn"))
    assert resolve(direct, view, SETTINGS, {}) == Resolution(7)
    assert resolve(hbn, view, SETTINGS, {}) == Resolution(9)


@pytest.mark.parametrize(("iface", "view", "reason"), [
    (si("fw", InterfaceType.SERVICE, service=Service("fw", "n", "eth1")), view_of(), "no pod of service fw"),
    (si("fw", InterfaceType.SERVICE, service=Service("fw", "n", "eth1", pod="ns/fw-0")), view_of(),
     "no OVS interface with external_ids:dpf-id=ns/fw-0/eth1"),
    (si("up", InterfaceType.PHYSICAL, physical=Physical("p0")),
     view_of(port("p0", "br-sfc", -1, error="could not open network device p0 (No such device)")),
     "could not open network device p0"),
    (si("up", InterfaceType.PHYSICAL, physical=Physical("p0")), view_of(port("p0", "br-sfc", None)),
     "waiting for ovs-vswitchd"),
])
def test_unresolved_interface_says_why(iface: ServiceInterface, view: SwitchView, reason: str) -> None:
    result = resolve(iface, view, SETTINGS, {})
    assert result.ofport is None
    assert reason in result.reason


# -- chains → flows ---------------------------------------------------------------------------------


def hbn_resolutions() -> dict[str, Resolution]:
    """The hbn_only node with p0=1, p1=2, pf0hpf=3, pf1hpf=4 and HBN patches p0_if=11, p1_if=12, pf0hpf_if=13, ..."""
    ofport = {"p0": 1, "p1": 2, "host-pf0-rep": 3, "host-pf1-rep": 4,
              "p0-sf": 11, "p1-sf": 12, "host-pf0-sf": 13, "host-pf1-sf": 14}
    return {f"{hbn_only.NS}/{name}-{hbn_only.NODE}": Resolution(n) for name, n in ofport.items()}


def learn_pair(cookie: int, a: int, b: int) -> str:
    return (f"cookie={cookie:#x}, priority=20,in_port={a} actions=learn(table=0,idle_timeout=10,priority=30,"
            f"cookie={cookie:#x},in_port={b},NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[]),output:{b}")


def test_hbn_only_chains_produce_exactly_upstreams_flows() -> None:
    state = hbn_only.node_state()
    interfaces = {i.key: i for i in state.interfaces}
    claims = port_claims(state.chains, interfaces)
    plans = {c.name: plan_chain(c, interfaces, hbn_resolutions(), claims) for c in state.chains}
    fabric = plans[f"hbn-to-fabric-{hbn_only.NODE}"]
    host = plans[f"host-to-hbn-{hbn_only.NODE}"]
    assert fabric.cookie == 6272591130894795502
    assert [f.to_ofctl() for f in fabric.flows] == [learn_pair(fabric.cookie, 1, 11), learn_pair(fabric.cookie, 11, 1),
                                                learn_pair(fabric.cookie, 2, 12), learn_pair(fabric.cookie, 12, 2)]
    assert [f.to_ofctl() for f in host.flows] == [learn_pair(host.cookie, 3, 13), learn_pair(host.cookie, 13, 3),
                                              learn_pair(host.cookie, 4, 14), learn_pair(host.cookie, 14, 4)]


def test_three_port_switch_learns_from_every_port_and_floods_to_the_others() -> None:
    chain = ServiceChain("ns", "c", (Switch(("a", "b", "c")),))
    ifaces = {f"ns/{n}": si(n, InterfaceType.OVN) for n in "abc"}
    plan = plan_chain(chain, ifaces, {"ns/a": Resolution(1), "ns/b": Resolution(2), "ns/c": Resolution(3)},
                      port_claims([chain], ifaces))
    first = plan.flows[0]
    assert first.match == Match(in_port=1)
    assert first.actions == (LearnReturnPath(0, 10, 30, plan.cookie, 2), LearnReturnPath(0, 10, 30, plan.cookie, 3),
                             Output(2), Output(3))


def test_single_port_switch_has_no_flows() -> None:
    chain = ServiceChain("ns", "c", (Switch(("a",)),))
    plan = plan_chain(chain, {"ns/a": si("a", InterfaceType.OVN)}, {"ns/a": Resolution(1)}, {})
    assert (plan.state, plan.flows) == (ChainState.PROGRAMMED, ())


@pytest.mark.parametrize(("chain", "others", "state", "message"), [
    (ServiceChain("ns", "c", (Switch(("a", "ghost")),)), [], ChainState.REJECTED,
     "port(s) ghost name no ServiceInterface on this node in namespace ns"),
    (ServiceChain("ns", "c", (Switch(("a", "b")), Switch(("b", "a")))), [], ChainState.REJECTED,
     "appears more than once"),
    (ServiceChain("ns", "c", (Switch(("a", "b")),)), [ServiceChain("ns", "a-first", (Switch(("b", "x")),))],
     ChainState.REJECTED, "ns/b is already a port of ServiceChain ns/a-first"),
    (ServiceChain("ns", "c", (Switch(("a", "x")),)), [], ChainState.PENDING, "ns/x: pod not started"),
])
def test_chain_is_rejected_or_pending_whole(chain: ServiceChain, others: list[ServiceChain], state: ChainState,
                                            message: str) -> None:
    ifaces = {f"ns/{n}": si(n, InterfaceType.OVN) for n in "abx"}
    resolutions = {"ns/a": Resolution(1), "ns/b": Resolution(2), "ns/x": Resolution(None, "pod not started")}
    plan = plan_chain(chain, ifaces, resolutions, port_claims([chain, *others], ifaces))
    assert plan.state is state
    assert message in plan.message
    assert plan.flows == ()


# -- flow diffs -------------------------------------------------------------------------------------------


def plan_for(ports: list[int], name: str = "c"):
    chain = ServiceChain("ns", name, (Switch(tuple(f"i{p}" for p in ports)),))
    ifaces = {f"ns/i{p}": si(f"i{p}", InterfaceType.OVN) for p in ports}
    return plan_chain(chain, ifaces, {f"ns/i{p}": Resolution(p) for p in ports}, {})


def test_removing_a_port_deletes_its_flows_and_everything_that_outputs_to_it() -> None:
    old, new = plan_for([1, 2, 3]), plan_for([1, 2])
    mods = chain_mods(old.cookie, old, new)
    assert [m.to_ofctl() for m in mods[:2]] == [f"delete table=0,cookie={old.cookie:#x}/-1,in_port=3",
                                                f"delete table=0,cookie={old.cookie:#x}/-1,out_port=3"]
    assert DeleteFlow(old.cookie, 0, 20, Match(in_port=3)) in mods
    assert [m for m in mods if isinstance(m, AddFlow)] == [AddFlow(f) for f in new.flows]


def test_unchanged_chain_sends_nothing_and_a_deleted_chain_one_cookie_delete() -> None:
    plan = plan_for([1, 2])
    assert chain_mods(plan.cookie, plan, plan) == []
    assert chain_mods(plan.cookie, plan, None) == [DeleteFlows(plan.cookie)]
    assert DeleteFlows(plan.cookie).to_ofctl() == f"delete cookie={plan.cookie:#x}/-1"


def test_resync_keeps_foreign_and_learned_flows_and_removes_only_what_we_own() -> None:
    plan = plan_for([1, 2])
    stale = plan_for([5, 6], name="gone")
    observed = [ObservedFlow(plan.cookie, 0, 20, f.match.to_ofctl(), f.actions_text()) for f in plan.flows]
    observed += [
        ObservedFlow(plan.cookie, 0, 30, "in_port=2,dl_dst=aa:bb:cc:dd:ee:01", "output:1", idle_timeout=10),
        ObservedFlow(plan.cookie, 0, 30, "in_port=7,dl_dst=aa:bb:cc:dd:ee:02", "output:1", idle_timeout=10),
        ObservedFlow(stale.cookie, 0, 20, "in_port=5", "output:6"),
        ObservedFlow(0x1234, 0, 5, "in_port=1", "drop"),  # somebody else's
    ]
    mods = resync_mods({plan.cookie: plan}, observed, owned={stale.cookie})
    assert sorted(m.to_ofctl() for m in mods) == sorted([
        f"delete cookie={stale.cookie:#x}/-1",  # a chain of ours that is gone
        # learned through a port (7) that is not in the chain any more: everything of the chain through it goes
        f"delete cookie={plan.cookie:#x}/-1,in_port=7",
        f"delete cookie={plan.cookie:#x}/-1,out_port=7",
    ])


def test_resync_rebuilds_a_chain_with_a_flow_of_its_cookie_that_no_port_change_explains() -> None:
    plan = plan_for([1, 2])
    observed = [ObservedFlow(plan.cookie, 0, 20, f.match.to_ofctl(), f.actions_text()) for f in plan.flows]
    observed.append(ObservedFlow(plan.cookie, 0, 20, "ip,in_port=1", "output:2"))  # made by hand with our cookie
    mods = resync_mods({plan.cookie: plan}, observed, owned=())
    assert mods == [DeleteFlows(plan.cookie), *(AddFlow(f) for f in plan.flows)]


def test_resync_repairs_modified_actions_and_adds_missing_flows_only() -> None:
    plan = plan_for([1, 2])
    first, second = plan.flows
    observed = [ObservedFlow(plan.cookie, 0, 20, first.match.to_ofctl(), "drop")]  # modified by hand; second gone
    assert resync_mods({plan.cookie: plan}, observed, owned=()) == [AddFlow(first), AddFlow(second)]


def test_flow_text_round_trips_through_the_dump_parser() -> None:
    plan = plan_for([4, 9, 12])
    dump = "OFPST_FLOW reply (OF1.3) (xid=0x2):\n" + "\n".join(f" {f.to_ofctl()}" for f in plan.flows)
    dump += "\n cookie=0x1, table=3, idle_timeout=10, priority=30,in_port=1,dl_dst=aa:bb:cc:dd:ee:ff actions=output:2"
    dump += "\n cookie=0x2, table=3, ip actions=drop"
    dump += "\n cookie=0x3, table=3, actions=drop"  # default priority, no match
    dump += "\n actions=NORMAL"  # and no cookie, table 0
    flows = parse_dump(dump)
    assert [(f.cookie, f.table, f.priority, f.match, f.actions) for f in flows[:3]] == \
        [(f.cookie, f.table, f.priority, f.match.to_ofctl(), f.actions_text()) for f in plan.flows]
    assert flows[3] == ObservedFlow(1, 3, 30, "in_port=1,dl_dst=aa:bb:cc:dd:ee:ff", "output:2", idle_timeout=10)
    assert flows[4] == ObservedFlow(2, 3, 32768, "ip", "drop")
    assert flows[5] == ObservedFlow(3, 3, 32768, "", "drop")
    assert flows[6] == ObservedFlow(0, 0, 32768, "", "NORMAL")


def test_a_chain_invalid_on_its_own_does_not_lock_ports_away_from_a_valid_one() -> None:
    ifaces = {f"ns/{n}": si(n, InterfaceType.OVN) for n in "ab"}
    broken = ServiceChain("ns", "a-broken", (Switch(("a", "ghost")),))
    good = ServiceChain("ns", "b-good", (Switch(("a", "b")),))
    claims = port_claims([broken, good], ifaces)
    plan = plan_chain(good, ifaces, {"ns/a": Resolution(1), "ns/b": Resolution(2)}, claims)
    assert plan.state is ChainState.PROGRAMMED
