"""Typed flows: both renderings install the same flows on a real switch for every shape, the text is what the switch
dumps (so resyncs compare by string), SFC's flow mods are the bytes they were before, and a shape outside the
vocabulary fails when it is built."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dpf.agent.sfc.desired import BASE_PRIORITY, LEARN_IDLE_TIMEOUT, LEARNED_PRIORITY, TABLE, chain_flows, switch_flows
from dpf.agent.sfc.flows import Ofctl
from dpf.agent.sfc.flowspec import (
    AddFlow,
    Ct,
    DeleteFlow,
    DeleteFlows,
    Flow,
    FlowMod,
    LearnReturnPath,
    Match,
    Metadata,
    Output,
    Reg,
    Resubmit,
    SetField,
    UnsupportedFlow,
)
from dpf.lab.bed.ovs import OvsSwitch
from tests.sfc.conftest import needs_root, sfc_settings

COOKIE = 0x570CCE5BA1D6D5EE
IP, IPV6, ARP = 0x0800, 0x86DD, 0x0806

# Every shape: SFC's learning switch, and what an OVN patch-port integration needs (output to a port, resubmit and
# goto_table, set_field of metadata and registers, ct with a zone, commit and a recirculation table, drop), with
# every match field, in table 0 and beyond, at the default priority and without any match.
SHAPES = [
    *switch_flows(COOKIE, [1, 2, 3]),
    Flow(5, 40, Match(in_port=1), (Output(2),)),
    Flow(5, 21, Match(in_port=1, eth_type=IP), (Ct(zone=5, commit=True), Output(2))),
    Flow(5, 22, Match(in_port=1, eth_type=IPV6), (Ct(zone=5, table=3),)),
    Flow(5, 23, Match(in_port=3, eth_type=IP), (Ct(),)),
    Flow(5, 24, Match(in_port=2, eth_type=IP), (Ct(zone=65535, commit=True, table=2),)),
    Flow(5, 25, Match(in_port=1, metadata=9, regs=((3, 7), (12, 1))),
         (SetField(Reg(0), 5), SetField(Metadata(), 0x1234), Resubmit(4)), goto_table=5),
    Flow(5, 26, Match(in_port=1, eth_dst="aa:bb:cc:dd:ee:ff")),  # drop
    Flow(5, 27, Match(in_port=1), (Output(2),), table=3, goto_table=5),
    Flow(5, 28, Match(in_port=2), (Resubmit(4, in_port=1),)),
    Flow(5, 29, Match(in_port=2, eth_type=ARP), (LearnReturnPath(0, 10, 30, 5, 3), Output(3))),
    Flow(6, 0x8000, Match(in_port=7), (Output(2),)),  # default priority
    Flow(6, 0x8000, Match(), table=4),  # nothing but a cookie and a table
    Flow(0, 0, Match(eth_type=IP, regs=((1, 2),)), (SetField(Reg(15), 0xFFFFFFFF), Output(2)), table=7),
]


def dump(ovs: OvsSwitch, bridge: str) -> list[str]:
    out = ovs.ofctl("dump-flows", "--no-stats", "--no-names", bridge).stdout.splitlines()
    return sorted(line.strip() for line in out if line.strip() and "reply" not in line)


@needs_root
def test_both_renderings_install_the_same_flows_for_every_shape(ovs: OvsSwitch) -> None:
    """Each step applied through `ovs-ofctl --bundle` (to_ofctl) on one bridge and over the persistent connection
    (to_wire) on a fresh one: the dumps are identical after every step."""
    for bridge in ("br-text", "br-wire"):
        ovs.add_bridge(bridge)
    by_text, by_wire = Ofctl(sfc_settings(ovs, bridge="br-text")), Ofctl(sfc_settings(ovs, bridge="br-wire"))

    def apply(mods: list[FlowMod]) -> list[str]:
        by_text.ofctl_bundle(mods)
        assert by_wire.connection.bundle(mods) == len(mods)
        flows = dump(ovs, "br-text")
        assert dump(ovs, "br-wire") == flows
        return flows

    try:
        flows = apply([AddFlow(flow) for flow in SHAPES])
        # What we render is what the switch prints: a dump compares with the desired flows by string.
        assert flows == sorted(flow.to_ofctl() for flow in SHAPES)

        flows = apply([DeleteFlow(5, 3, 27, Match(in_port=1)),  # strict, beyond table 0
                       DeleteFlow.of(SHAPES[0]),
                       DeleteFlow(5, 0, 26, Match(in_port=1, eth_dst="aa:bb:cc:dd:ee:ff"))])
        assert len(flows) == len(SHAPES) - 3
        flows = apply([DeleteFlows(COOKIE, 0, out_port=1)])  # whatever outputs to 1 (the other two base flows)
        assert not [f for f in flows if f.startswith(f"cookie={COOKIE:#x},")]
        flows = apply([DeleteFlows(5, match=Match(in_port=2))])  # all tables, in_port=2 and anything more
        assert not [f for f in flows if f.startswith("cookie=0x5,") and "in_port=2" in f]
        flows = apply([DeleteFlows(5), DeleteFlows(6, 4)])
        assert flows == sorted([SHAPES[-1].to_ofctl(), SHAPES[-3].to_ofctl()])
    finally:
        by_wire.close()


def test_sfc_flow_mods_are_the_bytes_and_text_they_always_were() -> None:
    """Pinned from the encoder that parsed ovs-ofctl text before flows were typed (and matched ovs-ofctl's bytes)."""
    add = AddFlow(switch_flows(COOKIE, [1, 2])[0])
    assert add.to_ofctl() == (
        f"add cookie={COOKIE:#x}, priority=20,in_port=1 actions=learn(table=0,idle_timeout=10,priority=30,"
        f"cookie={COOKIE:#x},in_port=2,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[]),output:2")
    assert add.to_wire().hex() == (
        "040e009800000000570cce5ba1d6d5ee00000000000000000000000000000014ffffffffffffffffffffffff000000000001000c"
        "8000000400000001000000000004005800000000ffff0040000023200010000a0000001e570cce5ba1d6d5ee00000000000000002010"
        "00020000000200000030000004060000000002060000101000000002000000000010000000020000000000000000")
    pinned: list[tuple[FlowMod, str, str]] = [
        (DeleteFlows(COOKIE), f"delete cookie={COOKIE:#x}/-1",
         "040e003800000000570cce5ba1d6d5eeffffffffffffffffff03000000008000ffffffffffffffffffffffff000000000001000400000000"),
        (DeleteFlows(COOKIE, 0, Match(in_port=3)), f"delete table=0,cookie={COOKIE:#x}/-1,in_port=3",
         "040e004000000000570cce5ba1d6d5eeffffffffffffffff0003000000008000ffffffffffffffffffffffff000000000001000c"
         "800000040000000300000000"),
        (DeleteFlows(COOKIE, 0, out_port=3), f"delete table=0,cookie={COOKIE:#x}/-1,out_port=3",
         "040e003800000000570cce5ba1d6d5eeffffffffffffffff0003000000008000ffffffff00000003ffffffff000000000001000400000000"),
        (DeleteFlow(COOKIE, 0, 30, Match(in_port=2, eth_dst="aa:bb:cc:dd:ee:01")),
         f"delete_strict table=0,cookie={COOKIE:#x}/-1,priority=30,in_port=2,dl_dst=aa:bb:cc:dd:ee:01",
         "040e004800000000570cce5ba1d6d5eeffffffffffffffff000400000000001effffffffffffffffffffffff0000000000010016"
         "800000040000000280000606aabbccddee010000"),
    ]
    for mod, text, wire in pinned:
        assert (mod.to_ofctl(), mod.to_wire().hex()) == (text, wire)


@pytest.mark.parametrize("build", [
    lambda: Output(65534),  # LOCAL: a reserved port, read differently by ovs-ofctl (OpenFlow 1.0 numbers)
    lambda: Output(0),
    lambda: Match(in_port=0xFF00),
    lambda: Match(eth_type=0x8100),  # a field ovs-ofctl would print elsewhere in the match
    lambda: Match(eth_dst="AA:BB:CC:DD:EE:FF"),
    lambda: Match(regs=((2, 1), (1, 1))),
    lambda: Match(regs=((1, 1 << 32),)),
    lambda: Reg(16),
    lambda: SetField(Reg(0), 1 << 32),
    lambda: Ct(zone=1 << 16),
    lambda: Resubmit(255),
    lambda: Flow(1, 1 << 16),
    lambda: Flow(1, 5, table=255),  # 255 means "all tables"
    lambda: Flow(1, 5, table=3, goto_table=3),  # goto only goes forward
    lambda: Flow(1, 5, Match(in_port=1), (Ct(commit=True),)),  # ct needs an ip or ipv6 match
    lambda: Flow(1, 5, Match(in_port=1), ("output:2",)),  # type: ignore[arg-type]  # text is refused at run time too
    lambda: DeleteFlows(1, out_port=0xFFFFFFFE),
    lambda: DeleteFlow(1, 0, 5, "in_port=1"),  # type: ignore[arg-type]  # text is refused at run time too
], ids=["output-local", "output-0", "in-port-reserved", "eth-type-vlan", "mac-upper-case", "regs-unordered",
        "reg-value-33-bits", "reg16", "set-field-too-wide", "ct-zone-17-bits", "resubmit-table-all", "priority-17-bits",
        "table-all", "goto-backwards", "ct-without-ip", "action-as-text", "delete-out-port-local", "match-as-text"])
def test_a_shape_outside_the_vocabulary_fails_when_it_is_built(build: Callable[[], object]) -> None:
    with pytest.raises(UnsupportedFlow):
        build()


def test_batch_and_interned_builders_equal_the_constructors_and_still_refuse_bad_values() -> None:
    """Planning builds a chain's flows with Flow.many and LearnReturnPath.many and reuses interned matches, outputs
    and learns; each value is the one the constructor builds (same fields, text, bytes), and nothing bad gets in
    through a cache (True hashes like 1)."""
    learns = LearnReturnPath.many(0, 300, 10, COOKIE, [7, 8])
    assert learns == [LearnReturnPath(0, 300, 10, COOKIE, 7), LearnReturnPath(0, 300, 10, COOKIE, 8)]
    assert [x.to_ofctl() for x in learns] == [LearnReturnPath(0, 300, 10, COOKIE, p).to_ofctl() for p in (7, 8)]
    rules = [(Match(in_port=1), (learns[1], Output(2))), (Match(in_port=2), (Output(1),)),
             (Match(), (Output(1),)), (Match(in_port=3), ()), (Match(eth_type=IP, in_port=4), (Ct(table=2),))]
    for cookie, priority, table in ((COOKIE, 5, 0), (0, 5, 0), (COOKIE, 0x8000, 0), (COOKIE, 5, 3)):
        batch = Flow.many(cookie, priority, rules, table)
        single = [Flow(cookie, priority, match, actions, table) for match, actions in rules]
        assert batch == single
        assert [(f.to_ofctl(), f.key, f.actions_text(), AddFlow(f).to_wire()) for f in batch] == [
            (f.to_ofctl(), f.key, f.actions_text(), AddFlow(f).to_wire()) for f in single]
    chain = switch_flows(COOKIE, [1, 2]) + switch_flows(COOKIE, [4, 5, 6])
    assert chain_flows(COOKIE, [[1, 2], [3], [4, 5, 6]]) == chain

    def learn(port: int) -> str:
        return LearnReturnPath(TABLE, LEARN_IDLE_TIMEOUT, LEARNED_PRIORITY, COOKIE, port).to_ofctl()

    assert [f.to_ofctl() for f in switch_flows(COOKIE, [1, 2, 1])] == [  # a port twice: the others are by value
        f"cookie={COOKIE:#x}, priority={BASE_PRIORITY},in_port={port} actions={actions}" for port, actions in (
            (1, f"{learn(2)},output:2"), (2, f"{learn(1)},{learn(1)},output:1,output:1"), (1, f"{learn(2)},output:2"))]
    bad: list[Callable[[], object]] = [
        lambda: Match(in_port=True), lambda: Output(True),  # type: ignore[arg-type]
        lambda: LearnReturnPath.many(0, 300, 10, COOKIE, [True]), lambda: LearnReturnPath.many(0, 300, 10, True, [1]),
        lambda: Flow.many(COOKIE, 5, [(Match(in_port=1), ("output:2",))]),  # type: ignore[list-item]
        lambda: Flow.many(COOKIE, 1 << 16, rules),
        lambda: Flow.many(COOKIE, 5, [("in_port=1", (Output(2),))]),  # type: ignore[list-item]
    ]
    for build in bad:
        with pytest.raises(UnsupportedFlow):
            build()
