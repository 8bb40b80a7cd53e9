"""Drop-in fidelity: with ``on_error="stop"`` an instrumented app runs its background tasks
exactly as the plain app does, whatever Starlette or FastAPI accept as a task.

Each scenario builds the same app twice; one is instrumented. Both get the same request and
must record the same events in the same order (and the same status); the instrumented one
must also count every task it ran (nothing pending, nothing lost).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks as FastAPIBackgroundTasks
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.applications import Starlette
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Host, Mount, Route, Router

import tasklens
from tests.runtime.helpers import Probe, serve
from tests.support.polling import wait_for

pytestmark = pytest.mark.anyio

Events = list[str]
Scenario = Callable[[Events], Starlette]
MODULE = __name__


class CustomTask(BackgroundTask):
    """A subclass with its own ``__call__`` (FastAPI's own test suite uses this shape)."""

    def __init__(self, events: Events, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events = events

    async def __call__(self) -> None:
        self.events.append("before")
        await super().__call__()
        self.events.append("after")


class AsyncCallable:
    """An object with an async ``__call__`` and no ``.func``: Starlette awaits ``entry()``."""

    def __init__(self, events: Events, tag: str) -> None:
        self.events, self.tag = events, tag

    async def __call__(self) -> None:
        await asyncio.sleep(0)
        self.events.append(self.tag)


class LoggedTasks(BackgroundTasks):
    """A BackgroundTasks subclass with its own ``__call__`` around Starlette's."""

    def __init__(self, events: Events) -> None:
        super().__init__()
        self.events = events

    async def __call__(self) -> None:
        self.events.append("logged-start")
        await super().__call__()
        self.events.append("logged-end")


def _record(events: Events, tag: str) -> None:
    events.append(tag)


async def _arecord(events: Events, tag: str) -> None:
    await asyncio.sleep(0)
    events.append(tag)


def _fail(events: Events, tag: str) -> None:
    events.append(tag)
    raise RuntimeError(tag)


class _Keyword:
    async def __call__(self, *, value: str, events: Events) -> None:
        events.append(value)


# --- scenarios -------------------------------------------------------------------------


def subclass_and_bare_entries(events: Events) -> Starlette:
    """Subclass with its own __call__, partial, callable object, bare awaitable entry."""

    async def endpoint(request: Request) -> Response:
        tasks = BackgroundTasks([CustomTask(events, _record, events, "custom")])
        tasks.add_task(partial(_record, events, "partial"))
        tasks.add_task(_Keyword(), value="async callable", events=events)
        tasks.tasks.append(AsyncCallable(events, "bare"))  # type: ignore[arg-type]
        tasks.add_task(_record, events, "last")
        return PlainTextResponse("ok", background=tasks)

    return Starlette(routes=[Route("/", endpoint)])


def objects_made_outside_the_request(events: Events) -> Starlette:
    """FastAPI's test_background_task_objects: the task objects exist before any request."""
    original = CustomTask(events, _record, events, "custom")
    background = FastAPIBackgroundTasks([original])
    background.add_task(partial(_record, events, "partial"))
    background.add_task(_Keyword(), value="async callable", events=events)
    app = FastAPI()

    @app.get("/")
    async def endpoint() -> JSONResponse:
        return JSONResponse("ok", background=background)

    return app


def nested_task_lists(events: Events) -> Starlette:
    """A BackgroundTasks inside a BackgroundTasks (as an entry and as a task), and a
    BackgroundTasks subclass with its own __call__."""

    async def endpoint(request: Request) -> Response:
        inner = BackgroundTasks()
        inner.add_task(_record, events, "inner-1")
        inner.add_task(_arecord, events, "inner-2")
        as_task = BackgroundTasks()
        as_task.add_task(_arecord, events, "as-task-1")
        as_task.add_task(_record, events, "as-task-2")
        logged = LoggedTasks(events)
        logged.add_task(_record, events, "logged")
        outer = BackgroundTasks()
        outer.add_task(_record, events, "first")
        outer.tasks.append(inner)
        outer.add_task(as_task)
        outer.tasks.append(logged)
        outer.add_task(_arecord, events, "last")
        return PlainTextResponse("ok", background=outer)

    return Starlette(routes=[Route("/", endpoint)])


def failing_subclass_stops_the_rest(events: Events) -> Starlette:
    """on_error="stop": the override's failure ends the list, as in Starlette."""

    async def endpoint(request: Request) -> Response:
        tasks = BackgroundTasks([CustomTask(events, _fail, events, "custom-fails")])
        tasks.add_task(_record, events, "never")
        return PlainTextResponse("ok", background=tasks)

    return Starlette(routes=[Route("/", endpoint)])


def single_subclass_as_background(events: Events) -> Starlette:
    async def endpoint(request: Request) -> Response:
        return PlainTextResponse(
            "ok", background=CustomTask(events, _arecord, events, "custom-single")
        )

    return Starlette(routes=[Route("/", endpoint)])


SCENARIOS: dict[str, tuple[Scenario, Events, dict[str, int]]] = {
    # name: (app factory, events in order, tasks counted per name)
    "subclass_and_bare_entries": (
        subclass_and_bare_entries,
        ["before", "custom", "after", "partial", "async callable", "bare", "last"],
        {
            f"{MODULE}._record": 3,  # custom (the subclass's func), partial, last
            f"{MODULE}._Keyword": 1,
            f"{MODULE}.AsyncCallable": 1,
        },
    ),
    "objects_made_outside_the_request": (
        objects_made_outside_the_request,
        ["before", "custom", "after", "partial", "async callable"],
        {f"{MODULE}._record": 2, f"{MODULE}._Keyword": 1},
    ),
    "nested_task_lists": (
        nested_task_lists,
        [
            "first",
            "inner-1",
            "inner-2",
            "as-task-1",
            "as-task-2",
            "logged-start",
            "logged",
            "logged-end",
            "last",
        ],
        {
            f"{MODULE}._record": 4,
            f"{MODULE}._arecord": 3,
            "starlette.background.BackgroundTasks": 1,  # the list added with add_task
            f"{MODULE}.LoggedTasks": 1,
        },
    ),
    "failing_subclass_stops_the_rest": (
        failing_subclass_stops_the_rest,
        ["before", "custom-fails"],
        {f"{MODULE}._fail": 1, f"{MODULE}._record": 1},  # the second one: skipped
    ),
    "single_subclass_as_background": (
        single_subclass_as_background,
        ["before", "custom-single", "after"],
        {f"{MODULE}._arecord": 1},
    ),
}


async def _get(app: Any, path: str = "/", **kw: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path, **kw)


INLINE = [name for name in SCENARIOS if name != "single_subclass_as_background"]


@pytest.mark.parametrize("name", INLINE)
async def test_instrumented_runs_tasks_exactly_like_plain(name: str, probe: Probe) -> None:
    build, expected, counted = SCENARIOS[name]
    plain_events: Events = []
    events: Events = []
    plain, app = build(plain_events), build(events)
    tasklens.instrument(app, on_error="stop", observers=probe.observers(), metrics_path=None)
    plain_status = (await _get(plain)).status_code
    assert (await _get(app)).status_code == plain_status == 200
    assert plain_events == expected
    assert events == plain_events
    samples = probe.samples()
    assert {
        dict(labels)["task"]: value
        for labels, value in samples.series("bgtask_enqueued_total").items()
    } == counted
    assert samples.total("bgtask_finished_total") == sum(counted.values())
    assert samples.value("bgtask_pending") == 0
    assert len(probe.task_spans()) == sum(counted.values())


@pytest.mark.parametrize(
    "name", ["nested_task_lists", "single_subclass_as_background", "subclass_and_bare_entries"]
)
def test_detached_keeps_the_order_of_nested_lists_and_overrides(name: str, probe: Probe) -> None:
    """Detached: a response's whole list, overrides and nested lists included, runs in
    order in one detached batch (a nested list is not detached a second time; a subclass's
    override around ``super().__call__()`` runs in order)."""
    build, expected, counted = SCENARIOS[name]
    events: Events = []
    app = build(events)
    tasklens.instrument(app, mode="detached", observers=probe.observers(), metrics_path=None)
    with serve(app) as server, httpx.Client(base_url=server.base_url) as client:
        assert client.get("/").status_code == 200
        wait_for(lambda: len(events) >= len(expected), 10, "detached tasks")
    assert events == expected
    samples = probe.samples()
    assert {
        dict(labels)["task"]: value
        for labels, value in samples.series("bgtask_enqueued_total").items()
    } == counted
    assert samples.total("bgtask_finished_total", outcome="success") == sum(counted.values())
    assert samples.value("bgtask_pending") == 0


def _routed_app(events: Events) -> FastAPI:
    """Host and Mount routes, nested both ways, each endpoint adding a task."""

    async def endpoint(request: Request) -> Response:
        tasks = BackgroundTasks()
        tasks.add_task(_record, events, request.url.path)
        return PlainTextResponse("ok", background=tasks)

    app = FastAPI()

    @app.get("/top")
    def top(background_tasks: FastAPIBackgroundTasks) -> str:
        background_tasks.add_task(_record, events, "/top")
        return "ok"

    deep = Mount("/deep", routes=[Route("/x", endpoint)])
    api = Router(routes=[Route("/hosted", endpoint), deep])
    app.router.routes.append(Host("api.example.test", api))
    inner = Router(routes=[Route("/leaf", endpoint), Host("other.example.test", Router())])
    app.router.routes.append(Mount("/v1", routes=[Mount("/inner", app=inner)]))
    return app


def test_host_and_mount_routes_in_detached_mode(probe: Probe) -> None:
    """Detached mode starts with Host routes (the yield-dependency scan used to fail with
    TypeError on a Host's path=None) and runs tasks of Host and Mount routes."""
    events: Events = []
    app = _routed_app(events)
    tasklens.instrument(app, mode="detached", observers=probe.observers(), metrics_path=None)
    with serve(app) as server, httpx.Client(base_url=server.base_url) as client:
        assert client.get("/top").status_code == 200
        assert client.get("/hosted", headers={"host": "api.example.test"}).status_code == 200
        assert client.get("/deep/x", headers={"host": "api.example.test"}).status_code == 200
        assert client.get("/v1/inner/leaf").status_code == 200
        wait_for(lambda: len(events) >= 4, 10, "tasks of routed endpoints")
    assert sorted(events) == ["/deep/x", "/hosted", "/top", "/v1/inner/leaf"]
    samples = probe.samples()
    assert samples.total("bgtask_finished_total", outcome="success") == 4
    assert samples.value("bgtask_pending") == 0


async def test_task_objects_reused_by_every_request_are_counted_each_run(probe: Probe) -> None:
    """One ``BackgroundTasks`` made at import time and given to every response (FastAPI's
    own test suite does this): Starlette runs it each time; each run is counted, not only
    the first."""
    build, expected, counted = SCENARIOS["objects_made_outside_the_request"]
    plain_events: Events = []
    events: Events = []
    plain, app = build(plain_events), build(events)
    tasklens.instrument(app, on_error="stop", observers=probe.observers(), metrics_path=None)
    for _ in range(3):
        assert (await _get(plain)).status_code == 200
        assert (await _get(app)).status_code == 200
    assert events == plain_events == expected * 3
    samples = probe.samples()
    assert {
        dict(labels)["task"]: value
        for labels, value in samples.series("bgtask_enqueued_total").items()
    } == {name: 3 * count for name, count in counted.items()}
    assert samples.total("bgtask_finished_total", outcome="success") == 3 * sum(counted.values())
    assert samples.value("bgtask_pending") == 0
