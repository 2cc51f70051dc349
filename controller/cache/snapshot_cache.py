"""The snapshot cache: the latest Snapshot per (node, type) and the watches of connected streams.

Reconcilers `set()` snapshots, with the reason for every object they held back (a bad spec, a port an
elder object holds), so a status can say why an object is not on its node (`held_back()`);
`stream_server.py` waits on a node's `Watch` and reads `get()`. Setting an
unchanged version wakes nobody. Only types registered with `serve()` are answered: an agent subscribing
to a type no reconciler produces gets nothing (and keeps its data plane) instead of an empty set.
`ready` is set once every source has synced: before that, no state is pushed, so a restarted controller
never sends a partial view. Never talks to Kubernetes or gRPC.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType

from dpf.controller.cache.snapshot import Snapshot


class Watch:
    """Wakes one stream when any of its node's snapshots changes."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.changed = asyncio.Event()


class SnapshotCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._snapshots: dict[tuple[str, str], Snapshot] = {}
        self._set_at: dict[tuple[str, str], float] = {}
        self._held_back: dict[tuple[str, str], Mapping[str, str]] = {}
        self._watches: dict[str, set[Watch]] = {}
        self._served: set[str] = set()
        self._clock = clock
        self.ready = asyncio.Event()

    def mark_ready(self) -> None:
        """Every source has synced: streams may push from now on."""
        self.ready.set()
        for watches in self._watches.values():
            for watch in watches:
                watch.changed.set()

    def serve(self, type_url: str) -> None:
        self._served.add(type_url)

    def served(self, type_url: str) -> bool:
        return type_url in self._served

    def set(self, node: str, snapshot: Snapshot, held_back: Mapping[str, str] | None = None) -> bool:
        """Publish `snapshot` for `node`; True (and watchers woken) if its version changed. `held_back`: name ->
        why, for the objects meant for this node that the snapshot leaves out."""
        key = (node, snapshot.type_url)
        self._held_back[key] = MappingProxyType(dict(held_back or {}))
        current = self._snapshots.get(key)
        if current is not None and current.version == snapshot.version:
            return False
        self._snapshots[key] = snapshot
        self._set_at[key] = self._clock()
        for watch in self._watches.get(node, ()):
            watch.changed.set()
        return True

    def get(self, node: str, type_url: str) -> Snapshot:
        return self._snapshots.get((node, type_url)) or Snapshot.empty(type_url)

    def held_back(self, node: str, type_url: str) -> Mapping[str, str]:
        """Why each object left out of `node`'s latest snapshot of `type_url` was left out."""
        return self._held_back.get((node, type_url)) or MappingProxyType({})

    def set_at(self, node: str, type_url: str) -> float | None:
        """Monotonic time the current snapshot was published (for the push-to-ACK lag metric)."""
        return self._set_at.get((node, type_url))

    def nodes(self, type_url: str) -> list[str]:
        return sorted(n for (n, t) in self._snapshots if t == type_url)

    def watch(self, node: str) -> Watch:
        watch = Watch(node)
        self._watches.setdefault(node, set()).add(watch)
        watch.changed.set()  # a new watch looks at the current state at once
        return watch

    def cancel(self, watch: Watch) -> None:
        watches = self._watches.get(watch.node)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._watches[watch.node]
