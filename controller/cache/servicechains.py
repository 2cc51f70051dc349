"""Pure builder: ServiceChain CRs plus the node's ServiceInterfaces → one node's dpf.v1.ServiceChain snapshot.

Every chain port's `serviceInterface.matchLabels` is resolved here, against the ServiceInterfaces on the
chain's node in the chain's namespace that the node is sent (`serviceinterfaces.plan_serviceinterfaces`,
given the same chains, so both reconcilers agree on what is held back).
A chain with any port matching none is left out of the snapshot whole (never sent partial) and its problem,
naming the selector, is returned for the ServiceChainSet condition.

Conflicts are decided by age (`claims.py`), never by name, so a newcomer never disturbs a running chain:
- a selector matching several interfaces resolves to the elder (upstream asks for exactly one; the elder is
  the one a running chain already uses, so an interface created later with the same labels changes nothing);
- an interface can be a port of one chain only: the elder chain keeps it, a newer chain naming it is held
  back with a message naming the holder (and so is a chain listing one interface twice).
No I/O, no clock; deterministic output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dpf.controller.cache.claims import held_since, oldest_first
from dpf.controller.cache.serviceinterfaces import plan_serviceinterfaces
from dpf.controller.cache.snapshot import Snapshot
from dpf.controller.kube.selectors import describe
from dpf.proto import versioning
from dpf.proto.v1 import sfc_pb2

TYPE_URL = versioning.type_url(sfc_pb2.ServiceChain)

Obj = Mapping[str, Any]


def resource_name(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


@dataclass(frozen=True)
class Resolution:
    name: str
    """namespace/name of the ServiceChain."""
    message: sfc_pb2.ServiceChain | None
    """The payload, or None when a port did not resolve."""
    problem: str = ""
    """Why the chain is not sent; names every selector that failed."""

    def interfaces(self) -> list[str]:
        """namespace/name of every ServiceInterface the chain's ports resolved to, in switch order."""
        namespace = self.name.split("/", 1)[0]
        return [f"{namespace}/{p.service_interface}" for s in (self.message.switches if self.message else ())
                for p in s.ports]


def resolve(chain: Obj, interfaces: Iterable[Obj]) -> Resolution:
    """Resolve `chain`'s ports against `interfaces` (the ServiceInterfaces on the chain's node)."""
    meta, spec = chain["metadata"], chain.get("spec") or {}
    namespace, node = meta.get("namespace", ""), spec.get("node") or "(no node)"
    candidates = [(si["metadata"]["name"], si["metadata"].get("labels") or {})
                  for si in oldest_first(si for si in interfaces if si["metadata"].get("namespace", "") == namespace
                                         and not si["metadata"].get("deletionTimestamp"))]
    message = sfc_pb2.ServiceChain()
    problems = []
    for i, switch in enumerate(spec.get("switches") or ()):
        out = message.switches.add()
        for j, port in enumerate(switch.get("ports") or ()):
            selector = (port.get("serviceInterface") or {}).get("matchLabels") or {}
            hit = next((name for name, labels in candidates
                        if all(labels.get(k) == v for k, v in selector.items())), None)
            if hit is not None:
                out.ports.add(service_interface=hit, match_labels=selector)
                continue
            problems.append(f"switches[{i}].ports[{j}] selector {describe(selector) or '(empty)'} matches no "
                            f"ServiceInterface in namespace {namespace} on node {node}")
    if problems:
        return Resolution(resource_name(chain), None,
                          "; ".join(problems) + "; one must match, so the chain is not programmed")
    return Resolution(resource_name(chain), message)


def compute_servicechains(chains: Iterable[Obj], interfaces: Iterable[Obj]) -> tuple[Snapshot, dict[str, str]]:
    """The node's snapshot from the ServiceChains whose spec.node is that node (being deleted: left out), and
    the problem of every chain left out: a port that did not resolve, or an interface an elder chain holds."""
    live = oldest_first(c for c in chains if not c["metadata"].get("deletionTimestamp"))
    interfaces = list(interfaces)
    held_back = plan_serviceinterfaces(interfaces, chains=live).held_back
    sent = [si for si in interfaces if resource_name(si) not in held_back]
    items, problems = [], {}
    holders: dict[str, Obj] = {}
    for chain in live:
        resolution = resolve(chain, sent)
        if resolution.message is None:
            problems[resolution.name] = resolution.problem
            continue
        ports = resolution.interfaces()
        twice = sorted({p for p in ports if ports.count(p) > 1})
        taken = [(p, holders[p]) for p in dict.fromkeys(ports) if p in holders]
        if twice:
            problems[resolution.name] = (f"ServiceInterface {', '.join(twice)} is matched by more than one port; "
                                         "an interface can be one port only: make the selectors distinct")
        elif taken:
            problems[resolution.name] = "; ".join(
                f"ServiceInterface {port} is already a port of ServiceChain {resource_name(holder)} "
                f"({held_since(holder)}; the elder keeps it)" for port, holder in taken) + \
                "; this chain waits until that chain lets go of it"
        else:
            holders.update((p, chain) for p in ports)
            items.append((resolution.name, resolution.message))
    return Snapshot.build(TYPE_URL, items), problems
