"""The CR kinds the reconcilers read and write, as REST coordinates (unstructured access)."""

from __future__ import annotations

from dpf.controller.kube.rest import Kind

PROVISIONING = "provisioning.dpu.nvidia.com"
SVC = "svc.dpu.nvidia.com"
OPERATOR = "operator.dpu.nvidia.com"
V1ALPHA1 = "v1alpha1"

DPU_CLUSTER = Kind(PROVISIONING, V1ALPHA1, "dpuclusters", "DPUCluster")
DPU_FLAVOR = Kind(PROVISIONING, V1ALPHA1, "dpuflavors", "DPUFlavor")
BFB = Kind(PROVISIONING, V1ALPHA1, "bfbs", "BFB")
DPU = Kind(PROVISIONING, V1ALPHA1, "dpus", "DPU")
DPU_SET = Kind(PROVISIONING, V1ALPHA1, "dpusets", "DPUSet")
SERVICE_INTERFACE = Kind(SVC, V1ALPHA1, "serviceinterfaces", "ServiceInterface")
SERVICE_INTERFACE_SET = Kind(SVC, V1ALPHA1, "serviceinterfacesets", "ServiceInterfaceSet")
DPU_SERVICE_INTERFACE = Kind(SVC, V1ALPHA1, "dpuserviceinterfaces", "DPUServiceInterface")
SERVICE_CHAIN = Kind(SVC, V1ALPHA1, "servicechains", "ServiceChain")
SERVICE_CHAIN_SET = Kind(SVC, V1ALPHA1, "servicechainsets", "ServiceChainSet")
DPU_SERVICE_CHAIN = Kind(SVC, V1ALPHA1, "dpuservicechains", "DPUServiceChain")
DPU_SERVICE_IPAM = Kind(SVC, V1ALPHA1, "dpuserviceipams", "DPUServiceIPAM")
DPU_DEPLOYMENT = Kind(SVC, V1ALPHA1, "dpudeployments", "DPUDeployment")
DPU_SERVICE_TEMPLATE = Kind(SVC, V1ALPHA1, "dpuservicetemplates", "DPUServiceTemplate")
DPU_SERVICE_CONFIGURATION = Kind(SVC, V1ALPHA1, "dpuserviceconfigurations", "DPUServiceConfiguration")
DPF_OPERATOR_CONFIG = Kind(OPERATOR, V1ALPHA1, "dpfoperatorconfigs", "DPFOperatorConfig")
NODE = Kind("", "v1", "nodes", "Node", namespaced=False)
POD = Kind("", "v1", "pods", "Pod")
NAMESPACE = Kind("", "v1", "namespaces", "Namespace", namespaced=False)
