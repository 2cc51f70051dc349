"""Work-queue keys as types: what a key asks for is its class, never a tag string or a tuple length.

Every key names the reconciler that handles it (`reconciler`), which is how the manager routes it. Keys are
frozen (hashable, so the queue deduplicates them) and compare by value. Reconcilers that predate these keep
plain tuples whose first element is the reconciler's name; the manager routes both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkKey:
    reconciler: str


@dataclass(frozen=True)
class NodeSnapshotKey(WorkKey):
    """Recompute and publish one node's snapshot of the reconciler's NodeState type."""

    node: str


@dataclass(frozen=True)
class NodeNackKey(WorkKey):
    """Record the node's latest NACK of the reconciler's type as Warning Events on the objects it names."""

    node: str


@dataclass(frozen=True)
class ClusterObjectKey(WorkKey):
    """One namespaced object in one DPU cluster (a ServiceInterfaceSet, a ServiceChainSet)."""

    cluster: str
    namespace: str
    name: str


@dataclass(frozen=True)
class ObjectKey(WorkKey):
    """One namespaced object in the host cluster (a DPUServiceIPAM)."""

    namespace: str
    name: str


def reconciler_of(key: object) -> str | None:
    """The name of the reconciler a key belongs to (None: not a key any reconciler made)."""
    if isinstance(key, WorkKey):
        return key.reconciler
    if isinstance(key, tuple) and key and isinstance(key[0], str):
        return key[0]
    return None
