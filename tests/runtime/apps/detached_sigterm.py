"""A detached-mode app for the SIGTERM test: ``uvicorn tests.runtime.apps.detached_sigterm:app``.

``POST /jobs/{n}`` adds ``TASKS_PER_REQUEST`` tasks: one quick, then slow ones. After
shutdown (tasklens' runtime lifespan runs inside this app's lifespan, so the code after
``yield`` runs once detached tasks were drained, cancelled or abandoned) the app writes the
final ``bgtask_*`` counters as JSON to ``$TASKLENS_TEST_SUMMARY``.
"""

from __future__ import annotations

import asyncio
import logging
import os

from fastapi import BackgroundTasks, FastAPI

import tasklens
from tests.runtime.apps.shutdown_summary import lifespan

TASKS_PER_REQUEST = int(os.environ.get("TASKLENS_TEST_TASKS_PER_REQUEST", "10"))
SLOW_SECONDS = float(os.environ.get("TASKLENS_TEST_SLOW_SECONDS", "5"))
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")


app = FastAPI(lifespan=lifespan)


async def quick_job(n: int) -> None:
    await asyncio.sleep(0)


async def slow_job(n: int) -> None:
    await asyncio.sleep(SLOW_SECONDS)


@app.post("/jobs/{n}")
async def jobs(n: int, background_tasks: BackgroundTasks) -> dict[str, int]:
    background_tasks.add_task(quick_job, n)
    for _ in range(TASKS_PER_REQUEST - 1):
        background_tasks.add_task(slow_job, n)
    return {"n": n}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


tasklens.instrument(
    app,
    mode="detached",
    max_concurrency=int(os.environ.get("TASKLENS_TEST_MAX_CONCURRENCY", "50")),
    shutdown_timeout=float(os.environ.get("TASKLENS_TEST_SHUTDOWN_TIMEOUT", "1.0")),
    loop_lag_interval=None,
)
