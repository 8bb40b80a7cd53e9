"""The app the live page's end-to-end tests run under uvicorn (``ui_path="/tasks"``)."""

from __future__ import annotations

import asyncio
import os
import secrets
import time

from fastapi import BackgroundTasks, FastAPI, Request

import tasklens

if not os.environ.get("LIVE_APP_NO_SETUP"):  # without: no tracer provider, no trace ids
    tasklens.setup(service_name="live-e2e", span_logs=False)
app = FastAPI()
TOKEN = os.environ.get("LIVE_APP_TOKEN")


class InventoryError(Exception):
    """The deterministic failure of every third order."""


def charge(order: int) -> None:
    time.sleep(0.002)


async def notify(order: int) -> None:
    await asyncio.sleep(0.001)
    if order % 3 == 0:
        raise InventoryError(f"order {order}: https://stock.example/?api_key=sk_live_{order}")


async def report(order: int) -> None:
    await asyncio.sleep(0.02)


async def rebuild_cache() -> None:
    time.sleep(0.15)  # blocks the event loop: the loop-blocked event
    await asyncio.sleep(0)


@app.post("/orders/{order}")
async def create_order(order: int, background_tasks: BackgroundTasks) -> dict[str, int]:
    background_tasks.add_task(charge, order)
    background_tasks.add_task(notify, order)
    background_tasks.add_task(report, order)
    return {"order": order}


@app.post("/cache/rebuild")
async def rebuild(background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(rebuild_cache)
    return {"status": "rebuilding"}


async def quick() -> None:
    return None


async def slow() -> None:
    await asyncio.sleep(1.5)


@app.post("/slow")
async def slow_request(background_tasks: BackgroundTasks) -> dict[str, int]:
    background_tasks.add_task(quick)
    background_tasks.add_task(slow)
    return {"tasks": 2}


async def odd(order: int) -> None:
    # A right-to-left override and a long unbroken word: neither may disorder the page.
    raise InventoryError("\u202egnirts desrever " + "x" * 400)


# A 200-character task name (a generated function's, say).
odd.__qualname__ = "odd_" + "\u05d0" * 3 + "_" + "n" * 192


@app.post("/odd")
async def odd_request(background_tasks: BackgroundTasks) -> dict[str, int]:
    background_tasks.add_task(odd, 1)
    return {"tasks": 1}


# The app's own routes at and below ui_path: only GET /tasks is the page's (warned at start).
@app.get("/tasks")
def shadowed() -> dict[str, str]:
    return {"never": "reached"}


@app.get("/tasks/{tid}")
def get_task(tid: str) -> dict[str, str]:
    return {"task": tid}


@app.post("/tasks")
def create_task() -> dict[str, bool]:
    return {"created": True}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


def allowed(request: Request) -> bool:
    expected = f"Bearer {TOKEN}"
    return secrets.compare_digest(request.headers.get("authorization", ""), expected)


tasklens.instrument(
    app,
    ui_path="/tasks",
    ui_trace_url="https://grafana.example/explore?left={%22queries%22:[{%22query%22:%22{trace_id}%22}]}",
    metrics_auth=allowed if TOKEN else None,
)
