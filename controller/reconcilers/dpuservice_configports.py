"""DPUService `spec.configPorts` (upstream DPF v25.x): ports of a service on the DPUs exposed in the host cluster.

Both DPUService backends (reconcilers/dpuservice.py, reconcilers/dpuservice_argocd.py) call this module; as
upstream:
- The chart gets `exposedPorts: {labels: {dpu.nvidia.com/dpuservice-name, -namespace}, ports: {<name>: true}}`
  in its values (chart_values()), and must then make one NodePort Service in the DPU cluster carrying those
  labels, with the named ports.
- In the DPU cluster that Service is read (a list by those labels in the DPUService's namespace): exactly one,
  with a node port for every configured port name.
- In the host cluster, in the DPUService's namespace, a Service named as the DPUService (no selector; type
  NodePort, ClusterIP, or headless for `None`; internalTrafficPolicy Local, externalTrafficPolicy Local for
  NodePort; port = `port`, targetPort = the DPU node port, nodePort = `nodePort`, else the one status recorded)
  and an EndpointSlice of the same name whose endpoints are the DPU-cluster Nodes' InternalIPs (those selected
  by `serviceDaemonSet.nodeSelector`, each named by its host Node, label provisioning.dpu.nvidia.com/host;
  Nodes without it are skipped) on the DPU node ports. Both carry the DPUService's labels, upstream's
  name/namespace/exposed-port-for-dpucluster labels and a controller ownerReference to the DPUService.
- status.configPorts: by DPUCluster name, the host Service's ports (nodePort as allocated for NodePort).
- configPorts removed, or no DPU cluster: both objects deleted. DPUService deleted: deleted before the
  finalizer goes. A Service or EndpointSlice of that name not labelled for this DPUService is never taken over.
- More than one DPU cluster: refused, as upstream (one Service name per DPUService).

Failures are returned as problems naming the object and the cause (the caller's `ConfigPortsReconciled`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dpf.controller.clusters import Cluster, ClusterSet
from dpf.controller.kube.informer import Informer, key_of
from dpf.controller.kube.rest import Kind, KubeError, Obj, Rest
from dpf.controller.kube.selectors import matches
from dpf.controller.reconcilers import objects
from dpf.controller.reconcilers.kinds import NODE

CONFIG_PORTS_RECONCILED = "ConfigPortsReconciled"
SERVICE = Kind("", "v1", "services", "Service")
ENDPOINT_SLICE = Kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
NAME_LABEL = "dpu.nvidia.com/dpuservice-name"
NAMESPACE_LABEL = "dpu.nvidia.com/dpuservice-namespace"
CLUSTER_LABEL = "dpu.nvidia.com/exposed-port-for-dpucluster"
SLICE_SERVICE_LABEL = "kubernetes.io/service-name"
SLICE_MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "dpf-controller"
HOST_LABEL = "provisioning.dpu.nvidia.com/host"  # set on a provisioned DPU's Node (provisioning/dpu_phases.py)


def spec_of(obj: Obj) -> Mapping[str, Any] | None:
    """The DPUService's configPorts, None when unset or without ports (nothing to expose)."""
    ports = (obj.get("spec") or {}).get("configPorts")
    return ports if ports and ports.get("ports") else None


def match_labels(obj: Obj) -> dict[str, str]:
    meta = obj["metadata"]
    return {NAME_LABEL: meta["name"], NAMESPACE_LABEL: meta["namespace"]}


def chart_values(obj: Obj) -> dict[str, Any]:
    """The chart values asking it to expose the configured ports (upstream's `exposedPorts`); {} without. Pure."""
    ports = spec_of(obj)
    if ports is None:
        return {}
    return {"exposedPorts": {"labels": match_labels(obj), "ports": {p["name"]: True for p in ports["ports"]}}}


def kept(obj: Obj) -> dict[str, list[dict[str, Any]]] | None:
    """status.configPorts as the DPUService holds it (what is reported while a pass fails). Pure."""
    return (obj.get("status") or {}).get("configPorts") or None


def settled(obj: Obj) -> bool:
    """No configPorts, none reported, and the last pass found nothing left: no request is needed. Pure."""
    reconciled = any(c.get("type") == CONFIG_PORTS_RECONCILED and c.get("status") == "True"
                     for c in (obj.get("status") or {}).get("conditions") or ())
    return spec_of(obj) is None and kept(obj) is None and reconciled


@dataclass
class Outcome:
    problems: list[str] = field(default_factory=list)
    status: dict[str, list[dict[str, Any]]] | None = None  # status.configPorts; None: none to report


def node_selected(node: Obj, selector: Mapping[str, Any] | None) -> bool:
    """A core NodeSelector: terms ORed, each term's matchExpressions (labels) and matchFields (metadata.name)
    ANDed; no selector selects every Node. Pure."""
    terms = (selector or {}).get("nodeSelectorTerms")
    if not terms:
        return True
    labels = node["metadata"].get("labels") or {}
    for term in terms:
        label_exprs = [e for e in term.get("matchExpressions") or () if e.get("operator") not in ("Gt", "Lt")]
        if not matches({"matchExpressions": label_exprs}, labels):
            continue
        if not all(_compare(labels.get(e["key"]), e) for e in term.get("matchExpressions") or ()
                   if e.get("operator") in ("Gt", "Lt")):
            continue
        if not matches({"matchExpressions": term.get("matchFields") or []},
                       {"metadata.name": node["metadata"]["name"]}):
            continue
        if term.get("matchExpressions") or term.get("matchFields"):
            return True  # an empty term matches nothing (as the scheduler)
    return False


def _compare(value: str | None, expr: Mapping[str, Any]) -> bool:
    try:
        have, bound = int(value or ""), int((expr.get("values") or [""])[0])
    except ValueError:
        return False
    return have > bound if expr["operator"] == "Gt" else have < bound


def endpoints(nodes: Sequence[Obj], selector: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """EndpointSlice endpoints: each selected DPU Node's first IPv4 InternalIP, named by its host Node. Pure."""
    out = []
    for node in sorted(nodes, key=lambda n: str(n["metadata"]["name"])):
        host = (node["metadata"].get("labels") or {}).get(HOST_LABEL)
        if not host or not node_selected(node, selector):
            continue
        addresses = [a["address"] for a in (node.get("status") or {}).get("addresses") or ()
                     if a.get("type") == "InternalIP" and ":" not in a.get("address", ":")]
        if addresses:
            out.append({"addresses": [addresses[0]], "conditions": {"ready": True}, "nodeName": host})
    return out


def _meta(obj: Obj, cluster_name: str) -> dict[str, Any]:
    meta = obj["metadata"]
    labels = {**(meta.get("labels") or {}), **match_labels(obj), CLUSTER_LABEL: cluster_name}
    return {"name": meta["name"], "namespace": meta["namespace"], "labels": labels,
            "ownerReferences": [objects.owner_reference(obj)]}


def desired_service(obj: Obj, cluster_name: str, dpu_ports: Mapping[str, int]) -> Obj:
    """The host cluster's Service; `dpu_ports` maps a port name to its node port in the DPU cluster. Pure."""
    config = spec_of(obj) or {"ports": []}
    service_type = config.get("serviceType") or "NodePort"
    recorded = {p["name"]: p.get("nodePort") for p in ((obj.get("status") or {}).get("configPorts") or {})
                .get(cluster_name, ())}
    ports = []
    for port in config["ports"]:
        entry = {"name": port["name"], "port": port["port"], "protocol": port["protocol"],
                 "targetPort": dpu_ports[port["name"]]}
        node_port = port.get("nodePort") or recorded.get(port["name"])
        if service_type == "NodePort" and node_port:
            entry["nodePort"] = node_port  # a Service made again keeps the port clients were told
        ports.append(entry)
    spec: dict[str, Any] = {"ports": ports, "internalTrafficPolicy": "Local"}
    if service_type == "None":
        spec.update(type="ClusterIP", clusterIP="None")
    else:
        spec["type"] = service_type
    if service_type == "NodePort":
        spec["externalTrafficPolicy"] = "Local"
    meta = _meta(obj, cluster_name)
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def desired_slice(obj: Obj, cluster_name: str, dpu_ports: Mapping[str, int], ends: list[dict[str, Any]]) -> Obj:
    config = spec_of(obj) or {"ports": []}
    meta = _meta(obj, cluster_name)
    meta["labels"].update({SLICE_SERVICE_LABEL: meta["name"], SLICE_MANAGED_BY_LABEL: MANAGED_BY})
    ports = [{"name": p["name"], "port": dpu_ports[p["name"]], "protocol": p["protocol"]} for p in config["ports"]]
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta, "addressType": "IPv4",
            "ports": ports, "endpoints": ends}


def reported(service: Obj, cluster_name: str) -> dict[str, list[dict[str, Any]]]:
    """status.configPorts from the host Service as the apiserver holds it. Pure."""
    spec = service.get("spec") or {}
    node_ports = spec.get("type") == "NodePort"
    ports = [{"name": p["name"], "port": p["port"], "protocol": p.get("protocol", "TCP"),
              **({"nodePort": p["nodePort"]} if node_ports and p.get("nodePort") else {})}
             for p in spec.get("ports") or ()]
    return {cluster_name.rsplit("/", 1)[-1]: ports}


def _subset(want: Any, have: Any) -> bool:
    """Whether `have` already holds everything `want` says (lists pairwise, same length). Pure."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(_subset(v, have.get(k)) for k, v in want.items())
    if isinstance(want, list):
        have = [] if have is None else have  # an empty list comes back as null
        return isinstance(have, list) and len(want) == len(have) and all(map(_subset, want, have))
    return bool(want == have)


class NotOurs(Exception):
    """An object of the name we need exists without this DPUService's labels: never taken over."""


def _ours(current: Obj, obj: Obj) -> bool:
    labels = current["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in match_labels(obj).items())


async def _ensure(rest: Rest, kind: Kind, desired: Obj, obj: Obj, field_manager: str) -> Obj:
    meta = desired["metadata"]
    current = await rest.get(kind, meta["name"], meta["namespace"])
    if current is not None and not _ours(current, obj):
        raise NotOurs(f"it exists and was not made for this DPUService (no labels {NAME_LABEL}, {NAMESPACE_LABEL} "
                      "naming it): not taken over; delete it or rename the DPUService")
    body = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "metadata")}
    if current is not None and _subset(desired["metadata"]["labels"], current["metadata"].get("labels")) \
            and _subset(body, {k: current.get(k) for k in body}) \
            and not objects.child_differs(current, {"metadata": desired["metadata"], "spec": current.get("spec")}):
        return current
    return await rest.apply(kind, desired, field_manager)


async def reconcile(host: Rest, clusters: Sequence[Cluster], obj: Obj, field_manager: str) -> Outcome:
    """Make the host cluster's Service and EndpointSlice match the DPUService (or remove them)."""
    if settled(obj):
        return Outcome()
    if spec_of(obj) is None or not clusters:
        try:
            await remove(host, obj)
        except KubeError as exc:
            return Outcome([f"host cluster: deleting the Service and EndpointSlice of configPorts: {exc}"], kept(obj))
        return Outcome()
    if len(clusters) > 1:
        names = ", ".join(sorted(c.name for c in clusters))
        return Outcome([f"configPorts supports one DPU cluster (as upstream DPF), connected: {names}"], kept(obj))
    cluster = clusters[0]
    short = cluster.name.rsplit("/", 1)[-1]
    meta = obj["metadata"]
    try:
        dpu_ports = await _dpu_node_ports(cluster, obj)
    except KubeError as exc:
        return Outcome([f"cluster {cluster.name}: listing Services: {exc}"], kept(obj))
    if isinstance(dpu_ports, str):
        return Outcome([f"cluster {cluster.name}: {dpu_ports}"], kept(obj))
    nodes = cluster.informer(NODE)
    if not nodes.synced.is_set():
        return Outcome([f"cluster {cluster.name}: its Nodes are not cached yet"], kept(obj))
    selector = ((obj.get("spec") or {}).get("serviceDaemonSet") or {}).get("nodeSelector")
    where = f"{meta['namespace']}/{meta['name']}"
    # The Service first: a foreign Service of that name must not get our endpoints through the slice's label.
    try:
        service = await _ensure(host, SERVICE, desired_service(obj, short, dpu_ports), obj, field_manager)
    except NotOurs as exc:
        return Outcome([f"host cluster: Service {where}: {exc}"], kept(obj))
    except KubeError as exc:
        return Outcome([f"host cluster: Service {where}: {exc.message or exc}"], kept(obj))
    try:
        await _ensure(host, ENDPOINT_SLICE, desired_slice(obj, short, dpu_ports, endpoints(nodes.list(), selector)),
                      obj, field_manager)
    except NotOurs as exc:
        return Outcome([f"host cluster: EndpointSlice {where}: {exc}"], reported(service, short))
    except KubeError as exc:
        return Outcome([f"host cluster: EndpointSlice {where}: {exc.message or exc}"], reported(service, short))
    return Outcome(status=reported(service, short))


async def _dpu_node_ports(cluster: Cluster, obj: Obj) -> dict[str, int] | str:
    """Port name → node port of the chart's Service in the DPU cluster, or why there is none yet."""
    meta, config = obj["metadata"], spec_of(obj) or {"ports": []}
    selector = ",".join(f"{k}={v}" for k, v in match_labels(obj).items())
    found = (await cluster.rest.list(SERVICE, meta["namespace"], label_selector=selector))["items"]
    if len(found) != 1:
        names = ", ".join(f"{meta['namespace']}/{s['metadata']['name']}" for s in found) or "none"
        return (f"expected one Service labelled {selector} in namespace {meta['namespace']} (made by the chart from "
                f"its exposedPorts values), found {len(found)}: {names}")
    service = found[0]
    by_name = {p.get("name"): p.get("nodePort") for p in (service.get("spec") or {}).get("ports") or ()}
    missing = [p["name"] for p in config["ports"] if not by_name.get(p["name"])]
    if missing:
        return (f"Service {meta['namespace']}/{service['metadata']['name']} has no node port for "
                f"port {', '.join(missing)} (the chart's Service must be a NodePort one naming these ports)")
    return {p["name"]: int(by_name[p["name"]]) for p in config["ports"]}


async def remove(host: Rest, obj: Obj) -> None:
    """Delete the host cluster's Service and EndpointSlice of this DPUService, if they are ours."""
    meta = obj["metadata"]
    for kind in (SERVICE, ENDPOINT_SLICE):
        current = await host.get(kind, meta["name"], meta["namespace"])
        if current is not None and _ours(current, obj):
            await host.delete(kind, meta["name"], meta["namespace"], uid=current["metadata"]["uid"])


def follow_dpu_nodes(clusters: ClusterSet, services: Informer, enqueue: Callable[[str, str], None]) -> None:
    """Enqueue every DPUService with configPorts when a DPU Node changes what its EndpointSlice lists (both backends:
    a Node that joins, goes or changes its labels or addresses is seen at once, not at the next resync)."""
    def on_node(_type: str, old: Obj | None, new: Obj | None) -> None:
        if node_changed(old, new):
            for obj in services.list():
                if spec_of(obj) is not None:
                    enqueue(*key_of(obj))

    clusters.need_dpu_kind(NODE)  # watched, not a sync gate: a late Node cache only delays the slice
    clusters.on_dpu_added(lambda cluster: cluster.informer(NODE).add_handler(on_node))


def node_changed(old: Obj | None, new: Obj | None) -> bool:
    """Whether a DPU-cluster Node event may change an EndpointSlice (not heartbeats). Pure."""
    if old is None or new is None:
        return True
    return bool(old["metadata"].get("labels") != new["metadata"].get("labels")
                or (old.get("status") or {}).get("addresses") != (new.get("status") or {}).get("addresses"))
