"""The persistent OpenFlow connection against a real switch: the flows ovs-ofctl would install, bundles refused
whole with the switch's error, vswitchd restarts and hangs, and which transport the programmer uses when."""

from __future__ import annotations

import os
import signal
import time

import pytest

from dpf.agent.sfc.desired import (
    ChainPlan,
    Resolution,
    chain_cookie,
    chain_mods,
    plan_chain,
    port_claims,
    resync_mods,
)
from dpf.agent.sfc.flows import Ofctl, OfctlError
from dpf.agent.sfc.flowspec import AddFlow, DeleteFlow, DeleteFlows, Flow, FlowMod, Match, Output
from dpf.agent.sfc.model import InterfaceType, NodeState, Physical, ServiceChain, ServiceInterface, Switch
from dpf.agent.sfc.ofconn import OpenFlowConnection, OpenFlowError
from dpf.lab.bed.netns import NetnsBed
from dpf.lab.bed.ovs import OvsSwitch
from dpf.lab.bed.process import wait_until
from tests.sfc import hbn_only
from tests.sfc.conftest import base_flows, needs_root, sfc_settings

pytestmark = needs_root



def flow(in_port: int, out_port: int, cookie: int = 0x77, table: int = 0) -> AddFlow:
    return AddFlow(Flow(cookie, 20, Match(in_port=in_port), (Output(out_port),), table))


def hbn_plans(ofports: dict[str, int]) -> dict[int, ChainPlan]:
    """The hbn_only chains planned for interfaces at the given OpenFlow ports (name → ofport)."""
    state = hbn_only.node_state()
    resolutions = {si.key: Resolution(ofports[si.name.removesuffix(f"-{hbn_only.NODE}")])
                   for si in state.interfaces}
    claims = port_claims(state.chains, resolutions)
    plans = [plan_chain(chain, resolutions, resolutions, claims) for chain in state.chains]
    return {plan.cookie: plan for plan in plans}


def learn_from(ovs: OvsSwitch, bridge: str, in_port: int, mac: str) -> None:
    """Run one packet through the bridge's flows with side effects on, so its `learn` actions install flows."""
    ovs.appctl("ovs-vswitchd", "ofproto/trace", bridge, f"in_port={in_port},dl_src={mac},dl_dst=ff:ff:ff:ff:ff:ff",
               "-generate")


def is_learned(flow: str) -> bool:
    return "idle_timeout=" in flow.split(" actions=")[0]


def test_the_connection_installs_exactly_what_ovs_ofctl_installs(ovs: OvsSwitch) -> None:
    """Every flow mod desired.py builds, applied to two bridges, one per transport: identical dump-flows."""
    for bridge in ("br-a", "br-b"):
        ovs.add_bridge(bridge)
    by_ofctl = Ofctl(sfc_settings(ovs, bridge="br-a"))
    by_conn = Ofctl(sfc_settings(ovs, bridge="br-b"))

    def apply(mods: list[FlowMod]) -> list[str]:
        assert mods
        by_ofctl.ofctl_bundle(mods)
        assert by_conn.connection.bundle(mods) == len(mods)
        flows = sorted(ovs.flows("br-a"))
        assert sorted(ovs.flows("br-b")) == flows
        return flows

    try:
        ports = {"p0": 1, "p1": 2, "host-pf0-rep": 3, "host-pf1-rep": 4, "host-pf0-sf": 5, "host-pf1-sf": 6,
                 "p0-sf": 7, "p1-sf": 8}
        plans = hbn_plans(ports)
        fabric = chain_cookie(hbn_only.NS, f"hbn-to-fabric-{hbn_only.NODE}")
        host = chain_cookie(hbn_only.NS, f"host-to-hbn-{hbn_only.NODE}")
        # 1. Both chains from nothing: the hbn_only guide's eight flows with their learn actions.
        flows = apply(resync_mods(plans, [], ()))
        assert len(flows) == 8
        assert all("learn(" in f for f in flows)

        # 2. A host PF representor gets a new OpenFlow port: delete by in_port and out_port, strict deletes, adds.
        moved = hbn_plans({**ports, "host-pf1-rep": 9})
        mods = chain_mods(host, plans[host], moved[host])
        assert {type(mod) for mod in mods} == {DeleteFlows, DeleteFlow, AddFlow}
        flows = apply(mods)
        assert any("in_port=9 " in f for f in flows)
        assert not any("in_port=4 " in f for f in flows)

        # 3. Traffic makes the learn actions install flows on both bridges; they come out the same.
        for bridge in ("br-a", "br-b"):
            learn_from(ovs, bridge, 1, "aa:bb:cc:dd:ee:01")
            learn_from(ovs, bridge, 7, "aa:bb:cc:dd:ee:07")
        learned = [f for f in ovs.flows("br-b") if is_learned(f)]
        assert len(learned) == 2
        assert sorted(ovs.flows("br-a")) == sorted(ovs.flows("br-b"))

        # 4. The uplink p0 moves too: the resync path deletes the flows through it, learned ones included, by port.
        mods = resync_mods({fabric: hbn_plans({**ports, "p0": 11, "host-pf1-rep": 9})[fabric]},
                           by_conn.dump(fabric), {fabric})
        assert DeleteFlows(fabric, match=Match(in_port=1)) in mods
        assert DeleteFlows(fabric, out_port=1) in mods
        flows = apply(mods)
        assert not [f for f in flows if is_learned(f)]

        # 5. A chain deleted: one delete by cookie across all tables.
        flows = apply(chain_mods(host, moved[host], None))
        assert not [f for f in flows if f"cookie={host:#x}," in f]
        assert len(flows) == 4
    finally:
        by_conn.close()


def test_a_bundle_with_an_invalid_flow_is_refused_whole_with_the_switchs_error(ovs: OvsSwitch) -> None:
    ovs.add_bridge("br-sfc")
    ofctl = Ofctl(sfc_settings(ovs))
    try:
        ofctl.bundle([flow(1, 2)])
        before = ovs.flows("br-sfc")
        bad = flow(5, 6, cookie=0x78, table=254)  # table 254 is the switch's own
        mods = [DeleteFlows(0x77), flow(3, 4, cookie=0x78), bad, flow(7, 8, cookie=0x78)]
        with pytest.raises(OfctlError) as refused:
            ofctl.bundle(mods)
        assert "OFPBRC_EPERM" in str(refused.value)
        assert bad.to_ofctl() in str(refused.value)
        assert "nothing was applied" in str(refused.value)
        assert ovs.flows("br-sfc") == before  # not the delete before it, not the adds around it
        # ovs-ofctl refuses the same bundle with the same error name.
        with pytest.raises(OfctlError, match="OFPBRC_EPERM"):
            ofctl.ofctl_bundle(mods)
        # The connection is still good after a refusal.
        ofctl.bundle(mods[:2])
        assert ovs.flows("br-sfc") == ["cookie=0x78, priority=20,in_port=3 actions=output:4"]
        assert (ofctl.connection.connections, ofctl.bundles) == (1, {"openflow": 2, "ovs-ofctl": 0})
    finally:
        ofctl.close()


def test_the_connection_follows_vswitchd_restarts_and_says_when_it_is_gone(ovs: OvsSwitch) -> None:
    ovs.add_bridge("br-sfc")
    ofctl = Ofctl(sfc_settings(ovs))
    try:
        ofctl.bundle([flow(1, 2)])
        ovs.restart_vswitchd()  # our idle connection dies with it, and so do the flows
        wait_until(lambda: ovs.ofctl("dump-flows", "br-sfc", check=False).returncode == 0, 10, "br-sfc back")
        ofctl.bundle([flow(3, 4)])
        assert ovs.flows("br-sfc") == ["cookie=0x77, priority=20,in_port=3 actions=output:4"]
        assert (ofctl.connection.connections, ofctl.bundles["openflow"]) == (2, 2)

        ovs.stop_vswitchd()
        started = time.monotonic()
        with pytest.raises(OpenFlowError, match=r"cannot connect to unix:.*br-sfc\.mgmt"):
            ofctl.connection.bundle([flow(5, 6)])
        assert time.monotonic() - started < 1
        with pytest.raises(OfctlError):  # ovs-ofctl, the fallback, cannot reach it either
            ofctl.bundle([flow(5, 6)])
    finally:
        ofctl.close()


def test_a_hung_switch_times_out_within_the_bound_and_nothing_is_applied(ovs: OvsSwitch) -> None:
    ovs.add_bridge("br-sfc")
    ofctl = Ofctl(sfc_settings(ovs, openflow_timeout=0.5))
    vswitchd = ovs.children["ovs-vswitchd"].pid
    try:
        ofctl.bundle([flow(1, 2)])
        os.kill(vswitchd, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(OfctlError, match=r"no answer within 0\.5s"):
            ofctl.bundle([flow(3, 4)])
        assert time.monotonic() - started < 1.5
    finally:
        os.kill(vswitchd, signal.SIGCONT)
    try:
        # The timed-out bundle was never committed; closing the connection made the switch discard it.
        ofctl.bundle([flow(5, 6)])
        assert sorted(ovs.flows("br-sfc")) == ["cookie=0x77, priority=20,in_port=1 actions=output:2",
                                               "cookie=0x77, priority=20,in_port=5 actions=output:6"]
        assert ofctl.connection.connections == 2
    finally:
        ofctl.close()


def test_a_bridge_without_openflow13_is_named_in_the_error(ovs: OvsSwitch) -> None:
    ovs.add_bridge("br-sfc")
    ovs.vsctl("set", "bridge", "br-sfc", "protocols=OpenFlow10")
    connection = OpenFlowConnection(ovs.rundir / "br-sfc.mgmt", 5)
    with pytest.raises(OpenFlowError, match=r"does not allow OpenFlow 1\.3.*protocols"):
        connection.bundle([flow(1, 2)])


def test_big_resyncs_go_through_ovs_ofctl_and_updates_over_the_connection(ovs: OvsSwitch, netns: NetnsBed,
                                                                         programmers) -> None:
    for name in ("p1", "p2", "p3", "p4"):
        netns.veth(name, ovs.netns, netns.veth_name(), ovs.netns)
    ifaces = tuple(ServiceInterface("sfc", n, InterfaceType.PHYSICAL, physical=Physical(n))
                   for n in ("p1", "p2", "p3", "p4"))
    a = ServiceChain("sfc", "a", (Switch(("p1", "p2")),))
    b = ServiceChain("sfc", "b", (Switch(("p3", "p4")),))
    sfc = programmers(NodeState(ifaces, (a,)), connection_max_mods=3)
    assert sfc.ofctl.bundles == {"openflow": 1, "ovs-ofctl": 0}  # a's 2 flows fit the connection

    report = sfc.update(NodeState(ifaces, (a, b))).result(10)
    assert report.flow_mods == 2
    assert sfc.ofctl.bundles == {"openflow": 2, "ovs-ofctl": 0}

    ovs.ofctl("del-flows", "br-sfc")  # by hand: everything goes
    # Either the agent's flow monitor repairs this first or the explicit resync does (the other then finds
    # nothing to do): exactly one repair of 4 mods, over the connection's limit of 3, so through ovs-ofctl.
    sfc.resync("flows gone").result(10)
    wait_until(lambda: len(base_flows(ovs, "br-sfc")) == 4, 5, "the deleted flows repaired")
    assert sfc.ofctl.bundles == {"openflow": 2, "ovs-ofctl": 1}
    assert sfc.resync("compare").result(10).flow_mods == 0
    flows = base_flows(ovs, "br-sfc")

    report = sfc.update(NodeState(ifaces, (a,))).result(10)
    assert report.flow_mods == 1  # b deleted by cookie
    assert sfc.ofctl.bundles == {"openflow": 3, "ovs-ofctl": 1}
    assert base_flows(ovs, "br-sfc") == [f for f in flows if f"cookie={chain_cookie('sfc', 'b'):#x}," not in f]
    assert sfc.resync("compare").result(10).flow_mods == 0
