"""svc.dpu.nvidia.com/v1alpha1, the network half: interfaces, chains and IPAM.

DPUServiceInterface → ServiceInterfaceSet → ServiceInterface, DPUServiceChain → ServiceChainSet →
ServiceChain, and DPUServiceIPAM (upstream DPF v24.10); DPUServiceNAD (DPF v25.4, additive). The IPAM
webhook's CIDR rules are CEL rules using the Kubernetes `cidr()`/`ip()` library; `svc.py` re-exports these kinds.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from dpf.controller.api.meta import (
    Cel,
    Column,
    Conditions,
    Int32,
    Int64,
    Labels,
    LabelSelector,
    Model,
    NodeSelector,
    Resource,
    SchemaExtra,
    TemplateMeta,
    Time,
)

GROUP = "svc.dpu.nvidia.com"
SVC_ANNOTATIONS = {"helm.sh/resource-policy": "keep"}
READY_COLUMNS = (
    Column("Ready", ".status.conditions[?(@.type=='Ready')].status"),
    Column("Phase", ".status.conditions[?(@.type=='Ready')].reason"),
)


class ObjectStatus(Model):
    """Status of the svc.* and operator kinds: the condition model of spec §1.0."""

    conditions: Conditions | None = None
    observed_generation: Int64 | None = None
    """The metadata.generation the conditions describe."""


class SetStatus(ObjectStatus):
    number_applied: Int32 | None = None
    number_ready: Int32 | None = None


class EmptyStatus(Model):
    """Upstream's status for this kind declares no fields; kept so `/status` exists as upstream's does."""


# -- ServiceInterface --------------------------------------------------------------------------------

InterfaceType = Literal["vlan", "physical", "pf", "vf", "ovn", "service"]

# Bounds the code downstream needs, so the apiserver refuses what a node could never program: Linux netdev
# names (IFNAMSIZ 16 with the NUL), PF/VF indexes as the DPU agent accepts them (proto int32 on the wire),
# 802.1Q VLAN ids, label values (a serviceID becomes one on every child) and object names.
NetdevName = Annotated[str, Field(min_length=1, max_length=15, pattern=r"^[A-Za-z0-9_.:-]+$")]
MAX_FUNCTION_INDEX = 4095
ObjectName = Annotated[str, Field(max_length=253)]


class PhysicalSpec(Model):
    interface_name: NetdevName
    """The uplink's name on the DPU, e.g. p0 (a netdev name: 1-15 letters, digits, '_', '.', ':' or '-')."""


class VLANSpec(Model):
    vlan_id: Annotated[int, Field(alias="vlanID", ge=1, le=4094)]
    parent_interface_ref: ObjectName


class VFSpec(Model):
    vf_id: Annotated[int, Field(alias="vfID", ge=0, le=MAX_FUNCTION_INDEX)]
    pf_id: Annotated[int, Field(alias="pfID", ge=0, le=MAX_FUNCTION_INDEX)]
    parent_interface_ref: ObjectName | None = None


class PFSpec(Model):
    pf_id: Annotated[int, Field(alias="pfID", ge=0, le=MAX_FUNCTION_INDEX)]


class ServiceDef(Model):
    service_id: Annotated[str, Field(alias="serviceID", min_length=1, max_length=63,
                                     pattern=r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")]
    """The DPUService's serviceID whose pods get this interface (a label value)."""
    network: Annotated[str, Field(min_length=1, max_length=317)]
    """NetworkAttachmentDefinition, "name" or "namespace/name"."""
    interface_name: NetdevName
    """Interface name inside the service pod (a netdev name, at most 15 characters)."""


def _needs(kind: str) -> Cel:
    return Cel(f"self.interfaceType != '{kind}' || has(self.{kind})",
               message=f"{kind} is required when interfaceType is {kind}", field_path=f".{kind}",
               reason="FieldValueRequired")


class ServiceInterfaceSpec(Model):
    CEL = tuple(_needs(kind) for kind in ("vlan", "physical", "pf", "vf", "service"))
    node: ObjectName | None = None
    """DPU-cluster Node this interface lives on."""
    interface_type: InterfaceType
    physical: PhysicalSpec | None = None
    vlan: VLANSpec | None = None
    vf: VFSpec | None = None
    pf: PFSpec | None = None
    service: ServiceDef | None = None


class ServiceInterfaceTemplate(Model):
    metadata: TemplateMeta | None = None
    spec: ServiceInterfaceSpec


class ServiceInterfaceSetSpec(Model):
    node_selector: LabelSelector | None = None
    """DPU-cluster Nodes that get a ServiceInterface; unset selects all."""
    template: ServiceInterfaceTemplate


class ServiceInterfaceSetTemplate(Model):
    metadata: TemplateMeta | None = None
    spec: ServiceInterfaceSetSpec


class DPUServiceInterfaceSpec(Model):
    cluster_selector: LabelSelector | None = None
    """Ignored (as upstream): every DPU cluster gets the interface set."""
    template: ServiceInterfaceSetTemplate


class DPUServiceInterface(Resource):
    """A network interface on every DPU, mirrored into each DPU cluster as a ServiceInterfaceSet."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "DPUServiceInterface"
    PLURAL: ClassVar[str] = "dpuserviceinterfaces"
    COLUMNS: ClassVar[tuple[Column, ...]] = (
        Column("IfType", ".spec.template.spec.template.spec.interfaceType"),
        Column("IfName", ".spec.template.spec.template.spec.service.interfaceName"),
        *READY_COLUMNS)
    FINALIZERS: ClassVar[tuple[str, ...]] = ("svc.dpu.nvidia.com/dpuserviceinterface",)
    CONDITION_TYPES: ClassVar[tuple[str, ...]] = (
        "Ready", "ServiceInterfaceSetReconciled", "ServiceInterfaceSetReady")
    CRD_ANNOTATIONS: ClassVar[dict[str, str]] = SVC_ANNOTATIONS

    spec: DPUServiceInterfaceSpec
    status: ObjectStatus | None = None


class ServiceInterfaceSet(Resource):
    """Per-DPU-cluster set: one ServiceInterface per selected DPU Node."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "ServiceInterfaceSet"
    PLURAL: ClassVar[str] = "serviceinterfacesets"
    COLUMNS: ClassVar[tuple[Column, ...]] = READY_COLUMNS
    FINALIZERS: ClassVar[tuple[str, ...]] = ("dpu.nvidia.com/serviceinterfaceset",)
    CONDITION_TYPES: ClassVar[tuple[str, ...]] = ("Ready", "ServiceInterfacesReconciled", "ServiceInterfacesReady")
    CRD_ANNOTATIONS: ClassVar[dict[str, str]] = SVC_ANNOTATIONS

    spec: ServiceInterfaceSetSpec
    status: SetStatus | None = None


class ServiceInterface(Resource):
    """One interface on one DPU Node; the sfc agent turns it into an OVS port."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "ServiceInterface"
    PLURAL: ClassVar[str] = "serviceinterfaces"
    COLUMNS: ClassVar[tuple[Column, ...]] = (
        Column("IfType", ".spec.interfaceType"), Column("IfName", ".spec.service.interfaceName"),
        Column("Node", ".spec.node"))
    CRD_ANNOTATIONS: ClassVar[dict[str, str]] = SVC_ANNOTATIONS

    spec: ServiceInterfaceSpec
    status: EmptyStatus | None = None


# -- ServiceChain --------------------------------------------------------------------------------------

MatchLabels = Annotated[Labels, Field(min_length=1, max_length=50)]


class IPAM(Model):
    """Which IP pool a chain port's pod interface gets its address from."""

    match_labels: MatchLabels | None = None
    """Labels of the IPPool or CIDRPool to use."""
    default_gateway: bool | None = None
    set_default_route: bool | None = None


class ServiceIfc(Model):
    match_labels: MatchLabels
    """Labels selecting exactly one ServiceInterface on the node."""
    ipam: IPAM | None = None


class Port(Model):
    service_interface: ServiceIfc


class Switch(Model):
    """Ports connected as one learning switch."""

    ports: Annotated[list[Port], Field(min_length=1, max_length=50)]


class ServiceChainSpec(Model):
    node: ObjectName | None = None
    switches: Annotated[list[Switch], Field(min_length=1, max_length=50)]
    """The switches of the chain, in order."""


class ServiceChainTemplate(Model):
    metadata: TemplateMeta | None = None
    spec: ServiceChainSpec


class ServiceChainSetSpec(Model):
    node_selector: LabelSelector | None = None
    template: ServiceChainTemplate


class ServiceChainSetTemplate(Model):
    metadata: TemplateMeta | None = None
    spec: ServiceChainSetSpec


class DPUServiceChainSpec(Model):
    cluster_selector: LabelSelector | None = None
    """Ignored (as upstream): every DPU cluster gets the chain set."""
    template: ServiceChainSetTemplate


class DPUServiceChain(Resource):
    """A service function chain on every DPU, mirrored into each DPU cluster as a ServiceChainSet."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "DPUServiceChain"
    PLURAL: ClassVar[str] = "dpuservicechains"
    COLUMNS: ClassVar[tuple[Column, ...]] = READY_COLUMNS
    FINALIZERS: ClassVar[tuple[str, ...]] = ("svc.dpu.nvidia.com/dpuservicechain",)
    CONDITION_TYPES: ClassVar[tuple[str, ...]] = ("Ready", "ServiceChainSetReconciled", "ServiceChainSetReady")
    CRD_ANNOTATIONS: ClassVar[dict[str, str]] = SVC_ANNOTATIONS

    spec: DPUServiceChainSpec
    status: ObjectStatus | None = None


class ServiceChainSet(Resource):
    """Per-DPU-cluster set: one ServiceChain per selected DPU Node."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "ServiceChainSet"
    PLURAL: ClassVar[str] = "servicechainsets"
    COLUMNS: ClassVar[tuple[Column, ...]] = READY_COLUMNS
    FINALIZERS: ClassVar[tuple[str, ...]] = ("dpu.nvidia.com/servicechainset",)
    CONDITION_TYPES: ClassVar[tuple[str, ...]] = ("Ready", "ServiceChainsReconciled", "ServiceChainsReady")
    CRD_ANNOTATIONS: ClassVar[dict[str, str]] = SVC_ANNOTATIONS

    spec: ServiceChainSetSpec
    status: SetStatus | None = None


class ServiceChain(Resource):
    """A chain on one DPU Node; the sfc agent turns it into OpenFlow rules."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "ServiceChain"
    PLURAL: ClassVar[str] = "servicechains"
    COLUMNS: ClassVar[tuple[Column, ...]] = (Column("Node", ".spec.node"),)
    CRD_ANNOTATIONS: ClassVar[dict[str, str]] = SVC_ANNOTATIONS

    spec: ServiceChainSpec
    status: EmptyStatus | None = None


# -- DPUServiceIPAM ------------------------------------------------------------------------------------

# CIDR strings are at most 43 characters (IPv6 /128); bounds keep the CEL cost estimate finite.
Cidr = Annotated[str, Field(max_length=64)]
IPString = Annotated[str, Field(max_length=64)]
_NO_DEFAULT_ROUTE = Cel("!has(self.routes) || !has(self.defaultGateway) || !self.defaultGateway || "
                        "self.routes.all(r, !isCIDR(r.dst) || cidr(r.dst).prefixLength() != 0)",
                        message="a default route (0.0.0.0/0 or ::/0) cannot be combined with defaultGateway: true",
                        field_path=".routes")


def _routes_family(base: str) -> Cel:
    return Cel(f"!has(self.routes) || !isCIDR(self.{base}) || self.routes.all(r, isCIDR(r.dst) && "
               f"cidr(r.dst).ip().family() == cidr(self.{base}).ip().family())",
               message=f"every route dst must be a CIDR of the same IP family as {base}", field_path=".routes")


_PREFIX_FITS_FAMILY = Cel("!isCIDR(self.network) || "
                          "self.prefixSize <= (cidr(self.network).ip().family() == 4 ? 32 : 128)",
                          message="prefixSize must be at most 32 for an IPv4 network (128 for IPv6)",
                          field_path=".prefixSize")
INT32_MAX = 2**31 - 1


def _network(value: str, field: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The CIDR the split code will parse, or a ValueError naming the field (for objects stored before the
    CRD carried the rule, which the apiserver never re-validates)."""
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{field} {value!r} is not a CIDR, e.g. 10.0.120.0/22") from None


def _grow_only(base: str) -> Cel:
    return Cel(f"!isCIDR(oldSelf.{base}) || !isCIDR(self.{base}) || "
               f"(cidr(self.{base}).containsIP(cidr(oldSelf.{base}).ip()) && "
               f"cidr(self.{base}).prefixLength() <= cidr(oldSelf.{base}).prefixLength())",
               message=f"{base} may only grow: it must contain the previous {base}", field_path=f".{base}")


class Route(Model):
    dst: Cidr


class IPV4Network(Model):
    """Split a network into one prefix of prefixSize per DPU node (an NVIPAM CIDRPool)."""

    CEL = (
        Cel("isCIDR(self.network)", message="network must be a CIDR, e.g. 10.0.120.0/22",
            field_path=".network"),
        Cel("!isCIDR(self.network) || cidr(self.network).prefixLength() <= self.prefixSize",
            message="prefixSize must not be smaller than the network's prefix length", field_path=".prefixSize"),
        Cel("!has(self.exclusions) || !isCIDR(self.network) || "
            "self.exclusions.all(e, isIP(e) && cidr(self.network).containsIP(e))",
            message="every exclusion must be a single IP inside network", field_path=".exclusions",
            message_expression="'every exclusion must be a single IP inside ' + self.network"),
        Cel("!has(self.allocations) || !isCIDR(self.network) || self.allocations.all(n, "
            "isCIDR(self.allocations[n]) && cidr(self.network).containsCIDR(self.allocations[n]) && "
            "cidr(self.allocations[n]).prefixLength() == self.prefixSize)",
            message="every allocation must be a CIDR inside network with prefix length prefixSize",
            field_path=".allocations",
            message_expression="'every allocation must be a CIDR inside ' + self.network + "
                               "' whose prefix length is prefixSize'"),
        _PREFIX_FITS_FAMILY,
        _routes_family("network"),
        _NO_DEFAULT_ROUTE,
        _grow_only("network"),
    )
    network: Cidr
    prefix_size: Annotated[Int32, Field(ge=0, le=128)]
    """Prefix length each node gets, e.g. 29 (or 32 for single loopback addresses)."""
    gateway_index: Annotated[Int32, Field(ge=0, le=INT32_MAX)] | None = None
    """Index of the gateway inside each node's prefix; unset means no gateway."""
    exclusions: Annotated[list[IPString], Field(max_length=1024)] | None = None
    """Single IPs never handed out."""
    allocations: Annotated[dict[str, Cidr], Field(max_length=1024)] | None = None
    """Static node name → prefix assignments."""
    default_gateway: bool | None = None
    routes: Annotated[list[Route], Field(max_length=64)] | None = None

    @model_validator(mode="after")
    def _splittable(self) -> IPV4Network:
        net = _network(self.network, "network")
        if not net.prefixlen <= self.prefix_size <= net.max_prefixlen:
            raise ValueError(f"prefixSize {self.prefix_size} must be between the network's prefix length "
                             f"{net.prefixlen} and {net.max_prefixlen} (the address length of {self.network})")
        for i, ip in enumerate(self.exclusions or ()):
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ValueError(f"exclusions[{i}] {ip!r} is not a single IP") from None
        for node, prefix in (self.allocations or {}).items():
            _network(prefix, f"allocations[{node}]")
        return self


class IPV4Subnet(Model):
    """Hand out perNodeIPCount addresses of one subnet to each DPU node (an NVIPAM IPPool)."""

    CEL = (
        Cel("isCIDR(self.subnet)", message="subnet must be a CIDR, e.g. 10.0.0.0/16", field_path=".subnet"),
        Cel("isIP(self.gateway) && (!isCIDR(self.subnet) || cidr(self.subnet).containsIP(self.gateway))",
            message="gateway must be an IP inside subnet", field_path=".gateway"),
        _routes_family("subnet"),
        _NO_DEFAULT_ROUTE,
        _grow_only("subnet"),
    )
    subnet: Cidr
    gateway: IPString
    per_node_ip_count: Annotated[int, Field(alias="perNodeIPCount", ge=1, le=INT32_MAX)]
    default_gateway: bool | None = None
    routes: Annotated[list[Route], Field(max_length=64)] | None = None

    @model_validator(mode="after")
    def _splittable(self) -> IPV4Subnet:
        _network(self.subnet, "subnet")
        return self


class DPUServiceIPAMSpec(Model):
    CEL = (
        Cel("has(self.ipv4Network) != has(self.ipv4Subnet)",
            message="exactly one of ipv4Network and ipv4Subnet must be set"),
        Cel("has(self.ipv4Network) == has(oldSelf.ipv4Network) && has(self.ipv4Subnet) == has(oldSelf.ipv4Subnet)",
            message="switching between ipv4Network and ipv4Subnet is not allowed; create a new DPUServiceIPAM"),
    )
    metadata: TemplateMeta | None = None
    """Labels and annotations copied onto the IP pool."""
    ipv4_network: IPV4Network | None = None
    ipv4_subnet: IPV4Subnet | None = None
    cluster_selector: LabelSelector | None = None
    """Ignored (as upstream)."""
    node_selector: NodeSelector | None = None
    """DPU-cluster Nodes that get addresses."""


class IPAMAllocation(Model):
    """One DPU node's block: startIP/endIP for ipv4Subnet, prefix and gateway for ipv4Network (as nv-ipam)."""

    node_name: str
    start_ip: Annotated[IPString | None, Field(alias="startIP")] = None
    end_ip: Annotated[IPString | None, Field(alias="endIP")] = None
    prefix: Cidr | None = None
    gateway: IPString | None = None
    departed_at: Time | None = None
    """When the node stopped matching; its block stays reserved until the release grace period has passed."""


Allocations = Annotated[list[IPAMAllocation], SchemaExtra({"x-kubernetes-list-type": "map",
                                                           "x-kubernetes-list-map-keys": ["nodeName"]})]


class DPUServiceIPAMStatus(ObjectStatus):
    allocations: Allocations | None = None
    """Each DPU node's block; kept across controller restarts, so a node keeps its addresses."""


class DPUServiceIPAM(Resource):
    """An IP pool in every DPU cluster, for service interfaces and chains."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "DPUServiceIPAM"
    PLURAL: ClassVar[str] = "dpuserviceipams"
    COLUMNS: ClassVar[tuple[Column, ...]] = READY_COLUMNS
    FINALIZERS: ClassVar[tuple[str, ...]] = ("svc.dpu.nvidia.com/dpuserviceipam",)
    CONDITION_TYPES: ClassVar[tuple[str, ...]] = ("Ready", "DPUIPAMObjectReconciled", "DPUIPAMObjectReady")
    CRD_ANNOTATIONS: ClassVar[dict[str, str]] = SVC_ANNOTATIONS

    spec: DPUServiceIPAMSpec
    status: DPUServiceIPAMStatus | None = None


# -- DPUServiceNAD (DPF v25.4, additive) ------------------------------------------------------------------


class DPUServiceNADSpec(Model):
    metadata: TemplateMeta | None = None
    """Labels and annotations copied onto the NetworkAttachmentDefinition."""
    resource_type: Literal["vf", "sf", "veth"]
    """What the pods' interfaces are: a VF or SF of the DPU (the NAD asks for its device-plugin resource),
    or a veth pair (no resource)."""
    bridge: str | None = None
    """The OVS bridge the interfaces are attached to; unset means br-sfc."""
    mtu: Annotated[int, Field(ge=68, le=9216)] | None = None
    """The interfaces' MTU; unset leaves it to the CNI plugin (1500)."""
    ipam: bool | None = None
    """Give the interfaces an address: the pool is named per pod (a DPUServiceChain's ipam, or Multus
    cni-args poolNames), served by the DPU agent from its DPUServiceIPAM blocks."""


class DPUServiceNAD(Resource):
    """A network for service pods on the DPUs: a NetworkAttachmentDefinition in every DPU cluster for the SFC CNI."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "DPUServiceNAD"
    PLURAL: ClassVar[str] = "dpuservicenads"
    COLUMNS: ClassVar[tuple[Column, ...]] = READY_COLUMNS
    FINALIZERS: ClassVar[tuple[str, ...]] = ("svc.dpu.nvidia.com/dpuservicenad",)
    CONDITION_TYPES: ClassVar[tuple[str, ...]] = ("Ready", "DPUNADObjectReconciled", "DPUNADObjectReady")
    CRD_ANNOTATIONS: ClassVar[dict[str, str]] = SVC_ANNOTATIONS

    spec: DPUServiceNADSpec
    status: ObjectStatus | None = None
