"""No silent non-runs (issue 11, item 9): a callable whose body would never run is rejected at
``add_task``; a sync task that returns a coroutine is a failure, its coroutine closed.

Starlette counts both as run: ``BackgroundTask(agen)`` calls the async generator function in
the thread pool (a generator object, nothing iterated), and a sync function returning a
coroutine leaves it unawaited ("coroutine ... was never awaited").
"""

from __future__ import annotations

import functools
import gc
import warnings
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI
from opentelemetry.trace import StatusCode

import tasklens
from tasklens.runtime.options import RuntimeOptions
from tasklens.runtime.runner import TaskRunner
from tests.runtime.helpers import Probe, scrape_until, serve

M = __name__
RAN: list[str] = []


async def stream_rows(n: int) -> AsyncIterator[int]:
    RAN.append("stream_rows")
    yield n


def read_rows(n: int) -> Iterator[int]:
    RAN.append("read_rows")
    yield n


class Exporter:
    async def rows(self) -> AsyncIterator[int]:
        RAN.append("Exporter.rows")
        yield 1


class AsyncGenCallable:
    async def __call__(self) -> AsyncIterator[int]:
        RAN.append("AsyncGenCallable")
        yield 1


async def notify(user: str) -> None:
    RAN.append(f"notify {user}")


def schedules_notify(user: str) -> Coroutine[Any, Any, None]:
    """A sync function that forgot to await: returns notify's coroutine, never started."""
    return notify(user)


def after() -> None:
    RAN.append("after")


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


REJECTED = [
    ("async generator function", stream_rows, f"an async generator function, {M}.stream_rows"),
    ("partial of one", functools.partial(stream_rows, 3),
     f"an async generator function, {M}.stream_rows"),
    ("bound method", Exporter().rows, f"an async generator function, {M}.Exporter.rows"),
    ("callable object", AsyncGenCallable(),
     f"an async generator function, {M}.AsyncGenCallable"),
    ("generator function", read_rows, f"a generator function, {M}.read_rows"),
]  # fmt: skip


@pytest.mark.parametrize(("func", "what"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED])
def test_generator_functions_are_rejected_at_enqueue(func: Any, what: str) -> None:
    runner = TaskRunner(RuntimeOptions(), [])
    with pytest.raises(TypeError) as raised:
        runner.enqueue(func, (), {})
    assert str(raised.value) == (
        f"add_task() got {what}: calling it only creates a generator, its body would never "
        "run; iterate it inside a regular (async) def task"
    )
    # Rejected every time (never cached as a task), and nothing was named after it.
    with pytest.raises(TypeError):
        runner.enqueue(func, (), {})
    assert runner.namer.names() == set()


def test_add_task_of_an_async_generator_fails_in_the_endpoint(probe: Probe) -> None:
    """On a real server: ``add_task`` raises at once, in the endpoint (which can answer
    with the message); nothing is counted, the body never ran, other tasks still run."""
    app = FastAPI()

    @app.post("/export")
    async def export(background_tasks: BackgroundTasks) -> dict[str, str]:
        try:
            background_tasks.add_task(stream_rows, 5)
        except TypeError as exc:
            background_tasks.add_task(after)
            return {"error": str(exc)}
        return {"error": ""}

    probe.mount_metrics(app)
    tasklens.instrument(app, observers=probe.observers(), metrics_path=None)
    with serve(app) as server, httpx.Client(base_url=server.base_url) as client:
        response = client.post("/export")
        assert response.status_code == 200
        samples = scrape_until(
            client, lambda s: s.total("bgtask_finished_total") == 1, 5, "the other task"
        )
    assert response.json()["error"].startswith(
        f"add_task() got an async generator function, {M}.stream_rows: calling it only "
    )
    assert RAN == ["after"]
    assert samples.total("bgtask_enqueued_total") == 1
    assert samples.total("bgtask_finished_total", task=f"{M}.after", outcome="success") == 1


def test_sync_task_returning_a_coroutine_is_a_failure(
    probe: Probe, task_logs: list[dict[str, Any]]
) -> None:
    """On a real server: the sync task returning a coroutine fails with a TypeError that says
    what to do; the coroutine is closed (no "never awaited" warning); the next task runs."""
    app = FastAPI()

    @app.post("/signup")
    async def signup(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(schedules_notify, "ada")
        background_tasks.add_task(after)

    probe.mount_metrics(app)
    tasklens.instrument(app, observers=probe.observers(), metrics_path=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with serve(app) as server, httpx.Client(base_url=server.base_url) as client:
            assert client.post("/signup").status_code == 200
            samples = scrape_until(
                client, lambda s: s.total("bgtask_finished_total") == 2, 5, "both tasks"
            )
        gc.collect()
    never_awaited = [w for w in caught if "never awaited" in str(w.message)]
    assert never_awaited == []
    assert RAN == ["after"]  # notify's body never ran, and the next task did
    name = f"{M}.schedules_notify"
    message = (
        f"background task {name} returned a coroutine that nothing awaits; make it async def "
        "or await it"
    )
    assert samples.value("bgtask_finished_total", task=name, executor="thread_pool",
                         outcome="failure") == 1  # fmt: skip
    assert samples.value("bgtask_failures_total", task=name, exception="TypeError") == 1
    assert samples.value("bgtask_finished_total", task=f"{M}.after", executor="thread_pool",
                         outcome="success") == 1  # fmt: skip
    (span,) = [s for s in probe.task_spans() if s.name == f"bgtask {name}"]
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "TypeError"
    assert [e.attributes["exception.message"] for e in span.events if e.attributes] == [message]
    failed = [e for e in task_logs if e["event"] == "background task failed"]
    assert [(e["task"], e["log_level"]) for e in failed] == [(name, "error")]


def test_sync_task_returning_an_awaitable_is_a_failure() -> None:
    """Any awaitable (here an object with ``__await__``) is a failure too, named by type."""

    class Later:
        def __await__(self) -> Iterator[None]:
            yield None

    def make_later() -> Later:
        return Later()

    probe = Probe()
    app = FastAPI()

    @app.post("/later")
    async def later(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(make_later)

    probe.mount_metrics(app)
    tasklens.instrument(app, observers=probe.observers(), metrics_path=None)
    try:
        with serve(app) as server, httpx.Client(base_url=server.base_url) as client:
            assert client.post("/later").status_code == 200
            samples = scrape_until(
                client, lambda s: s.total("bgtask_finished_total") == 1, 5, "the task"
            )
        (span,) = probe.task_spans()
    finally:
        probe.close()
    name = f"{M}.test_sync_task_returning_an_awaitable_is_a_failure.<locals>.make_later"
    assert samples.value("bgtask_failures_total", task=name, exception="TypeError") == 1
    assert [e.attributes["exception.message"] for e in span.events if e.attributes] == [
        f"background task {name} returned an awaitable (Later) that nothing awaits; make it "
        "async def or await it"
    ]
