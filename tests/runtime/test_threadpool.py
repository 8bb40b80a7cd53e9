"""Sync tasks run on tasklens' own thread-pool limiter, not on the one of sync endpoints.

Starlette runs sync background tasks with ``run_in_threadpool``: the same anyio default
limiter (40 tokens) as ``def`` endpoints and sync dependencies. A burst of slow sync tasks
then takes every token and a ``def`` endpoint waits behind the burst. tasklens gives sync
tasks a limiter of their own (``threadpool_size``, default 16), so endpoints keep theirs.

Sizes: 80 tasks of 0.5 s are two waves of the default limiter (40 tokens), so the plain app's
``/health`` waits about a second (bounded, no need to shrink the default limiter), and five
waves of tasklens' 16 tokens (2.5 s to drain).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import httpx
from fastapi import BackgroundTasks, FastAPI

import runtime
from runtime.options import RuntimeOptions
from tests.runtime.helpers import Probe, scrape, scrape_until, serve, value, wait_for

TASKS = 80
TASK_SECONDS = 0.5
DEFAULT_LIMITER_TOKENS = 40  # anyio's default thread limiter, used by run_in_threadpool
THREADPOOL_SIZE = RuntimeOptions().threadpool_size


@dataclass
class Concurrency:
    running: int = 0
    peak: int = 0
    done: int = 0
    first_start: float | None = None
    health_ran: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def build_app(concurrency: Concurrency) -> FastAPI:
    app = FastAPI()

    def resize_image(n: int) -> None:
        with concurrency.lock:
            if concurrency.first_start is None:
                concurrency.first_start = time.perf_counter()
            concurrency.running += 1
            concurrency.peak = max(concurrency.peak, concurrency.running)
        time.sleep(TASK_SECONDS)
        with concurrency.lock:
            concurrency.running -= 1
            concurrency.done += 1

    @app.post("/images/{n}")
    async def upload(n: int, background_tasks: BackgroundTasks) -> dict[str, int]:
        background_tasks.add_task(resize_image, n)
        return {"n": n}

    @app.get("/health")
    def health() -> dict[str, str]:  # sync: runs on the default thread limiter
        concurrency.health_ran = time.perf_counter()
        return {"status": "ok"}

    return app


async def _burst(base_url: str) -> None:
    limits = httpx.Limits(max_connections=TASKS)
    async with httpx.AsyncClient(base_url=base_url, timeout=10, limits=limits) as client:
        responses = await asyncio.gather(*(client.post(f"/images/{n}") for n in range(TASKS)))
    assert [r.status_code for r in responses] == [200] * TASKS


def _health_latency(base_url: str) -> float:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        start = time.perf_counter()
        assert client.get("/health").status_code == 200
        return time.perf_counter() - start


def test_sync_endpoint_stays_responsive_while_sync_tasks_saturate(probe: Probe) -> None:
    # Plain FastAPI: tasks and the endpoint share the default limiter.
    plain = Concurrency()
    with serve(build_app(plain)) as server:
        asyncio.run(_burst(server.base_url))
        plain_latency = _health_latency(server.base_url)
        wait_for(lambda: plain.done == TASKS, 10, "plain tasks to finish")

    # tasklens: tasks get a limiter of their own.
    lens = Concurrency()
    app = build_app(lens)
    probe.mount_metrics(app)
    runtime.instrument(app, observers=probe.observers(), metrics_path=None)
    with serve(app) as server, httpx.Client(base_url=server.base_url, timeout=10) as client:
        asyncio.run(_burst(server.base_url))
        lens_latency = _health_latency(server.base_url)
        saturated = scrape_until(
            client,
            lambda s: value(s, "bgtask_threadpool_tokens", state="borrowed") == THREADPOOL_SIZE,
            5,
            "every token borrowed",
        )
        assert value(saturated, "bgtask_threadpool_tokens", state="total") == THREADPOOL_SIZE
        wait_for(lambda: lens.done == TASKS, 10, "tasklens tasks to finish")
        drained = scrape(client)

    print(
        f"\n/health during {TASKS} x {TASK_SECONDS}s sync tasks: plain {plain_latency:.4f}s, "
        f"tasklens {lens_latency:.4f}s ({plain_latency / lens_latency:.0f}x)"
    )
    assert plain.peak == DEFAULT_LIMITER_TOKENS
    assert lens.peak == THREADPOOL_SIZE == 16
    # Plain: the limiter is FIFO, so /health ran only once both waves of 40 had run.
    assert plain.first_start is not None and plain.health_ran is not None
    assert plain.health_ran - plain.first_start >= 2 * TASK_SECONDS
    assert lens.first_start is not None and lens.health_ran is not None
    assert lens.health_ran - lens.first_start < TASK_SECONDS
    assert lens_latency < 0.5
    assert plain_latency >= 3 * lens_latency
    assert value(drained, "bgtask_threadpool_tokens", state="borrowed") == 0
    assert value(drained, "bgtask_threadpool_tokens", state="total") == THREADPOOL_SIZE
    name = f"{__name__}.build_app.<locals>.resize_image"
    assert value(drained, "bgtask_finished_total", task=name, executor="thread_pool",
                 outcome="success") == TASKS  # fmt: skip
    # Wave k of 16 tasks waited about k x 0.5 s for a slot: 16 x (0 + 0.5 + 1 + 1.5 + 2) = 80 s
    # in all, less the spread of the burst's hand-offs, plus each wave's overhead (measured:
    # 78-85 s). The bounds leave room for a slow machine, not for an unrecorded wait.
    assert value(drained, "bgtask_threadpool_wait_seconds_count", task=name) == TASKS
    wait_sum = value(drained, "bgtask_threadpool_wait_seconds_sum", task=name)
    print(f"thread-pool wait of {TASKS} tasks: {wait_sum:.1f}s in all")
    assert 60 < wait_sum < 100
