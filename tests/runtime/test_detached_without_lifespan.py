"""Detached mode needs the app's own lifespan: without it (an app mounted under another app,
to which Starlette sends no lifespan events; a server run with ``lifespan="off"``) every
request fails with ``DetachedWithoutLifespan`` naming the cause and the fix. Before, the
tasks silently ran inline with a "lifespan='off'?" warning and no shutdown flush ran.
Real uvicorn servers on loopback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import BackgroundTasks, FastAPI
from starlette.applications import Starlette
from starlette.routing import Mount

import tasklens
from tasklens.runtime.attach import DetachedWithoutLifespan
from tests.runtime.helpers import ListHandler, Probe, captured, serve
from tests.support.polling import wait_for


def _sub_app(events: list[str], probe: Probe) -> FastAPI:
    sub = FastAPI()

    async def job() -> None:
        events.append("ran")

    @sub.get("/job")
    async def add(background_tasks: BackgroundTasks) -> dict[str, bool]:
        background_tasks.add_task(job)
        return {"ok": True}

    tasklens.instrument(sub, mode="detached", observers=probe.observers(), metrics_path=None)
    return sub


def _app_errors(log: ListHandler) -> list[BaseException]:
    return [r.exc_info[1] for r in log.records if r.exc_info and r.exc_info[1] is not None]


def test_detached_app_mounted_under_another_app_fails_naming_cause_and_fix(
    probe: Probe,
) -> None:
    events: list[str] = []
    outer = Starlette(routes=[Mount("/sub", _sub_app(events, probe))])
    with (
        captured("uvicorn.error") as server_log,
        captured("tasklens.runtime") as runtime_log,
        serve(outer) as server,
    ):
        # A connection each: uvicorn < 0.30 closes the connection after an app exception.
        for _ in range(2):  # every request fails, not only the first
            assert httpx.get(server.base_url + "/sub/job", timeout=10).status_code == 500
    (error, _) = _app_errors(server_log)
    assert isinstance(error, DetachedWithoutLifespan)
    message = str(error)
    assert message.startswith(
        "tasklens: mode='detached' in an app mounted at '/sub', whose lifespan never started: "
        "Starlette sends no lifespan events to mounted apps"
    )
    assert "Fix: instrument the outermost app (the one the server runs)" in message
    assert "`async with sub.router.lifespan_context(sub):`" in message
    assert events == []  # the endpoint never ran: no task scheduled, none lost uncounted
    assert probe.samples().total("bgtask_enqueued_total") == 0
    assert not [m for m in runtime_log.messages() if "running tasks inline" in m]


def test_detached_app_served_with_lifespan_off_fails_naming_cause(probe: Probe) -> None:
    events: list[str] = []
    app = _sub_app(events, probe)
    with (
        captured("uvicorn.error") as server_log,
        serve(app, lifespan="off") as server,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):
        assert client.get("/job").status_code == 500
    (error,) = _app_errors(server_log)
    assert isinstance(error, DetachedWithoutLifespan)
    assert str(error).startswith(
        "tasklens: mode='detached' in this app, whose lifespan never started"
    )
    assert "a server run with lifespan='off' sends none at all" in str(error)
    assert events == []


def test_mounted_app_whose_lifespan_the_outer_app_enters_runs_detached(probe: Probe) -> None:
    """The documented fix: the outer app's lifespan enters the sub-app's; tasks run
    detached and the sub-app's shutdown drains them (its summary is logged)."""
    events: list[str] = []
    sub = _sub_app(events, probe)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with sub.router.lifespan_context(sub):
            yield

    outer = Starlette(routes=[Mount("/sub", sub)], lifespan=lifespan)
    with captured("tasklens.runtime") as runtime_log:
        with serve(outer) as server, httpx.Client(base_url=server.base_url) as client:
            assert client.get("/sub/job").status_code == 200
            wait_for(lambda: events == ["ran"], 5, "the detached task")
        assert probe.samples().total("bgtask_finished_total", outcome="success") == 1
    assert "tasklens: detached tasks at shutdown: success=1" in runtime_log.messages()
    assert not [r for r in runtime_log.records if r.levelno >= logging.WARNING]
