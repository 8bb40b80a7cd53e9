"""The app the core end-to-end tests run under uvicorn: two tasks per request."""

from __future__ import annotations

import asyncio
import os

from fastapi import BackgroundTasks, FastAPI

import tasklens

tasklens.setup(service_name="core-e2e")
app = FastAPI()
SIDE_EFFECTS: list[str] = []


class InventoryError(Exception):
    """The deterministic failure of every third order."""


def charge(order: int) -> None:
    SIDE_EFFECTS.append(f"charge {order}")


async def notify(order: int) -> None:
    await asyncio.sleep(0.001)
    if order % 3 == 0:
        raise InventoryError(f"order {order}")
    SIDE_EFFECTS.append(f"notify {order}")


@app.post("/orders/{order}")
async def create_order(order: int, background_tasks: BackgroundTasks) -> dict[str, int]:
    background_tasks.add_task(charge, order)
    background_tasks.add_task(notify, order)
    return {"order": order}


@app.get("/side-effects")
def side_effects() -> dict[str, int]:
    return {"count": len(SIDE_EFFECTS)}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


tasklens.instrument(
    app, on_error=os.environ.get("CORE_APP_ON_ERROR", "continue"), enqueue_events=True
)
