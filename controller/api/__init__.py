"""The DPF API: typed models of every custom resource, the CRD generator, and the conditions helper."""

from __future__ import annotations

from dpf.controller.api.meta import Resource
from dpf.controller.api.operator import DPFOperatorConfig
from dpf.controller.api.provisioning import BFB, DPU, DPU_PHASES, DPUCluster, DPUFlavor, DPUSet
from dpf.controller.api.svc import (
    DPUDeployment,
    DPUService,
    DPUServiceChain,
    DPUServiceConfiguration,
    DPUServiceCredentialRequest,
    DPUServiceInterface,
    DPUServiceIPAM,
    DPUServiceNAD,
    DPUServiceTemplate,
    ServiceChain,
    ServiceChainSet,
    ServiceInterface,
    ServiceInterfaceSet,
)

# Every kind the project serves, in install order (provisioning, svc, operator).
KINDS: tuple[type[Resource], ...] = (
    BFB, DPU, DPUSet, DPUFlavor, DPUCluster,
    DPUService, DPUDeployment, DPUServiceTemplate, DPUServiceConfiguration, DPUServiceCredentialRequest,
    DPUServiceInterface, ServiceInterfaceSet, ServiceInterface,
    DPUServiceChain, ServiceChainSet, ServiceChain, DPUServiceIPAM, DPUServiceNAD,
    DPFOperatorConfig,
)


def kind_by_name(kind: str) -> type[Resource]:
    """The model class for a kind name, e.g. "DPUService"."""
    for model in KINDS:
        if kind == model.KIND:
            return model
    raise KeyError(f"unknown DPF kind {kind!r}; known: {', '.join(m.KIND for m in KINDS)}")


__all__ = ["DPU_PHASES", "KINDS", "Resource", "kind_by_name"] + [m.__name__ for m in KINDS]
