"""``bgtask_pending`` is never stuck: a ``BackgroundTask`` made after its request ended (by
a detached task, or a fire-and-forget coroutine that copied the request's context) and never
run is not counted; one that runs is counted when it runs. Real uvicorn, real /metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import BackgroundTasks, FastAPI
from starlette.background import BackgroundTask
from starlette.background import BackgroundTasks as StarletteBackgroundTasks

import tasklens
from tests.runtime.helpers import Probe, scrape_until, serve

RAN: list[str] = []
_KEEP: set[asyncio.Task[Any]] = set()


def _noop(tag: str) -> None:
    RAN.append(tag)


def _fail() -> None:
    raise RuntimeError("first task fails")


async def _orphan_maker() -> None:
    BackgroundTask(_noop, "never")  # made, never run: Starlette would just drop it
    await BackgroundTask(_noop, "run-by-the-task")()  # made and run by the task itself


async def _later() -> None:
    await asyncio.sleep(0.05)  # the request is over by now
    BackgroundTask(_noop, "never-either")
    RAN.append("later")


def build(probe: Probe) -> FastAPI:
    app = FastAPI()

    @app.post("/detached-orphan")
    def detached_orphan(background_tasks: BackgroundTasks) -> str:
        background_tasks.add_task(_orphan_maker)
        return "ok"

    @app.post("/fire-and-forget")
    async def fire_and_forget() -> str:
        task = asyncio.get_running_loop().create_task(_later())
        _KEEP.add(task)
        task.add_done_callback(_KEEP.discard)
        return "ok"

    @app.post("/skipped-list")
    def skipped_list(background_tasks: BackgroundTasks) -> str:
        inner = StarletteBackgroundTasks()
        inner.add_task(_noop, "inner-never")
        background_tasks.add_task(_fail)
        background_tasks.add_task(inner)  # skipped (on_error="stop"): inner never runs
        return "ok"

    probe.mount_metrics(app)
    return app


def test_pending_returns_to_zero(probe: Probe) -> None:
    RAN.clear()
    app = build(probe)
    tasklens.instrument(
        app, mode="detached", on_error="stop", observers=probe.observers(), metrics_path=None
    )
    with serve(app) as server, httpx.Client(base_url=server.base_url) as client:
        for path in ("/detached-orphan", "/fire-and-forget", "/skipped-list"):
            assert client.post(path).status_code == 200
        samples = scrape_until(
            client,
            lambda s: s.total("bgtask_finished_total") >= 5 and "later" in RAN,
            10,
            "every task finished",
        )
        samples = scrape_until(
            client, lambda s: s.value("bgtask_pending") == 0, 5, "pending back to 0"
        )
    assert sorted(RAN) == ["later", "run-by-the-task"]
    finished = {
        (dict(k)["task"].rsplit(".", 1)[-1], dict(k)["outcome"]): v
        for k, v in samples.series("bgtask_finished_total").items()
        if v
    }
    assert finished == {
        ("_orphan_maker", "success"): 1,
        ("_noop", "success"): 1,  # counted when the detached task ran it
        ("_fail", "failure"): 1,
        ("BackgroundTasks", "skipped"): 1,
        ("_noop", "abandoned"): 1,  # the skipped list's inner task, never started
    }
    assert samples.total("bgtask_enqueued_total") == 5
    assert samples.value("bgtask_pending") == 0
