"""Named asyncio tasks started through one guarded helper: long-lived loops (`start`) and one-offs (`start_once`).

A supervised task that crashes or returns unexpectedly is logged and reported to `on_failure`
(the controller main ends the process so systemd/kubelet restarts it); tasks stop in reverse start
order with a timeout each. Never use bare `asyncio.create_task` for a long-lived loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class TaskGroup:
    """Owns named tasks; `stop()` cancels them newest first and waits up to `timeout` each."""

    def __init__(self, name: str, on_failure: Callable[[str, BaseException | None], None] | None = None) -> None:
        self.name = name
        self._tasks: list[asyncio.Task[Any]] = []
        self._on_failure = on_failure
        self._stopping = False

    def start(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self.name}/{name}")
        task.add_done_callback(self._done)
        self._tasks.append(task)
        return task

    def start_once(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A best-effort one-off (e.g. an Event at the start of a leader term): it may return, and its failure is
        logged, never fatal; `stop()` still cancels it if it is running."""
        task = asyncio.create_task(coro, name=f"{self.name}/{name}")
        task.add_done_callback(self._once_done)
        self._tasks.append(task)
        return task

    @staticmethod
    def _once_done(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("one-off task %s failed: %r", task.get_name(), exc)

    def _done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()  # retrieved even while stopping, so asyncio never warns about it
        if self._stopping:
            return
        if exc is not None:
            log.error("task %s crashed: %r", task.get_name(), exc, exc_info=exc)
        else:
            log.error("task %s exited unexpectedly", task.get_name())
        if self._on_failure is not None:
            self._on_failure(task.get_name(), exc)

    async def stop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - a bound per task, not one deadline
        self._stopping = True
        try:
            while self._tasks:  # popped one by one: a task started while we wait is stopped too, never dropped
                task = self._tasks.pop()
                if not task.done():
                    task.cancel()
                await asyncio.wait({task}, timeout=timeout)
                if not task.done():
                    log.error("task %s did not stop within %.1fs", task.get_name(), timeout)
        finally:
            self._stopping = False
