"""DPUServiceChain (host cluster) → a same-name ServiceChainSet in every DPU cluster; conditions
`ServiceChainSetReconciled`, `ServiceChainSetReady`, `Ready`. Mechanics: `mirror.py`."""

from __future__ import annotations

from dpf.controller.reconcilers.kinds import DPU_SERVICE_CHAIN, SERVICE_CHAIN_SET
from dpf.controller.reconcilers.mirror import MirrorKinds, MirrorReconciler


class DPUServiceChainReconciler(MirrorReconciler):
    name = "dpuservicechain"
    kind = "DPUServiceChain"
    kinds = MirrorKinds(parent=DPU_SERVICE_CHAIN, child=SERVICE_CHAIN_SET,
                        finalizer="svc.dpu.nvidia.com/dpuservicechain",
                        reconciled="ServiceChainSetReconciled", ready="ServiceChainSetReady")
