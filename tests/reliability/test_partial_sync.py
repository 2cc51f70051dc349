"""A DPU-cluster watch that can never sync stops only the reconcilers that read its kind. Here one more reconciler
needs a kind the DPU cluster does not serve (as a DPU cluster whose RBAC lacks DaemonSets would stop the
DPUService reconciler's watch): the service chains still reach their per-node objects, and an orphan is still
swept, instead of every DPU-cluster reconciler waiting for a cache that never fills.

The controller runs in this process against the bed's apiserver (it is also the DPU cluster).
"""

from __future__ import annotations

import dataclasses
import uuid

from dpf.controller.kube.rest import Kind
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.base import Reconciler, default_reconcilers
from dpf.controller.reconcilers.kinds import DPU_SERVICE_CHAIN, NODE, SERVICE_CHAIN, SERVICE_CHAIN_SET
from dpf.lab import chains
from dpf.lab.bed.kube import ControlPlane
from tests.controlplane.harness import controller_settings, dpu_cluster, eventually, host_rest, run, started
from tests.reliability.test_churn import uplink_chain
from tests.reliability.test_orphan_sweep import _gone, hand_made_set

UNSERVED = Kind("widgets.example.invalid", "v1", "widgets", "Widget")


class NeedsUnservedKind(Reconciler):
    name = "needs-unserved"
    kind = "Widget"

    def setup(self) -> None:
        self.need_dpu_kind(UNSERVED)

    def synced(self) -> bool:
        return self.dpu_synced()


def test_a_watch_that_never_syncs_stops_only_its_readers(kube: ControlPlane, namespace: str) -> None:
    group = uuid.uuid4().hex[:6]
    node = f"dpu-p-{group}"

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        settings = dataclasses.replace(controller_settings(kube.kubeconfig, namespace), orphan_sweep_period=3600.0)
        controller = Controller(settings, [*default_reconcilers(settings), NeedsUnservedKind])
        await started(controller)
        try:
            blocked = next(r for r in controller.reconcilers if isinstance(r, NeedsUnservedKind))
            assert not blocked.synced()
            await rest.create(NODE, chains.dpu_node(node, group, hbn=False))
            await rest.create(DPU_SERVICE_CHAIN, uplink_chain(namespace, group, "live"), namespace)
            await eventually(lambda: rest.get(SERVICE_CHAIN, f"live-{node}", namespace),
                             "the chain's per-node ServiceChain, with another reconciler's watch unsynced")
            await rest.create(SERVICE_CHAIN_SET, hand_made_set(namespace, group, "orphan", str(uuid.uuid4())),
                              namespace)
            await eventually(lambda: _gone(rest, [(SERVICE_CHAIN_SET, "orphan")], namespace),
                             "the orphaned set swept", timeout=15)
            assert not blocked.synced(), "the unserved kind's cache cannot have synced"
            await rest.delete(DPU_SERVICE_CHAIN, "live", namespace)
            await eventually(lambda: _gone(rest, [(DPU_SERVICE_CHAIN, "live"), (SERVICE_CHAIN_SET, "live")],
                                           namespace), "cleanup")
        finally:
            await rest.delete(NODE, node)
            await controller.stop()
            await rest.close()

    run(scenario())
