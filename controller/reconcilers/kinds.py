"""The CR kinds the reconcilers read and write, as REST coordinates (unstructured access)."""

from __future__ import annotations

from dpf.controller.kube.rest import Kind

PROVISIONING = "provisioning.dpu.nvidia.com"
SVC = "svc.dpu.nvidia.com"
V1ALPHA1 = "v1alpha1"

DPU_CLUSTER = Kind(PROVISIONING, V1ALPHA1, "dpuclusters", "DPUCluster")
SERVICE_INTERFACE = Kind(SVC, V1ALPHA1, "serviceinterfaces", "ServiceInterface")
SERVICE_INTERFACE_SET = Kind(SVC, V1ALPHA1, "serviceinterfacesets", "ServiceInterfaceSet")
