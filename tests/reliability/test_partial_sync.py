"""A DPU-cluster watch that can never sync stops only the reconcilers that read its kind. Here one more reconciler
needs a kind the DPU cluster does not serve (as a DPU cluster whose RBAC lacks DaemonSets would stop the
DPUService reconciler's watch): the service chains still reach their per-node objects, and an orphan is still
swept, instead of every DPU-cluster reconciler waiting for a cache that never fills.

The controller runs in this process against the bed's apiserver (it is also the DPU cluster).
"""

from __future__ import annotations

from dpf.controller.kube.rest import Kind
from dpf.controller.reconcilers.base import Reconciler
from dpf.lab.bed.kube import ControlPlane
from tests.controlplane.harness import run
from tests.reliability.test_orphan_sweep import live_chain_and_swept_orphan

UNSERVED = Kind("widgets.example.invalid", "v1", "widgets", "Widget")


class NeedsUnservedKind(Reconciler):
    name = "needs-unserved"
    kind = "Widget"

    def setup(self) -> None:
        self.need_dpu_kind(UNSERVED)

    def synced(self) -> bool:
        return self.dpu_synced()


def test_a_watch_that_never_syncs_stops_only_its_readers(kube: ControlPlane, namespace: str) -> None:
    controller = run(live_chain_and_swept_orphan(kube, namespace, [NeedsUnservedKind]))
    blocked = next(r for r in controller.reconcilers if isinstance(r, NeedsUnservedKind))
    assert not blocked.synced(), "the unserved kind's cache cannot have synced: the test proved nothing"
