"""The shim <-> agent wire format, and the CNI constants both sides agree on. Standard library only.

One request per connection on the agent's unix socket: the shim writes one JSON line
`{"v": 1, "command", "env", "config", "plugin"}` (`config` is the raw stdin, untouched); the agent
answers one ack line `{"ack": true}` as soon as it has read the request (so a hung agent is told
apart from a busy one within the ack deadline), then one result line (or only the result line, at
once, when it refuses the request, e.g. busy): `{"code": 0, "stdout": "..."}`
(the CNI result already serialized, printed verbatim) or `{"code": N, "msg": ..., "details": ...}`
with N from the CNI spec's code space (or >= 100). Nothing here is imported at module level beyond
the constants, so the shim stays cheap to start (see dpf.cni.shim).
"""

from __future__ import annotations

PROTOCOL = 1
DEFAULT_SOCKET = "/run/dpf/cni/agent.sock"
SOCKET_ENV = "DPF_CNI_SOCKET"
MAX_LINE = 1 << 20
"""Longest request or response line (a netconf with a large prevResult is a few KiB)."""

ACK_TIMEOUT = 1.0
"""Seconds the shim gives the agent to connect and acknowledge; past it the agent counts as down."""
TOTAL_TIMEOUT = 90.0
"""One overall deadline per invocation, kept below kubelet's two-minute CRI call timeout."""

CURRENT_VERSION = "1.1.0"
SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
FORWARDED_ENV = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")

# CNI spec error codes (1-99 are reserved to the spec); ours start at 100.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
INTERNAL = 100
INTERFACE_EXISTS = 101
SWITCH_FAILURE = 102
POOL_EXHAUSTED = 103
ADDRESS_UNAVAILABLE = 104
CHECK_FAILED = 105
IPAM_DELEGATE_FAILED = 106


def encode(message: dict) -> bytes:
    """One wire line (the agent's side; the shim renders its single request line by hand)."""
    import json

    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def success(result: dict | None) -> dict:
    """The agent's answer to a request that worked: the CNI result, serialized once, here."""
    import json

    return {"code": 0, "stdout": json.dumps(result) if result is not None else ""}


def error(code: int, msg: str, details: str = "") -> dict:
    return {"code": code, "msg": msg, "details": details}
