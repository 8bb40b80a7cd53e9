"""Memory stays flat: the task namer's cache keeps no per-request object alive (issue 11, 2).

A real uvicorn server (in this process, so weak references can prove the objects died)
serves thousands of requests, each scheduling tasks made of per-request objects: a builtin
bound method of a connection (``conn.close``), a bound method of a session, a callable
instance, a class defined inside the endpoint (the class itself is the task) and an
instance of such a class. Each object carries a 50 KB payload, so a leak shows in RSS.

Contexts do outlive their request (an idle anyio worker thread keeps its last job in its
locals; asyncio keeps a cancelled keep-alive timer, with its request's context, until its
deadline): the records they reach no longer hold their callables and arguments once run.
Spans are made by the SDK and dropped (no exporter), so memory is the runtime's alone.
"""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
import time
import weakref
from typing import Any

import httpx
from fastapi import BackgroundTasks, FastAPI
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, generate_latest

import tasklens
from tasklens.telemetry.logs import LogObserver
from tasklens.telemetry.metrics import MetricsObserver, TaskMetrics
from tasklens.telemetry.spans import SpanObserver
from tests.runtime.helpers import serve
from tests.support.metrics import Samples
from tests.support.polling import wait_for

M = __name__
PAYLOAD = 50_000
WARM_UP = 200
REQUESTS = 2_000
TASKS_PER_REQUEST = 5
OBJECTS_PER_REQUEST = 6
#: Generous: the leak this guards against keeps 2 payloads a request (the connection, the
#: per-request class): 200 MB over these requests.
MAX_RSS_GROWTH = 60 * 2**20
KEEP_ALIVE = 1


class TrackedConnection(sqlite3.Connection):
    """A sqlite3 connection that can be weakly referenced (the C type cannot)."""


class Session:
    def __init__(self) -> None:
        self.payload = bytearray(PAYLOAD)

    def close(self) -> None:
        self.payload = bytearray()


class Job:
    def __init__(self) -> None:
        self.payload = bytearray(PAYLOAD)

    def __call__(self) -> None:
        return None


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(refs: list[weakref.ref[Any]]) -> FastAPI:
    app = FastAPI()

    @app.get("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, bool]:
        conn = sqlite3.connect(":memory:", factory=TrackedConnection, check_same_thread=False)
        conn.payload = bytearray(PAYLOAD)  # type: ignore[attr-defined]
        payload = bytearray(PAYLOAD)

        class Report:
            """A class made per request, passed as the task (called: an instance)."""

            data = payload

            def __init__(self) -> None:
                self.ready = True

        class Notify:
            """A per-request class whose instance is the task."""

            data = payload

            def __call__(self) -> None:
                return None

        session, job, notify = Session(), Job(), Notify()
        background_tasks.add_task(conn.close)
        background_tasks.add_task(session.close)
        background_tasks.add_task(job)
        background_tasks.add_task(Report)
        background_tasks.add_task(notify)
        refs.extend(weakref.ref(o) for o in (conn, session, job, Report, Notify, notify))
        return {"ok": True}

    return app


def test_per_request_callables_are_collected_and_the_cache_stays_bounded() -> None:
    refs: list[weakref.ref[Any]] = []
    registry = CollectorRegistry()
    provider = TracerProvider()
    observers = [SpanObserver(provider), MetricsObserver(TaskMetrics(registry)), LogObserver()]
    app = build(refs)
    runner = tasklens.instrument(app, observers=observers, metrics_path=None)

    def samples() -> Samples:
        return Samples.parse(generate_latest(registry).decode())

    def requests(client: httpx.Client, count: int, done_before: int) -> None:
        for _ in range(count):
            assert client.get("/work").status_code == 200
        total = (done_before + count) * TASKS_PER_REQUEST
        wait_for(lambda: samples().total("bgtask_finished_total") == total, 60, "tasks")

    try:
        with serve(app, timeout_keep_alive=KEEP_ALIVE) as server:
            with httpx.Client(base_url=server.base_url) as client:
                requests(client, WARM_UP, 0)
                gc.collect()
                cache_after_warm_up = runner.namer.cache_size()
                rss_before = rss_bytes()
                requests(client, REQUESTS, WARM_UP)
            time.sleep(KEEP_ALIVE + 0.5)
            gc.collect()
            rss_after = rss_bytes()
            alive = sum(ref() is not None for ref in refs)
            threads = threading.active_count()
            cache_after = runner.namer.cache_size()
        final = samples()
    finally:
        provider.shutdown()

    growth = rss_after - rss_before
    print(
        f"\nrequests={WARM_UP + REQUESTS} per-request objects={len(refs)} alive={alive} "
        f"threads={threads} "
        f"cache={cache_after_warm_up}->{cache_after} "
        f"rss={rss_before / 2**20:.1f}->{rss_after / 2**20:.1f} MB"
    )
    assert len(refs) == (WARM_UP + REQUESTS) * OBJECTS_PER_REQUEST
    assert alive == 0
    # One entry per distinct callable, whatever the number of requests.
    assert cache_after_warm_up == cache_after == TASKS_PER_REQUEST
    assert growth < MAX_RSS_GROWTH, f"RSS grew {growth / 2**20:.1f} MB"
    # Every task ran and succeeded, named after its function, class or defining class.
    per_request = WARM_UP + REQUESTS
    local = f"{M}.build.<locals>.work.<locals>"
    assert {
        name: final.total("bgtask_finished_total", task=name, outcome="success")
        for name in (
            "sqlite3.Connection.close",
            f"{M}.Session.close",
            f"{M}.Job",
            f"{local}.Report",
            f"{local}.Notify",
        )
    } == {
        "sqlite3.Connection.close": per_request,
        f"{M}.Session.close": per_request,
        f"{M}.Job": per_request,
        f"{local}.Report": per_request,
        f"{local}.Notify": per_request,
    }
