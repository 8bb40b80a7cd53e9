"""Sync tasks run on tasklens' own thread-pool limiter, not on the one of sync endpoints.

Starlette runs sync background tasks with ``run_in_threadpool``: the same anyio default
limiter (40 tokens) as ``def`` endpoints and sync dependencies. A burst of slow sync tasks
then takes every token and a ``def`` endpoint waits behind the burst. tasklens gives sync
tasks a limiter of their own (``threadpool_size``, default 16), so endpoints keep theirs.

The 80 slow tasks block until the test releases them (at most 10 s), instead of sleeping a
fixed time: the limiter stays saturated for exactly as long as the test needs, however long
the burst of 80 requests takes on a loaded machine, and then drains at once. The plain
app's ``/health`` is held ``HOLD`` seconds (the time the tasks hold every token) and must
still be waiting then; tasklens' ``/health`` must answer while all 80 tasks still block.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import httpx
from fastapi import BackgroundTasks, FastAPI

import tasklens
from tasklens.runtime.options import RuntimeOptions
from tests.runtime.helpers import Probe, scrape_until, serve
from tests.support.polling import wait_for

TASKS = 80
HOLD = 0.6  # how long the plain app's tasks keep every token while /health waits
DEFAULT_LIMITER_TOKENS = 40  # anyio's default thread limiter, used by run_in_threadpool
THREADPOOL_SIZE = RuntimeOptions().threadpool_size


@dataclass
class Tasks:
    """The slow sync tasks of one app, and when its /health ran."""

    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: int = 0
    running: int = 0
    peak: int = 0
    done: int = 0
    started_when_health_ran: int | None = None

    def resize_image(self, n: int) -> None:
        with self.lock:
            self.started += 1
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            assert self.release.wait(10), "never released"
        finally:
            with self.lock:
                self.running -= 1
                self.done += 1


def build_app(tasks: Tasks) -> FastAPI:
    app = FastAPI()

    def resize_image(n: int) -> None:
        tasks.resize_image(n)

    @app.post("/images/{n}")
    async def upload(n: int, background_tasks: BackgroundTasks) -> dict[str, int]:
        background_tasks.add_task(resize_image, n)
        return {"n": n}

    @app.get("/health")
    def health() -> dict[str, str]:  # sync: runs on the default thread limiter
        with tasks.lock:
            tasks.started_when_health_ran = tasks.started
        return {"status": "ok"}

    return app


async def _burst(base_url: str) -> None:
    limits = httpx.Limits(max_connections=TASKS)
    async with httpx.AsyncClient(base_url=base_url, timeout=10, limits=limits) as client:
        responses = await asyncio.gather(*(client.post(f"/images/{n}") for n in range(TASKS)))
    assert [r.status_code for r in responses] == [200] * TASKS


class HealthProbe(threading.Thread):
    """GET /health in a thread, timed (the client is made beforehand: that takes ~30 ms)."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=base_url, timeout=10)
        self.seconds: float | None = None

    def run(self) -> None:
        with self.client:
            start = time.perf_counter()
            response = self.client.get("/health")
            self.seconds = time.perf_counter() - start
        assert response.status_code == 200


def test_sync_endpoint_stays_responsive_while_sync_tasks_saturate(probe: Probe) -> None:
    # Plain FastAPI: tasks and the endpoint share the default limiter.
    plain = Tasks()
    try:
        with serve(build_app(plain)) as server:
            asyncio.run(_burst(server.base_url))
            wait_for(lambda: plain.running == DEFAULT_LIMITER_TOKENS, 5, "40 tasks running")
            health = HealthProbe(server.base_url)
            health.start()
            health.join(HOLD)
            assert health.is_alive(), "/health answered while every token was taken"
            plain.release.set()
            health.join(10)
            wait_for(lambda: plain.done == TASKS, 10, "plain tasks to finish")
    finally:
        plain.release.set()
    plain_latency = health.seconds
    assert plain_latency is not None

    # tasklens: tasks get a limiter of their own.
    lens = Tasks()
    app = build_app(lens)
    probe.mount_metrics(app)
    tasklens.instrument(app, observers=probe.observers(), metrics_path=None)
    try:
        with serve(app) as server, httpx.Client(base_url=server.base_url, timeout=10) as client:
            asyncio.run(_burst(server.base_url))
            saturated = scrape_until(
                client,
                lambda s: s.value("bgtask_threadpool_tokens", state="borrowed") == THREADPOOL_SIZE,
                5,
                "every token borrowed",
            )
            wait_for(lambda: lens.running == THREADPOOL_SIZE, 5, "16 tasks running")
            health = HealthProbe(server.base_url)
            health.start()
            health.join(10)
            lens_latency = health.seconds
            assert lens.done == 0  # answered while every task still blocked
            lens.release.set()
            wait_for(lambda: lens.done == TASKS, 10, "tasklens tasks to finish")
            # The tasks' side effects come before their finish hooks and token release.
            name = f"{__name__}.build_app.<locals>.resize_image"
            drained = scrape_until(
                client,
                lambda s: s.value("bgtask_finished_total", task=name, executor="thread_pool",
                                  outcome="success") == TASKS
                and s.value("bgtask_threadpool_tokens", state="borrowed") == 0,
                10,
                "every task finished and every token back",
            )  # fmt: skip
    finally:
        lens.release.set()
    assert lens_latency is not None

    print(
        f"\n/health while {TASKS} sync tasks saturate: plain {plain_latency:.4f}s "
        f"(tasks held every token {HOLD}s), tasklens {lens_latency:.4f}s"
    )
    # Plain: /health waited for the tasks to give tokens back (the limiter is FIFO: for the
    # 40 queued tasks too, but their threads may start in any order, so no exact count).
    assert plain.peak == DEFAULT_LIMITER_TOKENS
    assert plain.started_when_health_ran is not None
    assert plain.started_when_health_ran > DEFAULT_LIMITER_TOKENS
    assert plain_latency >= HOLD
    # tasklens: /health ran while only the 16 tasks holding tasklens' tokens had started.
    assert lens.peak == lens.started_when_health_ran == THREADPOOL_SIZE == 16
    assert lens_latency < 0.5
    assert plain_latency >= 3 * lens_latency
    assert saturated.value("bgtask_threadpool_tokens", state="total") == THREADPOOL_SIZE
    assert drained.value("bgtask_threadpool_tokens", state="borrowed") == 0
    assert drained.value("bgtask_threadpool_tokens", state="total") == THREADPOOL_SIZE
    assert drained.value("bgtask_finished_total", task=name, executor="thread_pool",
                 outcome="success") == TASKS  # fmt: skip
    # Every task's wait for a slot is recorded; the 64 beyond the 16 tokens waited at least
    # as long as /health took to answer.
    assert drained.value("bgtask_threadpool_wait_seconds_count", task=name) == TASKS
    waited = drained.value("bgtask_threadpool_wait_seconds_sum", task=name)
    assert waited >= (TASKS - THREADPOOL_SIZE) * lens_latency
