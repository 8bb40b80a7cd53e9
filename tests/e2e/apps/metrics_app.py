"""Apps for the /metrics end-to-end tests: 500 task names' worth of series, an auth check
(``METRICS_TOKEN``), and an instrumented app mounted under ``/sub``."""

from __future__ import annotations

import os

from fastapi import BackgroundTasks, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import tasklens

TASK_NAMES = 500
TOKEN = os.environ.get("METRICS_TOKEN")

tasklens.setup(service_name="metrics-e2e")


def _task_functions() -> list[object]:
    """500 distinct functions (one code object each), alternately sync and async; the
    functions whose number is a multiple of 5 fail, so failure series exist too."""
    namespace: dict[str, object] = {"__name__": __name__}
    for i in range(TASK_NAMES):
        prefix = "async " if i % 2 else ""
        raise_line = "raise ValueError('seed')" if i % 5 == 0 else "return None"
        exec(f"{prefix}def task_{i:03d}():\n    {raise_line}\n", namespace)
    return [namespace[f"task_{i:03d}"] for i in range(TASK_NAMES)]


TASKS = _task_functions()


def metrics_auth(request: Request) -> bool:
    return request.headers.get("authorization") == f"Bearer {TOKEN}"


app = FastAPI()


@app.post("/seed")
async def seed(background_tasks: BackgroundTasks) -> dict[str, int]:
    for task in TASKS:
        background_tasks.add_task(task)  # type: ignore[arg-type]
    return {"tasks": len(TASKS)}


@app.post("/burst")
async def burst(background_tasks: BackgroundTasks) -> dict[str, int]:
    """The 400 tasks that succeed: load without 100 failure logs per request."""
    succeeding = [task for i, task in enumerate(TASKS) if i % 5]
    for task in succeeding:
        background_tasks.add_task(task)  # type: ignore[arg-type]
    return {"tasks": len(succeeding)}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


tasklens.instrument(
    app, max_task_names=TASK_NAMES, **({"metrics_auth": metrics_auth} if TOKEN else {})
)


async def sub_health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


sub_app = Starlette(routes=[Route("/health", sub_health)])
tasklens.instrument(sub_app)
mounted = Starlette(routes=[Mount("/sub", app=sub_app)])
