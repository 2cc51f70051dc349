"""The pure allocator (controller/provisioning/allocator.py): Ready clusters with room take DPUs in
(namespace, name) order; full, not Ready and deleted clusters are refused, and the failure says which and why."""

from __future__ import annotations

from typing import Any

from dpf.controller.provisioning.allocator import (
    Allocation,
    AllocationFailure,
    allocate,
    allocate_counted,
    assigned_counts,
)


def cluster(name: str, namespace: str = "dpf", phase: str | None = "Ready", max_nodes: int | None = 2,
            deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    spec: dict[str, Any] = {"type": "static"}
    if max_nodes is not None:
        spec["maxNodes"] = max_nodes
    return {"metadata": meta, "spec": spec, "status": {"phase": phase} if phase else {}}


def dpu(name: str, cluster_name: str | None, cluster_namespace: str | None = "dpf", namespace: str = "dpf",
        deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    target: dict[str, Any] = {}
    if cluster_name is not None:
        target["name"] = cluster_name
    if cluster_namespace is not None:
        target["namespace"] = cluster_namespace
    return {"metadata": meta, "spec": {"nodeName": "w1", "bfb": "b", "cluster": target}}


def test_the_first_ready_cluster_with_room_is_taken() -> None:
    assert allocate([cluster("b"), cluster("a")], []) == Allocation("dpf", "a")
    # Namespace orders before name.
    assert allocate([cluster("a", namespace="z"), cluster("b", namespace="m")], []) == Allocation("m", "b")


def test_a_full_cluster_passes_the_dpu_on_and_deleting_dpus_free_their_slot() -> None:
    dpus = [dpu("d1", "a"), dpu("d2", "a")]
    assert allocate([cluster("a"), cluster("b")], dpus) == Allocation("dpf", "b")
    assert allocate([cluster("a"), cluster("b")], [dpus[0], dpu("d2", "a", deleting=True)]) == Allocation("dpf", "a")
    # DPUs of another cluster, unassigned ones, and same-named clusters in another namespace do not count.
    others = [dpu("d3", "b"), dpu("d4", None), dpu("d5", "a", cluster_namespace="other")]
    assert allocate([cluster("a", max_nodes=1)], others) == Allocation("dpf", "a")


def test_an_empty_cluster_namespace_means_the_dpus_own() -> None:
    dpus = [dpu("d1", "a", cluster_namespace=None)]
    assert allocate([cluster("a", max_nodes=1)], dpus) == AllocationFailure(
        "no DPUCluster can take the DPU: dpf/a is full (1/1 DPUs)")


def test_the_failure_names_every_cluster_and_why() -> None:
    clusters = [cluster("full", max_nodes=1), cluster("broken", phase="NotReady"), cluster("new", phase=None),
                cluster("gone", deleting=True)]
    result = allocate(clusters, [dpu("d1", "full")])
    assert result == AllocationFailure(
        "no DPUCluster can take the DPU: dpf/broken is not Ready (phase NotReady); dpf/full is full (1/1 DPUs); "
        "dpf/gone is being deleted; dpf/new is not Ready (phase Pending)")
    assert allocate([], []) == AllocationFailure("no DPUCluster exists")


def test_max_nodes_defaults_as_the_crd_does() -> None:
    dpus = [dpu(f"d{i}", "a") for i in range(999)]
    assert allocate([cluster("a", max_nodes=None)], dpus) == Allocation("dpf", "a")
    assert isinstance(allocate([cluster("a", max_nodes=None)], [*dpus, dpu("last", "a")]), AllocationFailure)


def test_allocating_from_counts_answers_as_allocating_from_the_dpus() -> None:
    """The DPU reconciler allocates from indexed counts (`allocate_counted`); every case above, so counted, agrees."""
    clusters = [cluster("a", max_nodes=1), cluster("b", phase="NotReady"), cluster("c", max_nodes=2),
                cluster("d", deleting=True)]
    fleets = [[], [dpu("d1", "a")], [dpu("d1", "a"), dpu("d2", "c")], [dpu("d1", "a"), dpu("d2", "c"), dpu("d3", "c")],
              [dpu("d1", "a", deleting=True)], [dpu("d1", "a", cluster_namespace=None)]]
    for dpus in fleets:
        for subset in (clusters, clusters[1:], clusters[:1], []):
            assert allocate_counted(subset, assigned_counts(dpus)) == allocate(subset, dpus), (subset, dpus)
    assert allocate_counted(clusters, {}) == Allocation("dpf", "a")  # a cluster no count names has no DPUs
