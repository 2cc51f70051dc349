"""A DPUService's `interfaces` (upstream's Step 1, `DPUServiceInterfaceReconciled`): which listed
DPUServiceInterfaces it may use, and the Multus network selections they add to its pods. Pure: the reconciler
(`dpuservice.py`) reads the DPUServiceInterfaces from its cache and writes the claims.

- Each listed DPUServiceInterface (same namespace) must exist, be `interfaceType: service` with a `service`
  block whose serviceID is the DPUService's, and be unclaimed or claimed by this DPUService: annotation
  `dpu.nvidia.com/consumed-by` holds the claiming DPUService's name (upstream's value: the name alone, both
  live in one namespace). The first claim stays until its DPUService drops the interface or goes.
- Selections `{name, namespace, interface}` from `service.network` ("ns/name" or "name") and
  `service.interfaceName` are merged into `serviceDaemonSet.annotations["k8s.v1.cni.cncf.io/networks"]`, a JSON
  list: a user entry for the same interface wins field by field (its non-empty values), the list is sorted by
  name, then interface (upstream's nad.go).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

CONSUMED_BY = "dpu.nvidia.com/consumed-by"
NETWORKS = "k8s.v1.cni.cncf.io/networks"
INTERFACES_RECONCILED = "DPUServiceInterfaceReconciled"


def interface_spec(dsi: Obj) -> Obj:
    """The ServiceInterface spec a DPUServiceInterface stamps out (spec.template.spec.template.spec)."""
    spec = ((((dsi.get("spec") or {}).get("template") or {}).get("spec") or {}).get("template") or {}).get("spec")
    return spec or {}


def consumer(dsi: Obj) -> str | None:
    return ((dsi.get("metadata") or {}).get("annotations") or {}).get(CONSUMED_BY)


def problem(name: str, dsi: Obj | None, service: str, service_id: str | None) -> str:
    """Why DPUService `service` may not use DPUServiceInterface `name`, or "" when it may."""
    if dsi is None:
        return f"DPUServiceInterface {name} not found"
    spec = interface_spec(dsi)
    svc = spec.get("service")
    if spec.get("interfaceType") != "service" or not isinstance(svc, Mapping):
        return (f"DPUServiceInterface {name} is of interfaceType {spec.get('interfaceType')!r}, "
                f"not 'service' with a service block")
    if service_id is not None and svc.get("serviceID") != service_id:
        return (f"DPUServiceInterface {name} has serviceID {svc.get('serviceID')!r}, "
                f"not this DPUService's {service_id!r}")
    owner = consumer(dsi)
    if owner is not None and owner != service:
        return f"DPUServiceInterface {name} is in use by another DPUService {owner}"
    return ""


def selection(dsi: Obj) -> dict[str, str]:
    """The Multus network selection of a service DPUServiceInterface (upstream's NetworkSelectionElement JSON)."""
    svc = interface_spec(dsi)["service"]
    network = str(svc.get("network") or "")
    parts = network.split("/")
    namespace, name = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0] if len(parts) == 1 else "")
    out = {"name": name}
    if namespace:
        out["namespace"] = namespace
    if svc.get("interfaceName"):
        out["interface"] = svc["interfaceName"]
    return out


def merge_networks(selections: Sequence[Mapping[str, Any]], user: str | None) -> str:
    """The networks annotation: `selections` with the user's entries merged in (a user entry for the same
    interface overrides that selection's fields with its non-empty values), sorted by name then interface.
    Raises ValueError when the user's annotation is not a JSON list of objects."""
    existing: list[Any] = []
    if user:
        try:
            existing = json.loads(user)
        except ValueError as exc:
            raise ValueError(f"serviceDaemonSet.annotations[{NETWORKS}] is not JSON: {exc}") from None
        if not isinstance(existing, list) or not all(isinstance(e, dict) for e in existing):
            raise ValueError(f"serviceDaemonSet.annotations[{NETWORKS}] is not a JSON list of objects")
    by_interface = {s.get("interface", ""): dict(s) for s in selections}
    result: list[dict[str, Any]] = []
    for entry in existing:
        ours = by_interface.pop(entry.get("interface", ""), None)
        if ours is None:
            result.append(entry)
        else:
            result.append({**ours, **{k: v for k, v in entry.items() if v not in (None, "", [], {})}})
    result.extend(by_interface.values())
    result.sort(key=lambda e: (str(e.get("name", "")), str(e.get("interface", ""))))
    return json.dumps(result, separators=(",", ":"))


@dataclass
class Plan:
    """What Step 1 decided for one DPUService."""

    problems: list[str] = field(default_factory=list)
    claim: list[str] = field(default_factory=list)  # listed interfaces not yet annotated as ours
    networks: str | None = None  # the annotation value for the pods; None: leave the user's as it is


def plan(obj: Obj, interfaces: Mapping[str, Obj | None]) -> Plan:
    """Step 1 for DPUService `obj`, given its listed DPUServiceInterfaces by name (None: not in the cache)."""
    spec = obj.get("spec") or {}
    names = list(dict.fromkeys(spec.get("interfaces") or ()))
    service = obj["metadata"]["name"]
    out = Plan()
    for name in names:
        found = problem(name, interfaces.get(name), service, spec.get("serviceID"))
        if found:
            out.problems.append(found)
    if out.problems or not names:
        return out
    out.claim = [n for n in names if consumer(interfaces[n] or {}) != service]
    user = ((spec.get("serviceDaemonSet") or {}).get("annotations") or {}).get(NETWORKS)
    try:
        out.networks = merge_networks([selection(interfaces[n] or {}) for n in names], user)
    except ValueError as exc:
        out.problems.append(str(exc))
        out.claim = []
    return out


def releasable(service: str, listed: Iterable[str], candidates: Iterable[Obj]) -> list[Obj]:
    """The DPUServiceInterfaces (of the DPUService's namespace) claimed by `service` but no longer listed."""
    keep = set(listed)
    return [d for d in candidates if consumer(d) == service and d["metadata"]["name"] not in keep]
