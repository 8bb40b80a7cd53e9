"""A detached-mode app whose tasks do not end when cancelled:
``uvicorn tests.runtime.apps.detached_stubborn:app``.

``POST /stubborn`` adds a task that catches every cancellation and keeps awaiting (a retry
loop with a bare ``except:``), ``POST /blocked`` a sync task blocked in a worker thread,
``POST /quick`` a task that ends at once, ``POST /slow`` one that ends when cancelled;
every kind but quick is followed by a task that must never run. After
shutdown the app's own lifespan writes the final ``bgtask_*`` counters as JSON to
``$TASKLENS_TEST_SUMMARY`` (tasklens' runtime lifespan runs inside it).
"""

from __future__ import annotations

import logging
import os
import time

import anyio
from fastapi import BackgroundTasks, FastAPI

import tasklens
from tests.runtime.apps.shutdown_summary import lifespan

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")


app = FastAPI(lifespan=lifespan)


async def stubborn() -> None:
    while True:
        try:  # noqa: SIM105 - spelled out: this is the code users write
            await anyio.sleep(1)
        except BaseException:  # a bare ``except:`` in a retry loop swallows cancellation
            pass


def blocked() -> None:
    time.sleep(30)


async def quick() -> None:
    await anyio.sleep(0)


async def slow() -> None:
    await anyio.sleep(30)


def after() -> None:
    raise AssertionError("must never run")


TASKS = {"stubborn": stubborn, "blocked": blocked, "quick": quick, "slow": slow}


@app.post("/{kind}")
async def add(kind: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(TASKS[kind])
    if kind != "quick":
        background_tasks.add_task(after)
    return {"kind": kind}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


tasklens.instrument(
    app,
    mode="detached",
    max_concurrency=int(os.environ.get("TASKLENS_TEST_MAX_CONCURRENCY", "10")),
    shutdown_timeout=float(os.environ.get("TASKLENS_TEST_SHUTDOWN_TIMEOUT", "1.0")),
    loop_lag_interval=None,
)
