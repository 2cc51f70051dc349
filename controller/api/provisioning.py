"""provisioning.dpu.nvidia.com/v1alpha1: BFB, DPU, DPUSet, DPUFlavor and DPUCluster.

Field names, defaults, enums and patterns follow upstream DPF v24.10.
Upstream's admission-webhook rules are CEL rules here (see docs/api.md); the rest are admission
policies in `policies.py`.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from dpf.controller.api.meta import (
    DEFAULT_IN_CRD,
    Cel,
    Column,
    Conditions,
    Int64,
    IntOrString,
    Labels,
    LabelSelector,
    Model,
    Resource,
    ResourceList,
    Taint,
    immutable,
    settable_once,
)

GROUP = "provisioning.dpu.nvidia.com"
POWER_CYCLE_ANNOTATION = "provisioning.dpu.nvidia.com/host-power-cycle-required"
# Go's strconv.ParseBool accepts exactly these.
BOOL_STRINGS = ("1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False")
BOOL_LIST = "[" + ", ".join(f"'{b}'" for b in BOOL_STRINGS) + "]"

# -- BFB ---------------------------------------------------------------------------------------------

BFBPhase = Literal["Initializing", "Downloading", "Ready", "Deleting", "Error"]


class BFBSpec(Model):
    """Where to download a BlueField bitstream from, and the file name it is cached under."""

    CEL = (Cel("self == oldSelf || (!has(oldSelf.fileName) && has(self.fileName) && self.url == oldSelf.url)",
               message="BFB spec is immutable (only an empty fileName may be filled in, once); "
                       "create a new BFB instead"),)
    url: Annotated[str, Field(pattern=r"^(http|https)://.+\.bfb$")]
    """The http(s) URL of the .bfb file."""
    file_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9\_\-\.]+\.bfb$")] | None = None
    """Name of the cached file on the BFB volume; the controller fills in <namespace>-<name>.bfb."""


class BFBStatus(Model):
    phase: BFBPhase = "Initializing"
    """Download state: Initializing, Downloading, Ready, Deleting or Error."""


class BFB(Resource):
    """A BlueField bitstream (BFB) image, downloaded once and cached for DPU provisioning."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "BFB"
    PLURAL: ClassVar[str] = "bfbs"
    COLUMNS: ClassVar[tuple[Column, ...]] = (Column("Phase", ".status.phase", description="download state"),)
    FINALIZERS: ClassVar[tuple[str, ...]] = ("provisioning.dpu.nvidia.com/bfb-protection",)

    spec: BFBSpec
    status: Annotated[BFBStatus, DEFAULT_IN_CRD] = Field(default_factory=BFBStatus)

    def effective_file_name(self) -> str:
        """spec.fileName, else its default <namespace>-<name>.bfb (for objects named by generateName,
        which the defaulting admission policy cannot name yet)."""
        return self.spec.file_name or f"{self.metadata.namespace}-{self.metadata.name}.bfb"


# -- DPU node effect, shared by DPU and DPUSet --------------------------------------------------------


class Drain(Model):
    """Drain the host node through a NodeMaintenance object before provisioning."""

    automatic_node_reboot: bool = True
    """Reboot the host automatically once the DPU is installed."""


class NodeEffect(Model):
    """What provisioning does to the host node; at most one mode may be set."""

    CEL = (Cel("[has(self.taint), has(self.noEffect) && self.noEffect, has(self.customLabel), has(self.drain)]"
               ".filter(x, x).size() <= 1",
               message="at most one of taint, noEffect, customLabel and drain may be set"),)
    taint: Taint | None = None
    """Taint the host node while its DPU is provisioned."""
    no_effect: bool | None = None
    """Leave the host node alone."""
    custom_label: Labels | None = None
    """Add these labels to the host node (they stay after provisioning)."""
    drain: Drain | None = None
    """Drain the host node while its DPU is provisioned."""


def _default_node_effect() -> NodeEffect:
    return NodeEffect(drain=Drain())


# -- DPU -------------------------------------------------------------------------------------------

DPUPhase = Literal["Initializing", "Node Effect", "Pending", "DMS Deployment", "OS Installing",
                   "DPU Cluster Config", "Host Network Configuration", "Ready", "Error", "Deleting",
                   "Rebooting"]
DPU_PHASES: tuple[str, ...] = DPUPhase.__args__  # type: ignore[attr-defined]


class K8sCluster(Model):
    """The DPU cluster this DPU joins; name and namespace are set once (by the allocator if empty)."""

    name: Annotated[str, settable_once("cluster.name")] | None = None
    namespace: Annotated[str, settable_once("cluster.namespace")] | None = None
    node_labels: Labels | None = None
    """Labels put on the DPU's Node in the DPU cluster."""


class DPUSpec(Model):
    node_name: Annotated[str, immutable("nodeName")]
    """The host Node this DPU sits in."""
    bfb: str
    """Name of the BFB (same namespace) to install."""
    pci_address: Annotated[str, immutable("pciAddress")] | None = None
    """PCI address of the DPU on the host (informational)."""
    node_effect: Annotated[NodeEffect, DEFAULT_IN_CRD] = Field(default_factory=_default_node_effect)
    """What provisioning does to the host node."""
    cluster: K8sCluster | None = None
    """The DPU cluster to join."""
    dpu_flavor: str | None = None
    """Name of the DPUFlavor (same namespace) to configure the DPU with."""
    automatic_node_reboot: bool = True
    """Reboot the host automatically after installation."""


class Firmware(Model):
    bmc: str | None = None
    nic: str | None = None
    uefi: str | None = None


class DPUStatus(Model):
    phase: DPUPhase = "Initializing"
    """Provisioning phase; note the spaces in multi-word phases."""
    conditions: Conditions | None = None
    bfb_version: str | None = None
    pci_device: str | None = None
    required_reset: bool | None = None
    firmware: Firmware | None = None


class DPU(Resource):
    """One BlueField DPU in a host, provisioned through the phases in status.phase."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "DPU"
    PLURAL: ClassVar[str] = "dpus"
    COLUMNS: ClassVar[tuple[Column, ...]] = (
        Column("Ready", ".status.conditions[?(@.type=='Ready')].status"),
        Column("Phase", ".status.phase", description="provisioning phase"),
    )
    FINALIZERS: ClassVar[tuple[str, ...]] = ("provisioning.dpu.nvidia.com/dpu-protection",)
    CONDITION_TYPES: ClassVar[tuple[str, ...]] = (
        "Initialized", "BFBReady", "NodeEffectReady", "DMSRunning", "OSInstalled", "Rebooted",
        "HostNetworkReady", "Ready")

    spec: DPUSpec
    status: Annotated[DPUStatus, DEFAULT_IN_CRD] = Field(default_factory=DPUStatus)


# -- DPUSet ----------------------------------------------------------------------------------------


class RollingUpdateDPU(Model):
    CEL = (Cel("!has(self.maxUnavailable) || (type(self.maxUnavailable) == int ? self.maxUnavailable > 0 : "
               "(self.maxUnavailable.matches('^[0-9]+%$') && int(self.maxUnavailable.replace('%', '')) > 0 "
               "&& int(self.maxUnavailable.replace('%', '')) <= 100))",
               message="maxUnavailable must be an integer > 0 or a percentage in (0%, 100%]",
               field_path=".maxUnavailable"),)
    max_unavailable: IntOrString | None = None
    """How many DPUs may be re-provisioned at once: a count > 0 or a percentage of the selected nodes."""


class DPUSetStrategy(Model):
    type: Literal["Recreate", "RollingUpdate"] = "Recreate"
    """Recreate: changed templates apply only to DPUs you delete; RollingUpdate: replaced gradually."""
    rolling_update: RollingUpdateDPU | None = None


class BFBReference(Model):
    name: str | None = None
    """Name of the BFB in the DPUSet's namespace."""


class ClusterSpec(Model):
    node_labels: Labels | None = None
    """Labels put on each DPU's Node in the DPU cluster."""


class DPUTemplateSpec(Model):
    bfb: BFBReference | None = None
    node_effect: Annotated[NodeEffect, DEFAULT_IN_CRD] = Field(default_factory=_default_node_effect)
    cluster: ClusterSpec | None = None
    dpu_flavor: str | None = None
    """Name of the DPUFlavor (same namespace)."""
    automatic_node_reboot: bool = True


class DPUTemplate(Model):
    annotations: Annotated[Labels, Cel(
        f"!('{POWER_CYCLE_ANNOTATION}' in self) || self['{POWER_CYCLE_ANNOTATION}'] in {BOOL_LIST}",
        message=f"annotation {POWER_CYCLE_ANNOTATION} must be a boolean (true or false)")] | None = None
    """Annotations added to every DPU."""
    spec: DPUTemplateSpec = Field(default_factory=DPUTemplateSpec)


class DPUSetSpec(Model):
    strategy: Annotated[DPUSetStrategy, DEFAULT_IN_CRD] = Field(default_factory=DPUSetStrategy)
    """How DPUs are replaced when the template changes."""
    node_selector: LabelSelector | None = None
    """Host Nodes that get a DPU; unset selects every node."""
    dpu_selector: Labels | None = None
    """Host-node labels (feature.node.kubernetes.io/dpu-<i>-...) choosing which DPU of a node."""
    dpu_template: DPUTemplate = Field(default_factory=DPUTemplate)


class DPUSetStatus(Model):
    dpu_statistics: dict[str, int] | None = None
    """Number of DPUs per phase."""
    conditions: Conditions | None = None
    """Ready, DPUsReconciled (every selected node has its DPU, none outdated) and DPUsReady (all Ready);
    not upstream: it says why a node got no DPU and how a rolling update is going."""
    observed_generation: Int64 | None = None
    """The metadata.generation the conditions describe."""


class DPUSet(Resource):
    """A fleet of DPUs: one DPU per selected host node, made from a template."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "DPUSet"
    PLURAL: ClassVar[str] = "dpusets"
    COLUMNS: ClassVar[tuple[Column, ...]] = (
        Column("Ready", ".status.conditions[?(@.type=='Ready')].status"),
        Column("Phase", ".status.conditions[?(@.type=='Ready')].reason"),
    )
    FINALIZERS: ClassVar[tuple[str, ...]] = ("provisioning.dpu.nvidia.com/dpuset-protection",)
    CONDITION_TYPES: ClassVar[tuple[str, ...]] = ("Ready", "DPUsReconciled", "DPUsReady")
    CRD_ANNOTATIONS: ClassVar[dict[str, str]] = {"helm.sh/resource-policy": "keep"}

    spec: DPUSetSpec = Field(default_factory=DPUSetSpec)
    status: DPUSetStatus | None = None


# -- DPUFlavor ----------------------------------------------------------------------------------------


class DPUFlavorGrub(Model):
    kernel_parameters: list[str] | None = None


class DPUFlavorSysctl(Model):
    parameters: list[str] | None = None


class DPUFlavorNVConfig(Model):
    CEL = (Cel("!has(self.device) || self.device == '*'", message="device must be '*' (all devices)",
               field_path=".device"),)
    device: str | None = None
    parameters: list[str] | None = None
    """mlxconfig parameters, e.g. PF_TOTAL_SF=20."""
    host_power_cycle_required: bool | None = None


class DPUFlavorOVS(Model):
    raw_config_script: str | None = None
    """Shell script run on the DPU to configure OVS (bridges, ports, other_config)."""


class ConfigFile(Model):
    path: str | None = None
    operation: Literal["override", "append"] | None = None
    raw: str | None = None
    permissions: str | None = None
    """File mode, e.g. "0644"."""


class ContainerdConfig(Model):
    registry_endpoint: str | None = None


_FITS = ("!has(self.systemReservedResources) || (has(self.dpuResources) && "
         "self.systemReservedResources.all(r, r in self.dpuResources && "
         "quantity(string(self.systemReservedResources[r])).compareTo("
         "quantity(string(self.dpuResources[r]))) <= 0))")


class DPUFlavorSpec(Model):
    """DPU configuration applied at install time; immutable, create a new flavor to change it."""

    CEL = (
        Cel("self == oldSelf", message="DPUFlavor spec is immutable"),
        Cel(_FITS, message="systemReservedResources needs dpuResources, and every reserved resource must be "
                           "listed in dpuResources and fit inside it", field_path=".systemReservedResources"),
    )
    grub: DPUFlavorGrub | None = None
    sysctl: DPUFlavorSysctl | None = None
    nvconfig: Annotated[list[DPUFlavorNVConfig], Cel("self.size() <= 1", message="at most one nvconfig entry")
                        ] | None = None
    ovs: DPUFlavorOVS | None = None
    bfcfg_parameters: list[str] | None = None
    """Lines added verbatim to bf.cfg, e.g. UPDATE_DPU_OS=yes."""
    config_files: list[ConfigFile] | None = None
    containerd_config: ContainerdConfig | None = None
    dpu_resources: Annotated[ResourceList, Field(max_length=64)] | None = None
    """Resources a DPU with this flavor offers to DPUServices."""
    system_reserved_resources: Annotated[ResourceList, Field(max_length=64)] | None = None
    """Part of dpuResources reserved for the system."""


class DPUFlavor(Resource):
    """How a DPU is configured when it is installed: kernel, sysctl, nvconfig, OVS, files, containerd."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "DPUFlavor"
    PLURAL: ClassVar[str] = "dpuflavors"

    spec: DPUFlavorSpec


# -- DPUCluster -------------------------------------------------------------------------------------


class KeepalivedSpec(Model):
    vip: str
    """The virtual IP held by the keepalived instances."""
    virtual_router_id: Annotated[int, Field(ge=1, le=255, alias="virtualRouterID")]
    interface: Annotated[str, Field(min_length=1)]
    """Interface the VIP is assigned on."""
    node_selector: Labels | None = None
    """Control-plane nodes that run keepalived."""


class ClusterEndpointSpec(Model):
    keepalived: KeepalivedSpec | None = None


class DPUClusterSpec(Model):
    type: Annotated[str, Field(pattern=r"kamaji|static|[^/]+/.*")]
    """kamaji (managed), static (bring your own; set kubeconfig) or a vendor type "prefix/name"."""
    max_nodes: Annotated[int, Field(ge=1, le=1000)] = 1000
    """Most DPUs the cluster takes."""
    version: str
    """Kubernetes control-plane version, e.g. v1.30.2."""
    kubeconfig: Annotated[str, settable_once("kubeconfig")] | None = None
    """Name of the Secret holding the admin kubeconfig under key admin.conf."""
    cluster_endpoint: ClusterEndpointSpec | None = None


class DPUClusterStatus(Model):
    phase: Literal["Pending", "Creating", "Ready", "NotReady", "Failed"] = "Pending"
    conditions: Conditions | None = None


class DPUCluster(Resource):
    """A Kubernetes cluster the DPUs join as Nodes."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "DPUCluster"
    PLURAL: ClassVar[str] = "dpuclusters"
    COLUMNS: ClassVar[tuple[Column, ...]] = (
        Column("Ready", ".status.conditions[?(@.type=='Ready')].status"),
        Column("Phase", ".status.phase", description="phase of the cluster"),
        Column("Type", ".spec.type", description="type of the cluster"),
        Column("MaxNodes", ".spec.maxNodes", type="integer", description="max amount of nodes"),
        Column("Version", ".spec.version", description="Kubernetes control-plane version"),
    )
    FINALIZERS: ClassVar[tuple[str, ...]] = ("provisioning.dpu.nvidia.com/cluster-manager-clean-up",
                                             "provisioning.dpu.nvidia.com/cluster-manager-internal-clean-up")
    CONDITION_TYPES: ClassVar[tuple[str, ...]] = ("Created", "Ready", "KeepalivedReady")
    CRD_ANNOTATIONS: ClassVar[dict[str, str]] = {"helm.sh/resource-policy": "keep"}

    spec: DPUClusterSpec
    status: Annotated[DPUClusterStatus, DEFAULT_IN_CRD] = Field(default_factory=DPUClusterStatus)
