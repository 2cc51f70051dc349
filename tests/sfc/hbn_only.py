"""Upstream's hbn_only use case (docs/guides/usecases/hbn_only, 04-dpuservice-installation) as one node's state.

The objects are those of physical-ifaces.yaml, hbn-ifaces.yaml and hbn-chain.yaml: uplinks p0/p1
(label `uplink`), host PF representors pf 0/1 (label `hostpf`), four HBN service interfaces on NAD
`mybrhbn`, and the chains `hbn-to-fabric` and `host-to-hbn`. `node_state()` does what the controller
does before the agent sees them: names each per-node child `<name>-<node>` (ServiceInterfaceSet /
ServiceChainSet) and resolves every chain port's matchLabels to exactly one ServiceInterface.
"""

from __future__ import annotations

from dpf.agent.sfc.model import (
    InterfaceType,
    NodeState,
    Pf,
    Physical,
    Service,
    ServiceChain,
    ServiceInterface,
    Switch,
)

NS = "dpf-operator-system"
NODE = "worker1-0000-08-00"  # the node of upstream's documented cookie example
HBN_POD = f"{NS}/doca-hbn-ds-7x2kq"
SVC = "svc.dpu.nvidia.com/service"
IFACE = "svc.dpu.nvidia.com/interface"

# name → (labels, interface type, sub-struct)
INTERFACES: dict[str, tuple[dict[str, str], InterfaceType, object]] = {
    "p0": ({"uplink": "p0"}, InterfaceType.PHYSICAL, Physical("p0")),
    "p1": ({"uplink": "p1"}, InterfaceType.PHYSICAL, Physical("p1")),
    "host-pf0-rep": ({"hostpf": "host_pf0_rep"}, InterfaceType.PF, Pf(0)),
    "host-pf1-rep": ({"hostpf": "host_pf1_rep"}, InterfaceType.PF, Pf(1)),
    "host-pf0-sf": ({SVC: "doca-hbn", IFACE: "host_pf0_sf"}, InterfaceType.SERVICE, "pf0hpf_if"),
    "host-pf1-sf": ({SVC: "doca-hbn", IFACE: "host_pf1_sf"}, InterfaceType.SERVICE, "pf1hpf_if"),
    "p0-sf": ({SVC: "doca-hbn", IFACE: "p0_sf"}, InterfaceType.SERVICE, "p0_if"),
    "p1-sf": ({SVC: "doca-hbn", IFACE: "p1_sf"}, InterfaceType.SERVICE, "p1_if"),
}

# chain → switches → port selectors (matchLabels)
CHAINS: dict[str, list[list[dict[str, str]]]] = {
    "hbn-to-fabric": [
        [{"uplink": "p0"}, {SVC: "doca-hbn", IFACE: "p0_sf"}],
        [{"uplink": "p1"}, {SVC: "doca-hbn", IFACE: "p1_sf"}],
    ],
    "host-to-hbn": [
        [{"hostpf": "host_pf0_rep"}, {SVC: "doca-hbn", IFACE: "host_pf0_sf"}],
        [{"hostpf": "host_pf1_rep"}, {SVC: "doca-hbn", IFACE: "host_pf1_sf"}],
    ],
}


def interfaces(pod: str | None = HBN_POD) -> tuple[ServiceInterface, ...]:
    out = []
    for name, (labels, kind, spec) in INTERFACES.items():
        sub = {}
        if kind is InterfaceType.PHYSICAL:
            sub["physical"] = spec
        elif kind is InterfaceType.PF:
            sub["pf"] = spec
        else:
            sub["service"] = Service("doca-hbn", "mybrhbn", spec, pod=pod)
        out.append(ServiceInterface(NS, f"{name}-{NODE}", kind, labels=tuple(sorted(labels.items())), **sub))
    return tuple(out)


def chains(ifaces: tuple[ServiceInterface, ...]) -> tuple[ServiceChain, ...]:
    out = []
    for name, switches in CHAINS.items():
        resolved = []
        for selectors in switches:
            ports = []
            for selector in selectors:
                hits = [si.name for si in ifaces if selector.items() <= dict(si.labels).items()]
                assert len(hits) == 1, f"{name}: selector {selector} matches {hits}"
                ports.append(hits[0])
            resolved.append(Switch(tuple(ports)))
        out.append(ServiceChain(NS, f"{name}-{NODE}", tuple(resolved)))
    return tuple(out)


def node_state(pod: str | None = HBN_POD) -> NodeState:
    ifaces = interfaces(pod)
    return NodeState(ifaces, chains(ifaces))
