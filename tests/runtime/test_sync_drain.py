"""Sync tasks of every response drain through one queue (issue 10, item 1).

Before, each run of sync tasks was one ``anyio.to_thread.run_sync`` hand-off on a 16-token
limiter, and a token came back only when the awaiting request cycle had resumed on the
event loop: under a busy loop a 1 µs task held its token ~11 ms and request cycles piled up
behind the limiter (docs/performance.md, "Sustained load"). Now worker threads take the next
job themselves: while the loop is busy, queued sync tasks still run. These tests use the
runner directly (no server), so they assert exact counts, not timings.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from tasklens.runtime.options import RuntimeOptions
from tasklens.runtime.outcomes import (
    OUTCOME_ABANDONED,
    OUTCOME_FAILURE,
    OUTCOME_SKIPPED,
    OUTCOME_SUCCESS,
)
from tasklens.runtime.runner import TaskRunner

RESPONSES = 20


def _drain_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "tasklens-sync")


def test_queued_sync_tasks_run_while_the_loop_is_busy() -> None:
    """20 responses, one sync task each, one thread: all 20 run while the loop is blocked
    (the thread takes each next task itself). Before: a token came back only through the
    loop, so at most one ran while it was blocked."""
    runner = TaskRunner(RuntimeOptions(threadpool_size=1), [])
    ran: list[int] = []
    all_ran = threading.Event()

    def task(i: int) -> None:
        ran.append(i)
        if len(ran) == RESPONSES:
            all_ran.set()

    async def main() -> int:
        records = [runner.enqueue(task, (i,), {}) for i in range(RESPONSES)]
        batches = [asyncio.ensure_future(runner.run_batch([r])) for r in records]
        for _ in range(3):
            await asyncio.sleep(0)  # every response's batch handed off
        all_ran.wait(5)  # the loop blocked: nothing comes back to it meanwhile
        during = len(ran)
        await asyncio.gather(*batches)
        assert [r.outcome for r in records] == [OUTCOME_SUCCESS] * RESPONSES
        # Each job's first task: its wait for a thread, measured in the thread.
        assert all(r.threadpool_wait is not None and r.threadpool_wait >= 0 for r in records)
        return during

    during = asyncio.run(main())
    assert during == RESPONSES
    assert ran == list(range(RESPONSES))  # one thread, one FIFO queue: in hand-off order


def test_cancel_scope_waits_for_the_running_task_and_abandons_the_rest() -> None:
    """A cancel scope cancelled while the first of three sync tasks runs: that one finishes
    (a thread is not interrupted; the wait is shielded, as ``to_thread.run_sync`` without
    abandon_on_cancel), the two after it never start and are counted abandoned."""
    runner = TaskRunner(RuntimeOptions(), [])
    started, release = threading.Event(), threading.Event()
    after: list[str] = []

    def blocks() -> None:
        started.set()
        assert release.wait(10)

    async def main() -> tuple[list[str | None], bool]:
        records = [
            runner.enqueue(blocks, (), {}),
            runner.enqueue(after.append, ("second",), {}),
            runner.enqueue(after.append, ("third",), {}),
        ]
        scopes: list[anyio.CancelScope] = []

        async def body() -> None:
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                await runner.run_batch(records)

        task = asyncio.ensure_future(body())
        while not started.is_set():
            await asyncio.sleep(0.01)
        scopes[0].cancel()
        await asyncio.sleep(0.2)
        waited = not task.done()  # still waiting for the thread
        release.set()
        await task  # the scope absorbs its own cancellation
        return [r.outcome for r in records], waited

    outcomes, waited = asyncio.run(main())
    assert waited
    assert outcomes == [OUTCOME_SUCCESS, OUTCOME_ABANDONED, OUTCOME_ABANDONED]
    assert after == []


def test_task_cancel_raises_at_once_and_the_thread_starts_no_further_task() -> None:
    """A native ``task.cancel()`` goes through the shield (as with ``to_thread.run_sync``):
    the caller gets CancelledError at once and the unstarted tasks are counted abandoned.
    The thread then starts none of them (before, it ran them after they were counted)."""
    runner = TaskRunner(RuntimeOptions(), [])
    started, release = threading.Event(), threading.Event()
    after: list[str] = []

    def blocks() -> None:
        started.set()
        assert release.wait(10)

    async def main() -> tuple[list[str | None], bool]:
        records = [
            runner.enqueue(blocks, (), {}),
            runner.enqueue(after.append, ("second",), {}),
            runner.enqueue(after.append, ("third",), {}),
        ]
        task = asyncio.ensure_future(runner.run_batch(records))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        raised = False
        try:
            await asyncio.wait_for(task, 5)
        except asyncio.CancelledError:
            raised = True
        outcomes = [r.outcome for r in records]
        release.set()
        await asyncio.sleep(0.3)  # time for the thread to (wrongly) run the others
        return outcomes, raised

    outcomes, raised = asyncio.run(main())
    assert raised
    # The running one included: it is counted abandoned once, whenever it ends.
    assert outcomes == [OUTCOME_ABANDONED] * 3
    assert after == []


@pytest.mark.parametrize(("on_error", "expected"), [
    ("continue", [OUTCOME_SUCCESS, OUTCOME_FAILURE, OUTCOME_SUCCESS]),
    ("stop", [OUTCOME_SUCCESS, OUTCOME_FAILURE, OUTCOME_SKIPPED]),
])  # fmt: skip
def test_one_jobs_tasks_run_in_order_with_failures_isolated(
    on_error: str, expected: list[str]
) -> None:
    runner = TaskRunner(RuntimeOptions(on_error=on_error), [])  # type: ignore[arg-type]
    seen: list[str] = []

    def fails() -> None:
        seen.append("fails")
        raise ValueError("boom")

    async def main() -> list[Any]:
        records = [
            runner.enqueue(seen.append, ("first",), {}),
            runner.enqueue(fails, (), {}),
            runner.enqueue(seen.append, ("third",), {}),
        ]
        try:
            await runner.run_batch(records)
        except ValueError:
            assert on_error == "stop"
        return [r.outcome for r in records]

    assert asyncio.run(main()) == expected
    assert seen == ["first", "fails", "third"][: 3 if on_error == "continue" else 2]


def test_a_runner_used_from_a_new_loop_gets_a_new_drain_and_the_old_threads_end() -> None:
    """A TestClient without ``with`` runs every request on a loop of its own."""
    runner = TaskRunner(RuntimeOptions(threadpool_size=2), [])
    before = _drain_threads()
    done: list[int] = []

    def run_once(i: int) -> Callable[[], Any]:
        async def main() -> None:
            await runner.run_batch([runner.enqueue(done.append, (i,), {})])

        return main

    for i in range(3):
        asyncio.run(run_once(i)())
    assert done == [0, 1, 2]
    # Threads of the drains of the first two loops were told to end; the last one's remain.
    for _ in range(200):
        if _drain_threads() <= before + 1:
            break
        threading.Event().wait(0.01)
    assert _drain_threads() == before + 1
