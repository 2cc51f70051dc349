"""Per-attachment locks: ADD, DEL, CHECK and resync of one `containerID/ifname` never overlap."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]  # no unbounded growth with pod churn
            else:
                self._locks[key] = (lock, users - 1)

    def busy(self, key: str) -> bool:
        return key in self._locks
