"""operator.dpu.nvidia.com/v1alpha1: DPFOperatorConfig, the singleton that installs the DPF system.

Fields follow upstream DPF v24.10: per-component `disable`/`image`/`helmChart`
overrides, MTUs, pull secrets and the provisioning controller's settings.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from dpf.controller.api.meta import DEFAULT_IN_CRD, Column, Model, Resource
from dpf.controller.api.svc import HELM_REPO_PATTERN
from dpf.controller.api.svc_network import READY_COLUMNS, ObjectStatus

GROUP = "operator.dpu.nvidia.com"
CONFIG_NAME = "dpfoperatorconfig"
CONFIG_NAMESPACE = "dpf-operator-system"

# An image reference per the distribution/reference grammar: [registry[:port]/]path[:tag][@digest], where the
# registry host is a domain name, an IPv4 address or a bracketed IPv6 address ("[fd00::1]:5000/dpf/img:v1").
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_NAME = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN = rf"(?:(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?/)"
IMAGE_PATTERN = (rf"^{_DOMAIN}?{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
                 r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,})?$")
Image = Annotated[str, Field(pattern=IMAGE_PATTERN)]
HelmChartURL = Annotated[str, Field(pattern=HELM_REPO_PATTERN)]


class Overrides(Model):
    paused: bool | None = None
    """Stop reconciling the DPF system."""


class Networking(Model):
    control_plane_mtu: Annotated[int, Field(alias="controlPlaneMTU", ge=0, le=9216)] = 1500
    """MTU of the DPU clusters' pod network (flannel)."""
    high_speed_mtu: Annotated[int, Field(alias="highSpeedMTU", ge=0, le=9216)] = 1500
    """MTU of the high-speed interfaces (multus NADs, host VF)."""


class ProvisioningControllerConfiguration(Model):
    disable: bool | None = None
    image: Image | None = None
    bfb_pvc_name: Annotated[str, Field(alias="bfbPVCName", min_length=1)]
    """The ReadWriteMany PVC where BFBs are cached."""
    dms_timeout: Annotated[int, Field(ge=1)] | None = None
    """Seconds a DMS call may take."""


class ImageComponent(Model):
    """A host-side component: it can be disabled or run from another image."""

    disable: bool | None = None
    image: Image | None = None


class HelmComponent(ImageComponent):
    """A DPU-side component deployed as a DPUService: image and chart can be overridden."""

    helm_chart: HelmChartURL | None = None


class FlannelConfiguration(Model):
    disable: bool | None = None
    helm_chart: HelmChartURL | None = None


class DPUDetectorCollectors(Model):
    ps_id: bool | None = Field(None, alias="psID")
    """Also report each DPU's PSID as a node label."""


class DPUDetectorConfiguration(ImageComponent):
    collectors: DPUDetectorCollectors | None = None


class DPFOperatorConfigSpec(Model):
    overrides: Overrides | None = None
    networking: Annotated[Networking, DEFAULT_IN_CRD] = Field(default_factory=Networking)
    image_pull_secrets: list[str] | None = None
    """Secrets (operator namespace) used to pull DPF images; mirrored into DPU clusters."""
    provisioning_controller: ProvisioningControllerConfiguration
    dpu_service_controller: ImageComponent | None = None
    service_set_controller: HelmComponent | None = None
    dpu_detector: DPUDetectorConfiguration | None = None
    multus: HelmComponent | None = None
    sriov_device_plugin: HelmComponent | None = None
    flannel: FlannelConfiguration | None = None
    ovs_cni: HelmComponent | None = Field(None, alias="ovsCNI")
    nvipam: HelmComponent | None = None
    sfc_controller: HelmComponent | None = None
    kamaji_cluster_manager: ImageComponent | None = None
    static_cluster_manager: ImageComponent | None = None
    ovs_helper: HelmComponent | None = None


class DPFOperatorConfig(Resource):
    """The DPF system's configuration; one per cluster, dpfoperatorconfig in dpf-operator-system."""

    GROUP: ClassVar[str] = GROUP
    KIND: ClassVar[str] = "DPFOperatorConfig"
    PLURAL: ClassVar[str] = "dpfoperatorconfigs"
    COLUMNS: ClassVar[tuple[Column, ...]] = READY_COLUMNS
    FINALIZERS: ClassVar[tuple[str, ...]] = ("dpu.nvidia.com/dpfoperatorconfig",)
    CONDITION_TYPES: ClassVar[tuple[str, ...]] = (
        "Ready", "ImagePullSecretsReconciled", "SystemComponentsReconciled", "SystemComponentsReady")
    CRD_ANNOTATIONS: ClassVar[dict[str, str]] = {"helm.sh/resource-policy": "keep"}

    spec: DPFOperatorConfigSpec
    status: ObjectStatus | None = None
