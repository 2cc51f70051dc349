"""OpenFlow framing: a flow mod wrapped for a bundle carries the wrapper's xid and consistent lengths, and switch
errors get the names ovs-ofctl prints. The flow mods themselves are checked in test_flowspec.py."""

from __future__ import annotations

import struct

from dpf.agent.sfc import ofwire
from dpf.agent.sfc.desired import switch_flows
from dpf.agent.sfc.flowspec import OFPT_FLOW_MOD, AddFlow

COOKIE = 0x570CCE5BA1D6D5EE


def test_encoded_flow_mod_lengths_are_consistent() -> None:
    message = ofwire.bundle_add(7, 3, AddFlow(switch_flows(COOKIE, [1, 2, 3])[0]).to_wire())
    _, kind, length, xid = ofwire.HEADER.unpack_from(message)
    assert (kind, length, xid) == (ofwire.OFPT_EXPERIMENTER, len(message), 7)
    inner = message[24:]
    _, inner_kind, inner_length, inner_xid = ofwire.HEADER.unpack_from(inner)
    # The switch reports errors for a bundled message by its xid: the inner one must equal the wrapper's.
    assert (inner_kind, inner_length, inner_xid) == (OFPT_FLOW_MOD, len(inner), 7)
    assert inner_length % 8 == 0


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
