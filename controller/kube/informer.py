"""A watch cache per kind: list, then watch from the list's resourceVersion; resume from the last seen
resourceVersion (bookmarks keep it fresh) when a watch ends; re-list on 410 Gone or errors.

Reconcilers read objects from here, never from the apiserver. Event handlers are plain callbacks that
only enqueue keys (they must not block or await). A re-list diffs against the store, so objects deleted
while the watch was broken are reported as deletions.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

from dpf.controller.kube.rest import Kind, KubeError, Obj, Rest
from dpf.controller.settings import KubeSettings

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds
Handler = Callable[[str, Obj | None, Obj | None], None]  # (ADDED|MODIFIED|DELETED, old, new)
IndexFunc = Callable[[Obj], Iterable[str]]


def key_of(obj: Obj) -> Key:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


def key_of_event(old: Obj | None, new: Obj | None) -> Key:
    """The key of a handler event's object (the new one, or for a deletion the old one)."""
    obj = new if new is not None else old
    if obj is None:
        raise ValueError("an informer event carries an old or a new object")
    return key_of(obj)


class Informer:
    """Watch cache of one kind in one cluster."""

    def __init__(self, rest: Rest, kind: Kind, settings: KubeSettings, *, namespace: str | None = None,
                 label_selector: str | None = None,
                 on_list: Callable[[Informer], None] | None = None) -> None:
        self.rest = rest
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self.settings = settings
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.relists = 0
        self._store: dict[Key, Obj] = {}
        self._handlers: list[Handler] = []
        self._index_funcs: dict[str, IndexFunc] = {}
        self._indexes: dict[str, dict[str, set[Key]]] = {}
        self._on_list = on_list

    @property
    def name(self) -> str:
        return f"{self.rest.name}/{self.kind}"

    # ---- reads -------------------------------------------------------------------------------------------
    def get(self, namespace: str, name: str) -> Obj | None:
        return self._store.get((namespace, name))

    def list(self) -> list[Obj]:
        return list(self._store.values())

    # `list` is a method of this class, so the builtin is spelled out in annotations after it.
    def by_index(self, index: str, value: str) -> builtins.list[Obj]:
        return [self._store[k] for k in sorted(self._indexes[index].get(value, ()))]

    def index_size(self, index: str, value: str) -> int:
        """How many objects `by_index` would return, without building the list."""
        return len(self._indexes[index].get(value, ()))

    def index_values(self, index: str) -> builtins.list[str]:
        return sorted(v for v, keys in self._indexes[index].items() if keys)

    # ---- registration ------------------------------------------------------------------------------------
    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def add_index(self, name: str, func: IndexFunc) -> None:
        self._index_funcs[name] = func
        self._indexes[name] = {}
        for key, obj in self._store.items():
            self._index(key, None, obj)

    def forget_all(self) -> None:
        """Drop the cache, reporting every object as deleted (its cluster is going away)."""
        for key in list(self._store):
            old = self._store.pop(key)
            self._index(key, old, None)
            self._emit("DELETED", old, None)
        self.synced.clear()

    # ---- the loop ----------------------------------------------------------------------------------------
    async def run(self) -> None:
        delay = self.settings.relist_backoff
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                async for event in self.rest.watch(self.kind, self.resource_version, self.settings.watch_timeout,
                                                   self.namespace, self.label_selector):
                    self._apply(event)
                delay = self.settings.relist_backoff  # a watch that ended normally: resume from resourceVersion
            except KubeError as exc:
                if exc.gone:
                    log.info("%s: resourceVersion %s expired (410 Gone); re-listing", self.name, self.resource_version)
                    need_list = True
                    continue
                log.warning("%s: list/watch failed: %s; retrying in %.1fs", self.name, exc, delay)
                # A broken connection resumes from resourceVersion; an API error (or no list yet) re-lists.
                need_list = need_list or exc.status != 0 or not self.resource_version
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.settings.relist_backoff_max)

    async def _relist(self) -> None:
        listing = await self.rest.list(self.kind, self.namespace, self.label_selector)
        self.relists += 1
        fresh = {key_of(o): o for o in listing["items"]}
        for key in [k for k in self._store if k not in fresh]:
            old = self._store.pop(key)
            self._index(key, old, None)
            self._emit("DELETED", old, None)
        for key, obj in fresh.items():
            previous = self._store.get(key)
            self._store[key] = obj
            self._index(key, previous, obj)
            if previous is None:
                self._emit("ADDED", None, obj)
            elif previous["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._emit("MODIFIED", previous, obj)
        self.resource_version = listing["metadata"]["resourceVersion"]
        self.synced.set()
        if self._on_list:
            self._on_list(self)

    def _apply(self, event: dict[str, Any]) -> None:
        kind, obj = event["type"], event["object"]
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = rv
        if kind == "BOOKMARK":
            return
        key = key_of(obj)
        old = self._store.get(key)
        if kind == "DELETED":
            self._store.pop(key, None)
            self._index(key, old, None)
            self._emit("DELETED", old, None)
            return
        self._store[key] = obj
        self._index(key, old, obj)
        self._emit("ADDED" if old is None else "MODIFIED", old, obj)

    def _index(self, key: Key, old: Obj | None, new: Obj | None) -> None:
        for name, func in self._index_funcs.items():
            index = self._indexes[name]
            for value in func(old) if old is not None else ():
                index.get(value, set()).discard(key)
            for value in func(new) if new is not None else ():
                index.setdefault(value, set()).add(key)

    def _emit(self, kind: str, old: Obj | None, new: Obj | None) -> None:
        for handler in self._handlers:
            try:
                handler(kind, old, new)
            except Exception:
                log.exception("%s: event handler failed", self.name)
