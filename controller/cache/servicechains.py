"""Pure builder: ServiceChain CRs plus the node's ServiceInterfaces → one node's dpf.v1.ServiceChain snapshot.

Every chain port's `serviceInterface.matchLabels` is resolved here, against the ServiceInterfaces on the
chain's node in the chain's namespace: exactly one must match (upstream's rule). A chain with any port
matching none or several is left out of the snapshot whole (never sent partial) and its problem, naming
the selector, is returned for the ServiceChainSet condition. No I/O, no clock; deterministic output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

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


def resolve(chain: Obj, interfaces: Iterable[Obj]) -> Resolution:
    """Resolve `chain`'s ports against `interfaces` (the ServiceInterfaces on the chain's node)."""
    meta, spec = chain["metadata"], chain.get("spec") or {}
    namespace, node = meta.get("namespace", ""), spec.get("node") or "(no node)"
    candidates = sorted(((si["metadata"]["name"], si["metadata"].get("labels") or {}) for si in interfaces
                         if si["metadata"].get("namespace", "") == namespace
                         and not si["metadata"].get("deletionTimestamp")), key=lambda c: c[0])
    message = sfc_pb2.ServiceChain()
    problems = []
    for i, switch in enumerate(spec.get("switches") or ()):
        out = message.switches.add()
        for j, port in enumerate(switch.get("ports") or ()):
            selector = (port.get("serviceInterface") or {}).get("matchLabels") or {}
            hits = [name for name, labels in candidates if all(labels.get(k) == v for k, v in selector.items())]
            if len(hits) == 1:
                out.ports.add(service_interface=hits[0], match_labels=selector)
                continue
            found = "no ServiceInterface" if not hits else f"{len(hits)} ServiceInterfaces ({', '.join(hits)})"
            problems.append(f"switches[{i}].ports[{j}] selector {describe(selector) or '(empty)'} matches {found} "
                            f"in namespace {namespace} on node {node}")
    if problems:
        return Resolution(resource_name(chain), None,
                          "; ".join(problems) + "; exactly one must match, so the chain is not programmed")
    return Resolution(resource_name(chain), message)


def compute_servicechains(chains: Iterable[Obj], interfaces: Iterable[Obj]) -> tuple[Snapshot, dict[str, str]]:
    """The node's snapshot from the ServiceChains whose spec.node is that node (being deleted: left out), and
    the problem of every chain left out because a port did not resolve."""
    interfaces = list(interfaces)
    items, problems = [], {}
    for chain in chains:
        if chain["metadata"].get("deletionTimestamp"):
            continue
        resolution = resolve(chain, interfaces)
        if resolution.message is None:
            problems[resolution.name] = resolution.problem
        else:
            items.append((resolution.name, resolution.message))
    return Snapshot.build(TYPE_URL, items), problems
