"""Work-queue keys as types: what a key asks for is its class, never a tag string or a tuple length.

Every key names the reconciler that handles it (`reconciler`), which is how the manager routes it. Keys are
frozen (hashable, so the queue deduplicates them) and compare by value.
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
    """One namespaced object in the host cluster (a DPUServiceIPAM, a BFB, a DPUSet, ...)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class KindObjectKey(WorkKey):
    """One namespaced host-cluster object of one of several kinds a reconciler serves (in-use protection)."""

    kind: str
    namespace: str
    name: str


@dataclass(frozen=True)
class SweepKey(WorkKey):
    """A whole-cluster pass with no object of its own (the orphan sweep)."""


def reconciler_of(key: object) -> str | None:
    """The name of the reconciler a key belongs to (None: not a key any reconciler made)."""
    return key.reconciler if isinstance(key, WorkKey) else None
