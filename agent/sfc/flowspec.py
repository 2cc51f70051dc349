"""Typed OpenFlow flows and flow mods, each with its two renderings: `to_ofctl()` and `to_wire()`.

`desired.py` builds these values; nothing on the way to the switch turns text back into structure:
- `to_ofctl()` is the ovs-ofctl syntax, written the way `ovs-ofctl --no-stats --no-names dump-flows`
  (Open vSwitch 3.x) prints it, so a flow's rendering compares by string with a dump. It is what full
  resyncs feed to `ovs-ofctl --bundle add-flows` and what logs and humans read.
- `to_wire()` is the OFPT_FLOW_MOD (OpenFlow 1.3) that ovs-ofctl sends for that text: OXM match fields,
  output max_len 0, Nicira extensions for learn/resubmit/ct, table 255 and out_port/out_group ANY for
  deletes. It goes over the persistent connection in `ofconn.py`.

The vocabulary is closed on purpose: a match field or action that is not a type here cannot be written,
and a value the two renderings could read differently (a reserved port number, a table past 254, a
goto that does not go forward) raises `UnsupportedFlow` when the value is built, never later on the wire.
tests/sfc/test_flowspec.py installs every shape both ways on a real switch and compares the dumps.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, ClassVar, NamedTuple

VERSION = 0x04  # OpenFlow 1.3
HEADER = struct.Struct("!BBHI")  # version, type, length, xid
OFPT_FLOW_MOD = 14
OFPFC_ADD, OFPFC_DELETE, OFPFC_DELETE_STRICT = 0, 3, 4
OFPTT_ALL = 0xFF
OFPP_ANY, OFPG_ANY = 0xFFFFFFFF, 0xFFFFFFFF
OFP_NO_BUFFER = 0xFFFFFFFF
OFP_DEFAULT_PRIORITY = 0x8000
NX_EXPERIMENTER = 0x00002320
ALL_COOKIE_BITS = 0xFFFFFFFFFFFFFFFF

_FLOW_MOD = struct.Struct("!QQBBHHHIIIH2x")  # after the header: cookie … flags, pad
_OF10_PORT_MAX = 0xFF00  # ovs-ofctl reads 0xff00 and up as OpenFlow 1.0's reserved ports (65534 is LOCAL)
_OF10_IN_PORT = 0xFFF8  # "the packet's in_port" in Nicira actions, which carry 16-bit OpenFlow 1.0 ports
_MAX_TABLE = 254  # 255 means "all tables" in flow mods

# OXM headers (class << 16 | field << 9 | length) as ovs-ofctl puts them in an OpenFlow 1.3 match.
_OXM_IN_PORT, _OXM_METADATA, _OXM_ETH_DST, _OXM_ETH_TYPE = 0x80000004, 0x80000408, 0x80000606, 0x80000A02
_NXM_REG0 = 0x00010004  # NXM_NX_REG<n> = _NXM_REG0 + (n << 9)
# NXM headers ovs-ofctl uses inside learn specs.
_NXM_IN_PORT, _NXM_ETH_DST, _NXM_ETH_SRC = 0x00000002, 0x00000206, 0x00000406

_OFPAT_OUTPUT, _OFPAT_SET_FIELD, _OFPAT_EXPERIMENTER = 0, 25, 0xFFFF
_OFPIT_GOTO_TABLE, _OFPIT_APPLY_ACTIONS = 1, 4
_NXAST_RESUBMIT_TABLE, _NXAST_LEARN, _NXAST_CT = 14, 16, 35
_LEARN = struct.Struct("!HHIHHHHQHBxHH")  # type, len, vendor, subtype, idle, hard, priority, cookie, flags, table, fins
_SPEC_MATCH, _SPEC_OUTPUT, _SPEC_IMMEDIATE = 0 << 11, 2 << 11, 1 << 13
_CT = struct.Struct("!HHIHHIHB3xH")  # type, len, vendor, subtype, flags, zone_src, zone, recirc_table, alg
_CT_COMMIT = 1
_CT_NO_RECIRC = 0xFF

_ETH_TYPES = {0x0800: "ip", 0x0806: "arp", 0x86DD: "ipv6"}  # the ones ovs-ofctl prints as a shorthand


class UnsupportedFlow(TypeError):
    """A flow value outside what both renderings write the same way; raised when the value is built."""


# Checks are on every flow the planner builds (10,000 in a full resync): exact `type() is int` (bool is not a
# number here) and messages built only on failure.


def _check_int(value: object, bits: int, what: str) -> None:
    if type(value) is not int or not 0 <= value < 1 << bits:
        raise UnsupportedFlow(f"{what} must be an integer of {bits} bits, not {value!r}")


def _check_port(port: object, what: str = "port") -> None:
    """Only 1…0xfeff mean the same to ovs-ofctl (OpenFlow 1.0 numbering, reserved from 0xff00) and on the wire."""
    if type(port) is not int or not 0 < port < _OF10_PORT_MAX:
        raise UnsupportedFlow(f"{what} must be a plain OpenFlow port number (1…{_OF10_PORT_MAX - 1}), not {port!r}")


def _check_table(table: object, what: str = "table") -> None:
    if type(table) is not int or not 0 <= table <= _MAX_TABLE:
        raise UnsupportedFlow(f"{what} must be 0…{_MAX_TABLE}, not {table!r}")


def _pad8(data: bytes) -> bytes:
    return data + bytes(-len(data) % 8)


def _hex(value: int) -> str:
    return f"{value:#x}"


# The values a full resync builds 10,000 of (Match, Output, LearnReturnPath, Flow, AddFlow) are immutable tuples
# with a validating __new__ rather than frozen dataclasses: one tuple.__new__ call instead of one
# object.__setattr__ per field, C-level field access, and as few objects per flow as possible (each is one more
# container for the garbage collector to walk, which was most of what typed planning cost: bench/RESULTS.md).
# Renderings are fields computed when the value is built. Equality and hashing are the tuple's, restricted to
# the same type; repr, copy and pickle show and pass the value fields only.


class _Value(tuple):
    __slots__ = ()
    _shown: ClassVar[int]  # how many leading fields are the value (the rest are renderings)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not (type(other) is type(self) and tuple.__eq__(self, other))

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        fields = type(self)._fields[:self._shown]  # type: ignore[attr-defined]
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in fields)})"

    def __getnewargs__(self) -> tuple[object, ...]:  # copy and pickle call __new__ with the value fields only
        return tuple(getattr(self, n) for n in type(self)._fields[:self._shown])  # type: ignore[attr-defined]


# -- match ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reg:
    """An Open vSwitch register (reg0…reg15, 32 bits each)."""

    index: int

    def __post_init__(self) -> None:
        if type(self.index) is not int or not 0 <= self.index < 16:
            raise UnsupportedFlow(f"register index must be 0…15, not {self.index!r}")

    @property
    def name(self) -> str:
        return f"reg{self.index}"

    @property
    def bits(self) -> int:
        return 32

    @property
    def oxm(self) -> int:
        return _NXM_REG0 + (self.index << 9)


@dataclass(frozen=True, slots=True)
class Metadata:
    """The 64-bit pipeline metadata field (OVN keeps the logical datapath in it)."""

    name: ClassVar[str] = "metadata"
    bits: ClassVar[int] = 64
    oxm: ClassVar[int] = _OXM_METADATA


Field = Reg | Metadata


def _render_match(in_port: int | None, eth_type: int | None, eth_dst: str | None, metadata: int | None,
                  regs: tuple[tuple[int, int], ...]) -> str:
    """In dump-flows order: protocol shorthand, registers, metadata, in_port, dl_dst."""
    parts = []
    if eth_type is not None:
        parts.append(_ETH_TYPES[eth_type])
    parts += [f"reg{index}={_hex(value)}" for index, value in regs]
    if metadata is not None:
        parts.append(f"metadata={_hex(metadata)}")
    if in_port is not None:
        parts.append(f"in_port={in_port}")
    if eth_dst is not None:
        parts.append(f"dl_dst={eth_dst}")
    return ",".join(parts)


def _mac(text: str) -> bytes:
    parts = text.split(":") if isinstance(text, str) else []
    ok = len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts)
    if not ok:
        raise UnsupportedFlow(f"MAC must be six lower-case hex pairs separated by ':', not {text!r}")
    return bytes.fromhex("".join(parts))


class _MatchFields(NamedTuple):
    in_port: int | None
    eth_type: int | None
    eth_dst: str | None
    metadata: int | None
    regs: tuple[tuple[int, int], ...]
    text: str  # the rendering, computed when built


_IN_PORT_MATCHES: dict[int, Match] = {}


class Match(_Value, _MatchFields):
    """Exact-match fields; None (or no register) means wildcarded."""

    __slots__ = ()
    _shown = 5

    def __new__(cls, in_port: int | None = None, eth_type: int | None = None, eth_dst: str | None = None,
                metadata: int | None = None, regs: tuple[tuple[int, int], ...] = ()) -> Match:
        if eth_type is None and eth_dst is None and metadata is None and not regs:
            # SFC's one shape, 10,000 of them in a full resync: in_port alone (or nothing).
            # Interned per port (at most 0xfeff of them): a resync plans the same ports again.
            if type(in_port) is int and (match := _IN_PORT_MATCHES.get(in_port)) is not None and cls is Match:
                return match
            if in_port is None:
                return tuple.__new__(cls, (None, None, None, None, (), ""))
            if type(in_port) is not int or not 0 < in_port < _OF10_PORT_MAX:
                _check_port(in_port, "in_port")
            match = tuple.__new__(cls, (in_port, None, None, None, (), f"in_port={in_port}"))
            if cls is Match:
                _IN_PORT_MATCHES[in_port] = match
            return match
        if in_port is not None:
            _check_port(in_port, "in_port")
        if eth_type is not None and eth_type not in _ETH_TYPES:
            raise UnsupportedFlow(f"eth_type must be one of {sorted(map(hex, _ETH_TYPES))}, not {eth_type!r}")
        if eth_dst is not None:
            _mac(eth_dst)
        if metadata is not None:
            _check_int(metadata, 64, "metadata")
        for index, value in regs:
            Reg(index)
            _check_int(value, 32, f"reg{index}")
        indexes = [index for index, _ in regs]
        if indexes != sorted(set(indexes)):
            raise UnsupportedFlow(f"registers must be listed once each, in order: {indexes}")
        return tuple.__new__(cls, (in_port, eth_type, eth_dst, metadata, regs,
                                   _render_match(in_port, eth_type, eth_dst, metadata, regs)))

    def to_ofctl(self) -> str:
        return self.text

    def to_wire(self) -> bytes:
        """An OFPMT_OXM match, padded to 8 bytes (its length field excludes the padding)."""
        oxm = b""
        if self.in_port is not None:
            oxm += struct.pack("!II", _OXM_IN_PORT, self.in_port)
        if self.eth_type is not None:
            oxm += struct.pack("!IH", _OXM_ETH_TYPE, self.eth_type)
        if self.eth_dst is not None:
            oxm += struct.pack("!I", _OXM_ETH_DST) + _mac(self.eth_dst)
        if self.metadata is not None:
            oxm += struct.pack("!IQ", _OXM_METADATA, self.metadata)
        for index, value in self.regs:
            oxm += struct.pack("!II", Reg(index).oxm, value)
        return _pad8(struct.pack("!HH", 1, 4 + len(oxm)) + oxm)


# -- actions ----------------------------------------------------------------------------------------


class _OutputFields(NamedTuple):
    port: int
    text: str


_OUTPUTS: dict[int, Output] = {}


class Output(_Value, _OutputFields):
    __slots__ = ()
    _shown = 1

    def __new__(cls, port: int) -> Output:
        if type(port) is int and (output := _OUTPUTS.get(port)) is not None and cls is Output:
            return output  # interned per port, like in_port matches
        if type(port) is not int or not 0 < port < _OF10_PORT_MAX:
            _check_port(port, "output port")
        output = tuple.__new__(cls, (port, f"output:{port}"))
        if cls is Output:
            _OUTPUTS[port] = output
        return output

    def to_ofctl(self) -> str:
        return self.text

    def to_wire(self) -> bytes:
        return struct.pack("!HHIH6x", _OFPAT_OUTPUT, 16, self.port, 0)


@dataclass(frozen=True, slots=True)
class SetField:
    """Load a constant into a register or the metadata field (the whole field)."""

    field: Field
    value: int

    def __post_init__(self) -> None:
        if not isinstance(self.field, Reg | Metadata):
            raise UnsupportedFlow(f"set_field writes a Reg or Metadata, not {self.field!r}")
        _check_int(self.value, self.field.bits, self.field.name)

    def to_ofctl(self) -> str:
        return f"set_field:{_hex(self.value)}->{self.field.name}"

    def to_wire(self) -> bytes:
        size = self.field.bits // 8
        oxm = struct.pack("!I", self.field.oxm) + self.value.to_bytes(size, "big")
        return _pad8(struct.pack("!HH", _OFPAT_SET_FIELD, (4 + len(oxm) + 7) // 8 * 8) + oxm)


@dataclass(frozen=True, slots=True)
class Resubmit:
    """Run the packet through `table` (as if it came in on `in_port`, default its own) and come back."""

    table: int
    in_port: int | None = None

    def __post_init__(self) -> None:
        _check_table(self.table, "resubmit table")
        if self.in_port is not None:
            _check_port(self.in_port, "resubmit in_port")

    def to_ofctl(self) -> str:
        return f"resubmit({'' if self.in_port is None else self.in_port},{self.table})"

    def to_wire(self) -> bytes:
        in_port = _OF10_IN_PORT if self.in_port is None else self.in_port
        return struct.pack("!HHIHHB3x", _OFPAT_EXPERIMENTER, 16, NX_EXPERIMENTER, _NXAST_RESUBMIT_TABLE, in_port,
                           self.table)


@dataclass(frozen=True, slots=True)
class Ct:
    """Send the packet through the connection tracker in `zone`; `commit` records the connection, `table`
    continues the pipeline there with the ct_* fields filled (the flow must match ip or ipv6)."""

    zone: int = 0
    commit: bool = False
    table: int | None = None

    def __post_init__(self) -> None:
        _check_int(self.zone, 16, "ct zone")
        if not isinstance(self.commit, bool):
            raise UnsupportedFlow(f"ct commit must be a bool, not {self.commit!r}")
        if self.table is not None:
            _check_table(self.table, "ct table")

    def to_ofctl(self) -> str:
        parts = ["commit"] if self.commit else []
        if self.table is not None:
            parts.append(f"table={self.table}")
        if self.zone:
            parts.append(f"zone={self.zone}")
        return f"ct({','.join(parts)})"

    def to_wire(self) -> bytes:
        return _CT.pack(_OFPAT_EXPERIMENTER, _CT.size, NX_EXPERIMENTER, _NXAST_CT, _CT_COMMIT if self.commit else 0,
                        0, self.zone, _CT_NO_RECIRC if self.table is None else self.table, 0)


_LEARN_TAIL = "NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[])"
# Values built from the same parts are interned: a full resync plans every chain again, and values reused from
# the last one cost the garbage collector nothing new to walk. A learn depends on its chain's cookie, so that
# table is cleared when it outgrows 16,384 entries (one per port of a planned chain).
_INTERNED_MAX = 1 << 14
_LEARNS: dict[tuple[int, int, int, int, int], LearnReturnPath] = {}


class _LearnFields(NamedTuple):
    table: int
    idle_timeout: int
    priority: int
    cookie: int
    from_port: int
    text: str


class LearnReturnPath(_Value, _LearnFields):
    """Upstream's learn: remember that this packet's source MAC lives behind the port it came in on.

    Installs, in `table`, `priority=<priority>,in_port=<from_port>,dl_dst=<this packet's dl_src>
    actions=output:<this packet's in_port>` with `cookie` and `idle_timeout`.
    """

    __slots__ = ()
    _shown = 5

    def __new__(cls, table: int, idle_timeout: int, priority: int, cookie: int, from_port: int) -> LearnReturnPath:
        idle, port = idle_timeout, from_port
        if not (type(table) is int and 0 <= table <= _MAX_TABLE and type(idle) is int and 0 <= idle <= 0xFFFF
                and type(priority) is int and 0 <= priority <= 0xFFFF and type(cookie) is int
                and 0 <= cookie <= ALL_COOKIE_BITS and type(port) is int and 0 < port < _OF10_PORT_MAX):
            _check_table(table, "learn table")  # one of these raises, naming the value
            _check_int(idle, 16, "learn idle_timeout")
            _check_int(priority, 16, "learn priority")
            _check_int(cookie, 64, "learn cookie")
            _check_port(port, "learn in_port")
        return tuple.__new__(cls, (table, idle, priority, cookie, port,
                                   f"learn(table={table},idle_timeout={idle},priority={priority},cookie={cookie:#x},"
                                   f"in_port={port},NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[])"))

    @classmethod
    def many(cls, table: int, idle_timeout: int, priority: int, cookie: int,
             from_ports: Iterable[int]) -> list[LearnReturnPath]:
        """`LearnReturnPath(table, idle_timeout, priority, cookie, port)` for each port: the shared part checked
        and rendered once, each value interned (a resync plans the same chains again; see _INTERNED_MAX)."""
        idle = idle_timeout
        if not (type(table) is int and 0 <= table <= _MAX_TABLE and type(idle) is int and 0 <= idle <= 0xFFFF
                and type(priority) is int and 0 <= priority <= 0xFFFF and type(cookie) is int
                and 0 <= cookie <= ALL_COOKIE_BITS):
            _check_table(table, "learn table")  # one of these raises, naming the value
            _check_int(idle, 16, "learn idle_timeout")
            _check_int(priority, 16, "learn priority")
            _check_int(cookie, 64, "learn cookie")
        if cls is not LearnReturnPath:
            return [cls(table, idle, priority, cookie, port) for port in from_ports]
        if len(_LEARNS) > _INTERNED_MAX:
            _LEARNS.clear()
        head = ""
        learns = []
        for port in from_ports:
            if type(port) is not int or not 0 < port < _OF10_PORT_MAX:
                _check_port(port, "learn in_port")
            key = (table, idle, priority, cookie, port)
            learn = _LEARNS.get(key)
            if learn is None:
                head = head or f"learn(table={table},idle_timeout={idle},priority={priority},cookie={cookie:#x},"
                learn = _LEARNS[key] = tuple.__new__(cls, (table, idle, priority, cookie, port,
                                                           f"{head}in_port={port},{_LEARN_TAIL}"))
            learns.append(learn)
        return learns

    def to_ofctl(self) -> str:
        return self.text

    def to_wire(self) -> bytes:
        specs = (struct.pack("!HH", _SPEC_IMMEDIATE | _SPEC_MATCH | 16, self.from_port)  # in_port=<n>
                 + struct.pack("!IH", _NXM_IN_PORT, 0)
                 + struct.pack("!HIHIH", _SPEC_MATCH | 48, _NXM_ETH_SRC, 0, _NXM_ETH_DST, 0)  # eth_dst = eth_src
                 + struct.pack("!HIH", _SPEC_OUTPUT | 16, _NXM_IN_PORT, 0))  # output:in_port
        length = (_LEARN.size + len(specs) + 7) // 8 * 8
        head = _LEARN.pack(_OFPAT_EXPERIMENTER, length, NX_EXPERIMENTER, _NXAST_LEARN, self.idle_timeout, 0,
                           self.priority, self.cookie, 0, self.table, 0, 0)
        return _pad8(head + specs)


Action = Output | SetField | Resubmit | Ct | LearnReturnPath
_ACTIONS = (Output, SetField, Resubmit, Ct, LearnReturnPath)


# -- flows and flow mods ----------------------------------------------------------------------------


class _FlowFields(tuple):
    """(cookie, priority, match, table, goto_table, key, rendered_actions, text, *actions): the actions are the
    tail of the flow's own tuple, one object fewer per flow for the garbage collector to walk."""

    __slots__ = ()
    _fields = ("cookie", "priority", "match", "actions", "table", "goto_table")
    if TYPE_CHECKING:
        cookie: int
        priority: int
        match: Match
        table: int
        goto_table: int | None
        # Rendered once, when built: a resync compares every flow's key and actions with a dump, then sends it.
        key: tuple[int, int, str]
        """What identifies the flow on the switch: table, priority and match text, as the dump parser reports them."""
        rendered_actions: str
        text: str
    else:
        cookie, priority, match, table, goto_table, key, rendered_actions, text = (
            property(itemgetter(i), doc=name) for i, name in enumerate(
                ("cookie", "priority", "match", "table", "goto_table", "key", "rendered_actions", "text")))

    @property
    def actions(self) -> tuple[Action, ...]:
        return self[8:]


_NO_MATCH = Match()


class Flow(_Value, _FlowFields):
    """One flow: apply `actions` in order, then continue at `goto_table` if set. No actions and no goto is a drop."""

    __slots__ = ()
    _shown = 6

    def __new__(cls, cookie: int, priority: int, match: Match = _NO_MATCH, actions: tuple[Action, ...] = (),
                table: int = 0, goto_table: int | None = None) -> Flow:
        if not (type(cookie) is int and 0 <= cookie <= ALL_COOKIE_BITS and type(priority) is int
                and 0 <= priority <= 0xFFFF and type(table) is int and 0 <= table <= _MAX_TABLE):
            _check_int(cookie, 64, "cookie")  # one of these raises, naming the value
            _check_int(priority, 16, "priority")
            _check_table(table)
        if type(match) is not Match and not isinstance(match, Match):
            raise UnsupportedFlow(f"match must be a Match, not {match!r}")
        if type(actions) is not tuple:
            raise UnsupportedFlow(f"actions must be a tuple, not {actions!r}")
        texts = []
        with_ct = False
        for action in actions:
            kind = type(action)
            if kind is LearnReturnPath or kind is Output:  # SFC's actions: their text is a field
                texts.append(action.text)  # type: ignore[union-attr]
            elif isinstance(action, _ACTIONS):
                texts.append(action.to_ofctl())
                with_ct = with_ct or isinstance(action, Ct)
            else:
                raise UnsupportedFlow(f"an action is one of {', '.join(a.__name__ for a in _ACTIONS)}, not {action!r}")
        if with_ct and match.eth_type not in (0x0800, 0x86DD):
            raise UnsupportedFlow("a flow with ct must match ip or ipv6 (eth_type)")
        match_text = match.text
        rendered = ",".join(texts)
        if goto_table is not None:
            _check_table(goto_table, "goto_table")
            if goto_table <= table:
                raise UnsupportedFlow(f"goto_table must go forward (table {table} → {goto_table}); "
                                      "use Resubmit to go back")
            rendered += f"{',' if rendered else ''}goto_table:{goto_table}"
        elif not rendered:
            rendered = "drop"
        # dump-flows leaves out a zero cookie, table 0 and the default priority, separates the first two with
        # ", " and joins the priority to the match with ",".
        if cookie and not table and priority != OFP_DEFAULT_PRIORITY and match_text:
            text = f"cookie={cookie:#x}, priority={priority},{match_text} actions={rendered}"  # SFC's flows
        else:
            head = ", ".join(([f"cookie={cookie:#x}"] if cookie else []) + ([f"table={table}"] if table else []))
            rule = ",".join(([f"priority={priority}"] if priority != OFP_DEFAULT_PRIORITY else [])
                            + ([match_text] if match_text else []))
            if rule:
                head = f"{head}, {rule}" if head else rule
            elif head:
                head += ","
            text = f"{head} actions={rendered}".lstrip()
        return tuple.__new__(cls, (cookie, priority, match, table, goto_table, (table, priority, match_text), rendered,
                                   text, *actions))

    @classmethod
    def many(cls, cookie: int, priority: int, rules: Iterable[tuple[Match, tuple[Action, ...]]],
             table: int = 0) -> list[Flow]:
        """Flows sharing cookie, priority and table (one chain's), equal to `Flow(cookie, priority, match, actions,
        table)` for each rule and validated the same: the shared part is checked and rendered once, and rules of
        SFC's shape (an in_port match, learn and output actions) are built without going through the checks again.
        """
        if not (type(cookie) is int and 0 <= cookie <= ALL_COOKIE_BITS and type(priority) is int
                and 0 <= priority <= 0xFFFF and type(table) is int and 0 <= table <= _MAX_TABLE):
            _check_int(cookie, 64, "cookie")  # one of these raises, naming the value
            _check_int(priority, 16, "priority")
            _check_table(table)
        # The rendering __new__ uses for a cookie, table 0, a priority and a non-empty match.
        shared = cookie and not table and priority != OFP_DEFAULT_PRIORITY
        prefix = f"cookie={cookie:#x}, priority={priority}," if shared else ""
        flows = []
        for match, actions in rules:
            if prefix and type(match) is Match and match.text and type(actions) is tuple and actions:
                texts = []
                for action in actions:
                    kind = type(action)
                    if kind is not LearnReturnPath and kind is not Output:
                        break
                    texts.append(action.text)  # type: ignore[union-attr]
                else:
                    rendered = ",".join(texts)
                    text = match.text
                    flows.append(tuple.__new__(cls, (cookie, priority, match, table, None, (table, priority, text),
                                                     rendered, f"{prefix}{text} actions={rendered}", *actions)))
                    continue
            flows.append(cls(cookie, priority, match, actions, table))
        return flows

    def actions_text(self) -> str:
        return self.rendered_actions

    def to_ofctl(self) -> str:
        """The flow exactly as `ovs-ofctl --no-stats --no-names dump-flows` prints it, so dumps compare by string."""
        return self.text

    def instructions_wire(self) -> bytes:
        out = b""
        if self.actions:
            packed = b"".join(a.to_wire() for a in self.actions)
            out += struct.pack("!HH4x", _OFPIT_APPLY_ACTIONS, 8 + len(packed)) + packed
        if self.goto_table is not None:
            out += struct.pack("!HHB3x", _OFPIT_GOTO_TABLE, 8, self.goto_table)
        return out


def _flow_mod(command: int, cookie: int, cookie_mask: int, table: int, priority: int, out_port: int,
              match: Match, instructions: bytes = b"") -> bytes:
    body = (_FLOW_MOD.pack(cookie, cookie_mask, table, command, 0, 0, priority, OFP_NO_BUFFER, out_port, OFPG_ANY, 0)
            + match.to_wire() + instructions)
    return HEADER.pack(VERSION, OFPT_FLOW_MOD, HEADER.size + len(body), 0) + body  # xid 0: bundle_add sets it


class _AddFlowFields(NamedTuple):
    flow: Flow


class AddFlow(_Value, _AddFlowFields):
    """Add `flow`, replacing a flow of the same table, priority and match."""

    __slots__ = ()
    _shown = 1

    def __new__(cls, flow: Flow) -> AddFlow:  # a full resync adds every flow: one tuple, like the flow itself
        if type(flow) is not Flow and not isinstance(flow, Flow):
            raise UnsupportedFlow(f"AddFlow takes a Flow, not {flow!r}")
        return tuple.__new__(cls, (flow,))

    @classmethod
    def many(cls, flows: Iterable[Flow]) -> list[AddFlow]:
        """`AddFlow(flow)` for each flow (a full resync adds 10,000)."""
        if cls is not AddFlow:
            return [cls(flow) for flow in flows]
        adds = []
        for flow in flows:
            if type(flow) is not Flow and not isinstance(flow, Flow):
                raise UnsupportedFlow(f"AddFlow takes a Flow, not {flow!r}")
            adds.append(tuple.__new__(cls, (flow,)))
        return adds

    def to_ofctl(self) -> str:
        return f"add {self.flow.text}"

    def to_wire(self) -> bytes:
        f = self.flow
        return _flow_mod(OFPFC_ADD, f.cookie, 0, f.table, f.priority, OFPP_ANY, f.match, f.instructions_wire())


@dataclass(frozen=True, slots=True)
class DeleteFlows:
    """Delete every flow with exactly `cookie` whose match includes `match` and, if set, that outputs to
    `out_port`; in `table`, or in all tables when None."""

    cookie: int
    table: int | None = None
    match: Match = _NO_MATCH
    out_port: int | None = None

    def __post_init__(self) -> None:
        _check_int(self.cookie, 64, "cookie")
        if not isinstance(self.match, Match):
            raise UnsupportedFlow(f"match must be a Match, not {self.match!r}")
        if self.table is not None:
            _check_table(self.table)
        if self.out_port is not None:
            _check_port(self.out_port, "out_port")

    def to_ofctl(self) -> str:
        parts = [f"table={self.table}"] if self.table is not None else []
        parts.append(f"cookie={_hex(self.cookie)}/-1")
        if match := self.match.to_ofctl():
            parts.append(match)
        if self.out_port is not None:
            parts.append(f"out_port={self.out_port}")
        return f"delete {','.join(parts)}"

    def to_wire(self) -> bytes:
        return _flow_mod(OFPFC_DELETE, self.cookie, ALL_COOKIE_BITS, OFPTT_ALL if self.table is None else self.table,
                         OFP_DEFAULT_PRIORITY, OFPP_ANY if self.out_port is None else self.out_port, self.match)


@dataclass(frozen=True, slots=True)
class DeleteFlow:
    """Delete the one flow with exactly this cookie, table, priority and match."""

    cookie: int
    table: int
    priority: int
    match: Match

    def __post_init__(self) -> None:
        _check_int(self.cookie, 64, "cookie")
        _check_table(self.table)
        _check_int(self.priority, 16, "priority")
        if not isinstance(self.match, Match):
            raise UnsupportedFlow(f"match must be a Match, not {self.match!r}")

    @classmethod
    def of(cls, flow: Flow) -> DeleteFlow:
        return cls(flow.cookie, flow.table, flow.priority, flow.match)

    def to_ofctl(self) -> str:
        match = self.match.to_ofctl()
        return (f"delete_strict table={self.table},cookie={_hex(self.cookie)}/-1,priority={self.priority}"
                f"{',' if match else ''}{match}")

    def to_wire(self) -> bytes:
        return _flow_mod(OFPFC_DELETE_STRICT, self.cookie, ALL_COOKIE_BITS, self.table, self.priority, OFPP_ANY,
                         self.match)


FlowMod = AddFlow | DeleteFlows | DeleteFlow
