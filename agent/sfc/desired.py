"""Pure SFC planning: desired state + observed switch → ports to create/fix/delete and flow mods to send.

Every function here is deterministic and side-effect free (no I/O, no clock); the programmer feeds
it the node state, the OVSDB view and dumped flows, and executes what comes back through
`ovsdb.py` (one transaction) and `flows.py` (one bundle).

Upstream compatibility (doca-platform sfc-controller, upstream DPF v24.10):
- port names: physical = `physical.interfaceName`, pf = `pf<N>hpf`, vf = `pf<N>vf<M>`, ovn = the patch
  pair `puplinkbrsfc` (br-sfc) ↔ `puplinkbrovn` (br-ovn); service ports are plugged by the CNI and only
  looked up here, by Interface `external_ids:dpf-id=<podNs>/<podName>/<ifname>`;
- Interface `external_ids:dpf-id=<siNs>/<siName>`, Port `external_ids:dpf-type=physical` for uplinks;
- flows: table 0, priority 20 per chain port with one `learn` per other port (priority 30,
  idle_timeout 10) then `output` to every other port; cookie = FNV-1a 64 of `<ns>/<name>`.

Fixed on purpose where upstream is loose: flows of a port that left a still-existing chain are
removed, type/bridge drift of our own ports is corrected, and a chain naming an interface the node
lacks (or a port another chain already uses) is rejected whole, so no partial chain reaches the switch.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from dpf.agent.sfc.flowspec import (
    Action,
    AddFlow,
    DeleteFlow,
    DeleteFlows,
    Flow,
    FlowMod,
    LearnReturnPath,
    Match,
    Output,
)
from dpf.agent.sfc.model import InterfaceType, ServiceChain, ServiceInterface
from dpf.agent.sfc.settings import SfcSettings
from dpf.agent.sfc.view import ObservedFlow, ObservedPort, SwitchView

OWNER_KEY = "dpf-owner"  # ours; rows without it (or with another value) are never changed
DPF_ID = "dpf-id"  # upstream's key, written so upstream tooling and ours read the same rows
DPF_TYPE = "dpf-type"
CHAIN_RECORD = "dpf-sfc-chain-"  # Bridge external_ids:<prefix><cookie hex> = "<ns>/<name>" of chains we program
OVN_SFC_PORT = "puplinkbrsfc"
OVN_PEER_PORT = "puplinkbrovn"

TABLE = 0
BASE_PRIORITY = 20
LEARNED_PRIORITY = 30
LEARN_IDLE_TIMEOUT = 10

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def chain_cookie(namespace: str, name: str) -> int:
    """FNV-1a 64 of `<namespace>/<name>`: upstream's cookie, so both implementations agree on flow ownership."""
    value = _FNV_OFFSET
    for byte in f"{namespace}/{name}".encode():
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return value


def record_key(cookie: int) -> str:
    return f"{CHAIN_RECORD}{cookie:016x}"


# -- ports -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DesiredPort:
    name: str
    bridge: str
    iface_type: str
    options: tuple[tuple[str, str], ...] = ()
    port_external_ids: tuple[tuple[str, str], ...] = ()
    iface_external_ids: tuple[tuple[str, str], ...] = ()
    interface_key: str = ""  # the ServiceInterface this port realises


@dataclass(frozen=True)
class PortChange:
    """One OVSDB transaction's worth of port work. A move is a delete plus a create of the same name."""

    create: tuple[DesiredPort, ...] = ()
    fix: tuple[DesiredPort, ...] = ()
    delete: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.create or self.fix or self.delete)

    def describe(self) -> str:
        parts = [f"{verb} {','.join(names)}" for verb, names in (
            ("create", [p.name for p in self.create]), ("fix", [p.name for p in self.fix]), ("delete", self.delete))
            if names]
        return "; ".join(parts) or "nothing"


def port_name(si: ServiceInterface) -> str | None:
    """The br-sfc port that realises `si`, or None when the CNI (service) or nobody (vlan) plugs it."""
    match si.interface_type:
        case InterfaceType.PHYSICAL:
            assert si.physical is not None, "ServiceInterface requires spec.physical for interfaceType physical"
            return si.physical.interface_name
        case InterfaceType.PF:
            assert si.pf is not None, "ServiceInterface requires spec.pf for interfaceType pf"
            return f"pf{si.pf.pf_id}hpf"
        case InterfaceType.VF:
            assert si.vf is not None, "ServiceInterface requires spec.vf for interfaceType vf"
            return f"pf{si.vf.pf_id}vf{si.vf.vf_id}"
        case InterfaceType.OVN:
            return OVN_SFC_PORT
    return None


def compute_ports(interfaces: Iterable[ServiceInterface], settings: SfcSettings,
                  bridges: Iterable[str]) -> tuple[dict[str, DesiredPort], dict[str, str]]:
    """Ports this node must have, and a problem message per ServiceInterface that cannot get one."""
    ports: dict[str, DesiredPort] = {}
    problems: dict[str, str] = {}
    present = set(bridges)
    mark = (OWNER_KEY, settings.owner)
    for si in sorted(interfaces, key=lambda s: s.key):
        name = port_name(si)
        if si.interface_type is InterfaceType.VLAN:
            problems[si.key] = "interfaceType vlan is not supported on the DPU (upstream leaves it unimplemented)"
            continue
        if name is None:
            continue
        if name in ports:
            problems[si.key] = (f"port {name} is already realised for ServiceInterface {ports[name].interface_key}; "
                                "two interfaces cannot share one OVS port")
            continue
        iface_ids = ((DPF_ID, si.key), mark)
        if si.interface_type is InterfaceType.OVN:
            if settings.ovn_bridge not in present:
                problems[si.key] = (f"bridge {settings.ovn_bridge} (OVN-Kubernetes' gateway bridge) does not exist; "
                                    f"the {OVN_SFC_PORT}↔{OVN_PEER_PORT} patch is created once it does")
                continue
            ports[name] = DesiredPort(name, settings.bridge, "patch", (("peer", OVN_PEER_PORT),),
                                      (mark, (DPF_ID, si.key)), iface_ids, si.key)
            ports[OVN_PEER_PORT] = DesiredPort(OVN_PEER_PORT, settings.ovn_bridge, "patch", (("peer", OVN_SFC_PORT),),
                                               (mark, (DPF_ID, si.key)), (mark,), si.key)
            continue
        port_ids: tuple[tuple[str, str], ...] = (mark, (DPF_ID, si.key))
        if si.interface_type is InterfaceType.PHYSICAL:
            port_ids = (*port_ids, (DPF_TYPE, "physical"))
        ports[name] = DesiredPort(name, settings.bridge, settings.port_type, (), port_ids, iface_ids, si.key)
    return ports, problems


def _same_type(a: str, b: str) -> bool:
    return (a or "system") == (b or "system")


def _covers(have: Mapping[str, str], want: tuple[tuple[str, str], ...]) -> bool:
    return all(have.get(k) == v for k, v in want)


def diff_ports(desired: Mapping[str, DesiredPort], view: SwitchView,
               owner: str) -> tuple[PortChange, dict[str, str]]:
    """Port work to reach `desired`, and a conflict message per port name we may not touch.

    A port of the right name that we do not own is used as it is when it sits on the right bridge
    (an uplink created by the DPU flavor script, say) and is a conflict otherwise. Our own ports
    that are no longer desired are deleted; nobody else's ever are.
    """
    create: list[DesiredPort] = []
    fix: list[DesiredPort] = []
    delete: list[str] = []
    conflicts: dict[str, str] = {}
    for name, want in sorted(desired.items()):
        have = view.ports.get(name)
        if have is None:
            create.append(want)
        elif not have.owned_by(owner):
            if have.bridge != want.bridge:
                conflicts[name] = (f"port {name} exists on bridge {have.bridge} and was not created by dpf "
                                   f"(no external_ids:{OWNER_KEY}={owner}); move or delete it by hand")
        elif have.bridge != want.bridge:
            delete.append(name)
            create.append(want)
        elif not _realises(have, want):
            fix.append(want)
    for name, have in sorted(view.ports.items()):
        if name not in desired and have.owned_by(owner):
            delete.append(name)
    return PortChange(tuple(create), tuple(fix), tuple(delete)), conflicts


def _realises(have: ObservedPort, want: DesiredPort) -> bool:
    return (_same_type(have.iface_type, want.iface_type) and _covers(have.iface_options, want.options)
            and _covers(have.external_ids, want.port_external_ids)
            and _covers(have.iface_external_ids, want.iface_external_ids))


# -- interface → OpenFlow port ------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolution:
    """Where a ServiceInterface lands on br-sfc: an OpenFlow port number, or why it does not (yet)."""

    ofport: int | None
    reason: str = ""


def resolve(si: ServiceInterface, view: SwitchView, settings: SfcSettings,
            problems: Mapping[str, str]) -> Resolution:
    if si.key in problems:
        return Resolution(None, problems[si.key])
    if si.interface_type is InterfaceType.SERVICE:
        return _resolve_service(si, view, settings)
    name = port_name(si)
    port = view.ports.get(name) if name is not None else None
    if port is None:
        return Resolution(None, f"port {name} is not in OVSDB yet")
    if port.bridge != settings.bridge:
        return Resolution(None, f"port {name} is on bridge {port.bridge}, not {settings.bridge}")
    return _ofport(port)


def _ofport(port: ObservedPort) -> Resolution:
    if port.ofport is not None and port.ofport > 0:
        return Resolution(port.ofport)
    if port.error:
        return Resolution(None, f"port {port.name}: {port.error}")
    if port.ofport == -1:
        return Resolution(None, f"port {port.name}: ovs-vswitchd could not attach it (ofport -1)")
    return Resolution(None, f"port {port.name}: waiting for ovs-vswitchd to assign an OpenFlow port")


def _resolve_service(si: ServiceInterface, view: SwitchView, settings: SfcSettings) -> Resolution:
    svc = si.service
    assert svc is not None, "ServiceInterface requires spec.service for interfaceType service"
    if svc.pod is None:
        return Resolution(None, f"no pod of service {svc.service_id} on this node yet")
    key = f"{svc.pod}/{svc.interface_name}"
    names = view.by_dpf_id.get(key, ())
    if len(names) != 1:
        what = "no" if not names else f"{len(names)} ({', '.join(names)})"
        return Resolution(None, f"{what} OVS interface with external_ids:{DPF_ID}={key}; "
                                "the CNI plugs it when the pod starts")
    port = view.ports[names[0]]
    if port.bridge == settings.bridge:
        return _ofport(port)
    # Upstream HBN layout: the pod's port sits on br-hbn and reaches br-sfc through p<rep>brsfc.
    patch = view.ports.get(f"p{port.name}brsfc")
    if patch is None or patch.bridge != settings.bridge:
        return Resolution(None, f"interface {port.name} is on bridge {port.bridge} and no patch "
                                f"p{port.name}brsfc exists on {settings.bridge}")
    return _ofport(patch)


# -- flows -------------------------------------------------------------------------------------------


def switch_flows(cookie: int, ofports: list[int]) -> list[Flow]:
    """Upstream's learning switch over `ofports`: flood to the others, learn the way back."""
    return chain_flows(cookie, [ofports])


def chain_flows(cookie: int, switches: list[list[int]]) -> list[Flow]:
    """The learning switches of one chain (each a list of ofports), in order; built together because the flows
    share a cookie, priority and table (checked and rendered once) and each port's learn and output are shared by
    the flows of the other ports of its switch."""
    switches = [ofports for ofports in switches if len(ofports) >= 2]
    learns = LearnReturnPath.many(TABLE, LEARN_IDLE_TIMEOUT, LEARNED_PRIORITY, cookie,
                                  [q for ofports in switches for q in ofports])
    rules: list[tuple[Match, tuple[Action, ...]]] = []
    start = 0
    for ofports in switches:
        learn = learns[start:start + len(ofports)]
        start += len(ofports)
        output = [Output(q) for q in ofports]
        if len(ofports) == 2 and ofports[0] != ofports[1]:  # the usual switch: each port floods to the other
            rules.append((Match(in_port=ofports[0]), (learn[1], output[1])))
            rules.append((Match(in_port=ofports[1]), (learn[0], output[0])))
        elif len(set(ofports)) == len(ofports):  # "the others" are the other positions
            rules += [(Match(in_port=port), (*learn[:i], *learn[i + 1:], *output[:i], *output[i + 1:]))
                      for i, port in enumerate(ofports)]
        else:
            rules += [(Match(in_port=port), tuple([x for x in learn if x.from_port != port]
                                                  + [x for x in output if x.port != port])) for port in ofports]
    return Flow.many(cookie, BASE_PRIORITY, rules, TABLE)


class ChainState(StrEnum):
    PROGRAMMED = "programmed"
    PENDING = "pending"  # valid, waiting for a port to exist (a pod to start, vswitchd to attach a netdev)
    REJECTED = "rejected"  # can never be programmed as it stands; the message says what to change


@dataclass(frozen=True)
class ChainPlan:
    key: str
    cookie: int
    state: ChainState
    message: str = ""
    flows: tuple[Flow, ...] = ()
    ofports: frozenset[int] = field(default_factory=frozenset)


def self_consistent(chain: ServiceChain, known: Collection[str]) -> bool:
    """Every port names a known interface, and none twice: the chain could be programmed on its own."""
    keys = chain.interface_keys
    return len(set(keys)) == len(keys) and all(k in known for k in keys)


def port_claims(chains: Iterable[ServiceChain], known: Collection[str]) -> dict[str, str]:
    """Interface key → the chain that owns it: the first by key, so a conflict resolves the same way everywhere.

    A chain that is invalid on its own (an unknown interface, a port listed twice) claims nothing, so it
    cannot lock a valid chain out.
    """
    claims: dict[str, str] = {}
    for chain in sorted(chains, key=lambda c: c.key):
        if self_consistent(chain, known):
            for iface in chain.interface_keys:
                claims.setdefault(iface, chain.key)
    return claims


def plan_chain(chain: ServiceChain, known: Collection[str], resolutions: Mapping[str, Resolution],
               claims: Mapping[str, str]) -> ChainPlan:
    """The chain's flows, or why it has none; `known` holds the keys of this node's ServiceInterfaces."""
    cookie = chain_cookie(chain.namespace, chain.name)
    keys = chain.interface_keys

    def rejected(message: str) -> ChainPlan:
        return ChainPlan(chain.key, cookie, ChainState.REJECTED, message)

    missing = sorted({k.split("/", 1)[1] for k in keys if k not in known})
    if missing:
        return rejected(f"port(s) {', '.join(missing)} name no ServiceInterface on this node "
                        f"in namespace {chain.namespace}; no flows are installed for the chain")
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            return rejected(f"ServiceInterface {key} appears more than once in spec.switches; "
                            "an interface can be in one switch only")
        seen.add(key)
        owner = claims.get(key, chain.key)
        if owner != chain.key:
            return rejected(f"ServiceInterface {key} is already a port of ServiceChain {owner}; "
                            "an interface can be in one chain only")
    waiting = [f"{key}: {resolutions[key].reason}" for key in keys if resolutions[key].ofport is None]
    if waiting:
        return ChainPlan(chain.key, cookie, ChainState.PENDING, "waiting for " + "; ".join(waiting))
    resolved = {key: ofport for key in keys if (ofport := resolutions[key].ofport) is not None}  # all of them
    flows = chain_flows(cookie, [[resolved[f"{chain.namespace}/{p}"] for p in switch.ports]
                                 for switch in chain.switches])
    ofports = frozenset(resolved.values())
    return ChainPlan(chain.key, cookie, ChainState.PROGRAMMED, "", tuple(flows), ofports)


# -- flow diffs (one bundle's flow mods) ----------------------------------------------------------------


def chain_mods(cookie: int, old: ChainPlan | None, new: ChainPlan | None) -> list[FlowMod]:
    """Flow mods taking one chain from what we installed (`old`) to `new`, touching nothing else.

    Unchanged flows are not re-sent (their counters and learned entries survive). A port that left
    the chain loses its own flows and every flow, learned or not, that outputs to it.
    """
    old_flows = {f.key: f for f in (old.flows if old else ())}
    new_flows = {f.key: f for f in (new.flows if new else ())}
    if new is None or not new_flows:
        return [DeleteFlows(cookie)] if old_flows or old is None else []
    mods: list[FlowMod] = []
    gone = (old.ofports if old else frozenset()) - new.ofports
    for port in sorted(gone):
        mods.append(DeleteFlows(cookie, TABLE, Match(in_port=port)))
        mods.append(DeleteFlows(cookie, TABLE, out_port=port))
    mods += [DeleteFlow.of(flow) for key, flow in old_flows.items() if key not in new_flows]
    mods += [AddFlow(flow) for key, flow in new_flows.items() if old_flows.get(key) != flow]
    return mods


def resync_mods(plans: Mapping[int, ChainPlan], observed: Iterable[ObservedFlow],
                owned: Iterable[int]) -> list[FlowMod]:
    """Flow mods taking the switch from a dump to exactly our plans, for cookies we own only.

    `owned` = cookies recorded on the bridge (chains we programmed before, maybe in an earlier run)
    plus the planned ones. Flows with any other cookie are somebody else's and are never touched.
    Learned flows survive unless they reference a port that is no longer in their chain.

    A dumped flow is never turned back into a flow mod: what must go is removed by the chain's cookie
    plus a port no longer in the chain (in_port=P, out_port=P, all tables), which catches every learned
    flow through that port. A flow of ours that no such port explains (made by hand) gets the chain
    rebuilt: everything with its cookie deleted and its flows added, in the same atomic bundle.
    """
    owned = set(owned) | set(plans)
    by_cookie: dict[int, list[ObservedFlow]] = {}
    for flow in observed:
        if flow.cookie in owned:
            by_cookie.setdefault(flow.cookie, []).append(flow)
    mods: list[FlowMod] = []
    for cookie in sorted(owned):
        have = by_cookie.get(cookie, [])
        plan = plans.get(cookie)
        if plan is None or not plan.flows:
            if have:
                mods.append(DeleteFlows(cookie))
            continue
        want = {f.key: f for f in plan.flows}
        base = {(f.table, f.priority, f.match): f for f in have if not f.learned}
        stale = [f for key, f in base.items() if key not in want]
        stale += [f for f in have if f.learned and not _ports_of(f) <= plan.ofports]
        gone = set().union(*(_ports_of(f) for f in stale)) - plan.ofports
        if not all(_caught(f, gone) for f in stale):
            mods.append(DeleteFlows(cookie))
            mods += AddFlow.many(plan.flows)
            continue
        for port in sorted(gone):
            mods.append(DeleteFlows(cookie, match=Match(in_port=port)))
            mods.append(DeleteFlows(cookie, out_port=port))
        mods += AddFlow.many(flow for key, flow in want.items()
                             if key not in base or base[key].actions != flow.rendered_actions)
    return mods


# Port references in a dump line, read by splitting on commas. Only dumps are read this way: the flows we
# send are built as values.


def _in_port(flow: ObservedFlow) -> int | None:
    for part in flow.match.split(","):
        key, _, value = part.partition("=")
        if key == "in_port" and value.isdigit():
            return int(value)
    return None


def _outputs(flow: ObservedFlow) -> set[int]:
    ports = (part.removeprefix("output:").rstrip(")") for part in flow.actions.split(","))
    return {int(p) for p in ports if p.isdigit()}


def _ports_of(flow: ObservedFlow) -> frozenset[int]:
    """Ports the flow matches on, outputs to or names in a learn spec."""
    learned_from = {int(p.removeprefix("in_port=")) for p in flow.actions.split(",")
                    if p.startswith("in_port=") and p.removeprefix("in_port=").isdigit()}
    in_port = _in_port(flow)
    return frozenset(_outputs(flow) | learned_from | ({in_port} if in_port is not None else set()))


def _caught(flow: ObservedFlow, ports: set[int]) -> bool:
    """Whether deleting by in_port and out_port for `ports` removes `flow`."""
    return _in_port(flow) in ports or bool(_outputs(flow) & ports)
