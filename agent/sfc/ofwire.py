"""OpenFlow 1.3 framing for atomic bundles of flow mods: hello, ONF bundle control/add, barrier, echo reply,
set-async, and the switch's error names.

Pure: bytes in, bytes out; used by `ofconn.py` alone.

Why hand-written and not a library: os-ken (OpenStack's ryu fork) encodes these messages correctly,
but it hard-depends on eventlet, and python-ovs (`ovs.poller`, our OVSDB client) imports eventlet
whenever it is installed: every agent start then warns that eventlet is deprecated and every fork
warns that it "is a bad idea". Pulling a green-thread runtime into the agent for ~150 lines of
struct packing is the wrong trade (os-ken also took ~70 µs per flow mod to encode).

Flow mods are encoded by the values themselves (`flowspec.py`, `to_wire()`); this module frames them:
hello, SET_ASYNC, barrier, echo, the ONF bundle messages, and names the switch's errors the way
ovs-ofctl prints them.
"""

from __future__ import annotations

import struct

from dpf.agent.sfc.flowspec import HEADER, VERSION

__all__ = ["HEADER", "VERSION"]

OFPT_HELLO, OFPT_ERROR, OFPT_ECHO_REQUEST, OFPT_ECHO_REPLY, OFPT_EXPERIMENTER = 0, 1, 2, 3, 4
OFPT_BARRIER_REQUEST, OFPT_BARRIER_REPLY, OFPT_SET_ASYNC = 20, 21, 28
ONF_EXPERIMENTER = 0x4F4E4600
ONF_ET_BUNDLE_CONTROL, ONF_ET_BUNDLE_ADD = 2300, 2301
BUNDLE_OPEN, BUNDLE_OPEN_REPLY, BUNDLE_COMMIT, BUNDLE_COMMIT_REPLY, BUNDLE_DISCARD = 0, 1, 4, 5, 6
ONF_BF_ATOMIC = 1
OFPHET_VERSIONBITMAP = 1


def hello(xid: int) -> bytes:
    return HEADER.pack(VERSION, OFPT_HELLO, HEADER.size, xid)


def barrier(xid: int) -> bytes:
    return HEADER.pack(VERSION, OFPT_BARRIER_REQUEST, HEADER.size, xid)


def no_async(xid: int) -> bytes:
    """OFPT_SET_ASYNC with every mask zero: no packet-ins, port status or flow-removed messages for us."""
    return HEADER.pack(VERSION, OFPT_SET_ASYNC, HEADER.size + 24, xid) + bytes(24)


def echo_reply(request: bytes) -> bytes:
    _, _, length, xid = HEADER.unpack_from(request)
    return HEADER.pack(VERSION, OFPT_ECHO_REPLY, length, xid) + request[HEADER.size:length]


def bundle_control(xid: int, bundle_id: int, kind: int) -> bytes:
    body = struct.pack("!IIIHH", ONF_EXPERIMENTER, ONF_ET_BUNDLE_CONTROL, bundle_id, kind, ONF_BF_ATOMIC)
    return HEADER.pack(VERSION, OFPT_EXPERIMENTER, HEADER.size + len(body), xid) + body


def bundle_add(xid: int, bundle_id: int, message: bytes) -> bytes:
    """Wrap `message` for the bundle; its xid becomes the wrapper's (the switch reports errors by it)."""
    inner = message[:4] + struct.pack("!I", xid) + message[8:]
    body = struct.pack("!IIIHH", ONF_EXPERIMENTER, ONF_ET_BUNDLE_ADD, bundle_id, 0, ONF_BF_ATOMIC) + inner
    return HEADER.pack(VERSION, OFPT_EXPERIMENTER, HEADER.size + len(body), xid) + body


def bundle_reply_kind(message: bytes) -> int | None:
    """The control type of an ONF bundle control reply, or None for any other experimenter message."""
    if len(message) >= 24:
        experimenter, exp_type, _, kind, _ = struct.unpack_from("!IIIHH", message, HEADER.size)
        if experimenter == ONF_EXPERIMENTER and exp_type == ONF_ET_BUNDLE_CONTROL:
            return kind
    return None


def offers_13(message: bytes) -> bool:
    """Whether the switch's hello allows OpenFlow 1.3: its version, or its version bitmap when it sends one."""
    version = message[0]
    if version <= VERSION:
        return version == VERSION
    offset = HEADER.size
    while offset + 4 <= len(message):
        kind, length = struct.unpack_from("!HH", message, offset)
        if kind == OFPHET_VERSIONBITMAP and length >= 8:
            return bool(struct.unpack_from("!I", message, offset + 4)[0] & (1 << VERSION))
        offset += max(8, (length + 7) // 8 * 8)
    return True  # no bitmap: the switch negotiates down to our version


# -- errors -----------------------------------------------------------------------------------------

# OpenFlow 1.3.5 §A.4.4, for the error types a flow mod or bundle can meet; the names ovs-ofctl prints.
_CODES: dict[int, tuple[str, tuple[str, ...]]] = {
    0: ("OFPHFC_", ("INCOMPATIBLE", "EPERM")),
    1: ("OFPBRC_", ("BAD_VERSION", "BAD_TYPE", "BAD_MULTIPART", "BAD_EXPERIMENTER", "BAD_EXP_TYPE", "EPERM",
                    "BAD_LEN", "BUFFER_EMPTY", "BUFFER_UNKNOWN", "BAD_TABLE_ID", "IS_SLAVE", "BAD_PORT",
                    "BAD_PACKET", "MULTIPART_BUFFER_OVERFLOW")),
    2: ("OFPBAC_", ("BAD_TYPE", "BAD_LEN", "BAD_EXPERIMENTER", "BAD_EXP_TYPE", "BAD_OUT_PORT", "BAD_ARGUMENT",
                    "EPERM", "TOO_MANY", "BAD_QUEUE", "BAD_OUT_GROUP", "MATCH_INCONSISTENT", "UNSUPPORTED_ORDER",
                    "BAD_TAG", "BAD_SET_TYPE", "BAD_SET_LEN", "BAD_SET_ARGUMENT")),
    3: ("OFPBIC_", ("UNKNOWN_INST", "UNSUP_INST", "BAD_TABLE_ID", "UNSUP_METADATA", "UNSUP_METADATA_MASK",
                    "BAD_EXPERIMENTER", "BAD_EXP_TYPE", "BAD_LEN", "EPERM")),
    4: ("OFPBMC_", ("BAD_TYPE", "BAD_LEN", "BAD_TAG", "BAD_DL_ADDR_MASK", "BAD_NW_ADDR_MASK", "BAD_WILDCARDS",
                    "BAD_FIELD", "BAD_VALUE", "BAD_MASK", "BAD_PREREQ", "DUP_FIELD", "EPERM")),
    5: ("OFPFMFC_", ("UNKNOWN", "TABLE_FULL", "BAD_TABLE_ID", "OVERLAP", "EPERM", "BAD_TIMEOUT", "BAD_COMMAND",
                     "BAD_FLAGS")),
}
# OpenFlow 1.3 carries bundle errors as ONF experimenter errors 2300…; Open vSwitch names them OFPBFC_*.
_BUNDLE_CODES = ("UNKNOWN", "EPERM", "BAD_ID", "BUNDLE_EXIST", "BUNDLE_CLOSED", "OUT_OF_BUNDLES", "BAD_TYPE",
                 "BAD_FLAGS", "MSG_BAD_LEN", "MSG_BAD_XID", "MSG_UNSUP", "MSG_CONFLICT", "MSG_TOO_MANY",
                 "MSG_FAILED", "TIMEOUT", "BUNDLE_IN_PROGRESS")


def error_text(message: bytes) -> str:
    """An OFPT_ERROR as the switch names it (OFPBRC_EPERM, OFPBFC_MSG_FAILED, ...), the way ovs-ofctl prints it."""
    if len(message) < HEADER.size + 4:
        return "a truncated OpenFlow error"
    kind, code = struct.unpack_from("!HH", message, HEADER.size)
    if kind == 0xFFFF:
        if len(message) < HEADER.size + 8:
            return "a truncated experimenter error"
        experimenter = struct.unpack_from("!I", message, HEADER.size + 4)[0]
        if experimenter == ONF_EXPERIMENTER and 0 <= code - 2300 < len(_BUNDLE_CODES):
            return f"OFPBFC_{_BUNDLE_CODES[code - 2300]}"
        return f"experimenter {experimenter:#x} error {code}"
    prefix, names = _CODES.get(kind, ("", ()))
    if code >= len(names):
        return f"OpenFlow error type {kind} code {code}"
    text = prefix + names[code]
    if kind == 0:  # hello failures carry an ASCII explanation
        text += ": " + message[HEADER.size + 4:].decode("ascii", "replace").strip("\0 \n")
    return text
