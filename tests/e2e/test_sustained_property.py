"""After a bounded burst nothing is behind and nothing is retained (issue 10, structural).

A real uvicorn (in this process, so the request objects can be watched with weak
references) serves 2,000 requests from 16 concurrent keep-alive connections; each request
adds one async and one sync task. Afterwards every task has finished (``bgtask_pending`` 0,
the finished counters exact), and no request cycle survives a garbage collection: the
piled-up cycles of the sustained-load backlog were held by suspended request coroutines.
With ``max_pending`` set (and one thread, 4 ms per sync task, so the bound is reached),
the unfinished tasks never exceed the bound plus what the requests already admitted add
(2 per connection), and the held requests are counted as the README says. No timing is asserted:
throughput is the benchmark's (``python -m bench --cases sustained``).
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI, Request

import tasklens
from tests.runtime.helpers import Probe, serve
from tests.support.metrics import Samples
from tests.support.polling import wait_for

REQUESTS = 2000
CONNECTIONS = 16
TASKS_PER_REQUEST = 2
BOUND = 8
KINDS = (("async_noop", "event_loop"), ("sync_noop", "thread_pool"))  # task, executor


async def async_noop(n: int) -> None:
    return None


def sync_noop(n: int, sleep: float) -> None:
    if sleep:
        time.sleep(sleep)


async def _burst(base_url: str) -> list[int]:
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:

        async def connection(first: int) -> None:
            for n in range(first, REQUESTS, CONNECTIONS):
                statuses.append((await client.get(f"/load/{n}")).status_code)

        await asyncio.gather(*(connection(i) for i in range(CONNECTIONS)))
    return statuses


@pytest.mark.parametrize("bounded", [False, True], ids=["unbounded", "max_pending"])
def test_burst_drains_to_zero_and_retains_no_request(bounded: bool) -> None:
    probe = Probe()
    app = FastAPI()
    cycles: weakref.WeakSet[Any] = weakref.WeakSet()
    seen_unfinished: list[int] = []
    sleep = 0.004 if bounded else 0.0  # bounded: one thread, <= 250 sync tasks/s

    @app.get("/load/{n}")
    async def load(n: int, request: Request, background_tasks: BackgroundTasks) -> dict[str, int]:
        cycles.add(request)
        cycles.add(background_tasks)
        background_tasks.add_task(async_noop, n)
        background_tasks.add_task(sync_noop, n, sleep)
        seen_unfinished.append(runner.unfinished)
        return {"n": n}

    options: dict[str, Any] = {"max_pending": BOUND, "threadpool_size": 1} if bounded else {}
    runner = tasklens.instrument(app, observers=probe.observers(), metrics_path=None, **options)
    try:
        with serve(app) as server:
            statuses = asyncio.run(_burst(server.base_url))
            assert statuses == [200] * REQUESTS

            def drained() -> Samples | None:
                samples = probe.samples()
                finished = sum(
                    samples.value("bgtask_finished_total", task=f"{__name__}.{name}",
                                  executor=executor, outcome="success")
                    for name, executor in KINDS
                )  # fmt: skip
                # Settled: a thread-pool token goes back after its task's finish hooks.
                settled = samples.value("bgtask_threadpool_tokens", state="borrowed") == 0
                return samples if finished == REQUESTS * TASKS_PER_REQUEST and settled else None

            samples = wait_for(drained, 30, "every task to finish and its token back")
        assert not [t for t in threading.enumerate() if t.name == "uvicorn"]

        def released() -> bool:
            gc.collect()
            return len(cycles) == 0

        wait_for(released, 5, "every request cycle to be collected")
    finally:
        probe.close()

    assert samples.value("bgtask_pending") == 0
    for name, executor in KINDS:
        task = f"{__name__}.{name}"
        assert samples.value("bgtask_enqueued_total", task=task) == REQUESTS
        assert samples.value("bgtask_in_progress", task=task, executor=executor) == 0
    assert samples.value("bgtask_threadpool_tokens", state="borrowed") == 0
    delayed = samples.value("bgtask_admission_delayed_total")
    if not bounded:
        assert delayed == 0
        return
    assert runner.unfinished == 0
    # The bound holds: what exceeds it is only what requests already admitted added.
    assert max(seen_unfinished) <= BOUND + TASKS_PER_REQUEST * CONNECTIONS
    # One slow thread behind 16 connections: the bound was reached, and every held request
    # is counted once, its wait too.
    assert 0 < delayed == runner.admission_delayed <= REQUESTS
    waited = samples.value("bgtask_admission_wait_seconds_total")
    assert waited == pytest.approx(runner.admission_wait_seconds)
    assert waited > 0
