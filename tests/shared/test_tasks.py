"""The controller's TaskGroup: a long-lived loop that ends is a failure the process reports; a one-off is not."""

from __future__ import annotations

import asyncio

from dpf.shared.tasks import TaskGroup


def test_loop_exit_is_fatal_and_one_off_failure_is_not(caplog) -> None:
    failures: list[tuple[str, BaseException | None]] = []

    async def scenario() -> None:
        group = TaskGroup("t", lambda name, exc: failures.append((name, exc)))
        blocked = asyncio.Event()

        async def boom() -> None:
            raise RuntimeError("apiserver said 500")

        async def done() -> None:
            return None

        async def waits() -> None:
            await blocked.wait()

        group.start_once("event", boom())
        group.start_once("quick", done())
        lingering = group.start_once("lingering", waits())
        await asyncio.sleep(0.01)
        assert failures == [], "one-offs may return or fail without ending the process"

        group.start("loop", done())
        await asyncio.sleep(0.01)
        assert [name for name, _ in failures] == ["t/loop"], "a loop that returns is reported"

        await group.stop(timeout=1)
        assert lingering.cancelled(), "stop() cancels a one-off still running"

    asyncio.run(scenario())
    assert "one-off task t/event failed: RuntimeError('apiserver said 500')" in caplog.text


def test_stop_also_stops_a_task_started_while_it_waits() -> None:
    async def scenario() -> None:
        group = TaskGroup("t")
        late: list[asyncio.Task[None]] = []

        async def starts_another_when_cancelled() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                late.append(group.start("late", asyncio.Event().wait()))
                raise

        group.start("first", starts_another_when_cancelled())
        await asyncio.sleep(0)
        await group.stop(timeout=1)
        assert len(late) == 1
        assert late[0].cancelled(), "a task started during stop() is stopped, not dropped"

    asyncio.run(scenario())
