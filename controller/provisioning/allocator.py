"""Which DPUCluster a DPU joins when its `spec.cluster.name` is empty (upstream DPF v24.10's allocator).

A cluster can take a DPU when its phase is Ready, it is not being deleted, and fewer than `spec.maxNodes`
DPUs are assigned to it (DPUs whose spec.cluster names it, not counting DPUs being deleted: their slot is
freed as soon as deletion starts).

Difference from upstream, on purpose: upstream only ever looks at the alphabetically first cluster and fails
when that one is not Ready or full. Here every cluster is considered, in (namespace, name) order, and the
first one that can take the DPU wins; so with a single cluster the behaviour is upstream's, and with several
a full or broken cluster no longer blocks the others. When none can, the failure names each cluster and why.

Pure: objects from the watch caches in, a frozen answer out. The caller writes `spec.cluster` (guarded by
resourceVersion, so two DPUs allocated from one stale view cannot both take a cluster's last slot unnoticed
for long: the next pass sees the count).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

DEFAULT_MAX_NODES = 1000  # the CRD default of DPUCluster spec.maxNodes


@dataclass(frozen=True)
class Allocation:
    namespace: str
    name: str


@dataclass(frozen=True)
class AllocationFailure:
    message: str
    """Names the clusters looked at and why each was refused, e.g.
    "no DPUCluster can take the DPU: ns/a is not Ready (phase NotReady); ns/b is full (3/3 DPUs)"."""


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


def assigned_cluster(dpu: Obj) -> tuple[str, str] | None:
    """The (namespace, name) of the DPUCluster a DPU's spec names; an empty namespace means the DPU's own."""
    cluster = (dpu.get("spec") or {}).get("cluster") or {}
    name = cluster.get("name")
    if not name:
        return None
    return cluster.get("namespace") or dpu["metadata"].get("namespace", ""), name


def assigned_counts(dpus: Sequence[Obj]) -> Counter[tuple[str, str]]:
    """DPUs per cluster, not counting DPUs being deleted."""
    return Counter(key for d in dpus
                   if not d["metadata"].get("deletionTimestamp") and (key := assigned_cluster(d)) is not None)


def allocate(clusters: Sequence[Obj], dpus: Sequence[Obj]) -> Allocation | AllocationFailure:
    """The first cluster (by namespace/name) that is Ready and has room, or why there is none."""
    return allocate_counted(clusters, assigned_counts(dpus))


def allocate_counted(clusters: Sequence[Obj], counts: Mapping[tuple[str, str], int]) -> Allocation | AllocationFailure:
    """`allocate` from the DPUs per cluster (as `assigned_counts` counts them) instead of the DPUs: a caller that
    keeps the counts indexed answers without a pass over every DPU (`controller/reconcilers/dpu.py`)."""
    if not clusters:
        return AllocationFailure("no DPUCluster exists")
    refusals: list[str] = []
    for cluster in sorted(clusters, key=_key):
        namespace, name = _key(cluster)
        label = f"{namespace}/{name}"
        phase = (cluster.get("status") or {}).get("phase") or "Pending"
        max_nodes = int((cluster.get("spec") or {}).get("maxNodes") or DEFAULT_MAX_NODES)
        if cluster["metadata"].get("deletionTimestamp"):
            refusals.append(f"{label} is being deleted")
        elif phase != "Ready":
            refusals.append(f"{label} is not Ready (phase {phase})")
        elif counts.get((namespace, name), 0) >= max_nodes:
            refusals.append(f"{label} is full ({counts[(namespace, name)]}/{max_nodes} DPUs)")
        else:
            return Allocation(namespace, name)
    return AllocationFailure("no DPUCluster can take the DPU: " + "; ".join(refusals))
