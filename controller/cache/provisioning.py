"""Per host node, the snapshot of `dpf.v1.DPUProvisioning` resources its host agent holds: one per DPU of the
host that is past phase Pending (resource name "<namespace>/<dpu>"). Removing a DPU's resource tells the
agent to release that DPU (cancel a flash, let the rshim go, undo the host network).

The DPU reconciler sets or clears one DPU's resource per reconcile; every change republishes the node's
snapshot through the SnapshotCache. A host with no DPU resource still gets its (empty) snapshot once its
agent connects. Streams push nothing before the leader's initial reconcile of every DPU is done (the
cache's `ready`), so an agent never sees a partial set and never cancels a flash because of a restart.
"""

from __future__ import annotations

from dpf.controller.cache.snapshot import Snapshot
from dpf.controller.cache.snapshot_cache import SnapshotCache
from dpf.proto import versioning
from dpf.proto.v1 import provisioning_pb2 as ppb

TYPE_URL = versioning.type_url(ppb.DPUProvisioning)
STATUS_TYPE_URL = versioning.type_url(ppb.DPUProvisioningStatus)
HOST_INFO_TYPE_URL = versioning.type_url(ppb.HostInfo)


def build(resources: dict[str, ppb.DPUProvisioning]) -> Snapshot:
    """One node's snapshot from resource name -> desired provisioning. Pure."""
    return Snapshot.build(TYPE_URL, sorted(resources.items()))


class HostProvisioning:
    """The desired DPUProvisioning of every DPU, grouped by host node, published as snapshots."""

    def __init__(self, cache: SnapshotCache) -> None:
        self._cache = cache
        self._by_node: dict[str, dict[str, ppb.DPUProvisioning]] = {}
        self._node_of: dict[str, str] = {}  # resource name -> the node it is published on
        cache.serve(TYPE_URL)

    def set(self, node: str, name: str, desired: ppb.DPUProvisioning | None) -> bool:
        """Publish (or with None remove) one DPU's resource; True if `node`'s snapshot changed. A resource
        that moved to another node (not possible for a DPU, whose nodeName is immutable) is removed there."""
        changed = False
        previous = self._node_of.get(name)
        if previous is not None and previous != node:
            changed |= self._drop(previous, name)
        if desired is None:
            return self._drop(node, name) or changed
        resources = self._by_node.setdefault(node, {})
        if resources.get(name) == desired:
            self._ensure_published(node)
            return changed
        resources[name] = desired
        self._node_of[name] = node
        return self._publish(node) or changed

    def get(self, node: str, name: str) -> ppb.DPUProvisioning | None:
        return self._by_node.get(node, {}).get(name)

    def names(self) -> dict[str, str]:
        """resource name -> node, for every published resource."""
        return dict(self._node_of)

    def ensure_node(self, node: str) -> None:
        """Make sure `node` has a snapshot, an empty one if none of its DPUs has a resource."""
        self._ensure_published(node)

    def clear(self) -> None:
        """Forget everything (leadership lost): the next term rebuilds from the DPU objects."""
        self._by_node.clear()
        self._node_of.clear()

    def _drop(self, node: str, name: str) -> bool:
        self._node_of.pop(name, None)
        resources = self._by_node.get(node)
        if resources is None or name not in resources:
            self._ensure_published(node)
            return False
        del resources[name]
        return self._publish(node)

    def _ensure_published(self, node: str) -> None:
        if node not in self._cache.nodes(TYPE_URL):
            self._publish(node)

    def _publish(self, node: str) -> bool:
        return self._cache.set(node, build(self._by_node.get(node, {})))
