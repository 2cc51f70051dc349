"""svc.dpu.nvidia.com/v1alpha1: services, deployments, templates, configurations and credentials.

DPUService, DPUDeployment, DPUServiceTemplate, DPUServiceConfiguration and DPUServiceCredentialRequest
(upstream DPF v24.10); the interface/chain/IPAM kinds live in `svc_network.py` and are
re-exported here so `svc` is the whole group.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from dpf.controller.api.meta import (
    Cel,
    Column,
    DaemonSetUpdateStrategy,
    Labels,
    LabelSelector,
    Model,
    NodeSelector,
    Resource,
    ResourceList,
    TemplateMeta,
    Time,
)
from dpf.controller.api.svc_network import (
    GROUP,
    IPAM,
    READY_COLUMNS,
    SVC_ANNOTATIONS,
    DPUServiceChain,
    DPUServiceInterface,
    DPUServiceIPAM,
    DPUServiceNAD,
    EmptyStatus,
    ObjectStatus,
    ServiceChain,
    ServiceChainSet,
    ServiceIfc,
    ServiceInterface,
    ServiceInterfaceSet,
)

HELM_REPO_PATTERN = r"^(oci://|https://).+$"

# -- DPUService --------------------------------------------------------------------------------------


class ApplicationSource(Model):
    repo_url: Annotated[str, Field(alias="repoURL", pattern=HELM_REPO_PATTERN)]
    """Helm repository, oci:// or https://."""
    path: str | None = None
    """Path of the chart inside a git repository."""
    version: Annotated[str, Field(min_length=1)]
    """Chart version."""
    chart: str | None = None
    release_name: str | None = None


class HelmChart(Model):
    source: ApplicationSource
    values: dict[str, Any] | None = None
    """Helm values, free-form."""


class ServiceDaemonSetValues(Model):
    """Settings passed to the chart as the serviceDaemonSet value."""

    node_selector: NodeSelector | None = None
    update_strategy: DaemonSetUpdateStrategy | None = None
    labels: Labels | None = None
    annotations: Labels | None = None


PORT_NAME_PATTERN = r"^[a-z0-9-]+$"
ServiceType = Literal["NodePort", "ClusterIP", "None"]
PortNumber = Annotated[int, Field(ge=1, le=65535)]


class ConfigPort(Model):
    """One port a DPUService exposes to the host cluster (upstream DPF v25.x)."""

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=PORT_NAME_PATTERN)]
    """The port's name in the chart's Service (`exposedPorts.ports.<name>`); unique in the DPUService."""
    port: PortNumber
    """The port of the Service made in the host cluster."""
    protocol: Literal["TCP", "UDP"]
    node_port: PortNumber | None = None
    """The host cluster's node port (serviceType NodePort only); unset: allocated by the apiserver."""


class ConfigPorts(Model):
    """Ports of the service on the DPUs exposed in the host cluster through one Service named as the DPUService."""

    CEL = (Cel("self.serviceType == 'NodePort' || self.ports.all(p, !has(p.nodePort))",
               message="nodePort can only be set when serviceType is NodePort", field_path=".ports",
               reason="FieldValueForbidden"),
           Cel("self.ports.all(p, self.ports.exists_one(q, q.name == p.name))", message="port names must be unique",
               field_path=".ports"))  # reason FieldValueDuplicate would drop the message
    service_type: Annotated[ServiceType, Cel("self == oldSelf", message="serviceType is immutable")] = "NodePort"
    """NodePort, ClusterIP, or None (headless)."""
    ports: Annotated[list[ConfigPort], Field(max_length=50)]


class DPUServiceSpec(Model):
    CEL = (Cel("!has(self.interfaces) || has(self.serviceID)", message="serviceID is required when interfaces is set",
               field_path=".serviceID", reason="FieldValueRequired"),
           Cel("!(has(self.deployInCluster) && self.deployInCluster && has(self.configPorts))",
               message="configPorts cannot be set when deployInCluster is true", field_path=".configPorts",
               reason="FieldValueForbidden"))
    helm_chart: HelmChart
    service_id: str | None = Field(None, alias="serviceID")
    """Identifies the service's pods (label svc.dpu.nvidia.com/service) for interfaces and chains."""
    service_daemon_set: ServiceDaemonSetValues | None = None
    deploy_in_cluster: bool | None = None
    """Deploy to the host cluster instead of the DPU clusters."""
    interfaces: Annotated[list[str], Field(min_length=1, max_length=50)] | None = None
    """DPUServiceInterface names (same namespace) attached to the service's pods."""
    paused: bool | None = None
    """Stop reconciling the deployed application."""
    config_ports: ConfigPorts | None = None
    """Expose the service's ports in the host cluster (upstream DPF v25.x; not with deployInCluster)."""


class DPUServiceStatus(ObjectStatus):
    """Status of the svc.* and operator kinds: the condition model of spec §1.0."""  # as ObjectStatus: additive

    config_ports: dict[str, list[ConfigPort]] | None = None
    """The ports of the host cluster's Service by DPUCluster name, with the node ports allocated."""


class DPUService(Resource):
    """A Helm chart deployed to every DPU cluster (or the host cluster)."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "DPUService"
    PLURAL: ClassVar[str] = "dpuservices"
    COLUMNS: ClassVar[tuple[Column, ...]] = READY_COLUMNS
    FINALIZERS: ClassVar[tuple[str, ...]] = ("dpu.nvidia.com/dpuservice",)
    CONDITION_TYPES: ClassVar[tuple[str, ...]] = (
        "Ready", "ApplicationPrereqsReconciled", "ApplicationsReconciled", "ApplicationsReady",
        "DPUServiceInterfaceReconciled", "ConfigPortsReconciled")
    CRD_ANNOTATIONS: ClassVar[dict[str, str]] = SVC_ANNOTATIONS

    spec: DPUServiceSpec
    status: DPUServiceStatus | None = None


# -- DPUDeployment ------------------------------------------------------------------------------------


class DPUDeploymentDPUSet(Model):
    name_suffix: Annotated[str, Field(min_length=1, max_length=63)]
    """Suffix of the DPUSet name, <deployment>-<suffix>."""
    node_selector: LabelSelector | None = None
    dpu_selector: Labels | None = None
    dpu_annotations: Labels | None = None


class DPUs(Model):
    bfb: str
    """BFB name (same namespace)."""
    flavor: str
    """DPUFlavor name (same namespace)."""
    dpu_sets: Annotated[list[DPUDeploymentDPUSet], Field(min_length=1, max_length=50)] | None = None


class DPUDeploymentServiceConfiguration(Model):
    service_template: str
    service_configuration: str


class ServiceRef(Model):
    name: str
    """Key of the service in spec.services."""
    interface: str
    """Interface name from the service's DPUServiceConfiguration."""
    ipam: IPAM | None = None


class DeploymentPort(Model):
    CEL = (Cel("has(self.service) != has(self.serviceInterface)",
               message="exactly one of service and serviceInterface must be set"),)
    service: ServiceRef | None = None
    service_interface: ServiceIfc | None = None


class DeploymentSwitch(Model):
    ports: Annotated[list[DeploymentPort], Field(min_length=1, max_length=50)]


class DPUDeploymentSpec(Model):
    dpus: DPUs
    services: dict[str, DPUDeploymentServiceConfiguration]
    """Service key → its template and configuration names."""
    service_chains: Annotated[list[DeploymentSwitch], Field(min_length=1, max_length=50)]


class DPUDeployment(Resource):
    """A bundle: DPUs from a BFB and flavor, services on them, and the chains between them."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "DPUDeployment"
    PLURAL: ClassVar[str] = "dpudeployments"
    COLUMNS: ClassVar[tuple[Column, ...]] = READY_COLUMNS
    FINALIZERS: ClassVar[tuple[str, ...]] = ("dpu.nvidia.com/dpudeployment",)
    CONDITION_TYPES: ClassVar[tuple[str, ...]] = (
        "Ready", "PrerequisitesReady", "ResourceFittingReady", "DPUSetsReconciled", "DPUSetsReady",
        "DPUServicesReconciled", "DPUServicesReady", "DPUServiceChainsReconciled", "DPUServiceChainsReady",
        "DPUServiceInterfacesReconciled", "DPUServiceInterfacesReady")
    CRD_ANNOTATIONS: ClassVar[dict[str, str]] = SVC_ANNOTATIONS

    spec: DPUDeploymentSpec
    status: ObjectStatus | None = None


# -- DPUServiceTemplate / DPUServiceConfiguration -------------------------------------------------------


class DPUServiceTemplateSpec(Model):
    deployment_service_name: str
    """Must equal the service's key in the DPUDeployment."""
    helm_chart: HelmChart
    resource_requirements: ResourceList | None = None
    """Resources the service needs on each DPU, checked against the flavor."""


class DPUServiceTemplate(Resource):
    """The static part of a DPUDeployment service: chart source and default values."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "DPUServiceTemplate"
    PLURAL: ClassVar[str] = "dpuservicetemplates"
    CRD_ANNOTATIONS: ClassVar[dict[str, str]] = SVC_ANNOTATIONS

    spec: DPUServiceTemplateSpec
    status: EmptyStatus | None = None


class ServiceConfigurationHelmChart(Model):
    values: dict[str, Any] | None = None
    """Values merged over the template's values (these win)."""


class ServiceConfigurationDaemonSet(Model):
    labels: Labels | None = None
    annotations: Labels | None = None


class ServiceConfiguration(Model):
    helm_chart: ServiceConfigurationHelmChart | None = None
    service_daemon_set: ServiceConfigurationDaemonSet | None = None
    deploy_in_cluster: bool | None = None


class ServiceInterfaceTemplate(Model):
    name: str
    """Interface name inside the service pod."""
    network: str
    """NetworkAttachmentDefinition, "name" or "namespace/name"."""


class DPUServiceConfigurationSpec(Model):
    deployment_service_name: str
    service_configuration: ServiceConfiguration | None = None
    interfaces: Annotated[list[ServiceInterfaceTemplate], Field(min_length=1, max_length=50)] | None = None


class DPUServiceConfiguration(Resource):
    """The user-tunable part of a DPUDeployment service: values, daemonset metadata, interfaces."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "DPUServiceConfiguration"
    PLURAL: ClassVar[str] = "dpuserviceconfigurations"
    CRD_ANNOTATIONS: ClassVar[dict[str, str]] = SVC_ANNOTATIONS

    spec: DPUServiceConfigurationSpec
    status: EmptyStatus | None = None


# -- DPUServiceCredentialRequest --------------------------------------------------------------------------


class ObjectRef(Model):
    """A reference by name; the namespace defaults to the referring object's (as upstream)."""

    name: str
    """Name of the object."""
    namespace: str | None = None
    """Namespace of the object; unset means the DPUServiceCredentialRequest's own."""


class DPUServiceCredentialRequestSpec(Model):
    service_account: ObjectRef
    """The ServiceAccount made in the target cluster, whose token is issued."""
    duration: Annotated[str, Field(pattern=r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$")] | None = None
    """Token lifetime, e.g. 24h (at least 10m, the apiserver's minimum); unset means the apiserver's default
    (1h). A token is renewed in the last 20% of its lifetime and at least every 24h."""
    target_cluster: ObjectRef | None = None
    """The DPUCluster to issue the token in; unset means the host cluster."""
    type: Literal["kubeconfig", "tokenFile"]
    """kubeconfig: key `kubeconfig`; tokenFile: keys KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT,
    KUBERNETES_CA_DATA and TOKEN_FILE."""
    secret: ObjectRef
    """Where the credentials are written (always in the host cluster)."""
    metadata: TemplateMeta | None = None
    """Labels and annotations copied onto the Secret."""


class DPUServiceCredentialRequestStatus(ObjectStatus):
    service_account: str | None = None
    target_cluster: str | None = None
    expiration_timestamp: Time | None = None
    issued_at: Time | None = None
    secret: str | None = None


class DPUServiceCredentialRequest(Resource):
    """A service-account token (kubeconfig or token file) for a service, kept fresh in a Secret."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "DPUServiceCredentialRequest"
    PLURAL: ClassVar[str] = "dpuservicecredentialrequests"
    COLUMNS: ClassVar[tuple[Column, ...]] = READY_COLUMNS
    FINALIZERS: ClassVar[tuple[str, ...]] = ("dpu.nvidia.com/dpuservicecredentialrequest",)
    CONDITION_TYPES: ClassVar[tuple[str, ...]] = ("Ready", "ServiceAccountReconciled", "SecretReconciled")
    CRD_ANNOTATIONS: ClassVar[dict[str, str]] = SVC_ANNOTATIONS

    spec: DPUServiceCredentialRequestSpec
    status: DPUServiceCredentialRequestStatus | None = None


__all__ = [
    "DPUDeployment", "DPUService", "DPUServiceChain", "DPUServiceConfiguration", "DPUServiceCredentialRequest",
    "DPUServiceIPAM", "DPUServiceInterface", "DPUServiceNAD", "DPUServiceTemplate", "ServiceChain", "ServiceChainSet",
    "ServiceInterface", "ServiceInterfaceSet",
]
