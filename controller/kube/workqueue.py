"""A rate-limited work queue: per-key de-duplication, serial per key, exponential back-off per failing key,
and an overall token bucket on retries (client-go's MaxOf(ItemExponentialFailure, Bucket) limiter: fresh
events are never delayed, a storm of failing keys is). Keys are hashable tuples ("reconciler", ...).
Callers: informer handlers and stream callbacks `add()`; the manager's workers `get()`/`done()`.

Semantics (client-go's workqueue): a key queued twice is processed once; a key added while it is being
processed is processed again after `done()`; `retry()` re-adds after the key's back-off; `forget()` resets it;
a key waits for at most one delayed add (`add_after` keeps the earlier time, as client-go's delaying queue), so a
reconciler that asks to be requeued after every pass keeps one cycle, not one more per pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable

from dpf.controller.settings import QueueSettings


class WorkQueue:
    def __init__(self, settings: QueueSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._queue: deque[Hashable] = deque()
        self._queued: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._delayed: list[tuple[float, int, Hashable]] = []  # a heap; entries superseded in _due are skipped
        self._due: dict[Hashable, float] = {}  # key -> when its one delayed add is due
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._tokens = float(settings.burst)
        self._refilled = clock()
        self.added_at: dict[Hashable, float] = {}

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def waiting(self) -> int:
        """Keys scheduled for later (back-off or requeue-after)."""
        return len(self._due)

    def add(self, key: Hashable) -> None:
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.append(key)
        self.added_at.setdefault(key, self._clock())
        self._wakeup.set()

    def add_after(self, key: Hashable, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        due = self._clock() + delay
        if self._due.get(key, float("inf")) <= due:
            return  # already due sooner: that pass will see the state this one wanted to see
        self._due[key] = due
        heapq.heappush(self._delayed, (due, next(self._seq), key))
        self._wakeup.set()

    def retry(self, key: Hashable, delay: float | None = None) -> float:
        """Re-add after `delay` or after the key's exponential back-off; returns the delay used."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        if delay is None:
            delay = min(self.settings.backoff_base * (2 ** failures), self.settings.backoff_max)
        delay = max(delay, self._reserve_token())
        self.add_after(key, delay)
        return delay

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)

    def failures(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> Hashable:
        """The next key to process (marks it processing); waits for keys, due delays and rate tokens."""
        while True:
            self._promote_due()
            if self._queue:
                key = self._queue.popleft()
                self._queued.discard(key)
                self._processing.add(key)
                return key
            wait = self._delayed[0][0] - self._clock() if self._delayed else None
            self._wakeup.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns normally when it is cancelled in the
            # same loop turn as the event fires (a key added as the workers stop), and the worker ran on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wakeup.wait()

    def done(self, key: Hashable) -> None:
        self._processing.discard(key)
        self.added_at.pop(key, None)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def _promote_due(self) -> None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            due, _, key = heapq.heappop(self._delayed)
            if self._due.get(key) != due:
                continue  # superseded by an earlier add_after of the same key
            del self._due[key]
            self.add(key)

    def _reserve_token(self) -> float:
        """Take a token from the bucket (it may go negative: a reservation); seconds until it is valid."""
        now = self._clock()
        self._tokens = min(float(self.settings.burst), self._tokens + (now - self._refilled) * self.settings.qps)
        self._refilled = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.settings.qps
