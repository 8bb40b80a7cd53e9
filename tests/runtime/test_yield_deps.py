"""Detached mode's warning about yield dependencies (``runtime/yield_deps.py``).

FastAPI runs a yield dependency's cleanup once the response is sent. Inline, tasks run
before that; detached, they run after it, so a task given a request-scoped resource (a DB
session from ``Depends(get_db)``) may find it closed. At startup, detached mode logs one
warning naming every route that takes BackgroundTasks and has a yield dependency.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI

import tasklens
from tasklens.runtime.yield_deps import routes_at_risk
from tests.runtime.helpers import captured, serve

WARNING_START = "tasklens: mode='detached': routes "


def get_session() -> Iterator[str]:
    yield "session"


async def get_async_session() -> AsyncIterator[str]:
    yield "session"


def schedules(background_tasks: BackgroundTasks) -> BackgroundTasks:
    return background_tasks


def _noop() -> None:
    return None


def build_app() -> FastAPI:
    app = FastAPI()

    @app.post("/risky")
    def risky(
        background_tasks: BackgroundTasks, session: Annotated[str, Depends(get_session)]
    ) -> None:
        background_tasks.add_task(_noop)

    @app.post("/risky-nested")
    async def risky_nested(
        # Not Annotated[BackgroundTasks, ...]: FastAPI 0.115 refuses Depends on that type.
        tasks: Annotated[Any, Depends(schedules)],
        session: Annotated[str, Depends(get_async_session)],
    ) -> None:
        tasks.add_task(_noop)

    @app.post("/plain")
    def plain(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(_noop)

    @app.get("/yield-only")
    def yield_only(session: Annotated[str, Depends(get_session)]) -> str:
        return session

    router = APIRouter(prefix="/admin", dependencies=[Depends(get_session)])

    @router.post("/reindex")
    def reindex(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(_noop)

    jobs = APIRouter(prefix="/jobs")

    @jobs.post("/run")
    async def run_job(
        background_tasks: BackgroundTasks, session: Annotated[str, Depends(get_async_session)]
    ) -> None:
        background_tasks.add_task(_noop)

    @jobs.post("/status")
    def job_status(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(_noop)

    router.include_router(jobs)  # nested; the outer router's yield dependency applies too
    app.include_router(router)
    plain_router = APIRouter(prefix="/public")

    @plain_router.post("/ping")
    def public_ping(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(_noop)

    app.include_router(plain_router)

    sub = FastAPI()

    @sub.post("/export")
    def export(
        background_tasks: BackgroundTasks, session: Annotated[str, Depends(get_session)]
    ) -> None:
        background_tasks.add_task(_noop)

    @sub.post("/ping")
    def ping(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(_noop)

    app.mount("/v2", sub)  # its tasks run on this app's runtime too
    return app


RISKY = [
    "/risky",
    "/risky-nested",
    "/admin/reindex",
    "/admin/jobs/run",
    "/admin/jobs/status",
    "/v2/export",
]


def test_routes_at_risk() -> None:
    assert routes_at_risk(build_app()) == RISKY


@pytest.mark.parametrize(("mode", "expected"), [("detached", RISKY), ("inline", None)])
def test_one_startup_warning_names_the_routes(mode: str, expected: list[str] | None) -> None:
    app = build_app()
    tasklens.instrument(app, mode=mode, observers=[], metrics_path=None)
    with captured("tasklens.runtime") as log:
        with serve(app):
            at_startup = [r for r in log.records if r.getMessage().startswith(WARNING_START)]
        after_shutdown = [r for r in log.records if r.getMessage().startswith(WARNING_START)]
    assert after_shutdown == at_startup  # logged at startup, once
    if expected is None:
        assert at_startup == []
        return
    (record,) = at_startup
    assert record.levelname == "WARNING"
    assert record.args is not None
    named = str(record.args[0]).split(", ")  # type: ignore[index]
    assert named == expected
    for safe in ("/plain", "/yield-only", "/public/ping", "/v2/ping"):
        assert safe not in named


def test_host_routes_are_scanned_not_fatal() -> None:
    """A ``Host`` route has no path: the scan used to fail (``str + None``) and stop the
    detached app's startup. Routes under a Host are named ``host/path``, nested either way."""
    from starlette.routing import Host, Mount, Router

    app = build_app()
    hosted = FastAPI()

    @hosted.post("/export")
    def hosted_export(
        background_tasks: BackgroundTasks, session: Annotated[str, Depends(get_session)]
    ) -> None:
        background_tasks.add_task(_noop)

    app.router.routes.append(Host("api.example.test", hosted))
    app.router.routes.append(
        Mount("/tenants", routes=[Host("{tenant}.example.test", hosted), Mount("/empty", Router())])
    )
    assert routes_at_risk(app) == [
        *RISKY,
        "api.example.test/export",
        "{tenant}.example.test/tenants/export",
    ]
    tasklens.instrument(app, mode="detached", observers=[], metrics_path=None)
    with captured("tasklens.runtime") as log, serve(app):
        warned = [r for r in log.records if r.getMessage().startswith(WARNING_START)]
    (record,) = warned
    assert "api.example.test/export" in record.getMessage()
