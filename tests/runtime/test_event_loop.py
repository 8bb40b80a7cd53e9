"""Loop-blocking detection and the event-loop lag sampler, on a real uvicorn server.

An async task's longest step (the time between two of its awaits, i.e. how long it held the
event loop) is measured by driving its coroutine (``runtime/stepping.py``). Every async task
observes ``bgtask_loop_blocking_seconds{task}``; a step above ``loop_block_threshold`` also
adds a ``bgtask.loop_blocked`` event to the task span and logs one warning. The lag sampler
(``loop_lag_interval``) observes how late its sleeps wake up, in
``bgtask_event_loop_lag_seconds``, and stops with the lifespan.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import BackgroundTasks, FastAPI

import tasklens
from tests.runtime.helpers import Probe, captured, scrape_until, serve
from tests.support.metrics import Samples, scrape
from tests.support.polling import wait_for

THRESHOLD = 0.1
BLOCK_SECONDS = 0.2
LAG_INTERVAL = 0.05
SAMPLER = "tasklens.runtime.loop_lag.LoopLagSampler.run"


async def blocks_the_loop() -> None:
    await asyncio.sleep(0)
    time.sleep(BLOCK_SECONDS)  # a sync call inside async code
    await asyncio.sleep(0)


async def well_behaved() -> None:
    for _ in range(3):
        await asyncio.sleep(0.01)


class ExplodingObserver:
    """An observer bug in the lag sink must not stop the sampler or the lifespan."""

    def __init__(self) -> None:
        self.calls = 0

    def loop_lag(self, seconds: float) -> None:
        self.calls += 1
        raise RuntimeError("observer bug")


def test_blocking_task_is_reported_and_lag_sampled(
    probe: Probe, task_logs: list[dict[str, Any]]
) -> None:
    tasks_after_shutdown: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # tasklens' runtime lifespan runs inside this one: it has ended by now.
        tasks_after_shutdown.extend(t.get_name() for t in asyncio.all_tasks())

    app = FastAPI(lifespan=lifespan)

    @app.post("/blocking")
    async def add_blocking(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(blocks_the_loop)

    @app.post("/polite")
    async def add_polite(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(well_behaved)

    @app.get("/tasks")
    async def tasks() -> list[str]:
        return [t.get_name() for t in asyncio.all_tasks()]

    probe.mount_metrics(app)
    exploding = ExplodingObserver()
    tasklens.instrument(
        app,
        observers=[*probe.observers(), exploding],
        metrics_path=None,
        loop_block_threshold=THRESHOLD,
        loop_lag_interval=LAG_INTERVAL,
    )
    lag = "bgtask_event_loop_lag_seconds"
    with (
        captured("tasklens.runtime") as runtime_log,
        captured("uvicorn.error") as server_log,
        serve(app) as server,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):
        assert SAMPLER in client.get("/tasks").json()
        first = scrape(client).value(f"{lag}_count")
        # The count grows while the app runs, one sample per interval.
        wait_for(lambda: scrape(client).value(f"{lag}_count") >= first + 3, 5, "lag samples")
        assert client.post("/polite").status_code == 200
        assert client.post("/blocking").status_code == 200
        scrape_until(
            client,
            lambda s: _finished(s, "blocks_the_loop") == _finished(s, "well_behaved") == 1,
            5,
            "both tasks to finish",
        )
        # The sampler woke up late by about the blocked time, once at least.
        samples = scrape_until(
            client,
            lambda s: s.value(f"{lag}_bucket", le="0.1") < s.value(f"{lag}_count"),
            5,
            "a lag sample above 0.1s",
        )
        assert exploding.calls > 0  # the failing sink was called and the sampler went on

    # Metrics: the blocking task's one observation is in (0.1, 0.25], the other one below.
    blocking = {"task": _name("blocks_the_loop")}
    assert samples.value("bgtask_loop_blocking_seconds_count", **blocking) == 1
    assert samples.value("bgtask_loop_blocking_seconds_bucket", le="0.1", **blocking) == 0
    assert samples.value("bgtask_loop_blocking_seconds_bucket", le="0.25", **blocking) == 1
    assert samples.value("bgtask_loop_blocking_seconds_sum", **blocking) >= BLOCK_SECONDS
    polite_task = {"task": _name("well_behaved")}
    assert samples.value("bgtask_loop_blocking_seconds_count", **polite_task) == 1
    assert samples.value("bgtask_loop_blocking_seconds_bucket", le="0.01", **polite_task) == 1

    # Spans: one bgtask.loop_blocked event, on the blocking task only.
    spans = {s.name: s for s in probe.task_spans()}
    (event,) = spans[f"bgtask {_name('blocks_the_loop')}"].events
    assert event.name == "bgtask.loop_blocked"
    assert event.attributes is not None
    assert BLOCK_SECONDS <= event.attributes["bgtask.step_seconds"] < BLOCK_SECONDS + 0.1
    assert spans[f"bgtask {_name('well_behaved')}"].events == ()

    print(
        f"\nloop blocked by a {BLOCK_SECONDS}s sync call: step "
        f"{event.attributes['bgtask.step_seconds']:.4f}s; polite task's longest step "
        f"{samples.value('bgtask_loop_blocking_seconds_sum', **polite_task):.6f}s; "
        f"{samples.value(f'{lag}_count'):.0f} lag samples at {LAG_INTERVAL}s, "
        f"{samples.value(f'{lag}_count') - samples.value(f'{lag}_bucket', le='0.1'):.0f} "
        "above 0.1s"
    )

    # Logs: exactly one warning, naming the task.
    warnings = [e for e in task_logs if e["event"] == "background task blocked the event loop"]
    assert len(warnings) == 1
    (warning,) = warnings
    assert warning["log_level"] == "warning"
    assert warning["task"] == _name("blocks_the_loop")
    assert warning["step_seconds"] >= BLOCK_SECONDS

    # The sampler stopped with the lifespan: no task of it left, no error.
    assert SAMPLER not in tasks_after_shutdown
    assert server_log.messages(level=40) == []
    observer_errors = [m for m in runtime_log.messages(level=40) if "observer" in m]
    assert observer_errors and all("ExplodingObserver.loop_lag" in m for m in observer_errors)


def _name(func: str) -> str:
    return f"{__name__}.{func}"


def _finished(samples: Samples, func: str) -> float:
    return samples.value("bgtask_finished_total", task=_name(func), executor="event_loop",
                 outcome="success")  # fmt: skip
