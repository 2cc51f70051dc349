"""DPUServiceInterface (host cluster) → a same-name ServiceInterfaceSet in every DPU cluster; conditions
`ServiceInterfaceSetReconciled`, `ServiceInterfaceSetReady`, `Ready`. Mechanics: `mirror.py`."""

from __future__ import annotations

from dpf.controller.reconcilers.kinds import DPU_SERVICE_INTERFACE, SERVICE_INTERFACE_SET
from dpf.controller.reconcilers.mirror import MirrorKinds, MirrorReconciler


class DPUServiceInterfaceReconciler(MirrorReconciler):
    name = "dpuserviceinterface"
    kind = "DPUServiceInterface"
    kinds = MirrorKinds(parent=DPU_SERVICE_INTERFACE, child=SERVICE_INTERFACE_SET,
                        finalizer="svc.dpu.nvidia.com/dpuserviceinterface",
                        reconciled="ServiceInterfaceSetReconciled", ready="ServiceInterfaceSetReady")
