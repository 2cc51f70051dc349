"""Step 1 of a DPUService, shared by both backends (Helm and ArgoCD): its DPUServiceInterfaces checked, claimed and
released through the `dpu.nvidia.com/consumed-by` annotation. The checks and the Multus merge are pure
(`dpuservice_interfaces.py`); this module does the reads from the shared watch cache and the guarded writes, and
routes DPUServiceInterface events to the DPUServices they concern.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from dpf.controller.errors import TemporaryError
from dpf.controller.kube.informer import Informer, key_of
from dpf.controller.kube.rest import KubeError, Obj, Rest
from dpf.controller.reconcilers import dpuservice_interfaces as interfaces
from dpf.controller.reconcilers.kinds import DPU_SERVICE_INTERFACE

log = logging.getLogger(__name__)

BY_INTERFACE = "dpuservice.interfaces"  # DPUService informer: "<namespace>/<interface>" of each listed interface
CLAIM_RETRY = 1.0  # a DPUServiceInterface changed under a claim: read the cache again shortly


class InterfaceClaims:
    def __init__(self, rest: Rest, services: Informer, dsis: Informer,
                 enqueue: Callable[[str, str], None]) -> None:
        self.rest = rest
        self.services = services
        self.dsis = dsis
        self._enqueue = enqueue
        services.add_index(BY_INTERFACE, lambda o: [f"{o['metadata']['namespace']}/{name}"
                                                   for name in (o.get("spec") or {}).get("interfaces") or ()])
        dsis.add_handler(self._on_interface)

    def _on_interface(self, _type: str, old: Obj | None, new: Obj | None) -> None:
        """A DPUServiceInterface changed: the DPUServices listing it, and the one it names as consumer."""
        for dsi in (old, new):
            if dsi is None:
                continue
            namespace, name = key_of(dsi)
            for service in self.services.by_index(BY_INTERFACE, f"{namespace}/{name}"):
                self._enqueue(*key_of(service))
            owner = interfaces.consumer(dsi)
            if owner:
                self._enqueue(namespace, owner)

    async def step(self, obj: Obj) -> interfaces.Plan:
        """Check the listed DPUServiceInterfaces; claim them only when all are usable, and release the ones this
        DPUService no longer lists (whatever else is wrong)."""
        namespace, name = key_of(obj)
        listed = (obj.get("spec") or {}).get("interfaces") or ()
        found = {n: self.dsis.get(namespace, n) for n in listed}
        plan = interfaces.plan(obj, found)
        await self._release(namespace, name, listed)
        if not plan.problems:
            for claimed in (found[n] for n in plan.claim):
                if claimed is not None:  # always: plan() reports a missing one as a problem
                    await self._set_consumer(claimed, name)
        return plan

    async def release_all(self, obj: Obj) -> None:
        """A deleted DPUService: every interface it claims is released."""
        await self._release(*key_of(obj), ())

    async def _release(self, namespace: str, name: str, keep: Iterable[str]) -> None:
        in_namespace = [d for d in self.dsis.list() if d["metadata"]["namespace"] == namespace]
        for dsi in interfaces.releasable(name, tuple(keep), in_namespace):
            await self._set_consumer(dsi, None)

    async def _set_consumer(self, dsi: Obj, service: str | None) -> None:
        """Set (or with None drop) a DPUServiceInterface's consumed-by annotation, guarded by its resourceVersion:
        of two DPUServices claiming one interface at once, the second gets a conflict, then sees the first's claim."""
        meta = dsi["metadata"]
        patch = {"metadata": {"annotations": {interfaces.CONSUMED_BY: service},
                              "resourceVersion": meta["resourceVersion"]}}
        try:
            await self.rest.merge_patch(DPU_SERVICE_INTERFACE, meta["name"], patch, meta["namespace"])
        except KubeError as exc:
            if exc.not_found and service is None:
                return
            if exc.conflict or exc.not_found:
                raise TemporaryError(f"DPUServiceInterface {meta['namespace']}/{meta['name']} changed meanwhile; "
                                     f"retrying", CLAIM_RETRY) from None
            raise
        log.info("DPUServiceInterface %s/%s: consumed-by %s", meta["namespace"], meta["name"], service or "(none)")
