"""The flow-mod encoder's scope: every line desired.py renders is encoded with ovs-ofctl's semantics, anything else
is left to ovs-ofctl, and switch errors get the names ovs-ofctl prints. Byte-level agreement with ovs-ofctl
is checked against a real switch in test_ofconn.py."""

from __future__ import annotations

import struct

import pytest

from dpf.agent.sfc import ofwire
from dpf.agent.sfc.desired import ChainPlan, ChainState, chain_mods, resync_mods, switch_flows
from dpf.agent.sfc.view import ObservedFlow

COOKIE = 0x570CCE5BA1D6D5EE
ALL = 0xFFFFFFFFFFFFFFFF


def plan(*ofports: int) -> ChainPlan:
    return ChainPlan("ns/c", COOKIE, ChainState.PROGRAMMED, "", tuple(switch_flows(COOKIE, list(ofports))),
                     frozenset(ofports))


def test_every_line_shape_desired_renders_is_encoded_with_ovs_ofctls_semantics() -> None:
    learned = ObservedFlow(COOKIE, 0, 30, "in_port=2,dl_dst=aa:bb:cc:dd:ee:01", "output:1", idle_timeout=10)
    base = [ObservedFlow(COOKIE, 0, f.priority, f.match, f.actions) for f in plan(1, 2, 3).flows]
    lines = (chain_mods(COOKIE, plan(1, 2, 3), plan(1, 2, 4)) + chain_mods(COOKIE, plan(1, 2), None)
             + resync_mods({COOKIE: plan(2, 3)}, [*base, learned], {COOKIE}))
    mods = {line: ofwire.parse(line) for line in lines}  # none raises Unsupported
    verbs = {line.split()[0] for line in lines}
    assert verbs == {"add", "delete", "delete_strict"}

    everything = mods[f"delete cookie={COOKIE:#x}/-1"]
    assert (everything.command, everything.table, everything.cookie_mask, everything.out_port) == \
        (ofwire.OFPFC_DELETE, ofwire.OFPTT_ALL, ALL, ofwire.OFPP_ANY)  # all tables, any output, exact cookie
    to_port = mods[f"delete table=0,cookie={COOKIE:#x}/-1,out_port=3"]
    assert (to_port.table, to_port.in_port, to_port.out_port) == (0, None, 3)
    strict = mods[f"delete_strict table=0,cookie={COOKIE:#x}/-1,priority=30,in_port=2,dl_dst=aa:bb:cc:dd:ee:01"]
    assert (strict.command, strict.priority, strict.in_port, strict.eth_dst) == \
        (ofwire.OFPFC_DELETE_STRICT, 30, 2, bytes.fromhex("aabbccddee01"))
    add = next(mod for line, mod in mods.items() if line.startswith("add") and "priority=20,in_port=4 " in line)
    assert (add.cookie, add.cookie_mask, add.priority, add.in_port) == (COOKIE, 0, 20, 4)
    assert add.actions == (ofwire.Learn(0, 10, 30, COOKIE, 1), ofwire.Learn(0, 10, 30, COOKIE, 2), 1, 2)


def test_encoded_flow_mod_lengths_are_consistent() -> None:
    line = f"add {switch_flows(COOKIE, [1, 2, 3])[0].text()}"
    message = ofwire.bundle_add(7, 3, ofwire.flow_mod(line))
    _, kind, length, xid = ofwire.HEADER.unpack_from(message)
    assert (kind, length, xid) == (ofwire.OFPT_EXPERIMENTER, len(message), 7)
    inner = message[24:]
    _, inner_kind, inner_length, inner_xid = ofwire.HEADER.unpack_from(inner)
    # The switch reports errors for a bundled message by its xid: the inner one must equal the wrapper's.
    assert (inner_kind, inner_length, inner_xid) == (ofwire.OFPT_FLOW_MOD, len(inner), 7)
    assert inner_length % 8 == 0


@pytest.mark.parametrize("line", [
    "add cookie=0x1, priority=5,ip,nw_dst=10.0.0.1 actions=output:1",  # a match field we never render
    "add cookie=0x1, priority=5,in_port=1 actions=drop",
    "add cookie=0x1, priority=5,in_port=1 actions=output:LOCAL",
    "add cookie=0x1, priority=5,in_port=1 actions=output:65534",  # a reserved port number
    "add cookie=0x1, priority=5,in_port=1 actions=output:2,resubmit(,1)",
    "add cookie=0x1, priority=5,in_port=1 actions=learn(table=0,in_port=2,output:NXM_OF_IN_PORT[])",
    "add cookie=0x1, idle_timeout=5, priority=5,in_port=1 actions=output:2",
    "add cookie=0x1, priority=70000,in_port=1 actions=output:2",
    "delete table=0,cookie=0x1/-1,dl_vlan=5",
    "delete table=0,cookie=0x1/0xff,in_port=1",  # a partial cookie mask
    "delete_strict table=0,cookie=0x1/-1,in_port=1",  # strict without a priority
    "delete table=0,cookie=0x1/-1,priority=5,in_port=1",  # priority on a non-strict delete
    "delete_strict table=0,cookie=0x1/-1,priority=5,out_port=1",
    "modify cookie=0x1, priority=5,in_port=1 actions=output:2",
])
def test_lines_outside_our_shapes_are_left_to_ovs_ofctl(line: str) -> None:
    with pytest.raises(ofwire.Unsupported):
        ofwire.flow_mod(line)


def error(kind: int, code: int, data: bytes = b"") -> bytes:
    body = struct.pack("!HH", kind, code) + data
    return ofwire.HEADER.pack(ofwire.VERSION, ofwire.OFPT_ERROR, 8 + len(body), 1) + body


def test_switch_errors_get_the_names_ovs_ofctl_prints() -> None:
    assert ofwire.error_text(error(1, 5)) == "OFPBRC_EPERM"
    assert ofwire.error_text(error(2, 4)) == "OFPBAC_BAD_OUT_PORT"
    assert ofwire.error_text(error(5, 1)) == "OFPFMFC_TABLE_FULL"
    # OpenFlow 1.3 carries bundle errors as ONF experimenter errors.
    assert ofwire.error_text(error(0xFFFF, 2313, struct.pack("!I", ofwire.ONF_EXPERIMENTER))) == "OFPBFC_MSG_FAILED"
    assert ofwire.error_text(error(0, 0, b"we support versions 0x01 to 0x01\0")) == \
        "OFPHFC_INCOMPATIBLE: we support versions 0x01 to 0x01"
    assert ofwire.error_text(error(9, 3)) == "OpenFlow error type 9 code 3"
